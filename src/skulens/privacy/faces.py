"""Face pixelation with the Haar cascades that ship inside opencv-python-headless (no model download).

Haar cascades find frontal and profile faces of a reasonable size; they miss some (small, turned,
occluded) and sometimes flag a face-like pattern. A false alarm only blurs a patch of a product
photo, so the detector is tuned towards finding more.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image

from skulens.errors import SkulensError

CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml")
# Faces are searched on a copy at most this big, with a coarse scale step: a few tenths of a second
# per photo on one core instead of seconds, and a face too small to find there is barely recognisable.
DETECT_SIDE = 800
SCALE_STEP = 1.15
MARGIN = 0.25  # hair, ears and chin around the detected box
CELLS = 6  # a face becomes at most 6x6 flat blocks: unrecognisable, and not reversible

# CascadeClassifier objects are not documented as thread-safe: one set per thread.
_local = threading.local()


def _cascades():
    if getattr(_local, "cascades", None) is None:
        try:
            import cv2
        except ImportError:
            raise SkulensError("--blur-faces needs OpenCV: pip install opencv-python-headless") from None
        folder = Path(cv2.data.haarcascades)
        loaded = [cv2.CascadeClassifier(str(folder / name)) for name in CASCADES]
        if any(c.empty() for c in loaded):
            raise SkulensError(
                f"--blur-faces: OpenCV's face cascades are missing from {folder} "
                "(opencv-python-headless 4.x ships them)"
            )
        _local.cascades = loaded
    return _local.cascades


def check_available() -> None:
    """Raise SkulensError now (at server start) rather than on the first upload."""
    _cascades()


def detect_faces(image: Image.Image) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x, y, w, h)`` in ``image`` pixels."""
    import cv2

    gray = np.asarray(image.convert("L"))
    scale = min(1.0, DETECT_SIDE / max(gray.shape))
    if scale < 1.0:
        gray = cv2.resize(
            gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
    gray = cv2.equalizeHist(gray)
    width = gray.shape[1]
    min_side = max(20, min(gray.shape) // 40)
    boxes = []
    frontal, profile = _cascades()
    for cascade, flip in ((frontal, False), (profile, False), (profile, True)):
        source = cv2.flip(gray, 1) if flip else gray  # the profile cascade only knows faces turned one way
        found = cascade.detectMultiScale(source, scaleFactor=SCALE_STEP, minNeighbors=4, minSize=(min_side, min_side))
        for x, y, w, h in found:
            if flip:
                x = width - x - w
            boxes.append(tuple(int(round(v / scale)) for v in (x, y, w, h)))
    return boxes


def blur_faces(image: Image.Image) -> tuple[Image.Image, int]:
    """A copy of ``image`` with every detected face pixelated, and how many boxes were found."""
    boxes = detect_faces(image)
    if not boxes:
        return image, 0
    out = image.convert("RGB").copy()
    for x, y, w, h in boxes:
        dx, dy = int(w * MARGIN), int(h * MARGIN)
        left, top = max(0, x - dx), max(0, y - dy)
        right, bottom = min(out.width, x + w + dx), min(out.height, y + h + dy)
        if right - left < 2 or bottom - top < 2:
            continue
        region = out.crop((left, top, right, bottom))
        cell = max(1, max(region.size) // CELLS)
        small = region.resize((max(1, region.width // cell), max(1, region.height // cell)), Image.BOX)
        out.paste(small.resize(region.size, Image.NEAREST), (left, top))
    return out, len(boxes)
