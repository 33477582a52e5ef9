"""Mixup / CutMix blending and the blended loss (training/mixing.py)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from skulens.training.mixing import mix_batch, mixed_loss


def _batch(n: int = 6, size: int = 16) -> torch.Tensor:
    # every photo one constant value, so each pixel tells which photo it came from
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()


def test_no_mixing_when_off_or_unlucky():
    x = _batch()
    for prob, alphas in [(0.0, (0.2, 1.0)), (1.0, (0.0, 0.0))]:
        out, mix = mix_batch(x, prob, *alphas, random.Random(0))
        assert mix is None and out is x
    mixed = sum(mix_batch(x, 0.3, 0.2, 1.0, random.Random(seed))[1] is not None for seed in range(400))
    assert 80 < mixed < 160  # about 30% of batches


def test_mixup_is_a_weighted_average_with_a_partner():
    x = _batch()
    out, mix = mix_batch(x, 1.0, 0.4, 0.0, random.Random(1))
    assert mix.kind == "mixup" and 0 < mix.lam < 1
    assert sorted(mix.perm.tolist()) == list(range(6))
    assert torch.allclose(out, mix.lam * x + (1 - mix.lam) * x[mix.perm])


def test_cutmix_pastes_a_box_and_lam_is_the_share_of_pixels_kept():
    x = _batch(size=32)
    for seed in range(20):
        out, mix = mix_batch(x, 1.0, 0.0, 1.0, random.Random(seed))
        assert mix.kind == "cutmix"
        from_partner = (out != x) & (mix.perm.view(-1, 1, 1, 1) != torch.arange(6).view(-1, 1, 1, 1))
        moved = [row for row in range(6) if mix.perm[row] != row]
        if not moved:
            continue
        row = moved[0]
        assert torch.all((out[row] == x[row]) | (out[row] == x[mix.perm[row]]))
        share_kept = 1 - from_partner[row, 0].float().mean().item()
        assert share_kept == pytest.approx(mix.lam, abs=1e-6)


def test_mixed_loss_blends_every_head_and_keeps_unknown_targets_unknown():
    torch.manual_seed(0)
    logits, colour_logits = torch.randn(4, 5), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 3])
    colour = torch.tensor([2, -1, 0, 1])  # -1: unknown, must stay out of the loss after permuting too
    perm = torch.tensor([1, 0, 3, 2])

    def loss_fn(y_, t_):
        known = t_["colour"] >= 0
        return F.cross_entropy(logits, y_) + F.cross_entropy(colour_logits[known], t_["colour"][known])

    from skulens.training.mixing import BatchMix

    mix = BatchMix(perm, 0.7, "mixup")
    got = mixed_loss(loss_fn, mix, y, {"colour": colour})
    want = 0.7 * loss_fn(y, {"colour": colour}) + 0.3 * loss_fn(y[perm], {"colour": colour[perm]})
    assert torch.allclose(got, want)
    assert torch.equal(mixed_loss(loss_fn, None, y, {"colour": colour}), loss_fn(y, {"colour": colour}))
