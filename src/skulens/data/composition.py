"""Multi-product scenes with known boxes, composed from what a shop already has: no one draws boxes.

Two kinds of piece are pasted onto a background:

- a labelled shopper photo, pasted whole: its box is the pasted rectangle;
- a catalog image on a plain background, cut out with OpenCV (:func:`cutout_mask`: the distance to
  the border colour, cleaned by morphology, optionally refined by GrabCut), scaled and slightly
  rotated: its box is the bounding box of its mask after the transform.

Backgrounds are plain colours, procedural textures (noise, stripes, gradients, blurred colour
fields) or, when given, crops of background photos that show no labelled product. Pieces land at
random positions; a placement is refused when it would hide more than ``max_overlap`` of any piece
(counted on the pixels each piece still shows), so every product stays recognisable.

Everything is drawn from ``numpy.random.default_rng([seed, index])``: composite ``index`` of a seed
is the same whatever was composed before it, in whatever process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from skulens.data.datasets import ImageDataset
from skulens.data.images import load_image
from skulens.errors import SkulensError

BACKGROUND_KINDS = ("plain", "noise", "stripes", "gradient", "blobs", "photo")
PIECE_KINDS = ("photo", "cutout")


@dataclass
class CompositionConfig:
    canvas_size: int = 320  # side of the square canvas, in pixels
    min_pieces: int = 2
    max_pieces: int = 4
    scale_min: float = 0.25  # a piece's longer side, as a share of the canvas side
    scale_max: float = 0.60
    max_overlap: float = 0.20  # the largest share of a piece's area that later pieces may cover
    max_rotation: float = 15.0  # degrees, cut-outs only (a rotated photo would show black corners)
    cutout_share: float = 0.3  # share of pieces cut out of catalog images, when the dataset has them
    split_pieces: str = "photo"  # how a split's own images are pasted: whole ("photo") or cut out ("cutout")
    backgrounds: list[str] = field(default_factory=lambda: ["plain", "noise", "stripes", "gradient", "blobs"])
    placement_tries: int = 40
    # Share of scenes that are one split photo alone, filling most of the canvas (its longer side
    # single_scale_min..1 of the canvas side): a shopper's close-up of one product is one box, so
    # the detector does not learn to answer it with pieces of a pile (issue 18).
    single_share: float = 0.0
    single_scale_min: float = 0.85

    def check(self) -> None:
        if not 1 <= self.min_pieces <= self.max_pieces:
            raise SkulensError(
                f"composition: need 1 <= min_pieces <= max_pieces, not {self.min_pieces}, {self.max_pieces}"
            )
        if not 0.02 <= self.scale_min <= self.scale_max <= 1.0:
            raise SkulensError(
                f"composition: need 0.02 <= scale_min <= scale_max <= 1, not {self.scale_min}, {self.scale_max}"
            )
        if not 0.0 <= self.max_overlap < 1.0 or not 0.0 <= self.cutout_share <= 1.0:
            raise SkulensError("composition: max_overlap must be in [0, 1) and cutout_share in [0, 1]")
        if not 0.0 <= self.single_share <= 1.0 or not 0.02 <= self.single_scale_min <= 1.0:
            raise SkulensError("composition: single_share must be in [0, 1] and single_scale_min in [0.02, 1]")
        if self.canvas_size < 32:
            raise SkulensError(f"composition: canvas_size must be at least 32, not {self.canvas_size}")
        if self.split_pieces not in PIECE_KINDS:
            raise SkulensError(f"composition: split_pieces must be one of {', '.join(PIECE_KINDS)}")
        unknown = sorted(set(self.backgrounds) - set(BACKGROUND_KINDS)) or (["(none)"] if not self.backgrounds else [])
        if unknown:
            raise SkulensError(f"composition: unknown background {unknown[0]}; use {', '.join(BACKGROUND_KINDS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CompositionConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SkulensError(f"composition: unknown setting {unknown[0]}; known: {', '.join(sorted(known))}")
        defaults = cls()
        for key, value in data.items():
            expected = type(getattr(defaults, key))
            number = expected is float and isinstance(value, int)
            if isinstance(value, bool) is not (expected is bool) or not (isinstance(value, expected) or number):
                raise SkulensError(f"composition: {key} must be {expected.__name__}, not {value!r}")
        config = cls(**data)
        config.check()
        return config


@dataclass
class Piece:
    """One product to paste: an RGB image, its label, and for a cut-out its foreground mask (uint8 0/255)."""

    image: Image.Image
    label: int
    mask: np.ndarray | None = None


@dataclass
class Composite:
    """A composed scene: ``image`` (H, W, 3) uint8, ``boxes`` (N, 4) float x1, y1, x2, y2 in canvas
    pixels (x2, y2 exclusive: a piece pasted at x with width w spans x .. x + w), one label per box."""

    image: np.ndarray
    boxes: np.ndarray
    labels: list[int]

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image, "RGB")


# --- cut-outs ------------------------------------------------------------------------------------


def cutout_mask(image: Image.Image, *, threshold: float = 28.0, grabcut: bool = False) -> np.ndarray:
    """The foreground of a catalog image on a plain background, uint8 0/255, same size as ``image``.

    A pixel is foreground when its colour is far from the border colour (median of the border, in
    Lab so the distance follows what the eye sees); closing joins the product's parts, opening drops
    specks, and holes are filled from the outside so a white label on a product stays product.
    ``grabcut`` refines the edges with cv2.grabCut seeded by that mask (slower; for hard backgrounds).
    """
    rgb = np.asarray(image.convert("RGB"))
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    distance = np.linalg.norm(lab - np.median(border, axis=0), axis=2)
    mask = (distance > threshold).astype(np.uint8) * 255
    side = max(3, (min(mask.shape) // 60) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, iterations=2)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = _fill_holes(mask)
    if grabcut and mask.any() and not mask.all():
        mask = _grabcut(rgb, mask)
    return mask


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    # Flood the background from a padded border: whatever it cannot reach is inside the product.
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8), (0, 0), 255)
    holes = cv2.bitwise_not(flood)[1:-1, 1:-1]
    return cv2.bitwise_or(mask, holes)


def _grabcut(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    eroded = cv2.erode(mask, np.ones((5, 5), np.uint8))
    dilated = cv2.dilate(mask, np.ones((9, 9), np.uint8))
    labels = np.where(dilated > 0, cv2.GC_PR_BGD, cv2.GC_BGD).astype(np.uint8)
    labels[mask > 0] = cv2.GC_PR_FGD
    labels[eroded > 0] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), labels, None, bgd, fgd, 3, cv2.GC_INIT_WITH_MASK)
    return np.where((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)


# --- backgrounds ---------------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def make_background(
    kind: str, size: int, rng: np.random.Generator, photos: list[Image.Image] | None = None
) -> np.ndarray:
    """A (size, size, 3) uint8 background of ``kind`` (one of BACKGROUND_KINDS)."""
    if kind == "photo" and photos:
        photo = photos[int(rng.integers(len(photos)))]
        return np.asarray(_random_square_crop(photo, size, rng))
    if kind == "noise":
        base = np.broadcast_to(_colour(rng), (size, size, 3))
        out = base + rng.normal(0, rng.uniform(8, 40), size=(size, size, 3))
    elif kind == "stripes":
        out = _stripes(size, rng)
    elif kind == "gradient":
        t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        out = _colour(rng) * (1 - t) + _colour(rng) * t
        out = np.broadcast_to(out, (size, size, 3))
        out = np.ascontiguousarray(out.transpose(1, 0, 2) if rng.random() < 0.5 else out)
    elif kind == "blobs":
        cells = int(rng.integers(2, 7))
        field_ = rng.integers(0, 256, size=(cells, cells, 3)).astype(np.uint8)
        out = cv2.resize(field_, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=size / (2 * cells))
    else:  # "plain", and "photo" with no photos given
        out = np.broadcast_to(_colour(rng), (size, size, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def _stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, size / 3)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period
    t = (np.sin(2 * np.pi * phase) > 0).astype(np.float32)[..., None]
    return _colour(rng) * (1 - t) + _colour(rng) * t


def _random_square_crop(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    side = min(photo.size)
    crop = int(side * rng.uniform(0.5, 1.0))
    x = int(rng.integers(0, photo.width - crop + 1))
    y = int(rng.integers(0, photo.height - crop + 1))
    return photo.crop((x, y, x + crop, y + crop)).resize((size, size), Image.BILINEAR)


# --- composing -----------------------------------------------------------------------------------


def _transform_piece(piece: Piece, longer_side: int, rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """The piece scaled so its longer side is ``longer_side`` (rotated, for a cut-out): RGB array
    and a 0/1 mask cropped to the mask's bounding box, so the pasted box is exactly the mask's."""
    w, h = piece.image.size
    scale = longer_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = np.asarray(piece.image.resize(size, Image.BILINEAR))
    if piece.mask is None:
        return rgb, np.ones(rgb.shape[:2], bool)
    mask = cv2.resize(piece.mask, size, interpolation=cv2.INTER_LINEAR)
    if rotation:
        rgb, mask = _rotate(rgb, mask, rotation)
    mask = mask >= 128
    if not mask.any():  # nothing stood out from the background: paste the whole image
        return rgb, np.ones(rgb.shape[:2], bool)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def _rotate(rgb: np.ndarray, mask: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
    matrix[0, 2] += new_w / 2 - w / 2
    matrix[1, 2] += new_h / 2 - h / 2
    rgb = cv2.warpAffine(rgb, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR)
    return rgb, mask


def _placement_ok(owner: np.ndarray, areas: list[int], x: int, y: int, mask: np.ndarray, limit: float) -> bool:
    """Would pasting ``mask`` at (x, y) leave every earlier piece with at most ``limit`` of it covered?"""
    h, w = mask.shape
    under = owner[y : y + h, x : x + w][mask]
    if not under.size or under.max() < 0:
        return True
    newly = np.bincount(under[under >= 0], minlength=len(areas))
    visible = np.bincount(owner[owner >= 0], minlength=len(areas))
    for i, area in enumerate(areas):
        if newly[i] and (area - visible[i] + newly[i]) > limit * area:
            return False
    return True


def compose(
    pieces: list[Piece],
    config: CompositionConfig,
    rng: np.random.Generator,
    background: np.ndarray | None = None,
    background_photos: list[Image.Image] | None = None,
) -> Composite:
    """Paste ``pieces`` in order onto a background; a piece with no room within the overlap limit
    after ``placement_tries`` tries is left out (its box would be wrong otherwise)."""
    size = config.canvas_size
    if background is None:
        kind = config.backgrounds[int(rng.integers(len(config.backgrounds)))]
        background = make_background(kind, size, rng, background_photos)
    canvas = background.copy()
    owner = np.full((size, size), -1, np.int32)
    boxes, labels, areas = [], [], []
    for piece in pieces:
        longer = max(2, round(size * rng.uniform(config.scale_min, config.scale_max)))
        rotation = rng.uniform(-config.max_rotation, config.max_rotation) if piece.mask is not None else 0.0
        rgb, mask = _transform_piece(piece, longer, rotation)
        h, w = mask.shape
        if h > size or w > size:  # a rotation can outgrow the canvas: shrink that one piece to fit
            rgb, mask = _transform_piece(piece, longer * size // max(h, w) - 1, rotation)
            h, w = mask.shape
        for _ in range(config.placement_tries):
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if _placement_ok(owner, areas, x, y, mask, config.max_overlap):
                canvas[y : y + h, x : x + w][mask] = rgb[mask]
                owner[y : y + h, x : x + w][mask] = len(areas)
                areas.append(int(mask.sum()))
                boxes.append((x, y, x + w, y + h))
                labels.append(piece.label)
                break
    return Composite(canvas, np.asarray(boxes, np.float32).reshape(-1, 4), labels)


# --- composing from a dataset --------------------------------------------------------------------


class SceneComposer:
    """Composites from one split of a dataset: its labelled photos (whole, or cut out when
    ``config.split_pieces == "cutout"``), plus the dataset's catalog images cut out, 2-4 different
    products per scene. Decoded pieces are kept in memory at the largest size a piece can take."""

    def __init__(
        self,
        dataset: ImageDataset,
        split: str,
        config: CompositionConfig,
        background_photos: list[str | Path] | None = None,
    ):
        config.check()
        self.config = config
        self.photos = [(s.path, s.label) for s in dataset.split(split)]
        if not self.photos:
            raise SkulensError(f"{dataset.root}: no images in the {split} split to compose scenes from")
        self.catalog = sorted(dataset.catalog_images.items()) if config.cutout_share > 0 else []
        largest = 1.0 if config.single_share > 0 else config.scale_max
        self.max_side = int(np.ceil(config.canvas_size * largest)) + 2
        self._cache: dict[tuple[Path, bool], Piece] = {}
        self.background_photos = [load_image(p) for p in background_photos or []]
        if "photo" in config.backgrounds and not self.background_photos:
            raise SkulensError("composition: the 'photo' background needs background photos")

    def _piece(self, path: Path, label: int, cut_out: bool) -> Piece:
        key = (path, cut_out)
        if key not in self._cache:
            image = load_image(path, draft_size=self.max_side)
            image.thumbnail((self.max_side, self.max_side), Image.BILINEAR)
            self._cache[key] = Piece(image, label, cutout_mask(image) if cut_out else None)
        piece = self._cache[key]
        return Piece(piece.image, label, piece.mask)

    def _draw_pieces(self, rng: np.random.Generator) -> list[Piece]:
        cfg = self.config
        count = int(rng.integers(cfg.min_pieces, cfg.max_pieces + 1))
        used: set[int] = set()
        pieces = []
        for _ in range(count * 4):  # a few extra draws to find different products
            if len(pieces) == count:
                break
            if self.catalog and rng.random() < cfg.cutout_share:
                label, path = self.catalog[int(rng.integers(len(self.catalog)))]
                cut_out = True
            else:
                path, label = self.photos[int(rng.integers(len(self.photos)))]
                cut_out = cfg.split_pieces == "cutout"
            if label in used:
                continue
            used.add(label)
            pieces.append(self._piece(path, label, cut_out))
        return pieces

    def composite(self, seed: int, index: int) -> Composite:
        """Composite number ``index`` of ``seed``: the same every time."""
        rng = np.random.default_rng([seed, index])
        # Drawn only when single scenes are asked for, so that older configs keep their exact scenes.
        if self.config.single_share > 0 and rng.random() < self.config.single_share:
            return self._single(rng)
        return compose(self._draw_pieces(rng), self.config, rng, background_photos=self.background_photos)

    def _single(self, rng: np.random.Generator) -> Composite:
        """One split photo, pasted whole and large (single_scale_min..1 of the canvas side)."""
        path, label = self.photos[int(rng.integers(len(self.photos)))]
        config = replace(self.config, scale_min=self.config.single_scale_min, scale_max=1.0)
        return compose([self._piece(path, label, False)], config, rng, background_photos=self.background_photos)


def make_eval_set(
    dataset: ImageDataset,
    split: str,
    n: int,
    *,
    seed: int = 0,
    config: CompositionConfig | None = None,
    progress: bool = True,
) -> list[Composite]:
    """A fixed benchmark set: ``n`` composites of ``split``, the same for the same seed and config."""
    if n < 1:
        raise SkulensError(f"the number of composites must be at least 1, not {n}")
    composer = SceneComposer(dataset, split, config or CompositionConfig())
    return [
        composer.composite(seed, i)
        for i in tqdm(range(n), desc=f"composing {split}", unit="scene", disable=not progress, leave=False)
    ]
