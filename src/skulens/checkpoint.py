"""Run folders: weights in safetensors, everything else in JSON. Loading never unpickles.

A run folder holds:
- ``model.safetensors``: the best weights (by validation accuracy);
- ``config.json``: architecture, class names, category tree, preprocessing, metrics, training args;
- ``last.safetensors`` + ``train_state.json``: the latest epoch, optimiser and RNG state, for
  ``--resume``;
- ``checksums.json``: the sha256 of each weight file, checked before the weights are read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from skulens import __version__
from skulens.data.taxonomy import CategoryTree
from skulens.data.transforms import Preprocessing
from skulens.errors import CheckpointError
from skulens.models.registry import ModelSpec

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LAST_WEIGHTS_FILE = "last.safetensors"
TRAIN_STATE_FILE = "train_state.json"
CHECKSUMS_FILE = "checksums.json"

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    model: ModelSpec
    classes: list[str]
    preprocessing: Preprocessing
    tree: CategoryTree | None = None
    metrics: dict = field(default_factory=dict)
    train_args: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "skulens_version": __version__,
            "model": self.model.to_dict(),
            "classes": list(self.classes),
            "tree": self.tree.to_dict() if self.tree else None,
            "preprocessing": self.preprocessing.to_dict(),
            "metrics": self.metrics,
            "train_args": self.train_args,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return cls(
            model=ModelSpec.from_dict(data["model"]),
            classes=list(data["classes"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            tree=CategoryTree.from_dict(data["tree"]) if data.get("tree") else None,
            metrics=data.get("metrics", {}),
            train_args=data.get("train_args", {}),
        )


def write_json_atomic(path: Path, data: dict) -> None:
    """Write via a temp file and rename, so an interrupt never leaves half a JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write via a temp file and rename, recording the file's sha256 in the folder's checksums.json."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    digest = sha256_file(Path(tmp))
    # The new digest is accepted ("pending") before the rename and becomes the only one after it,
    # so a kill -9 at any point leaves a file that matches its record: never a refused run folder.
    _record_checksum(path.parent, path.name, pending=digest)
    os.replace(tmp, path)
    _record_checksum(path.parent, path.name, current=digest)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_checksums(folder: Path) -> dict | None:
    path = folder / CHECKSUMS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not all(isinstance(record.get(k, {}), dict) for k in ("sha256", "pending")):
            raise ValueError("sha256 and pending must be objects")
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unreadable checksum record ({exc}); refusing unverifiable weights") from None
    return record


def _record_checksum(folder: Path, name: str, *, current: str | None = None, pending: str | None = None) -> None:
    record = _read_checksums(folder) or {}
    record.setdefault("sha256", {})
    record.setdefault("pending", {})
    if pending:
        record["pending"][name] = pending
    if current:
        record["sha256"][name] = current
        record["pending"].pop(name, None)
    write_json_atomic(folder / CHECKSUMS_FILE, record)


def verify_checksum(path: Path) -> None:
    """Refuse a weight file that differs from the sha256 recorded when it was saved. Runs saved before
    checksums existed have no record: they still load, with a warning."""
    record = _read_checksums(path.parent) or {}
    accepted = {record.get("sha256", {}).get(path.name), record.get("pending", {}).get(path.name)} - {None}
    if not accepted:
        log.warning("%s: no recorded checksum (saved by an older skulens); loading it unverified", path)
        return
    actual = sha256_file(path)
    if actual not in accepted:
        raise CheckpointError(f"{path}: does not match its recorded checksum (sha256 {actual[:16]}...); "
                              "the file was changed or corrupted after it was saved, so it is not loaded")


def save_run(run_dir: Path, config: RunConfig, state_dict: dict[str, torch.Tensor]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(run_dir / WEIGHTS_FILE, state_dict, metadata={"format": "skulens"})
    write_json_atomic(run_dir / CONFIG_FILE, config.to_dict())


def read_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run folder not found")
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a skulens run (no {CONFIG_FILE}); train one with `skulens train`")
    try:
        return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid run config ({exc})") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model of a run folder with its best weights; returns ``(model, config)``."""
    from skulens.models.registry import create_model

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{run_dir}: no {WEIGHTS_FILE}; the run has not finished an epoch yet")
    verify_checksum(weights)
    model = create_model(config.model, pretrained=False)
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{weights}: cannot read weights ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not match {config.model.name} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    model.to(device).eval()
    return model, config


def flatten_optimizer_state(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into tensors (for safetensors) and plain data (for JSON)."""
    tensors, plain = {}, {}
    for pid, slots in opt_state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                plain[f"{pid}.{key}"] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": plain}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in plain["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}
