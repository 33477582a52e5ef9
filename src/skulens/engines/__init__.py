"""Inference engines: PyTorch (any device) and ONNX Runtime (CPU, FP32 or INT8), one interface."""

from skulens.engines.select import Engine, load_engine

__all__ = ["Engine", "load_engine"]
