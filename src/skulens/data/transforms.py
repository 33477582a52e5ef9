"""Preprocessing (one function for evaluation, prediction and serving) and training augmentation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from skulens.data.images import ImageSource, load_image
from skulens.errors import SkulensError

if TYPE_CHECKING:  # torch and torchvision are imported by the functions that use them: predicting
    import torch  # with an ONNX export never imports them (issue 22, fast start-up)
    from torchvision.transforms import v2


@dataclass
class Preprocessing:
    """How a model wants its input; stored in the run's JSON so every consumer agrees."""

    img_size: int
    mean: list[float]
    std: list[float]
    in_chans: int = 3
    # How a non-square photo becomes square: "crop" (shorter side to size, centre crop) or "pad"
    # (letterboxed with its own border colour, so the whole product stays in view: catalog photos
    # on a plain background, where a crop cuts the neckline or the hem that tells a kurta from a top).
    resize: str = "crop"

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise SkulensError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {self.resize!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


RESIZE_MODES = ("crop", "pad")


def border_colour(img: Image.Image) -> tuple[int, ...]:
    """Median colour of the photo's outer frame of pixels: the background to pad with."""
    w, h = img.size
    # only the four one-pixel edges are read, not the whole photo
    edges = [img.crop(box) for box in ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h))]
    frame = np.concatenate([np.asarray(e).reshape(e.width * e.height, -1) for e in edges], axis=0)
    return tuple(int(v) for v in np.median(frame, axis=0))


def pad_to_square(img: Image.Image) -> Image.Image:
    """The photo centred on a square of its border colour (nothing cropped, nothing stretched)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    fill = border_colour(img)
    canvas = Image.new(img.mode, (side, side), fill[0] if img.mode == "L" else fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def resize_shorter_side(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    scale = side / min(w, h)
    if abs(scale - 1.0) < 1e-6:
        return img
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=None)


def to_model_array(img: Image.Image, pre: Preprocessing, img_size: int | None = None) -> np.ndarray:
    """The one preprocessing path: RGB PIL image -> normalised CHW float32 array (NumPy only).

    Shorter side resized to ``img_size`` then a centre crop, so nothing is stretched; with
    ``pre.resize == "pad"`` the photo is first padded to a square, so nothing is cropped either.
    """
    size = img_size or pre.img_size
    if pre.in_chans == 1:
        img = img.convert("L")
    if pre.resize == "pad":
        img = pad_to_square(img)
    img = resize_shorter_side(img, size)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = (np.asarray(img, dtype=np.float32) / np.float32(255.0)).reshape(size, size, -1).transpose(2, 0, 1)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)


def to_model_input(img: Image.Image, pre: Preprocessing, img_size: int | None = None) -> torch.Tensor:
    """:func:`to_model_array` as a torch tensor (the same values, bit for bit)."""
    import torch

    return torch.from_numpy(to_model_array(img, pre, img_size))


def draft_size(pre: Preprocessing, img_size: int | None = None) -> int:
    """The JPEG draft size for a model input of this size: decoding at a reduced DCT scale, never
    below the input size on the shorter side (the rule every decode for a model follows)."""
    return img_size or pre.img_size


def image_to_array(source: ImageSource, pre: Preprocessing, img_size: int | None = None, **limits) -> np.ndarray:
    """The one image path: a file, bytes, a file object or a PIL image -> decoded safely
    (:func:`~skulens.data.images.load_image`, ``limits``: max_pixels / max_bytes) at the draft size
    -> normalised CHW float32 model input. Raises ImageError for an unusable image."""
    size = img_size or pre.img_size
    return to_model_array(load_image(source, draft_size=draft_size(pre, size), **limits), pre, size)


def image_to_input(source: ImageSource, pre: Preprocessing, img_size: int | None = None, **limits) -> torch.Tensor:
    """:func:`image_to_array` as a torch tensor (what the PyTorch engine, training and Grad-CAM take)."""
    import torch

    return torch.from_numpy(image_to_array(source, pre, img_size, **limits))


@dataclass
class AugmentConfig:
    """Augmentation: random resized crop, flip, colour jitter, and the shear/zoom of the design notes."""

    scale_min: float = 0.25
    hflip: float = 0.5
    color_jitter: float = 0.3  # brightness, contrast and saturation
    # Hue shift (fraction of the colour wheel); None: min(0.05, color_jitter / 6). Set 0 where colour
    # tells classes apart (oranges from grapefruits, a "Navy Blue" label from a "Blue" one).
    hue_jitter: float | None = None
    shear_degrees: float = 11.0  # Keras shear_range=0.2 rad
    zoom: float = 0.2  # Keras zoom_range=0.2
    affine_prob: float = 0.5

    def check(self) -> None:
        """One clear line for settings the transforms would reject with a traceback."""
        if not 0 < self.scale_min <= 1:
            raise SkulensError(f"scale-min must be in (0, 1], not {self.scale_min}")
        if not 0 <= self.color_jitter < 1:
            raise SkulensError(f"color-jitter must be in [0, 1), not {self.color_jitter}")
        if self.hue_jitter is not None and not 0 <= self.hue_jitter <= 0.5:
            raise SkulensError(f"hue-jitter must be in [0, 0.5] (a share of the colour wheel), not {self.hue_jitter}")


def build_train_transform(pre: Preprocessing, aug: AugmentConfig) -> v2.Compose:
    """Augmentation on a cached uint8 CHW tensor -> normalised float tensor."""
    import torch
    from torchvision.transforms import v2

    steps: list = [v2.RandomResizedCrop(pre.img_size, scale=(aug.scale_min, 1.0), antialias=True)]
    if aug.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.affine_prob > 0 and (aug.shear_degrees > 0 or aug.zoom > 0):
        steps.append(
            v2.RandomApply(
                [v2.RandomAffine(degrees=0, shear=aug.shear_degrees, scale=(1 - aug.zoom, 1 + aug.zoom), fill=127)],
                p=aug.affine_prob,
            )
        )
    if aug.color_jitter > 0 and pre.in_chans == 3:
        j = aug.color_jitter
        hue = min(0.05, j / 6) if aug.hue_jitter is None else aug.hue_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=hue))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    return v2.Compose(steps)


def pil_to_uint8_tensor(img: Image.Image, in_chans: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    if in_chans == 1:
        img = img.convert("L")
    return F.pil_to_tensor(img)
