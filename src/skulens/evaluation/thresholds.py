"""Reading ``RUN/thresholds.json`` (written by :mod:`skulens.evaluation.calibration`): no torch, no
dataset, so a Recognizer on an ONNX export starts without them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from skulens.errors import SkulensError
from skulens.evaluation.backoff import tree_or_flat
from skulens.runs import THRESHOLDS_FILE, RunConfig, RunFolder

log = logging.getLogger(__name__)


def load_thresholds(run_dir: str | Path, config: RunConfig) -> list[float | None] | None:
    """The run's calibrated per-level thresholds, or None when uncalibrated or calibrated for other weights."""
    run_dir = Path(run_dir)
    path = run_dir / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        thresholds = [lv["threshold"] for lv in record["levels"]]
        names = list(record["level_names"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SkulensError(f"{path}: invalid thresholds file ({exc}); re-run `skulens calibrate {run_dir}`") from None
    if not all(t is None or isinstance(t, (int, float)) for t in thresholds):
        raise SkulensError(f"{path}: thresholds must be numbers or null; re-run `skulens calibrate {run_dir}`")
    tree = tree_or_flat(config.tree, config.classes)
    if names != list(tree.level_names) or record.get("weights_sha256") != RunFolder(run_dir).weights_sha256():
        log.warning(
            "%s: calibrated for other weights; answers do not back off until you re-run `skulens calibrate %s`",
            path,
            run_dir,
        )
        return None
    return thresholds
