"""Device choice and the per-device speed settings (measured on the 2-core CPU, see BENCHMARKS.md).

torch is imported by the functions that need it: on a machine without a GPU, choosing the CPU (and
with it the ONNX engine) never imports torch (issue 22, fast start-up)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from skulens.errors import SkulensError

if TYPE_CHECKING:
    import torch
    from torch import nn

# Device nodes of a GPU torch could use on Linux: NVIDIA, AMD ROCm (which torch calls "cuda"), WSL 2.
_GPU_DEVICE_NODES = ("nvidia[0-9]*", "kfd", "dxg")


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SkulensError("--device cuda was asked for, but no CUDA GPU is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SkulensError(f"unknown device {name!r} (use auto, cpu or cuda)") from None


def gpu_may_be_present() -> bool:
    """False when this machine surely has no GPU for torch (macOS, or Linux without a GPU device
    node); True when only torch can tell."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(any(Path("/dev").glob(pattern)) for pattern in _GPU_DEVICE_NODES)
    return True


def runs_on_cpu(name: str = "auto") -> bool:
    """Whether ``name`` resolves to the CPU, as :func:`resolve_device` decides (and refuses what it
    refuses); without importing torch for "cpu", or "auto" on a machine without a GPU."""
    if name == "cpu" or (name == "auto" and not gpu_may_be_present()):
        return True
    return resolve_device(name).type == "cpu"


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    import torch

    # channels_last is 1.5-2x faster for these convnets on this CPU and on tensor cores alike.
    return model.to(device=device, memory_format=torch.channels_last)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    import torch

    return x.to(device=device, memory_format=torch.channels_last, non_blocking=True)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain float32 on the CPU (autocast there is slower for these nets)."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
