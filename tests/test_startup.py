"""Fast start-up (issue 22): a one-photo `skulens predict` on a run with a current ONNX export never
imports torch, and its NumPy path answers what the torch path answers."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from skulens.data.transforms import (
    Preprocessing,
    image_to_array,
    image_to_input,
    pad_to_square,
    resize_shorter_side,
    to_model_array,
    to_model_input,
)
from tests.helpers import ROOT, subprocess_env


def torch_reference(img: Image.Image, pre: Preprocessing, size: int) -> torch.Tensor:
    """The torch arithmetic ``to_model_input`` had before issue 22 (the PIL steps are shared)."""
    if pre.in_chans == 1:
        img = img.convert("L")
    if pre.resize == "pad":
        img = pad_to_square(img)
    img = resize_shorter_side(img, size)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(arr.reshape(size, size, -1)).permute(2, 0, 1)
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(-1, 1, 1)
    return ((tensor - mean) / std).contiguous()


def noisy_photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("resize", ["crop", "pad"])
@pytest.mark.parametrize("in_chans", [3, 1])
def test_to_model_array_equals_the_torch_path_bit_for_bit(resize, in_chans, tmp_path):
    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if in_chans == 3 else ([0.45], [0.226])
    pre = Preprocessing(img_size=40, mean=mean, std=std, in_chans=in_chans, resize=resize)
    for seed, (w, h) in enumerate([(37, 53), (201, 61), (64, 64), (40, 40), (23, 300)]):
        img = noisy_photo(w, h, seed)
        for size in (40, 33):
            array = to_model_array(img, pre, size)
            assert array.dtype == np.float32 and array.shape == (in_chans, size, size) and array.flags.c_contiguous
            expected = torch_reference(img, pre, size)
            assert torch.equal(torch.from_numpy(array), expected)
            assert torch.equal(to_model_input(img, pre, size), expected)
        path = tmp_path / f"photo{seed}.jpg"
        img.save(path, quality=90)
        assert np.array_equal(image_to_array(path, pre), image_to_input(path, pre).numpy())


def test_importing_the_predict_path_does_not_import_torch():
    code = (
        "import sys; import skulens.cli.main, skulens.recognition.recognizer, skulens.engines, skulens.runs; "
        "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- the ONNX engine's NumPy path -------------------------------------------------------------------


def attribute_config():
    from skulens.models.spec import ModelSpec
    from skulens.runs import RunConfig

    specs = {
        "colour": {"values": ["red", "green", "blue"], "kind": "softmax"},
        "tags": {"values": ["a", "b", "c", "d"], "kind": "sigmoid"},
    }
    spec = ModelSpec(name="seedcnn", num_classes=5, img_size=8, attributes=specs)
    pre = Preprocessing(img_size=8, mean=[0.5] * 3, std=[0.5] * 3)
    return RunConfig(spec, [f"c{i}" for i in range(5)], pre)


class LinearSession:
    """An ONNX Runtime session stand-in: logits and attribute outputs linear in the pixels, so the
    mirrored view gives other numbers."""

    def __init__(self, widths: dict[str, int], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.weights = {name: rng.normal(0, 0.3, (3 * 8 * 8, n)).astype(np.float32) for name, n in widths.items()}

    def run(self, names, feed):
        x = feed["input"].reshape(len(feed["input"]), -1)
        return [x @ self.weights[name] for name in names]


def test_onnx_engine_numpy_path_matches_its_torch_path_with_attributes():
    from skulens.engines import OnnxEngine

    config = attribute_config()
    engine = OnnxEngine.__new__(OnnxEngine)
    engine.config, engine.name, engine.has_attributes, engine.input_name = config, "onnx-fp32", True, "input"
    engine._output_names = ["logits", "attribute:colour", "attribute:tags"]
    engine.session = LinearSession({"logits": 5, "attribute:colour": 3, "attribute:tags": 4})
    x = np.random.default_rng(1).normal(size=(4, 3, 8, 8)).astype(np.float32)
    for tta in (False, True):
        probs, attrs = engine.outputs(x, tta)
        t_probs, t_attrs = engine.outputs(torch.from_numpy(x), tta)
        assert isinstance(probs, np.ndarray) and probs.dtype == np.float32 and isinstance(t_probs, torch.Tensor)
        np.testing.assert_allclose(probs, t_probs.numpy(), atol=1e-6, rtol=0)
        assert set(attrs) == {"colour", "tags"}
        for name in attrs:
            assert isinstance(attrs[name], np.ndarray) and attrs[name].dtype == np.float32
            np.testing.assert_allclose(attrs[name], t_attrs[name].numpy(), atol=1e-6, rtol=0)
    assert not np.allclose(engine.outputs(x, True)[0], engine.outputs(x, False)[0])  # the flip did something


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory):
    """A copy of the trained seedcnn run with its FP32 ONNX export: (run folder, dataset folder)."""
    from skulens.data.datasets import load_dataset
    from skulens.engines.onnx_export import export_onnx

    run, data = trained_run
    copy = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(run, copy)
    export_onnx(copy, dataset=load_dataset(data), check_images=24)
    return copy, data


@pytest.mark.slow
def test_exported_run_numpy_and_torch_inputs_agree(exported_run):
    from skulens import Recognizer
    from skulens.engines import OnnxEngine, load_engine

    run, data = exported_run
    engine = load_engine(run, "onnx", "cpu")
    assert isinstance(engine, OnnxEngine)
    photos = sorted((data / "test").rglob("*.jpg"))[:6]
    pre = engine.config.preprocessing
    batch = np.stack([image_to_array(p, pre) for p in photos])
    for tta in (False, True):
        probs = engine.probabilities(batch, tta)
        expected = engine.probabilities(torch.from_numpy(batch), tta)
        assert isinstance(probs, np.ndarray)
        np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6, rtol=0)
    # The Recognizer on the export answers as the PyTorch engine does.
    onnx, torch_engine = Recognizer.load(run, device="cpu"), Recognizer.load(run, engine="torch", device="cpu")
    assert onnx.engine.name == "onnx-fp32"
    for photo in photos:
        a, b = onnx.predict(photo), torch_engine.predict(photo)
        assert a.label == b.label and a.confidence == pytest.approx(b.confidence, abs=1e-4)


def predict_in_subprocess(run, photo, *args: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        "from skulens.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('imported:', sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    argv = [sys.executable, "-c", code, "predict", str(run), str(photo), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120)


@pytest.mark.slow
def test_one_photo_predict_on_an_export_never_imports_torch(exported_run):
    from skulens import Recognizer
    from skulens.runtime import gpu_may_be_present

    run, data = exported_run
    photo = next((data / "test" / "green").iterdir())
    expected = Recognizer.load(run, engine="torch", device="cpu").predict(photo).label
    for args in [("--device", "cpu")] + ([] if gpu_may_be_present() else [()]):
        proc = predict_in_subprocess(run, photo, *args)
        assert proc.returncode == 0, proc.stderr
        answer, imported = proc.stdout.strip().splitlines()
        assert answer.split("\t")[1] == expected
        assert imported == "imported: []"
    # `python -m skulens predict` itself, as a user runs it
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "skulens", "predict", str(run), str(photo), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.split("\t")[1] == expected
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "torchvision", "timm"}
