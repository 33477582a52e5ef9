"""``skulens detector export``: the product detector to ONNX (FP32) and INT8, each checked on val.

The same self-checked path as a classifier's export (engines.onnx_export): export, compare with
PyTorch, quantize with ONNX Runtime's static quantizer (QDQ, per-channel, 7-bit weights), and keep
the INT8 model only if it finds the products PyTorch finds. The checks are on composites of the
val split (the detector's own figures: found rate, false boxes per image at its score threshold,
mAP@0.5), so the export needs the dataset the detector was trained from.

Why in ``training``: the check scores detections (evaluation.detection), which engines may not import.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from pathlib import Path

import numpy as np

from skulens.data.composition import Composite, CompositionConfig, make_eval_set
from skulens.data.datasets import ImageDataset
from skulens.engines.detector import (
    DETECTOR_EXPORT,
    DETECTOR_INT8,
    DETECTOR_ONNX,
    DETECTOR_WEIGHTS,
    Detector,
    OnnxHead,
    read_detector_record,
)
from skulens.engines.onnx_export import _CalibrationReader, _require_onnx
from skulens.errors import SkulensError
from skulens.evaluation.detection import choose_score_threshold, detection_figures, run_detector
from skulens.files import sha256_file, write_json_atomic

OPSET = 17
# Points of val found rate a smaller INT8 input may give up for its speed (48 scenes: about one product).
SIZE_TOLERANCE = 1.0


def export_detector(
    folder: str | Path,
    dataset: ImageDataset,
    *,
    calibration: int = 64,
    check: int = 48,
    max_found_drop: float = 2.0,
    int8: bool = True,
    progress: bool = True,
) -> dict:
    """Write detector.onnx (+ detector.int8.onnx) and export.json into the detector ``folder``;
    returns the record. The INT8 model is marked usable only when, on ``check`` val composites, it
    finds at most ``max_found_drop`` points fewer products than PyTorch and keeps its false boxes in
    check (see _check_int8), at its own score threshold chosen on the same val scenes; otherwise the
    FP32 model is what ``Detector.load`` picks."""
    _require_onnx()
    if calibration < 8 or check < 8:
        raise SkulensError("the export needs at least 8 calibration and 8 check composites")
    if not 0 <= max_found_drop <= 100:
        raise SkulensError(f"max_found_drop is in points (0-100), not {max_found_drop}")
    folder = Path(folder)
    torch_detector = Detector.load(folder, engine="torch")
    composition = CompositionConfig.from_dict(torch_detector.record.get("composition", {}))
    split = "val" if dataset.has_split("val") else "train"  # as training chose its val scenes
    checks = make_eval_set(dataset, split, check, seed=1, config=composition, progress=progress)
    reference = detection_figures(
        run_detector(torch_detector, checks, progress=progress), checks, torch_detector.score_threshold
    )
    fp32 = _export_fp32(torch_detector, folder / DETECTOR_ONNX)
    record = {
        "weights_sha256": sha256_file(folder / DETECTOR_WEIGHTS),
        "opset": OPSET,
        "check": {"split": split, "composites": len(checks), "torch": reference},
        "fp32": _check(torch_detector, fp32, checks),
        "files": {DETECTOR_ONNX: sha256_file(fp32)},
    }
    if int8:
        # Calibration scenes are composed from train, not from the val scenes the check scores.
        calib = make_eval_set(dataset, "train", calibration, seed=2, config=composition, progress=progress)
        quantized = _quantize(fp32, folder / DETECTOR_INT8, calib, torch_detector)
        max_false = float(torch_detector.record.get("training", {}).get("max_false_per_image", 0.2))
        record["int8"] = _check_int8(torch_detector, quantized, checks, reference, max_found_drop, max_false)
        record["files"][DETECTOR_INT8] = sha256_file(quantized)
    else:
        (folder / DETECTOR_INT8).unlink(missing_ok=True)  # an older INT8 file would not match these weights
    write_json_atomic(folder / DETECTOR_EXPORT, record)
    return record


def _check_int8(
    torch_detector: Detector,
    path: Path,
    checks: list[Composite],
    reference: dict,
    max_found_drop: float,
    max_false: float,
) -> dict:
    """The INT8 model's figures at its own score threshold, chosen on the same val scenes by the rule
    training used (the lowest that keeps false boxes per image at most ``max_false``): 8-bit rounding
    moves the scores, not only the boxes; and at its own input size (_smallest_size). Passed: at most
    ``max_found_drop`` points fewer products found than PyTorch, and at most 0.05 more false boxes per
    image (or within ``max_false``)."""
    head = OnnxHead(path)
    figures = {
        **_smallest_size(torch_detector, head, checks, max_false),
        "max_abs_logit_diff": _logit_diff(torch_detector, head, checks),
    }
    figures["passed"] = bool(
        100 * (reference["found_rate"] - figures["found_rate"]) <= max_found_drop
        and figures["false_per_image"] <= max(reference["false_per_image"] + 0.05, max_false)
    )
    return figures


def _smallest_size(torch_detector: Detector, head: OnnxHead, checks: list[Composite], max_false: float) -> dict:
    """The compute goes with the input's pixels, so the INT8 engine runs at the smallest input side, in
    32-px steps down to three quarters of the trained size, that finds at most SIZE_TOLERANCE points
    fewer products than the trained size on val and keeps its false boxes within ``max_false``.
    Returns the chosen size's figures, with every size tried under "sizes"."""
    trained = torch_detector.spec.input_size
    chosen = _figures_at(torch_detector, head, checks, trained, max_false)
    tried = [chosen]
    for size in range(trained - 32, int(0.75 * trained) - 1, -32):
        figures = _figures_at(torch_detector, head, checks, size, max_false)
        tried.append(figures)
        if (
            100 * (tried[0]["found_rate"] - figures["found_rate"]) > SIZE_TOLERANCE
            or figures["false_per_image"] > max_false
        ):
            break
        chosen = figures
    return {**chosen, "sizes": tried}


def _figures_at(torch_detector: Detector, head: OnnxHead, checks: list[Composite], size: int, max_false: float) -> dict:
    spec = dataclasses.replace(torch_detector.spec, input_size=size)
    raw = run_detector(Detector(head, spec, torch_detector.score_threshold), checks, progress=False)
    return {"input_size": size, **detection_figures(raw, checks, choose_score_threshold(raw, checks, max_false))}


def training_seed(folder: str | Path) -> int:
    """The seed the detector was trained with: it also drew the dataset's train/val split, so the
    export's calibration (train) and check (val) scenes come from the same photos as in training."""
    return int(read_detector_record(Path(folder)).get("training", {}).get("seed", 0))


def _export_fp32(detector: Detector, path: Path) -> Path:
    import torch

    size = detector.spec.input_size
    padded = -(-size // 32) * 32
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        # The TorchScript exporter (as for classifiers): a plain graph onnxruntime's quantizer handles well.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            detector.head.network,
            torch.zeros(1, 3, padded, padded),
            str(tmp),
            input_names=["input"],
            output_names=["cls_logits", "bbox_regression", "bbox_ctrness"],
            # Photos keep their aspect ratio (longer side = input size), so height and width vary.
            dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}},
            opset_version=OPSET,
            dynamo=False,
        )
    tmp.replace(path)
    return path


def _check(torch_detector: Detector, path: Path, composites: list[Composite]) -> dict:
    """The ONNX model's detection figures on the check composites at PyTorch's score threshold."""
    head = OnnxHead(path)
    raw = run_detector(replace_head(torch_detector, head), composites, progress=False)
    figures = detection_figures(raw, composites, torch_detector.score_threshold)
    return {**figures, "max_abs_logit_diff": _logit_diff(torch_detector, head, composites)}


def _logit_diff(torch_detector: Detector, head: OnnxHead, composites: list[Composite]) -> float:
    """How far the ONNX head's raw outputs are from PyTorch's, on the first 8 scenes."""
    batch = torch_detector.input_batch([c.image for c in composites[:8]])
    ours, theirs = head(batch), torch_detector.head(batch)
    return round(float(max(np.abs(a - b).max() for a, b in zip(ours, theirs))), 5)


def replace_head(detector: Detector, head) -> Detector:
    return Detector(head, detector.spec, detector.score_threshold, detector.record)


def _quantize(fp32: Path, int8: Path, calibration: list[Composite], detector: Detector) -> Path:
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        nodes = onnx.load(str(prepared)).graph.node
        convs = [n for n in nodes if n.op_type == "Conv"]
        # The stem sees the raw image and the three last convolutions write the logits, boxes and
        # centerness every answer is read from: they stay in FP32 (as a classifier's stem and head).
        # Every other op is quantized, not only the convolutions: with the FPN's adds, upsampling and
        # pooling left in FP32, the (de)quantization around them made the INT8 model slower than FP32.
        keep_fp32 = [convs[0].name, *[n.name for n in convs[-3:]]]
        batch = detector.input_batch([c.image for c in calibration])
        tmp_out = int8.with_name(f".{int8.name}.tmp")
        quantize_static(
            str(prepared),
            str(tmp_out),
            _CalibrationReader(torch.from_numpy(batch), "input", batch_size=8),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_fp32,
            reduce_range=True,  # 7-bit weights: see engines.onnx_export._quantize
            calibrate_method=CalibrationMethod.MinMax,
        )
        tmp_out.replace(int8)
    return int8
