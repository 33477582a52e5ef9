"""Device choice and the per-device speed settings (measured on the 2-core CPU, see BENCHMARKS.md)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from skulens.errors import SkulensError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SkulensError("--device cuda was asked for, but no CUDA GPU is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SkulensError(f"unknown device {name!r} (use auto, cpu or cuda)") from None


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    # channels_last is 1.5-2x faster for these convnets on this CPU and on tensor cores alike.
    return model.to(device=device, memory_format=torch.channels_last)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device=device, memory_format=torch.channels_last, non_blocking=True)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain float32 on the CPU (autocast there is slower for these nets)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
