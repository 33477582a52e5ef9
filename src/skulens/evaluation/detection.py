"""Detector figures on composites with known boxes: mAP@0.5 (pycocotools, the COCO reference
implementation), the "found" rate (share of true boxes matched at IoU >= 0.5 by a box above the
score threshold) and false boxes per image; and the choice of the score threshold on val."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from skulens.data.composition import Composite
from skulens.engines.detector import Detector, box_areas, filter_boxes, intersection_areas
from skulens.errors import SkulensError

MATCH_IOU = 0.5
RawBoxes = list[tuple[np.ndarray, np.ndarray]]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), x1 y1 x2 y2."""
    inter = intersection_areas(a, b)
    return inter / np.maximum(box_areas(a)[:, None] + box_areas(b)[None, :] - inter, 1e-6)


def match_boxes(predicted: np.ndarray, truth: np.ndarray, iou: float = MATCH_IOU) -> np.ndarray:
    """For each true box, the index of the prediction matched to it one-to-one (predictions taken in
    their order, best score first, each to its best free true box at IoU >= ``iou``), or -1."""
    matched = np.full(len(truth), -1)
    if not len(predicted) or not len(truth):
        return matched
    for p, row in enumerate(box_iou(predicted, truth)):
        row = np.where(matched >= 0, -1.0, row)
        best = int(np.argmax(row))
        if row[best] >= iou:
            matched[best] = p
    return matched


def match_count(predicted: np.ndarray, truth: np.ndarray, iou: float = MATCH_IOU) -> int:
    """True boxes matched one-to-one by predictions (taken best score first) at IoU >= ``iou``."""
    return int((match_boxes(predicted, truth, iou) >= 0).sum())


def found_and_false(raw: RawBoxes, composites: list[Composite], threshold: float) -> tuple[float, float]:
    """(found rate, false boxes per image) of the detector's final boxes at ``threshold``."""
    found = false = total = 0
    for (boxes, scores), comp in zip(raw, composites):
        kept, _ = filter_boxes(boxes, scores, threshold)
        matched = match_count(kept, comp.boxes)
        found += matched
        false += len(kept) - matched
        total += len(comp.boxes)
    return found / max(1, total), false / max(1, len(composites))


def map50(raw: RawBoxes, composites: list[Composite]) -> float:
    """COCO average precision at IoU 0.5 over every candidate box (pycocotools)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, detections = [], [], []
    for i, ((boxes, scores), comp) in enumerate(zip(raw, composites)):
        h, w = comp.image.shape[:2]
        images.append({"id": i, "width": w, "height": h})
        for x1, y1, x2, y2 in comp.boxes.tolist():
            area = (x2 - x1) * (y2 - y1)
            box = [x1, y1, x2 - x1, y2 - y1]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": 1, "bbox": box, "area": area, "iscrowd": 0}
            )
        for (x1, y1, x2, y2), s in zip(boxes.tolist(), scores.tolist()):
            detections.append([i, x1, y1, x2 - x1, y2 - y1, s, 1])
    if not annotations or not detections:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "product"}]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(np.asarray(detections, np.float64)), "bbox")
        evaluation.params.iouThrs = np.array([MATCH_IOU])
        evaluation.params.areaRng = [[0, 1e10]]
        evaluation.params.areaRngLbl = ["all"]
        evaluation.params.maxDets = [100]
        evaluation.evaluate()
        evaluation.accumulate()
    # precision[iou, recall, class, area, max_dets]: the 101-point interpolated curve COCO averages
    # (summarize() would assume the default 3 max_dets and 4 area ranges).
    precision = evaluation.eval["precision"][0, :, 0, 0, 0]
    precision = precision[precision > -1]
    return float(precision.mean()) if precision.size else 0.0


def choose_score_threshold(raw: RawBoxes, composites: list[Composite], max_false_per_image: float = 0.2) -> float:
    """The lowest score threshold (so the most products found) whose false boxes per image stay at
    most ``max_false_per_image``; when none does, the one with the fewest false boxes. Choose on val."""
    best, best_false = 0.95, float("inf")
    for threshold in np.arange(0.05, 0.951, 0.025):
        _, false = found_and_false(raw, composites, float(threshold))
        if false <= max_false_per_image:
            return round(float(threshold), 3)
        if false < best_false:
            best, best_false = float(threshold), false
    return round(best, 3)


def run_detector(
    detector: Detector, composites: list[Composite], *, batch_size: int = 8, progress: bool = True
) -> RawBoxes:
    raw: RawBoxes = []
    batches = range(0, len(composites), batch_size)
    for start in tqdm(batches, desc="detecting", unit="batch", disable=not progress, leave=False):
        raw.extend(detector.raw_boxes([c.image for c in composites[start : start + batch_size]]))
    return raw


def detection_figures(raw: RawBoxes, composites: list[Composite], threshold: float) -> dict:
    found, false = found_and_false(raw, composites, threshold)
    return {
        "images": len(composites),
        "true_boxes": int(sum(len(c.boxes) for c in composites)),
        "map50": round(map50(raw, composites), 4),
        "found_rate": round(found, 4),
        "false_per_image": round(false, 4),
        "score_threshold": threshold,
    }


def evaluate_detector(
    detector: str | Path | Detector,
    composites: list[Composite],
    *,
    score_threshold: float | None = None,
    progress: bool = True,
) -> dict:
    """mAP@0.5, found rate, false boxes per image and seconds per image of a detector (a folder or a
    loaded :class:`Detector`) on ``composites``, at its own score threshold unless one is given."""
    if not composites:
        raise SkulensError("no composites to evaluate the detector on")
    if not isinstance(detector, Detector):
        detector = Detector.load(detector)
    threshold = detector.score_threshold if score_threshold is None else float(score_threshold)
    start = time.perf_counter()
    raw = run_detector(detector, composites, progress=progress)
    seconds = (time.perf_counter() - start) / len(composites)
    return {**detection_figures(raw, composites, threshold), "seconds_per_image": round(seconds, 4)}
