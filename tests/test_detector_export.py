"""The product detector's one decoding path and its checked ONNX / INT8 export (issue 18).

Both engines stop at the head's raw outputs and decode in NumPy (engines.fcos_decode): the decoding
is checked against torchvision's own FCOS postprocessing; the export against PyTorch on val
composites of the colour shop (the tiny detector of tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.data.composition import make_eval_set
from skulens.data.datasets import load_dataset
from skulens.engines.detector import DETECTOR_INT8, DETECTOR_WEIGHTS, NMS_IOU, RAW_SCORE_FLOOR, Detector, OnnxHead
from skulens.engines.fcos_decode import anchor_boxes, level_shapes, nms
from skulens.errors import CheckpointError, SkulensError
from skulens.evaluation.detection import box_iou
from skulens.training.detector_export import replace_head


def test_numpy_decoding_gives_torchvisions_boxes():
    """Three photos of different shapes in one batch (padded to the largest, as torchvision does)."""
    import torch

    from skulens.models.detector import DetectorSpec, create_detector

    torch.manual_seed(0)
    spec = DetectorSpec(input_size=160)
    model = create_detector(spec, pretrained=False).eval()
    model.score_thresh, model.nms_thresh = RAW_SCORE_FLOOR, NMS_IOU
    with torch.no_grad():  # many candidates above the floor, so top-k, NMS and the 50-box cap all act
        model.head.classification_head.cls_logits.bias.fill_(1.0)
    detector = Detector.from_model(model, spec, 0.3)
    rng = np.random.default_rng(0)
    photos = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(120, 200), (300, 90), (160, 160)]
    ]
    ours = detector.raw_boxes(photos)
    resized = [detector._resized(p) for p in photos]
    with torch.inference_mode():  # torchvision's FCOS takes 0-1 images and normalises them itself
        theirs = model([torch.from_numpy((x * 0.5 + 0.5).transpose(2, 0, 1).copy()) for x, _, _ in resized])
    for (boxes, scores), (_, sx, sy), out in zip(ours, resized, theirs):
        assert len(boxes) == len(out["boxes"]) == 50
        np.testing.assert_allclose(scores, out["scores"].numpy(), atol=1e-6)
        np.testing.assert_allclose(boxes, out["boxes"].numpy() * [sx, sy, sx, sy], atol=1e-3)


def test_detect_drops_low_scores_before_nms_without_changing_the_answer():
    import torch

    from skulens.engines.detector import filter_boxes
    from skulens.models.detector import DetectorSpec, create_detector

    torch.manual_seed(1)
    spec = DetectorSpec(input_size=128)
    model = create_detector(spec, pretrained=False).eval()
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias.fill_(1.5)
    detector = Detector.from_model(model, spec, 0.3)
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    boxes, scores = detector.raw_boxes([photo])[0]
    for threshold in (0.55, 0.6, 0.65):
        want_boxes, want_scores = filter_boxes(boxes, scores, threshold)
        got = detector.detect(photo, score_threshold=threshold, max_objects=50)
        assert len(got) == len(want_boxes) > 0
        np.testing.assert_allclose([b.box for b in got], want_boxes, atol=1e-4)


def test_anchor_grid_follows_torchvisions_strides():
    assert level_shapes(224, 320) == [(28, 40), (14, 20), (7, 10), (4, 5)]
    anchors = anchor_boxes(224, 320)
    assert len(anchors) == 28 * 40 + 14 * 20 + 7 * 10 + 4 * 5
    np.testing.assert_array_equal(anchors[0], [-4, -4, 4, 4])
    # the last level: 224 // 4 = 56 px between rows, 320 // 5 = 64 between columns; 64-px squares
    np.testing.assert_array_equal(anchors[-1], [4 * 64 - 32, 3 * 56 - 32, 4 * 64 + 32, 3 * 56 + 32])


def test_nms_drops_overlaps_and_keeps_the_best_first():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.1], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 2, 0, 3]


@pytest.fixture(scope="module")
def exported(detector_dir, trained_run, tmp_path_factory):
    from skulens.training.detector_export import export_detector

    folder = tmp_path_factory.mktemp("export") / "det"
    shutil.copytree(detector_dir, folder)
    record = export_detector(folder, load_dataset(trained_run[1]), calibration=8, check=8, progress=False)
    return folder, record


@pytest.mark.slow
def test_the_onnx_export_matches_pytorch_and_int8_is_checked(exported, trained_run, composition):
    folder, record = exported
    assert record["fp32"]["max_abs_logit_diff"] < 1e-3
    assert record["fp32"]["found_rate"] == record["check"]["torch"]["found_rate"]
    assert set(record["files"]) == {"detector.onnx", DETECTOR_INT8}
    assert isinstance(record["int8"]["passed"], bool)
    sizes = [f["input_size"] for f in record["int8"]["sizes"]]
    assert sizes[0] == 128 and record["int8"]["input_size"] in sizes and min(sizes) >= 96  # 32-px steps to 3/4
    auto = Detector.load(folder)
    assert auto.engine == ("onnx-int8" if record["int8"]["passed"] else "onnx-fp32")
    if record["int8"]["passed"]:  # the INT8 engine runs at its own val-chosen size and threshold
        assert (auto.spec.input_size, auto.score_threshold) == (
            record["int8"]["input_size"],
            record["int8"]["score_threshold"],
        )
    torch_detector = Detector.load(folder, engine="torch")
    scenes = make_eval_set(load_dataset(trained_run[1]), "test", 4, seed=5, config=composition, progress=False)
    fp32 = replace_head(torch_detector, OnnxHead(folder / "detector.onnx"))
    for scene in scenes:
        a = fp32.detect(scene.image, score_threshold=0.2)
        b = torch_detector.detect(scene.image, score_threshold=0.2)
        assert len(a) == len(b)
        if a:
            iou = box_iou(np.array([x.box for x in a]), np.array([x.box for x in b]))
            assert np.diag(iou).min() > 0.99


@pytest.mark.slow
def test_an_export_stands_alone_and_is_refused_when_changed(exported, tmp_path):
    folder, _ = exported
    alone = tmp_path / "alone"
    shutil.copytree(folder, alone)
    (alone / DETECTOR_WEIGHTS).unlink()  # shipped without its PyTorch weights, as the demo's
    assert Detector.load(alone).engine.startswith("onnx")
    with pytest.raises(SkulensError, match="only has its ONNX export"):
        Detector.load(alone, engine="torch")
    with open(alone / DETECTOR_INT8, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="recorded checksum"):
        Detector.load(alone)


@pytest.mark.slow
def test_new_weights_make_the_export_stale(exported, tmp_path):
    from safetensors.torch import load_file

    from skulens.runs.folder import save_tensors_atomic

    folder, _ = exported
    stale = tmp_path / "stale"
    shutil.copytree(folder, stale)
    tensors = load_file(str(stale / DETECTOR_WEIGHTS))
    tensors = {k: (v * 1.01 if v.is_floating_point() else v) for k, v in tensors.items()}  # "trained again"
    save_tensors_atomic(stale / DETECTOR_WEIGHTS, tensors)
    assert Detector.load(stale).engine == "torch"
    with pytest.raises(SkulensError, match="no current ONNX export"):
        Detector.load(stale, engine="onnx")


@pytest.mark.slow
def test_the_cli_exports_and_refuses_a_missing_folder_in_one_line(detector_dir, trained_run, tmp_path):
    folder = tmp_path / "det"
    shutil.copytree(detector_dir, folder)
    base = [sys.executable, "-m", "skulens", "detector", "export"]
    ok = subprocess.run([*base, str(folder), str(trained_run[1]), "--calibration", "8", "--check", "8", "--fp32-only",
                         "--no-progress"], capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "fp32: found" in ok.stdout and not (folder / DETECTOR_INT8).exists()
    assert set(json.loads((folder / "export.json").read_text())["files"]) == {"detector.onnx"}
    bad = subprocess.run([*base, str(tmp_path / "nope"), str(trained_run[1])], capture_output=True, text=True)
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1 and "detector folder not found" in bad.stderr


@pytest.mark.slow
def test_the_onnx_detector_never_imports_torch(exported, tmp_path):
    folder, _ = exported
    Image.new("RGB", (200, 120), (200, 30, 30)).save(tmp_path / "photo.png")
    code = (
        "import sys; from skulens.engines.detector import Detector; "
        f"d = Detector.load({str(folder)!r}); d.detect({str(tmp_path / 'photo.png')!r}); "
        "print(d.engine, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].startswith("onnx") and out[1] == "False"


DEMO_DETECTOR = Path(__file__).resolve().parents[1] / "src" / "skulens" / "demo_assets" / "detector"


@pytest.mark.skipif(not (DEMO_DETECTOR / "detector.json").is_file(), reason="this checkout has no demo detector")
def test_the_demo_detector_finds_two_catalog_products_and_serve_uses_it():
    """`skulens serve` with no arguments serves the demo's detector (its checked INT8 model alone)."""
    from skulens.cli.main import build_parser
    from skulens.cli.serve import config_from_args
    from skulens.data.composition import cutout_mask
    from skulens.serving.config import demo_catalog_dir

    images = sorted((demo_catalog_dir() / "images").iterdir())
    canvas = Image.new("RGB", (720, 480), (236, 236, 230))
    truth = []  # catalog photos are products on white: the product's own outline is the box to find
    for path, (x, y) in zip([images[3], images[40]], [(40, 100), (400, 60)]):
        photo = Image.open(path).convert("RGB").resize((280, 280))
        canvas.paste(photo, (x, y))
        ys, xs = np.nonzero(cutout_mask(photo))
        truth.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
    truth = np.array(truth, np.float32)
    detector = Detector.load(DEMO_DETECTOR)
    assert detector.engine == "onnx-int8"
    found = np.array([b.box for b in detector.detect(canvas)])
    assert len(found) == 2
    assert box_iou(truth, found).max(axis=1).min() >= 0.5
    args = build_parser().parse_args(["serve", "--no-catalog"])
    assert config_from_args(args).detector_dir == DEMO_DETECTOR
