"""``Detector``: a trained product detector run on a photo -> boxes in the photo's own pixels.

Why in ``engines``: it is an engine for a second kind of model (load verified weights, run them,
give plain outputs), and every layer that needs it sits above this one: ``evaluation`` scores it,
``training`` reports its validation figures while it learns, ``recognition`` / ``serving`` crop
each found product for the recognizer.

A detector folder holds ``detector.safetensors`` (its sha256 in ``checksums.json``, checked before
loading, as for run folders) and ``detector.json``: the architecture (models.detector_spec), the
input size, the normalisation, the score threshold chosen on val, the composition settings it was
trained with and its validation figures. ``skulens detector export`` adds ONNX files and
``export.json`` (their sha256 and the INT8 model's self-check); a folder may then ship without the
safetensors (the embedded demo's detector does). Two engines run the network up to the head's raw
outputs: ONNX Runtime (the checked INT8 export, on a CPU; never imports torch) and PyTorch; both
decode in engines.fcos_decode.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from skulens.data.images import ImageSource, load_image
from skulens.engines.fcos_decode import SIZE_DIVISIBLE, decode, nms
from skulens.errors import CheckpointError, SkulensError
from skulens.files import sha256_file, write_json_atomic
from skulens.models.detector_spec import MEAN, STD, DetectorSpec
from skulens.runs.folder import save_tensors_atomic, verify_checksum

DETECTOR_CONFIG = "detector.json"
DETECTOR_WEIGHTS = "detector.safetensors"
DETECTOR_EXPORT = "export.json"
DETECTOR_ONNX = "detector.onnx"
DETECTOR_INT8 = "detector.int8.onnx"
FORMAT = "skulens-detector/1"
ENGINES = ("auto", "torch", "onnx")
# Candidate boxes kept from the model before our own filtering (mAP needs the low-score ones too).
RAW_SCORE_FLOOR = 0.05
NMS_IOU = 0.5
# A box is "inside" another when this share of its area lies within it.
NESTED_SHARE = 0.85


@dataclass(frozen=True)
class DetectedBox:
    """x1, y1, x2, y2 in pixels of the upright photo (EXIF orientation applied), and the score."""

    box: tuple[float, float, float, float]
    score: float

    def to_dict(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4)}


def save_detector(out_dir: str | Path, model, spec: DetectorSpec, info: dict) -> Path:
    """Write the weights (safetensors, checksummed) and detector.json (``info`` + the architecture)."""
    out = Path(out_dir)
    save_tensors_atomic(out / DETECTOR_WEIGHTS, model.state_dict())
    record = {
        "format": FORMAT,
        "architecture": spec.to_dict(),
        "input_size": spec.input_size,
        "normalisation": {"mean": list(MEAN), "std": list(STD)},
        **info,
    }
    write_json_atomic(out / DETECTOR_CONFIG, record)
    return out


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return record


def read_detector_record(folder: Path) -> dict:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: detector folder not found")
    has_network = (folder / DETECTOR_WEIGHTS).is_file() or (folder / DETECTOR_EXPORT).is_file()
    if not (folder / DETECTOR_CONFIG).is_file() or not has_network:
        raise CheckpointError(
            f"{folder}: not a detector folder (needs {DETECTOR_CONFIG} and {DETECTOR_WEIGHTS} or an ONNX export)"
        )
    record = _read_json(folder / DETECTOR_CONFIG)
    if record.get("format") != FORMAT:
        raise CheckpointError(f"{folder / DETECTOR_CONFIG}: not a {FORMAT} record")
    return record


def current_detector_export(folder: str | Path) -> dict | None:
    """The folder's export record when its ONNX files are intact and belong to the current weights
    (or stand alone: a folder shipped without its safetensors); None when there is no export."""
    folder = Path(folder)
    if not (folder / DETECTOR_EXPORT).is_file():
        return None
    record = _read_json(folder / DETECTOR_EXPORT)
    weights = folder / DETECTOR_WEIGHTS
    if weights.is_file() and record.get("weights_sha256") != sha256_file(weights):
        return None  # trained again since the export: the PyTorch weights are the current ones
    for name, digest in record.get("files", {}).items():
        if not (folder / name).is_file() or sha256_file(folder / name) != digest:
            raise CheckpointError(f"{folder / name}: missing or does not match its recorded checksum")
    return record


class TorchHead:
    """PyTorch up to the head's raw outputs (models.detector.HeadOutputs)."""

    name = "torch"

    def __init__(self, model):
        from skulens.models.detector import HeadOutputs

        self.network = HeadOutputs(model).eval()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch

        with torch.inference_mode():
            return tuple(t.numpy() for t in self.network(torch.from_numpy(batch)))


class OnnxHead:
    """ONNX Runtime on the CPU, up to the same outputs; torch is never imported."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = "onnx-int8" if path.name == DETECTOR_INT8 else "onnx-fp32"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, {"input": batch}))


def _load_torch_head(folder: Path, spec: DetectorSpec) -> TorchHead:
    from safetensors.torch import load_file

    from skulens.models.detector import create_detector

    if not (folder / DETECTOR_WEIGHTS).is_file():
        raise SkulensError(f"{folder}: no {DETECTOR_WEIGHTS} (this folder only has its ONNX export; use engine onnx)")
    model = create_detector(spec, pretrained=False)
    verify_checksum(folder / DETECTOR_WEIGHTS)
    try:
        model.load_state_dict(load_file(str(folder / DETECTOR_WEIGHTS)))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{folder}: weights do not fit the recorded architecture ({exc})") from None
    return TorchHead(model)


def _load_head(folder: Path, spec: DetectorSpec, engine: str, threads: int | None) -> tuple[object, dict]:
    """The head to run and, for the INT8 model, its own score threshold and input size (chosen on val
    by the export: 8-bit rounding shifts the scores a little, and a smaller input is faster)."""
    if engine not in ENGINES:
        raise SkulensError(f"unknown detector engine {engine!r} (use {', '.join(ENGINES)})")
    export = current_detector_export(folder) if engine != "torch" else None
    if export is not None:
        int8 = export.get("int8", {})
        if int8.get("passed") and (folder / DETECTOR_INT8).is_file():
            chosen = {k: int8[k] for k in ("score_threshold", "input_size") if k in int8}
            return OnnxHead(folder / DETECTOR_INT8, threads), chosen
        return OnnxHead(folder / DETECTOR_ONNX, threads), {}
    if engine == "onnx":
        raise SkulensError(f"{folder}: no current ONNX export; run `skulens detector export {folder} DATA`")
    return _load_torch_head(folder, spec), {}


class Detector:
    """A trained class-agnostic product detector. ``Detector.load(folder).detect(photo)``.
    ``head``: a TorchHead or OnnxHead (what turns a normalised batch into the head's raw outputs)."""

    def __init__(self, head, spec: DetectorSpec, score_threshold: float, record: dict | None = None):
        self.head = head
        self.spec = spec
        self.score_threshold = float(score_threshold)
        self.record = record or {}

    @property
    def engine(self) -> str:
        return self.head.name

    @classmethod
    def from_model(cls, model, spec: DetectorSpec, score_threshold: float, record: dict | None = None) -> Detector:
        """A detector still in training (a torchvision FCOS in memory)."""
        return cls(TorchHead(model), spec, score_threshold, record)

    @classmethod
    def load(cls, folder: str | Path, engine: str = "auto", threads: int | None = None) -> Detector:
        """``auto``: the checked INT8 ONNX export when the folder has a current one, else PyTorch."""
        folder = Path(folder)
        record = read_detector_record(folder)
        spec = DetectorSpec.from_dict(record.get("architecture", {}))
        head, chosen = _load_head(folder, spec, engine, threads)
        threshold = chosen.get("score_threshold", record.get("score_threshold", 0.3))
        spec = replace(spec, input_size=chosen.get("input_size", spec.input_size))
        return cls(head, spec, threshold, record)

    def _resized(self, image: Image.Image) -> tuple[np.ndarray, float, float]:
        """The photo with its longer side at the input size (a huge photo never reaches the model
        whole), normalised (H, W, 3) float32, and the factors back to the photo's pixels."""
        w, h = image.size
        scale = self.spec.input_size / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = image.resize(size, Image.BILINEAR, reducing_gap=3.0) if size != (w, h) else image
        pixels = np.asarray(small, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
        normalised = (pixels - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
        return normalised, w / size[0], h / size[1]

    def input_batch(self, images: list[ImageSource | np.ndarray]) -> np.ndarray:
        """What the network sees for ``images``: resized, normalised and padded together (NCHW)."""
        return padded_batch([self._resized(_photo(i))[0] for i in images])

    def raw_boxes(
        self, images: list[ImageSource], score_floor: float = RAW_SCORE_FLOOR
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every candidate above ``score_floor`` after NMS: (boxes (N, 4), scores (N,)) per image,
        in each photo's pixels. Arrays (H, W, 3) uint8 are taken as RGB photos."""
        photos = [_photo(i) for i in images]
        prepared = [self._resized(p) for p in photos]
        batch = padded_batch([x for x, _, _ in prepared])
        cls_logits, regression, centerness = self.head(batch)
        results = []
        for i, (photo, (x, sx, sy)) in enumerate(zip(photos, prepared)):
            boxes, scores = decode(
                cls_logits[i], regression[i], centerness[i], batch.shape[2:], x.shape[:2],
                score_floor=score_floor, nms_iou=NMS_IOU,
            )  # fmt: skip
            boxes = np.clip(boxes * np.array([sx, sy, sx, sy], np.float32), 0, [photo.width, photo.height] * 2)
            results.append((boxes.astype(np.float32), scores))
        return results

    def detect(
        self,
        image: ImageSource | np.ndarray,
        *,
        score_threshold: float | None = None,
        max_objects: int = 20,
        single: bool = False,
    ) -> list[DetectedBox]:
        """The products in ``image``, best first: boxes above the score threshold (the detector's
        own, chosen on val, unless given), after class-agnostic NMS and nested-box suppression.
        ``single``: only the one product a single-object photo is about (largest and most central)."""
        if max_objects < 1:
            raise SkulensError(f"max_objects must be at least 1, not {max_objects}")
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        if not 0.0 <= threshold <= 1.0:
            raise SkulensError(f"score threshold must be between 0 and 1, not {threshold}")
        photo = _photo(image)
        # Candidates under the threshold are dropped before NMS rather than after: greedy NMS never
        # lets a lower score remove a higher one, so the boxes are the same, and NMS has far less to do.
        floor = max(RAW_SCORE_FLOOR, float(np.nextafter(np.float32(threshold), np.float32(0))))  # keeps >= threshold
        boxes, scores = self.raw_boxes([photo], score_floor=floor)[0]
        boxes, scores = filter_boxes(boxes, scores, threshold)
        if single and len(boxes):
            best = most_central_largest(boxes, photo.width, photo.height)
            boxes, scores = boxes[best : best + 1], scores[best : best + 1]
        return [DetectedBox(tuple(float(v) for v in b), float(s)) for b, s in zip(boxes[:max_objects], scores)]


def _photo(image: ImageSource | np.ndarray) -> Image.Image:
    """A photo, or an (H, W, 3) uint8 RGB array (a composite), as an upright RGB image."""
    return load_image(Image.fromarray(image) if isinstance(image, np.ndarray) else image)


def padded_batch(images: list[np.ndarray]) -> np.ndarray:
    """(H, W, 3) normalised images -> one NCHW batch, zero-padded at the bottom and right to the
    largest height and width rounded up to a multiple of 32 (as torchvision batches them)."""
    height = -(-max(x.shape[0] for x in images) // SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    width = -(-max(x.shape[1] for x in images) // SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    batch = np.zeros((len(images), 3, height, width), np.float32)
    for i, x in enumerate(images):
        batch[i, :, : x.shape[0], : x.shape[1]] = x.transpose(2, 0, 1)
    return batch


def filter_boxes(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Score threshold, class-agnostic NMS, then nested-box suppression; best score first."""
    keep = scores >= threshold
    boxes, scores = boxes[keep], scores[keep]
    if not len(boxes):
        return boxes.reshape(0, 4), scores
    order = nms(boxes, scores, NMS_IOU)
    boxes, scores = boxes[order], scores[order]
    keep = suppress_nested(boxes, scores)
    return boxes[keep], scores[keep]


def box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def intersection_areas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """inter[i, j]: the area box a[i] (x1 y1 x2 y2) shares with box b[j]; IoU and nesting both start here."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def _inside_share(boxes: np.ndarray) -> np.ndarray:
    """share[i, j]: the share of box i's area that lies inside box j."""
    return intersection_areas(boxes, boxes) / np.maximum(box_areas(boxes)[:, None], 1e-6)


def suppress_nested(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices to keep. NMS keeps a box nested in a bigger one (IoU is small when sizes differ), and
    the two failures PP-ShiTu's users report come from there:

    - a box around a group of products (or the whole photo) holding two or more separate boxes is
      dropped, so it cannot knock out the real ones;
    - a box holding exactly one smaller box is the same product seen whole and in part: the part is
      dropped, unless it scores more than twice as high as the whole (then the whole goes).
    """
    n = len(boxes)
    inside = _inside_share(boxes) >= NESTED_SHARE
    np.fill_diagonal(inside, False)
    area = box_areas(boxes)
    drop = np.zeros(n, bool)
    for j in np.argsort(-area):  # biggest first
        held = [i for i in range(n) if inside[i, j] and area[i] < area[j] and not drop[i]]
        if len(held) >= 2:
            drop[j] = True
        elif len(held) == 1:
            part = held[0]
            drop[j if scores[part] > 2 * scores[j] else part] = True
    return np.flatnonzero(~drop)


def most_central_largest(boxes: np.ndarray, width: int, height: int) -> int:
    """The index of the box a single-product photo is about: the largest share of the photo, weighed
    down by its centre's distance from the photo's centre (1 at the centre, 0 at a corner)."""
    area = box_areas(boxes) / max(1.0, width * height)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
    distance = np.hypot(cx, cy) / max(1e-6, np.hypot(width / 2, height / 2))
    return int(np.argmax(area * (1.0 - distance)))
