"""Grad-CAM (Selvaraju et al., 2017): which part of the photo made the model say what it said.

The model is split into ``features`` (up to and including its last convolutional stage) and
``head`` (everything after it). For a class c with score y_c and feature maps A_k:

    weight_k = mean over positions of d y_c / d A_k
    cam      = ReLU(sum_k weight_k * A_k), scaled so its maximum is 1

For a model that ends in global average pooling and one linear layer (EfficientNet), weight_k is
the classifier weight W[c, k] divided by the number of positions, so Grad-CAM equals the original
class activation map. The split is explicit rather than done with hooks so that the gradient is
taken with respect to exactly the tensor the head reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from skulens.errors import SkulensError

Features = Callable[[torch.Tensor], torch.Tensor]
DISPLAY_SIDE = 768  # longest side of the pictures made for people


@dataclass
class FeatureSplit:
    features: Features
    head: Callable[[torch.Tensor], torch.Tensor]
    layer: str  # what the feature map is, for messages and docs
    channels_last: bool = False  # the feature map is NHWC (e.g. timm's Swin)
    # Where feature cell i is centred in the input, in pixels: offset + stride * i. None: the
    # cells tile the input evenly ('same' padding), which plain bilinear resizing assumes.
    geometry: tuple[float, float] | None = None


def chain_geometry(layers: list[tuple[int, int, int]]) -> tuple[float, float]:
    """(offset, stride) of the cell centres after a chain of (kernel, stride, padding) windows.

    A window of size k at stride s and padding p centres output cell i on input position
    i * s - p + (k - 1) / 2; composing that through the chain gives offset + stride * i.
    """
    offset, stride = 0.0, 1.0
    for k, s, p in layers:
        offset += stride * ((k - 1) / 2 - p)
        stride *= s
    return offset, stride


def feature_split(model: nn.Module) -> FeatureSplit:
    """Split ``model`` at its last convolutional stage: seedcnn, timm EfficientNet and other timm CNNs."""
    from skulens.models.seedcnn import SeedCNN

    if isinstance(model, SeedCNN):
        # The last ReLU before the final pooling: 4x the positions of the pooled map, so a
        # sharper heat map, and the pooling stays in the head where its gradient belongs.
        def features(x: torch.Tensor) -> torch.Tensor:
            x = model.pool(torch.relu(model.conv1(x)))
            x = model.pool(torch.relu(model.conv2(x)))
            return torch.relu(model.conv3(x))

        # 'valid' convolutions shrink the map from the borders: e.g. its 6 cells on a 40 px input are
        # centred on pixels 8.5 ... 28.5, not spread over 0 ... 39.
        geometry = chain_geometry([(3, 1, 0), (2, 2, 0), (3, 1, 0), (2, 2, 0), (3, 1, 0)])
        return FeatureSplit(features, lambda a: model.forward_head(model.pool(a)), "conv3 + ReLU", geometry=geometry)
    if callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None)):
        # timm: forward_features ends with the last conv stage (EfficientNet: conv_head + bn2 + act).
        return FeatureSplit(model.forward_features, model.forward_head, "forward_features")
    raise SkulensError(
        f"cannot find the last convolutional stage of {type(model).__name__}: Grad-CAM supports seedcnn and timm models"
    )


def _feature_map(model: nn.Module, split: FeatureSplit, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    with torch.no_grad():
        a = split.features(x)
    if a.ndim != 4:
        raise SkulensError(
            f"{type(model).__name__} has no 2-D feature map to explain (its features are "
            f"{a.ndim}-D, e.g. a vision transformer); Grad-CAM needs a convolutional model"
        )
    channels = getattr(model, "num_features", None)
    nhwc = split.channels_last or (channels is not None and a.shape[1] != channels and a.shape[-1] == channels)
    return a, nhwc


def _as_batch(input_tensor: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(input_tensor)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise SkulensError(
            f"Grad-CAM explains one image: expected a (C, H, W) or (1, C, H, W) tensor, got {tuple(x.shape)}"
        )
    return x.float()


class _EvalMode:
    """Dropout and batch-norm statistics must behave as at prediction time; restore the caller's mode."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def gradcam_with_scores(
    model: nn.Module, input_tensor: torch.Tensor, class_index: int | None = None, *, upsample: bool = True
) -> tuple[np.ndarray, np.ndarray, int]:
    """Grad-CAM map, class probabilities and the explained class index, from one forward pass.

    ``upsample=False`` returns the map at the feature map's own resolution.
    """
    x = _as_batch(input_tensor)
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    split = feature_split(model)
    with _EvalMode(model):
        a, nhwc = _feature_map(model, split, x)
        # Only d score / d A is needed: the backbone ran without a graph, the head runs with one.
        a = a.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = split.head(a).float()
            if logits.ndim != 2 or logits.shape[0] != 1:
                raise SkulensError(f"unexpected output shape {tuple(logits.shape)} from {type(model).__name__}")
            n_classes = logits.shape[1]
            if class_index is None:
                class_index = int(logits[0].argmax())
            if not 0 <= class_index < n_classes:
                raise SkulensError(f"class index {class_index} is out of range: the model has {n_classes} classes")
            (grads,) = torch.autograd.grad(logits[0, class_index], a)
    acts = a.detach()
    if nhwc:
        acts, grads = acts.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * acts).sum(dim=1, keepdim=True)).float()
    if upsample:
        cam = _upsample(cam, x.shape[-2:], split.geometry)
    # Scaled to [0, 1] from its own minimum, as Grad-CAM is usually shown: evidence spread evenly
    # over the whole frame (a plain background) is no evidence for where the object is. A flat
    # map, e.g. no positive evidence anywhere, is all zeros rather than a divide by zero.
    low, high = float(cam.min()), float(cam.max())
    cam = (cam - low) / (high - low) if high - low > 1e-12 * max(1.0, abs(high)) else torch.zeros_like(cam)
    probs = logits.detach().softmax(-1)[0].cpu().numpy()
    return cam[0, 0].cpu().numpy().astype(np.float32), probs, class_index


def _upsample(cam: torch.Tensor, size, geometry: tuple[float, float] | None) -> torch.Tensor:
    if geometry is None or min(cam.shape[-2:]) < 2:
        return F.interpolate(cam, size=size, mode="bilinear", align_corners=False).clamp_min(0)
    offset, stride = geometry
    h, w = cam.shape[-2:]
    # Pixel u sits at feature coordinate (u - offset) / stride; grid_sample wants that in
    # [-1, 1] over the cell centres (align_corners=True). Beyond the outer cells: their value.
    gy = ((torch.arange(size[0], dtype=torch.float32) - offset) / stride) * 2 / (h - 1) - 1
    gx = ((torch.arange(size[1], dtype=torch.float32) - offset) / stride) * 2 / (w - 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None].to(cam.device)
    return F.grid_sample(cam, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp_min(0)


def gradcam(model: nn.Module, input_tensor: torch.Tensor, class_index: int | None = None) -> np.ndarray:
    """Grad-CAM heat map for one preprocessed image: an (H, W) float32 array in [0, 1] at the input's size.

    ``input_tensor``: (C, H, W) or (1, C, H, W), normalised as the model expects
    (:func:`skulens.data.transforms.to_model_input`). ``class_index``: the class to explain;
    ``None`` explains the model's top prediction.
    """
    return gradcam_with_scores(model, input_tensor, class_index)[0]


# --- From a run or a Recognizer to a picture -------------------------------------------------


def load_explainable(source, device: str = "cpu"):
    """``(model, config)`` from a run folder, a :class:`~skulens.recognition.recognizer.Recognizer`
    or an already loaded ``(model, config)`` pair.

    Explanations need gradients, so a Recognizer running ONNX Runtime is explained with the
    PyTorch weights of the same run folder.
    """
    from skulens.runs import RunFolder
    from skulens.runtime import resolve_device

    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], nn.Module):
        return source
    if isinstance(source, (str, Path)):
        return RunFolder(source).load_model(resolve_device(device))
    engine = getattr(source, "engine", None)
    if engine is not None and isinstance(getattr(engine, "model", None), nn.Module):
        return engine.model, engine.config
    if engine is not None and isinstance(getattr(engine, "path", None), Path):
        return RunFolder(engine.path.parent).load_model(resolve_device(device))
    raise SkulensError(f"cannot explain a {type(source).__name__}: pass a run folder or a Recognizer")


def resolve_class(config, class_index: int | str | None) -> int | None:
    """A class given as an index, a digit string or a label name -> its index."""
    if class_index is None or isinstance(class_index, (int, np.integer)):
        return None if class_index is None else int(class_index)
    if class_index in config.classes:
        return config.classes.index(class_index)
    if str(class_index).isdigit():
        return int(class_index)
    shown = ", ".join(config.classes[:8]) + (", ..." if len(config.classes) > 8 else "")
    raise SkulensError(f"unknown class {class_index!r}: the model's classes are {shown}")


def crop_box(size: tuple[int, int], img_size: int) -> tuple[float, float, float, float]:
    """Where the model's input square lies in the photo (shorter-side resize, then centre crop,
    as :func:`skulens.data.transforms.to_model_input` does)."""
    w, h = size
    scale = img_size / min(w, h)
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (rw - img_size) // 2, (rh - img_size) // 2
    return left / scale, top / scale, (left + img_size) / scale, (top + img_size) / scale


def colorize(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.clip(heat, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def overlay_heatmap(
    photo: Image.Image,
    heat: np.ndarray,
    img_size: int,
    *,
    alpha: float = 0.5,
    max_side: int | None = DISPLAY_SIDE,
    min_side: int = 256,
) -> Image.Image:
    """Blend ``heat`` (over the model's centre crop) onto ``photo``; what the model never saw is dimmed.

    The result is scaled to at most ``max_side`` and, for tiny photos, at least ``min_side`` pixels.
    """
    photo = photo.convert("RGB")
    box = crop_box(photo.size, img_size)
    factor = 1.0
    if max_side and max(photo.size) > max_side:
        factor = max_side / max(photo.size)
    elif min(photo.size) < min_side:
        factor = min_side / min(photo.size)
        if max_side:
            factor = min(factor, max_side / max(photo.size))
    if abs(factor - 1.0) > 1e-9:
        photo = photo.resize(
            (max(1, round(photo.width * factor)), max(1, round(photo.height * factor))), Image.BILINEAR
        )
        box = tuple(v * factor for v in box)
    left, top, right, bottom = (round(v) for v in box)
    right, bottom = min(max(right, left + 1), photo.width), min(max(bottom, top + 1), photo.height)
    base = np.asarray(photo, dtype=np.float32)
    out = base * 0.35 + 255 * 0.65 * 0.25  # dimmed, slightly washed out: outside the model's view
    heat_img = Image.fromarray(np.asarray(heat, dtype=np.float32)).resize((right - left, bottom - top), Image.BILINEAR)
    colours = colorize(np.asarray(heat_img)).astype(np.float32)
    out[top:bottom, left:right] = (1 - alpha) * base[top:bottom, left:right] + alpha * colours
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


@dataclass
class Explanation:
    """Why the model answered: the explained class, its probability and the Grad-CAM map."""

    class_index: int
    label: str
    probability: float
    predicted_index: int
    predicted_label: str
    predicted_probability: float
    heatmap: np.ndarray  # (S, S) in [0, 1] over the model's centre crop of the photo
    photo: Image.Image  # the decoded photo the model's input was made from
    img_size: int

    def overlay(self, alpha: float = 0.5, max_side: int | None = DISPLAY_SIDE) -> Image.Image:
        return overlay_heatmap(self.photo, self.heatmap, self.img_size, alpha=alpha, max_side=max_side)

    def to_dict(self) -> dict:
        return {
            "class_index": self.class_index,
            "label": self.label,
            "probability": self.probability,
            "predicted_index": self.predicted_index,
            "predicted_label": self.predicted_label,
            "predicted_probability": self.predicted_probability,
        }


def explain_image(source, image, class_index: int | str | None = None, *, device: str = "cpu") -> Explanation:
    """Grad-CAM for a photo (path, bytes, file object or PIL image) through a run or Recognizer.

    ``class_index``: an index or a label; ``None`` explains the top prediction.
    """
    from skulens.data.images import load_image
    from skulens.data.transforms import image_to_input, pad_to_square

    model, config = load_explainable(source, device)
    pre = config.preprocessing
    if not isinstance(image, (str, Path, bytes, Image.Image)):
        image = image.read()  # a file object: read once, decoded twice below
    # The model gets exactly the decode Recognizer.predict uses; the picture gets a sharper one.
    x = image_to_input(image, pre)
    photo = load_image(image, draft_size=DISPLAY_SIDE)
    if pre.resize == "pad":  # the model saw the padded square: the heat map lies over all of it
        photo = pad_to_square(photo)
    heat, probs, index = gradcam_with_scores(model, x, resolve_class(config, class_index))
    top = int(np.argmax(probs))
    return Explanation(
        class_index=index,
        label=config.classes[index],
        probability=float(probs[index]),
        predicted_index=top,
        predicted_label=config.classes[top],
        predicted_probability=float(probs[top]),
        heatmap=heat,
        photo=photo,
        img_size=pre.img_size,
    )


def gradcam_overlay(
    source,
    image,
    class_index: int | str | None = None,
    *,
    alpha: float = 0.5,
    max_side: int | None = DISPLAY_SIDE,
    device: str = "cpu",
) -> Image.Image:
    """The Grad-CAM heat map blended over the photo, as a PIL image (for the CLI and the web page)."""
    return explain_image(source, image, class_index, device=device).overlay(alpha=alpha, max_side=max_side)
