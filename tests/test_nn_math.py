"""skulens.nn_math against PyTorch, the hand-worked examples, and the generated docs page."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skulens import nn_math as nm
from skulens.errors import SkulensError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "skulens" / "demo_data" / "grocery-mini"


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((2, 3, 11, 9), (4, 3, 3, 3), 1, 0),
        ((1, 3, 12, 12), (8, 3, 3, 3), 2, 1),
        ((3, 2, 10, 7), (5, 2, 2, 4), (2, 1), (0, 2)),
        ((1, 1, 5, 5), (1, 1, 5, 5), 1, 0),  # the kernel fills the input: one output value
        ((2, 4, 8, 8), (3, 4, 1, 1), 3, 2),
    ],
)
def test_conv2d_matches_pytorch(shape, kernel, stride, padding):
    rng = np.random.default_rng(sum(shape) + sum(kernel))
    x, w, b = rng.normal(size=shape), rng.normal(size=kernel), rng.normal(size=kernel[0])
    expected = F.conv2d(t(x), t(w), t(b), stride=stride, padding=padding).numpy()
    got = nm.conv2d(x, w, b, stride=stride, padding=padding)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # An unbatched (C, H, W) image gives the same values without the batch axis.
    np.testing.assert_allclose(nm.conv2d(x[0], w, b, stride, padding), expected[0], rtol=1e-10, atol=1e-10)


def test_conv2d_in_float32_matches_pytorch_within_float_tolerance():
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(1, 16, 20, 20)).astype(np.float32), rng.normal(size=(32, 16, 3, 3)).astype(np.float32)
    got = nm.conv2d(x, w)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, F.conv2d(t(x), t(w)).numpy(), rtol=1e-4, atol=1e-4)


def test_convolution_is_cross_correlation_not_flipped():
    x = np.arange(1, 10).reshape(3, 3)
    w = np.array([[1, 0], [1, 1]])
    assert nm.conv2d(x, w).tolist() == [[10, 13], [19, 22]]  # 1·1 + 0·2 + 1·4 + 1·5 = 10, ...
    assert nm.conv2d(x, w[::-1, ::-1]).tolist() == [[8, 11], [17, 20]]


def test_worked_examples_of_the_issue_and_the_notes():
    assert nm.max_pool2d(np.array([[1, 2], [3, 4]]), 2).tolist() == [[4]]
    assert nm.avg_pool2d(np.array([[1, 2], [3, 4]]), 2).tolist() == [[2.5]]
    assert nm.conv2d(np.ones((3, 3)), np.ones((2, 2))).shape == (2, 2)
    notes_kernel = np.array([[1, 0, 1], [1, 1, 1], [0, 1, 1]])
    notes_input = np.arange(1, 10).reshape(3, 3)
    assert nm.conv2d(notes_input, notes_kernel).tolist() == [[36]]
    assert nm.conv2d(notes_input, notes_kernel, padding=1).tolist() == [[12, 17, 11], [26, 36, 22], [20, 34, 22]]
    assert nm.relu(-2) == 0


@pytest.mark.parametrize("size, stride", [(2, None), (3, None), (3, 2), ((2, 3), (1, 2))])
def test_pooling_matches_pytorch(size, stride):
    x = np.random.default_rng(7).normal(size=(2, 3, 11, 10))
    for ours, theirs in ((nm.max_pool2d, F.max_pool2d), (nm.avg_pool2d, F.avg_pool2d)):
        expected = theirs(t(x), size, stride).numpy()
        got = ours(x, size, stride)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_relu_dense_softmax_match_pytorch():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(4, 7, 5))
    np.testing.assert_array_equal(nm.relu(x), torch.relu(t(x)).numpy())
    w, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    np.testing.assert_allclose(nm.dense(x, w, b), F.linear(t(x), t(w), t(b)).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nm.dense(x, w), F.linear(t(x), t(w)).numpy(), rtol=1e-12, atol=1e-12)
    logits = rng.normal(size=(6, 9)) * 5
    for axis in (-1, 0):
        np.testing.assert_allclose(nm.softmax(logits, axis), torch.softmax(t(logits), axis).numpy(), rtol=1e-12)


def test_softmax_survives_huge_logits():
    probs = nm.softmax(np.array([1000.0, 999.0, 998.0]))
    assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(probs, nm.softmax(np.array([2.0, 1.0, 0.0])))


def test_bad_shapes_give_clear_errors():
    with pytest.raises(SkulensError, match="input channel"):
        nm.conv2d(np.zeros((3, 8, 8)), np.zeros((4, 2, 3, 3)))
    with pytest.raises(SkulensError, match="does not fit"):
        nm.conv2d(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(SkulensError, match="does not fit"):
        nm.max_pool2d(np.zeros((1, 1)), 2)
    with pytest.raises(SkulensError, match="expects 5 inputs"):
        nm.dense(np.zeros(4), np.zeros((2, 5)))


# --- the seedcnn, replayed in NumPy -------------------------------------------------------------


def _demo_inputs(pre, n: int = 6) -> torch.Tensor:
    from skulens.data.images import load_image
    from skulens.data.transforms import to_model_input

    photos = sorted((DEMO / "test").rglob("*.jpg"))[::3][:n]
    assert photos, "the bundled demo photos are missing"
    return torch.stack([to_model_input(load_image(p, draft_size=pre.img_size), pre) for p in photos])


def _torch_probs(run: Path, x: torch.Tensor) -> np.ndarray:
    from skulens.runs import load_run

    model, _ = load_run(run)
    with torch.no_grad():
        return model(x).softmax(-1).numpy()


def test_numpy_seedcnn_equals_pytorch_on_demo_photos(trained_run):
    from skulens.runs import read_config

    run, _ = trained_run
    x = _demo_inputs(read_config(run).preprocessing)
    expected = _torch_probs(run, x)
    got = nm.seedcnn_forward(nm.load_seedcnn_weights(run), x.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(nm.seedcnn_forward(nm.load_seedcnn_weights(run), x[0].numpy()), expected[0], atol=1e-5)


def test_numpy_seedcnn_equals_pytorch_at_the_native_150px(tmp_path):
    from skulens.data.transforms import Preprocessing
    from skulens.models.registry import ModelSpec, create_model
    from skulens.runs import RunConfig, save_run

    torch.manual_seed(0)
    spec = ModelSpec("seedcnn", num_classes=8, img_size=150)
    model = create_model(spec, pretrained=False)
    with torch.no_grad():  # sharper than the init so the probabilities are far from uniform
        model.classifier.weight.mul_(200)
    pre = Preprocessing(img_size=150, mean=spec.mean, std=spec.std)
    save_run(
        tmp_path / "run",
        RunConfig(model=spec, classes=[f"c{i}" for i in range(8)], preprocessing=pre),
        model.state_dict(),
    )
    x = _demo_inputs(pre, 3)
    expected = _torch_probs(tmp_path / "run", x)
    assert expected.max() > 0.5
    np.testing.assert_allclose(
        nm.seedcnn_forward(nm.load_seedcnn_weights(tmp_path / "run"), x.numpy()), expected, atol=1e-5
    )


def test_numpy_seedcnn_refuses_other_runs_and_sizes(tmp_path, trained_run):
    from skulens.data.transforms import Preprocessing
    from skulens.files import write_json_atomic
    from skulens.models.registry import ModelSpec
    from skulens.runs import RunConfig

    config = RunConfig(
        model=ModelSpec("efficientnet_lite0", 3, 64),
        classes=["a", "b", "c"],
        preprocessing=Preprocessing(64, [0.5] * 3, [0.5] * 3),
    )
    write_json_atomic(tmp_path / "lite" / "config.json", config.to_dict())
    with pytest.raises(SkulensError, match="seedcnn only"):
        nm.load_seedcnn_weights(tmp_path / "lite")
    weights = nm.load_seedcnn_weights(trained_run[0])
    with pytest.raises(SkulensError, match="does not match the weights"):
        nm.seedcnn_forward(weights, np.zeros((3, 48, 48), np.float32))
    with pytest.raises(SkulensError, match="missing"):
        nm.seedcnn_forward({k: v for k, v in weights.items() if k != "fc1.bias"}, np.zeros((3, 40, 40)))


# --- the docs page ------------------------------------------------------------------------------


def _renderer():
    spec = importlib.util.spec_from_file_location("render_nn_math_docs", ROOT / "scripts" / "render_nn_math_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_page_is_rendered_from_the_code():
    page = ROOT / "docs" / "nn_math.md"
    assert page.read_text(encoding="utf-8") == _renderer().render(), (
        "docs/nn_math.md is stale: run python scripts/render_nn_math_docs.py"
    )


def test_docs_page_names_the_notes_mistakes_and_the_right_values():
    text = (ROOT / "docs" / "nn_math.md").read_text(encoding="utf-8")
    notes = text.split("## 6. Where the design notes go wrong")[1]
    assert "| §4.3 max pooling of `[[1, 2], [3, 4]]` | 3 | **4**" in notes
    assert "2.5: right" in notes
    assert "**36**" in notes and "`[[10, 13], [19, 22]]`" in notes
    assert "`1·2 + 1·4 + 1·8 = 14`" in notes  # the notes say 11


def test_renderer_refuses_hand_sums_the_code_disagrees_with():
    renderer = _renderer()
    with pytest.raises(AssertionError, match="nn_math gives"):
        renderer.checked(np.float64(10), 11, "conv out[0,0]")
