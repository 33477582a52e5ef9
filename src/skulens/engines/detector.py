"""``Detector``: a trained product detector run on a photo -> boxes in the photo's own pixels.

Why in ``engines``: it is an engine for a second kind of model (load verified weights, run them,
give plain outputs), and every layer that needs it sits above this one: ``evaluation`` scores it,
``training`` reports its validation figures while it learns, ``recognition`` / ``serving`` will crop
each found product for the recognizer. In ``recognition`` the first two could not import it.

A detector folder holds ``detector.safetensors`` (its sha256 in ``checksums.json``, checked before
loading, as for run folders) and ``detector.json``: the architecture (models.detector.DetectorSpec),
the input size, the normalisation, the score threshold chosen on val, the composition settings it
was trained with and its validation figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skulens.data.images import ImageSource, load_image
from skulens.errors import CheckpointError, SkulensError
from skulens.files import write_json_atomic
from skulens.models.detector import MEAN, STD, DetectorSpec, create_detector
from skulens.runs.folder import save_tensors_atomic, verify_checksum

DETECTOR_CONFIG = "detector.json"
DETECTOR_WEIGHTS = "detector.safetensors"
FORMAT = "skulens-detector/1"
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


def save_detector(out_dir: str | Path, model: torch.nn.Module, spec: DetectorSpec, info: dict) -> Path:
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


def _read_record(folder: Path) -> dict:
    path = folder / DETECTOR_CONFIG
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: detector folder not found")
    if not path.is_file() or not (folder / DETECTOR_WEIGHTS).is_file():
        raise CheckpointError(f"{folder}: not a detector folder (needs {DETECTOR_CONFIG} and {DETECTOR_WEIGHTS})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} record")
    return record


class Detector:
    """A trained class-agnostic product detector. ``Detector.load(folder).detect(photo)``."""

    def __init__(self, model: torch.nn.Module, spec: DetectorSpec, score_threshold: float, record: dict | None = None):
        self.model = model.eval()
        self.model.score_thresh = RAW_SCORE_FLOOR
        self.model.nms_thresh = NMS_IOU
        self.spec = spec
        self.score_threshold = float(score_threshold)
        self.record = record or {}

    @classmethod
    def load(cls, folder: str | Path) -> Detector:
        from safetensors.torch import load_file

        folder = Path(folder)
        record = _read_record(folder)
        spec = DetectorSpec.from_dict(record.get("architecture", {}))
        model = create_detector(spec, pretrained=False)
        verify_checksum(folder / DETECTOR_WEIGHTS)
        try:
            model.load_state_dict(load_file(str(folder / DETECTOR_WEIGHTS)))
        except (RuntimeError, OSError) as exc:
            raise CheckpointError(f"{folder}: weights do not fit the recorded architecture ({exc})") from None
        return cls(model, spec, record.get("score_threshold", 0.3), record)

    def _resized(self, image: Image.Image) -> tuple[torch.Tensor, float, float]:
        """The photo with its longer side at the input size (a huge photo never reaches the model
        whole), as a 0-1 tensor, and the factors back to the photo's pixels."""
        w, h = image.size
        scale = self.spec.input_size / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = image.resize(size, Image.BILINEAR, reducing_gap=3.0) if size != (w, h) else image
        tensor = torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return tensor, w / size[0], h / size[1]

    @torch.inference_mode()
    def raw_boxes(self, images: list[ImageSource]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every candidate above RAW_SCORE_FLOOR after the model's NMS: (boxes (N, 4), scores (N,))
        per image, in each photo's pixels. Arrays (H, W, 3) uint8 are taken as RGB photos."""
        photos = [load_image(Image.fromarray(i) if isinstance(i, np.ndarray) else i) for i in images]
        prepared = [self._resized(p) for p in photos]
        outputs = self.model([t for t, _, _ in prepared])
        results = []
        for photo, (_, sx, sy), out in zip(photos, prepared, outputs):
            boxes = out["boxes"].numpy() * np.array([sx, sy, sx, sy], np.float32)
            boxes = np.clip(boxes, 0, [photo.width, photo.height, photo.width, photo.height])
            results.append((boxes.astype(np.float32), out["scores"].numpy().astype(np.float32)))
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
        photo = load_image(Image.fromarray(image) if isinstance(image, np.ndarray) else image)
        boxes, scores = self.raw_boxes([photo])[0]
        boxes, scores = filter_boxes(boxes, scores, threshold)
        if single and len(boxes):
            best = most_central_largest(boxes, photo.width, photo.height)
            boxes, scores = boxes[best : best + 1], scores[best : best + 1]
        return [DetectedBox(tuple(float(v) for v in b), float(s)) for b, s in zip(boxes[:max_objects], scores)]


def filter_boxes(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Score threshold, class-agnostic NMS, then nested-box suppression; best score first."""
    from torchvision.ops import nms

    keep = scores >= threshold
    boxes, scores = boxes[keep], scores[keep]
    if not len(boxes):
        return boxes.reshape(0, 4), scores
    order = nms(torch.from_numpy(boxes), torch.from_numpy(scores), NMS_IOU).numpy()
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
