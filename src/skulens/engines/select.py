"""Pick the engine for a run: ONNX Runtime on a CPU when an up-to-date export is present, else PyTorch.

Every engine maps a normalised NCHW float batch to class probabilities, so the CLI, the Python
API and evaluation never care which one runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from skulens.engines.base import Engine
from skulens.engines.onnx import OnnxEngine
from skulens.errors import CheckpointError, SkulensError
from skulens.files import sha256_file
from skulens.runs import EXPORT_FILE, ONNX_FP32, ONNX_INT8, RunFolder
from skulens.runtime import prepare_model, resolve_device, runs_on_cpu

log = logging.getLogger(__name__)
ENGINES = ("auto", "torch", "onnx")


def current_export(run_dir: str | Path, verify: bool = True) -> dict | None:
    """The run's export record if its ONNX files belong to the current weights and are intact."""
    folder = RunFolder(run_dir)
    try:
        record = folder.read_json(EXPORT_FILE)
    except CheckpointError:
        return None
    if record is None:
        return None
    if record.get("weights_sha256") != folder.weights_sha256():
        log.warning("%s: the ONNX export is older than the current weights; re-run `skulens export`", folder.path)
        return None
    if verify:
        for name, digest in record.get("files", {}).items():
            path = folder / name
            if not path.is_file() or sha256_file(path) != digest:
                raise CheckpointError(
                    f"{path}: missing or does not match its recorded checksum; re-run `skulens export`"
                )
    return record


def load_engine(
    run_dir: str | Path,
    engine: str = "auto",
    device: str = "auto",
    *,
    int8: bool | None = None,
    threads: int | None = None,
) -> Engine:
    """``auto``: ONNX Runtime (INT8 if exported, else FP32) on a CPU when the export is current and
    carries every output the run has (attributes); PyTorch otherwise. torch is imported only when
    PyTorch runs (or when only torch can tell whether a GPU is present). ``threads``: ONNX Runtime's
    intra-op threads (None: one per core, up to 8)."""
    if engine not in ENGINES:
        raise SkulensError(f"unknown engine {engine!r} (use auto, torch or onnx)")
    folder = RunFolder(run_dir)
    config = folder.config()
    if engine in ("auto", "onnx") and runs_on_cpu(device):
        onnx = _onnx_engine(folder, config, int8, threads)
        if onnx is not None and (engine == "onnx" or onnx.has_attributes):
            return onnx
        if onnx is not None:
            log.warning("%s: the ONNX export has no attribute outputs; using PyTorch", folder.path)
        elif engine == "onnx":
            what = "an INT8 " if int8 else "an "
            raise SkulensError(
                f"{folder.path}: no up-to-date {what}ONNX export; run `skulens export {folder.path} "
                "--format onnx`" + ("" if _onnxruntime_available() else " (and pip install onnxruntime)")
            )
    elif engine == "onnx":
        raise SkulensError("--engine onnx runs on the CPU; use --device cpu or --engine torch")
    from skulens.engines.torch_engine import TorchEngine

    dev = resolve_device(device)
    model, config = folder.load_model(dev)
    return TorchEngine(prepare_model(model, dev), config, dev)


def _onnx_engine(folder: RunFolder, config, int8: bool | None, threads: int | None) -> OnnxEngine | None:
    record = current_export(folder.path)
    choices = [ONNX_INT8] if int8 is True else [ONNX_FP32] if int8 is False else [ONNX_INT8, ONNX_FP32]
    available = [c for c in choices if record and c in record.get("files", {})]
    if not available or not _onnxruntime_available():
        return None
    return OnnxEngine(folder / available[0], config, threads, file_sha256=record["files"][available[0]])


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
