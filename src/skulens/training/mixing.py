"""Mixup and CutMix: some batches train on blends of two photos, with the loss blended by the same share.

Why: a fine-tuned EfficientNet memorises a catalog of 17k photos in a few epochs (training accuracy
97% while validation stalls); blending photos is the standard regulariser against that. Written
here rather than taken from timm because timm's ``Mixup`` mixes one-hot targets of one head, while
our models also have attribute heads whose targets may be unknown (-1): we blend the *losses*
(``lam * loss(targets) + (1 - lam) * loss(targets of the partner photos)``), which is the same thing
for cross-entropy and keeps every head's own rules about unknown targets.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class BatchMix:
    perm: torch.Tensor  # row i was blended with row perm[i]
    lam: float  # share of the original row (for CutMix: the share of its pixels left)
    kind: str  # "mixup" or "cutmix"


def mix_batch(
    x: torch.Tensor, prob: float, mixup_alpha: float, cutmix_alpha: float, rng: random.Random
) -> tuple[torch.Tensor, BatchMix | None]:
    """With probability ``prob``, blend the batch with a shuffled copy of itself: Mixup (a weighted
    average) or CutMix (a box pasted from the partner photo), chosen evenly when both alphas are > 0."""
    if prob <= 0 or len(x) < 2 or (mixup_alpha <= 0 and cutmix_alpha <= 0) or rng.random() >= prob:
        return x, None
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(rng.getrandbits(63))).to(x.device)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    if not use_cutmix:
        lam = rng.betavariate(mixup_alpha, mixup_alpha)
        return x * lam + x[perm] * (1 - lam), BatchMix(perm, lam, "mixup")
    lam = rng.betavariate(cutmix_alpha, cutmix_alpha)
    h, w = x.shape[-2:]
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = rng.randrange(h), rng.randrange(w)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = x[perm, ..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box was clipped at the border: the real share
    return mixed, BatchMix(perm, lam, "cutmix")


def _permute(targets, perm: torch.Tensor):
    if isinstance(targets, dict):
        return {k: v[perm.to(v.device)] for k, v in targets.items()}
    return targets[perm.to(targets.device)]


def mixed_loss(loss_fn: Callable[..., torch.Tensor], mix: BatchMix | None, *targets) -> torch.Tensor:
    """``loss_fn(*targets)``, blended with the partner photos' targets when the batch was mixed.
    Targets are tensors or {name: tensor} dicts (attribute heads)."""
    if mix is None:
        return loss_fn(*targets)
    return mix.lam * loss_fn(*targets) + (1 - mix.lam) * loss_fn(*[_permute(t, mix.perm) for t in targets])
