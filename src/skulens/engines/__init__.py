"""Inference engines: PyTorch (any device) and ONNX Runtime (CPU, FP32 or INT8), one interface."""

from skulens.engines.base import Engine, OnnxEngine, TorchEngine
from skulens.engines.select import load_engine

__all__ = ["Engine", "OnnxEngine", "TorchEngine", "load_engine"]
