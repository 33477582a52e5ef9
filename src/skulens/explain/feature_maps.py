"""What the first layers see: the feature maps of a photo, one small picture per channel.

Early layers respond to edges, colours and textures; looking at them for a product photo shows
what the later layers have to work with.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from skulens.errors import SkulensError
from skulens.explain.gradcam import _as_batch, _EvalMode, colorize, load_explainable


def _seedcnn_maps(model, x: torch.Tensor, layers: int) -> list[tuple[str, torch.Tensor]]:
    maps, a = [], x
    for i, conv in enumerate((model.conv1, model.conv2, model.conv3)[:layers]):
        if i:
            a = model.pool(a)
        a = torch.relu(conv(a))
        maps.append((f"conv{i + 1} + ReLU", a))
    return maps


def _stage_name(model, i: int) -> str:
    try:
        return f"stage {i + 1} ({model.feature_info[i]['module']})"
    except (AttributeError, IndexError, KeyError, TypeError):
        return f"stage {i + 1}"


def _hooked_conv_maps(model, x: torch.Tensor, layers: int) -> list[tuple[str, torch.Tensor]]:
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)][:layers]
    if not convs:
        raise SkulensError(f"{type(model).__name__} has no convolution layers to show")
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: seen.setdefault(name, out)) for name, m in convs]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return [(name, seen[name]) for name, _ in convs if name in seen]


@torch.no_grad()
def feature_maps(model: nn.Module, input_tensor: torch.Tensor, layers: int = 2) -> list[tuple[str, np.ndarray]]:
    """The activations of the first ``layers`` stages for one preprocessed image: ``[(name, (C, h, w))]``.

    seedcnn: its convolutions after ReLU (up to 3). timm models: the first feature stages
    (``forward_intermediates``), or else the outputs of the first convolution layers.
    """
    from skulens.models.seedcnn import SeedCNN

    if layers < 1:
        raise SkulensError("show at least one layer of feature maps")
    x = _as_batch(input_tensor)
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    with _EvalMode(model):
        if isinstance(model, SeedCNN):
            maps = _seedcnn_maps(model, x, layers)
        else:
            maps = None
            if callable(getattr(model, "forward_intermediates", None)):
                try:
                    outs = model.forward_intermediates(
                        x, indices=list(range(layers)), intermediates_only=True, stop_early=True
                    )
                    maps = [(_stage_name(model, i), t) for i, t in enumerate(outs)]
                except (TypeError, ValueError, AssertionError, RuntimeError, IndexError):
                    maps = None  # not every timm model takes a list of stage indices
            if not maps:
                maps = _hooked_conv_maps(model, x, layers)
    return [(name, t[0].float().cpu().numpy()) for name, t in maps if t.ndim == 4]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the small bitmap font
        return ImageFont.load_default()


def feature_map_grid(
    maps: list[tuple[str, np.ndarray]],
    input_image: Image.Image | None = None,
    *,
    max_channels: int = 16,
    columns: int = 8,
    tile: int = 72,
) -> Image.Image:
    """One block per layer, each showing its ``max_channels`` most active channels (each scaled to
    its own range, viridis colours), under the model's input when ``input_image`` is given."""
    if not maps:
        raise SkulensError("no feature maps to draw")
    font, pad, caption = _font(12), 6, 18
    blocks: list[tuple[str, list[tuple[str, Image.Image]]]] = []
    for name, fmap in maps:
        c, h, w = fmap.shape
        order = np.argsort(-fmap.reshape(c, -1).mean(axis=1), kind="stable")[:max_channels]
        tiles = []
        for ch in order:
            m = fmap[ch]
            lo, hi = float(m.min()), float(m.max())
            norm = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
            th = max(1, round(tile * h / w))
            # Blocky when enlarged (one block per activation), averaged when shrunk (no aliasing).
            resample = Image.NEAREST if tile >= w else Image.BOX
            tiles.append((f"#{ch}", Image.fromarray(colorize(norm, "viridis")).resize((tile, th), resample)))
        shown = f"the {len(order)} most active" if len(order) < c else "all"
        blocks.append((f"{name}: {c} channels of {h}x{w}, {shown} shown", tiles))
    width = pad + columns * (tile + pad)
    height = pad
    if input_image is not None:
        input_image = input_image.convert("RGB").resize((tile * 2, tile * 2), Image.BILINEAR)
        height += caption + input_image.height + pad
    for _, tiles in blocks:
        rows = -(-len(tiles) // columns)
        height += caption + rows * (tiles[0][1].height + caption) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    if input_image is not None:
        draw.text((pad, y), "model input", fill="black", font=font)
        sheet.paste(input_image, (pad, y + caption))
        y += caption + input_image.height + pad
    for title, tiles in blocks:
        draw.text((pad, y), title, fill="black", font=font)
        y += caption
        th = tiles[0][1].height
        for i, (label, img) in enumerate(tiles):
            row, col = divmod(i, columns)
            x0, y0 = pad + col * (tile + pad), y + row * (th + caption)
            sheet.paste(img, (x0, y0))
            draw.text((x0, y0 + th + 2), label, fill="dimgray", font=font)
        y += -(-len(tiles) // columns) * (th + caption) + pad
    return sheet


def model_input_image(x: torch.Tensor, mean: list[float], std: list[float]) -> Image.Image:
    """Undo the normalisation: the centre crop exactly as the model saw it."""
    arr = x.detach().float().cpu().numpy()
    arr = arr * np.asarray(std, dtype=np.float32).reshape(-1, 1, 1) + np.asarray(mean, dtype=np.float32).reshape(
        -1, 1, 1
    )
    arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")


def feature_map_image(source, image, *, layers: int = 2, max_channels: int = 16, device: str = "cpu") -> Image.Image:
    """A sheet of the first layers' feature maps for a photo, through a run folder or a Recognizer."""
    from skulens.data.transforms import image_to_input

    model, config = load_explainable(source, device)
    pre = config.preprocessing
    x = image_to_input(image, pre)
    return feature_map_grid(
        feature_maps(model, x, layers), model_input_image(x, pre.mean, pre.std), max_channels=max_channels
    )
