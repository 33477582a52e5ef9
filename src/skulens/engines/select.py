"""Pick the engine for a run: ONNX Runtime on a CPU when an up-to-date export is present, else PyTorch.

Every engine maps a normalised NCHW float batch to class probabilities, so the CLI, the Python
API and evaluation never care which one runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from skulens.checkpoint import WEIGHTS_FILE, RunConfig, load_run, read_config
from skulens.errors import CheckpointError, SkulensError
from skulens.evaluation.inference import model_probabilities
from skulens.runtime import prepare_model, resolve_device

log = logging.getLogger(__name__)
EXPORT_FILE = "export.json"
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
ENGINES = ("auto", "torch", "onnx")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Engine:
    """Base: ``probabilities(x, tta)`` for a normalised float batch; ``name`` says which engine runs."""

    name = "engine"

    def __init__(self, config: RunConfig):
        self.config = config

    def probabilities(self, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        probs = self._forward(x)
        if tta:
            probs = (probs + self._forward(torch.flip(x, dims=[3]))) / 2
        return probs

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model, config: RunConfig, device: torch.device):
        super().__init__(config)
        self.model = model
        self.device = device

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return model_probabilities(self.model, x, self.device)


class OnnxEngine(Engine):
    def __init__(self, path: Path, config: RunConfig, threads: int | None = None):
        super().__init__(config)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = "onnx-int8" if path.name == ONNX_INT8 else "onnx-fp32"
        self.path = path
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_embedding = "embedding" in outputs
        self._logits_only = [outputs[0]]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)}
        logits = self.session.run(self._logits_only, feed)[0]
        return torch.from_numpy(logits).float().softmax(-1)

    def embeddings(self, x: torch.Tensor) -> np.ndarray:
        """The catalog's search vectors (exports made with an ``embedding`` output)."""
        feed = {self.input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)}
        return self.session.run(["embedding"], feed)[0].astype(np.float32)


def current_export(run_dir: Path, verify: bool = True) -> dict | None:
    """The run's export record if its ONNX files belong to the current weights and are intact."""
    record_path = run_dir / EXPORT_FILE
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        return None
    if record.get("weights_sha256") != sha256_file(run_dir / WEIGHTS_FILE):
        log.warning("%s: the ONNX export is older than the current weights; re-run `skulens export`", run_dir)
        return None
    if verify:
        for name, digest in record.get("files", {}).items():
            path = run_dir / name
            if not path.is_file() or sha256_file(path) != digest:
                raise CheckpointError(f"{path}: missing or does not match its recorded checksum; re-run `skulens export`")
    return record


def load_engine(run_dir: str | Path, engine: str = "auto", device: str = "auto", *, int8: bool | None = None) -> Engine:
    """``auto``: ONNX Runtime (INT8 if exported, else FP32) on a CPU when the export is current; PyTorch otherwise."""
    if engine not in ENGINES:
        raise SkulensError(f"unknown engine {engine!r} (use auto, torch or onnx)")
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    dev = resolve_device(device)
    if engine in ("auto", "onnx") and dev.type == "cpu":
        record = current_export(run_dir)
        choices = [ONNX_INT8, ONNX_FP32] if int8 in (None, True) else [ONNX_FP32]
        if int8 is True:
            choices = [ONNX_INT8]
        available = [c for c in choices if record and c in record.get("files", {})]
        if available and _onnxruntime_available():
            return OnnxEngine(run_dir / available[0], config)
        if engine == "onnx":
            what = "an INT8 " if int8 else "an "
            raise SkulensError(f"{run_dir}: no up-to-date {what}ONNX export; run `skulens export {run_dir} --format onnx`"
                               + ("" if _onnxruntime_available() else " (and pip install onnxruntime)"))
    elif engine == "onnx":
        raise SkulensError("--engine onnx runs on the CPU; use --device cpu or --engine torch")
    model, config = load_run(run_dir, dev)
    return TorchEngine(prepare_model(model, dev), config, dev)


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
