"""``RunFolder``: the one owner of a run folder's files. Weights in safetensors, everything else in
JSON or TOML; loading never unpickles, and every weight file is checked against the SHA-256 recorded
when it was saved before it is read.

A run folder holds:
- ``model.safetensors``: the kept weights (the best epoch by validation accuracy, or the last);
- ``config.json``: architecture, class names, category tree, preprocessing, metrics, training
  arguments (and timm's keys for a plain classifier run);
- ``recipe.toml``: the resolved training recipe; ``README.md``: the model card;
- ``last.safetensors`` + ``train_state.json``: the latest epoch, optimiser and RNG state (``--resume``);
- ``checksums.json``: the sha256 of each weight file;
- ``thresholds.json`` / ``attribute_thresholds.json``: back-off and tag thresholds chosen on val;
- ``export.json`` + ``model.onnx`` / ``model.int8.onnx``: the checked ONNX export.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from skulens.errors import CheckpointError, SkulensError
from skulens.files import sha256_file, write_json_atomic, write_text_atomic
from skulens.runs.card import model_card
from skulens.runs.config import RunConfig
from skulens.runs.names import (  # noqa: F401 - re-exported: the folder's file names
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
)

if TYPE_CHECKING:  # torch and safetensors.torch are imported where weights are read or written:
    import torch  # reading a run's config, thresholds or ONNX export never imports torch

log = logging.getLogger(__name__)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write via a temp file and rename, recording the file's sha256 in the folder's checksums.json."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    digest = sha256_file(tmp)
    # The new digest is accepted ("pending") before the rename and becomes the only one after it,
    # so a kill -9 at any point leaves a file that matches its record: never a refused run folder.
    _record_checksum(path.parent, path.name, pending=digest)
    os.replace(tmp, path)
    _record_checksum(path.parent, path.name, current=digest)


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
    path = Path(path)
    record = _read_checksums(path.parent) or {}
    accepted = {record.get("sha256", {}).get(path.name), record.get("pending", {}).get(path.name)} - {None}
    if not accepted:
        log.warning("%s: no recorded checksum (saved by an older skulens); loading it unverified", path)
        return
    actual = sha256_file(path)
    if actual not in accepted:
        raise CheckpointError(
            f"{path}: does not match its recorded checksum (sha256 {actual[:16]}...); "
            "the file was changed or corrupted after it was saved, so it is not loaded"
        )


class RunFolder:
    """One run folder: every read verifies, every write is atomic. ``folder / name`` is a file's path."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE

    def config(self) -> RunConfig:
        """The run's config.json; a folder that is not a run is refused in one line."""
        path = self.path / CONFIG_FILE
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: run folder not found")
        if not path.is_file():
            raise CheckpointError(f"{self.path}: not a skulens run (no {CONFIG_FILE}); train one with `skulens train`")
        try:
            return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError, SkulensError) as exc:
            raise CheckpointError(f"{path}: invalid run config ({exc})") from None

    def weights_sha256(self) -> str | None:
        """The digest that identifies these weights (what exports and calibrations were made for)."""
        return sha256_file(self.weights) if self.weights.is_file() else None

    def state_dict(self, name: str = WEIGHTS_FILE, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """A weight file's tensors, after checking it against its recorded checksum."""
        from safetensors.torch import load_file

        path = self.path / name
        if not path.is_file():
            what = "the run has not finished an epoch yet" if name == WEIGHTS_FILE else "nothing to resume from"
            raise CheckpointError(f"{self.path}: no {name}; {what}")
        verify_checksum(path)
        try:
            return load_file(str(path), device=str(device))
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise CheckpointError(f"{path}: cannot read weights ({exc})") from None

    def load_model(self, device: str | torch.device = "cpu"):
        """Rebuild the run's model with its kept weights; returns ``(model, config)``, in eval mode."""
        from skulens.models.registry import create_model

        config = self.config()
        state = self.state_dict(WEIGHTS_FILE, device)
        model = create_model(config.model, pretrained=False)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{self.weights}: weights do not match {config.model.name} "
                f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
            )
        model.to(device).eval()
        return model, config

    def read_json(self, name: str) -> dict | None:
        """A JSON file of the folder; None when absent, one line when unreadable."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return data

    def write_json(self, name: str, data: dict) -> Path:
        write_json_atomic(self.path / name, data)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        write_text_atomic(self.path / name, text)
        return self.path / name

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        save_tensors_atomic(self.path / name, tensors, metadata)

    def save(self, config: RunConfig, state_dict: dict[str, torch.Tensor]) -> None:
        """The kept weights and the config that describes them."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.save_tensors(WEIGHTS_FILE, state_dict, metadata={"format": "skulens"})
        self.write_json(CONFIG_FILE, config.to_dict())

    def attribute_thresholds(self) -> dict[str, list[float]] | None:
        """The sigmoid tags' thresholds tuned on val, or None (then 0.5 applies)."""
        try:
            record = self.read_json(ATTRIBUTE_THRESHOLDS_FILE)
            if record is None:
                return None
            return {k: [float(t) for t in v] for k, v in record["thresholds"].items()}
        except (CheckpointError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SkulensError(
                f"{self.path / ATTRIBUTE_THRESHOLDS_FILE}: invalid attribute thresholds ({exc})"
            ) from None

    def save_attribute_thresholds(self, thresholds: dict[str, list[float]], split: str = "val") -> None:
        self.write_json(ATTRIBUTE_THRESHOLDS_FILE, {"tuned_on": split, "thresholds": thresholds})

    def write_card(self) -> Path:
        """(Re)write the model card README.md from what the folder holds now."""
        return self.write_text(CARD_FILE, model_card(self))


def read_config(run_dir: str | Path) -> RunConfig:
    return RunFolder(run_dir).config()


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model of a run folder with its kept weights; returns ``(model, config)``."""
    return RunFolder(run_dir).load_model(device)


def save_run(run_dir: str | Path, config: RunConfig, state_dict: dict[str, torch.Tensor]) -> None:
    RunFolder(run_dir).save(config, state_dict)
