"""FCOS head outputs -> boxes, in NumPy: the one decoding path of the product detector.

Both detector engines (PyTorch and ONNX Runtime) stop at the head's raw outputs and decode here, so
their boxes differ only by what the networks compute. Why our own code rather than torchvision's
``FCOS.postprocess_detections``: the ONNX engine never imports torch (a one-photo command starts in
a fraction of the time), and exporting torchvision's postprocessing into the graph (TopK, NonZero,
NMS ops) would keep it out of the INT8 quantizer's reach and make the graph's shapes data-dependent.
The steps are torchvision's, one by one (tests/test_detector_export.py compares the two):

- one location per feature-map cell, its "anchor" a stride-sized square centred on the cell's corner
  (torchvision's AnchorGenerator with sizes equal to the strides, ratio 1);
- score = sqrt(sigmoid(class logit) * sigmoid(centerness)); candidates above the floor, at most
  ``top_k`` per level;
- box = anchor centre -/+ regression * anchor side (BoxLinearCoder, normalize_by_size), clipped to
  the resized photo;
- greedy NMS over all levels (one class), at most ``max_detections``.
"""

from __future__ import annotations

import math

import numpy as np

# Padded inputs are multiples of this (torchvision's GeneralizedRCNNTransform size_divisible).
SIZE_DIVISIBLE = 32
LEVEL_STRIDES = (8, 16, 32, 64)  # the FPN's levels: backbone strides 8, 16, 32 and a max-pooled 64


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature-map sizes of each level for a padded input: stride-2 steps halve a multiple of 32
    exactly; the extra level is a kernel-1 stride-2 max pool, so it rounds up."""
    shapes = [(height // s, width // s) for s in LEVEL_STRIDES[:3]]
    h, w = shapes[-1]
    return [*shapes, (math.ceil(h / 2), math.ceil(w / 2))]


def anchor_boxes(height: int, width: int) -> np.ndarray:
    """(L, 4) x1 y1 x2 y2 of every location, level by level, row-major: as torchvision orders the
    head's outputs. The stride of a level is the input size // its grid (torchvision's rule: 56, not
    64, for the last level of a 224-px input)."""
    rows = []
    for (gh, gw), size in zip(level_shapes(height, width), LEVEL_STRIDES):
        sy, sx = height // gh, width // gw
        ys, xs = np.meshgrid(np.arange(gh) * sy, np.arange(gw) * sx, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        half = np.float32(round(size / 2))
        rows.append(np.concatenate([centres - half, centres + half], axis=1))
    return np.concatenate(rows)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression (torchvision.ops.nms's rule: drop a box whose IoU with a
    better-scoring kept box is above the threshold); indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode(
    cls_logits: np.ndarray,
    regression: np.ndarray,
    centerness: np.ndarray,
    padded_hw: tuple[int, int],
    image_hw: tuple[int, int],
    *,
    score_floor: float,
    nms_iou: float,
    top_k: int = 1000,
    max_detections: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """One image's head outputs ((L, 1), (L, 4), (L, 1)) -> (boxes (N, 4), scores (N,)) in the pixels
    of the resized photo (``image_hw``, before padding to ``padded_hw``)."""
    anchors = anchor_boxes(*padded_hw)
    if len(anchors) != len(cls_logits):
        raise ValueError(f"{len(cls_logits)} head outputs for {len(anchors)} locations of a {padded_hw} input")
    scores = np.sqrt(_sigmoid(cls_logits[:, 0].astype(np.float32)) * _sigmoid(centerness[:, 0].astype(np.float32)))
    picked = []
    start = 0
    for gh, gw in level_shapes(*padded_hw):
        level = np.arange(start, start + gh * gw)
        level = level[scores[level] > score_floor]
        picked.append(level[np.argsort(-scores[level], kind="stable")[:top_k]])
        start += gh * gw
    idx = np.concatenate(picked)
    boxes = _decode_boxes(regression[idx].astype(np.float32), anchors[idx])
    h, w = image_hw
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    keep = nms(boxes, scores[idx], nms_iou)[:max_detections]
    return boxes[keep], scores[idx][keep].astype(np.float32)


def _decode_boxes(regression: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    centre_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centre_y = (anchors[:, 1] + anchors[:, 3]) / 2
    side = np.stack([anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]] * 2, axis=1)
    d = regression * side
    return np.stack([centre_x - d[:, 0], centre_y - d[:, 1], centre_x + d[:, 2], centre_y + d[:, 3]], axis=1)
