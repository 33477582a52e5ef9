"""Soft targets for a colour attribute: the smoothing mass goes to the colours that look alike.

Why: shop colour labels are near-synonyms more often than mistakes. On fashion-small, photos that
are near-identical to a training photo (cosine similarity >= 0.99 in a trained model's features)
carry a different colour label 11-17% of the time: "Navy Blue" for "Blue", "Off White" for "Cream",
"Grey Melange" for "Grey". One-hot targets, or uniform label smoothing, charge "Navy Blue" for
"Blue" as much as for "Yellow". Here part ``smoothing`` of each target is spread over the other
values in proportion to exp(-dE / DELTA_E_SCALE), dE being the CIELAB distance between the values'
typical colours, so the head learns the colour space's neighbourhoods instead of fighting them.

A value's typical colour is measured, not looked up by name (names such as "Multi", "Steel" or
"Mushroom Brown" have no standard sRGB value): the median over up to ``PHOTOS_PER_VALUE`` of its
training photos of each photo's dominant colour (the larger of two k-means clusters of its product
pixels, backdrop left out, as in the analytics report). The photo's mean colour was tried first and
is worse: prints, soles and skin pull it to grey, so "Navy Blue" landed nearest "Coffee Brown".
"""

from __future__ import annotations

import random

import numpy as np
import torch
from tqdm import tqdm

from skulens.analytics.colours import dominant_colours
from skulens.data.datasets import Sample
from skulens.errors import ImageError, SkulensError

# dE between the measured colours on fashion-small: Off White - Cream 2.4, White - Silver 4.2,
# Navy Blue - Black 7.8, Maroon - Burgundy 11.4, Blue - Purple 14.5. At a scale of 5 a value's own
# near-synonyms share most of the smoothing, and colours 20+ apart get almost none.
DELTA_E_SCALE = 5.0
PHOTOS_PER_VALUE = 100


def value_colours(samples: list[Sample], position: int, n_values: int, seed: int = 0,
                  per_value: int = PHOTOS_PER_VALUE, progress: bool = False) -> np.ndarray:
    """``[n_values, 3]`` typical CIELAB colour of each value of the attribute at ``position`` in
    ``Sample.attributes``; NaN for a value with no readable training photo."""
    by_value: dict[int, list[Sample]] = {}
    for s in samples:
        v = s.attributes[position] if len(s.attributes) > position else -1
        if isinstance(v, (int, np.integer)) and v >= 0:
            by_value.setdefault(int(v), []).append(s)
    rng = random.Random(seed)
    chosen = [(v, s) for v, group in sorted(by_value.items())
              for s in (rng.sample(group, per_value) if len(group) > per_value else group)]
    dominant: dict[int, list[np.ndarray]] = {}
    for v, s in tqdm(chosen, desc="colour of each value", unit="photo", disable=not progress, leave=False):
        try:
            swatches = dominant_colours(s.path, k=2, seed=seed)
        except ImageError:  # an unreadable photo is skipped here; the training loader reports it
            continue
        if swatches:
            dominant.setdefault(v, []).append(np.array(swatches[0].lab))
    out = np.full((n_values, 3), np.nan)
    for v, rows in dominant.items():
        out[v] = np.median(np.stack(rows), axis=0)
    return out


def similarity_targets(centres: np.ndarray, smoothing: float, scale: float = DELTA_E_SCALE) -> np.ndarray:
    """``[K, K]`` target rows: ``1 - smoothing`` on the true value, the rest by perceptual closeness.
    A value without a measured colour (no training photo) spreads its smoothing uniformly and
    receives none: with no photo it cannot be learnt, and mass sent there would only be wasted."""
    if not 0 <= smoothing < 1:
        raise SkulensError(f"colour smoothing must be in [0, 1), not {smoothing}")
    centres = np.asarray(centres, dtype=np.float64)
    k = len(centres)
    if k < 2:
        return np.eye(k)
    known = ~np.isnan(centres).any(axis=1)
    dist = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)
    affinity = np.where(known[:, None] & known[None, :], np.exp(-np.nan_to_num(dist, nan=0.0) / scale), 0.0)
    affinity[~known] = 1.0  # an unmeasured value's row: uniform, as label smoothing would do
    np.fill_diagonal(affinity, 0.0)
    lonely = affinity.sum(axis=1) == 0  # the only measured value: nothing looks alike, so uniform
    affinity[lonely] = 1.0
    np.fill_diagonal(affinity, 0.0)
    spread = affinity / affinity.sum(axis=1, keepdims=True)
    return (1 - smoothing) * np.eye(k) + smoothing * spread


def colour_target_matrices(samples: list[Sample], attributes: dict[str, dict], smoothing: dict[str, float],
                           seed: int = 0, progress: bool = False) -> dict[str, torch.Tensor]:
    """{attribute: [K, K] soft-target matrix} for each attribute named in ``smoothing``."""
    names = list(attributes)
    out = {}
    for name, eps in smoothing.items():
        if not 0 <= eps < 1:
            raise SkulensError(f"colour smoothing for {name!r} must be in [0, 1), not {eps}")
        if name not in attributes or attributes[name]["kind"] != "softmax":
            have = ", ".join(n for n in names if attributes[n]["kind"] == "softmax") or "none"
            raise SkulensError(f"colour smoothing needs a single-valued attribute; {name!r} is not one (have: {have})")
        centres = value_colours(samples, names.index(name), len(attributes[name]["values"]), seed, progress=progress)
        out[name] = torch.tensor(similarity_targets(centres, eps), dtype=torch.float32)
    return out

