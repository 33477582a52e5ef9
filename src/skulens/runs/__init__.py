"""Run folders: the one owner of their file names, checksums and loading (see ARCHITECTURE.md)."""

from skulens.runs.config import RunConfig
from skulens.runs.folder import (
    ATTRIBUTE_THRESHOLDS_FILE,
    CARD_FILE,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    EXPORT_FILE,
    LAST_WEIGHTS_FILE,
    ONNX_FP32,
    ONNX_INT8,
    RECIPE_FILE,
    THRESHOLDS_FILE,
    TRAIN_STATE_FILE,
    WEIGHTS_FILE,
    RunFolder,
    load_run,
    read_config,
    save_run,
    save_tensors_atomic,
    verify_checksum,
)
from skulens.runs.train_state import flatten_optimizer_state, unflatten_optimizer_state

__all__ = [
    "ATTRIBUTE_THRESHOLDS_FILE",
    "CARD_FILE",
    "CHECKSUMS_FILE",
    "CONFIG_FILE",
    "EXPORT_FILE",
    "LAST_WEIGHTS_FILE",
    "ONNX_FP32",
    "ONNX_INT8",
    "RECIPE_FILE",
    "THRESHOLDS_FILE",
    "TRAIN_STATE_FILE",
    "WEIGHTS_FILE",
    "RunConfig",
    "RunFolder",
    "flatten_optimizer_state",
    "load_run",
    "read_config",
    "save_run",
    "save_tensors_atomic",
    "unflatten_optimizer_state",
    "verify_checksum",
]
