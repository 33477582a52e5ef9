"""Dominant colours of product photos: k-means in CIELAB on downsampled pixels.

CIELAB because distances there follow what people see (two reds an RGB distance apart can look
alike, a blue and a purple that close cannot). The studio backdrop is left out: near-white pixels,
and pixels close to the colour of the photo's border when that border is an even, light, neutral
tone (the grey sweeps of catalog shots). When the "backdrop" is nearly the whole photo, the
product itself is that colour (a white shirt on white) and every pixel counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from skulens.data.colour_space import lab_to_srgb, srgb_to_lab  # noqa: F401 - re-exported
from skulens.data.images import ImageSource, load_image

BACKDROP_MIN_L = 92.0
BACKDROP_MAX_CHROMA = 8.0
BORDER_MIN_L = 60.0
BORDER_MAX_CHROMA = 12.0
BACKDROP_DELTA_E = 14.0  # wide enough for a backdrop's gradient, narrow enough to keep a white product
MIN_FOREGROUND = 0.05  # below this share of non-backdrop pixels the product itself is the backdrop colour

# Plain names a merchandiser uses, each with a typical sRGB value; a colour takes the nearest name.
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 30),
    "charcoal": (75, 75, 78),
    "grey": (128, 128, 128),
    "silver": (192, 192, 192),
    "white": (250, 250, 250),
    "red": (210, 30, 35),
    "maroon": (120, 20, 35),
    "pink": (240, 150, 180),
    "magenta": (200, 40, 140),
    "orange": (245, 130, 30),
    "yellow": (245, 215, 40),
    "beige": (225, 205, 165),
    "brown": (120, 75, 40),
    "olive": (120, 120, 40),
    "green": (40, 150, 60),
    "teal": (0, 128, 128),
    "light blue": (130, 185, 230),
    "blue": (30, 80, 200),
    "navy": (25, 35, 90),
    "purple": (120, 50, 150),
}


_NAMES = list(NAMED_COLOURS)
_NAMED_LAB = srgb_to_lab(np.array([NAMED_COLOURS[n] for n in _NAMES]))


def colour_name(lab: np.ndarray) -> str:
    """The nearest plain colour name to one CIELAB colour."""
    return _NAMES[int(np.argmin(np.linalg.norm(_NAMED_LAB - np.asarray(lab)[None, :], axis=1)))]


@dataclass
class Swatch:
    lab: tuple[float, float, float]
    share: float  # of the pixels (or products) it stands for

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in lab_to_srgb(np.array(self.lab)))

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)

    @property
    def name(self) -> str:
        return colour_name(np.array(self.lab))


def product_pixels(image: ImageSource, max_side: int = 64) -> np.ndarray:
    """Lab pixels of a downsampled photo, without the near-white backdrop: ``[n, 3]``."""
    img = load_image(image, draft_size=max_side)
    img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    grid = srgb_to_lab(np.asarray(img))
    lab = grid.reshape(-1, 3)
    backdrop = (lab[:, 0] >= BACKDROP_MIN_L) & (np.hypot(lab[:, 1], lab[:, 2]) <= BACKDROP_MAX_CHROMA)
    border = np.concatenate([grid[0], grid[-1], grid[:, 0], grid[:, -1]])
    ref = np.median(border, axis=0)
    light_neutral = ref[0] >= BORDER_MIN_L and np.hypot(ref[1], ref[2]) <= BORDER_MAX_CHROMA
    if light_neutral and np.mean(np.linalg.norm(border - ref, axis=1) <= BACKDROP_DELTA_E) >= 0.6:
        backdrop |= np.linalg.norm(lab - ref, axis=1) <= BACKDROP_DELTA_E
    if (~backdrop).mean() < MIN_FOREGROUND:
        return lab
    return lab[~backdrop]


@lru_cache(maxsize=1)
def _threadpools():
    from threadpoolctl import ThreadpoolController

    # Made once: finding the loaded BLAS/OpenMP libraries costs about as much as a small k-means.
    return ThreadpoolController()


def cluster_colours(
    lab: np.ndarray, k: int, weights: np.ndarray | None = None, seed: int = 0, n_init: int = 1
) -> list[Swatch]:
    """k-means on Lab points; swatches sorted by share, largest first."""
    from sklearn.cluster import KMeans  # seconds to import: only when colours are asked for

    lab = np.asarray(lab, dtype=np.float64)
    if len(lab) == 0:
        return []
    weights = np.ones(len(lab)) if weights is None else np.asarray(weights, dtype=np.float64)
    # k-means cannot find more clusters than there are distinct points (a flat-colour image has one).
    k = max(1, min(k, len(np.unique(np.round(lab, 3), axis=0))))
    # One thread: for a few thousand points, thread start-up costs more than the maths (25x on 2 cores).
    with _threadpools().limit(limits=1):
        km = KMeans(n_clusters=k, n_init=n_init, max_iter=100, random_state=seed).fit(lab, sample_weight=weights)
    totals = np.bincount(km.labels_, weights=weights, minlength=k)
    swatches = [
        Swatch(tuple(float(v) for v in km.cluster_centers_[i]), float(totals[i] / totals.sum()))
        for i in range(k)
        if totals[i] > 0
    ]
    return sorted(swatches, key=lambda s: -s.share)


def dominant_colours(image: ImageSource, k: int = 3, seed: int = 0) -> list[Swatch]:
    """The ``k`` main colours of a product photo, largest first (the backdrop left out)."""
    return cluster_colours(product_pixels(image), k, seed=seed)
