"""Batched class probabilities for a list of samples, through any engine (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from skulens.data.datasets import Sample
from skulens.data.loading import PreprocessedImages, collate_skip_bad
from skulens.data.transforms import Preprocessing
from skulens.runtime import autocast, to_device

# Normalised NCHW float batch -> class probabilities [N, C] (on the CPU).
ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def model_probabilities(model: nn.Module, x: torch.Tensor, device: torch.device, tta: bool = False) -> torch.Tensor:
    x = to_device(x, device)
    with autocast(device):
        probs = model(x).float().softmax(-1)
        if tta:
            probs = (probs + model(torch.flip(x, dims=[3])).float().softmax(-1)) / 2
    return probs.cpu()


def torch_probability_fn(model: nn.Module, device: torch.device, tta: bool = False) -> ProbabilityFn:
    model.eval()
    return lambda x: model_probabilities(model, x, device, tta)


@torch.no_grad()
def dataset_probabilities(predict: ProbabilityFn, samples: list[Sample], pre: Preprocessing,
                          *, img_size: int | None = None, batch_size: int = 16, progress: bool = True,
                          desc: str = "evaluating"):
    """Probabilities for every readable sample: ``(probs [n, C], labels [n], kept_indices, failures)``."""
    loader = DataLoader(PreprocessedImages(samples, pre, img_size), batch_size=batch_size, shuffle=False,
                        num_workers=0, collate_fn=collate_skip_bad)
    probs, labels, kept, failures = [], [], [], []
    for x, y, idx, bad in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        failures.extend((samples[i].path, reason) for i, reason in bad)
        if x is None:
            continue
        probs.append(predict(x))
        labels.append(y)
        kept.append(idx)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), failures
    return (torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(kept).numpy(), failures)
