"""Inference engines: PyTorch (any device) and ONNX Runtime (CPU, FP32 or INT8), one interface.

``TorchEngine`` is imported when asked for: the rest of this package never imports torch."""

from skulens.engines.base import Engine
from skulens.engines.onnx import OnnxEngine
from skulens.engines.select import load_engine

__all__ = ["Engine", "OnnxEngine", "TorchEngine", "load_engine"]  # noqa: F822 - TorchEngine from __getattr__


def __getattr__(name: str):
    if name == "TorchEngine":  # imports torch
        from skulens.engines.torch_engine import TorchEngine

        return TorchEngine
    raise AttributeError(f"module 'skulens.engines' has no attribute {name!r}")
