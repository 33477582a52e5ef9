"""What training does for attribute heads beyond the loss: a per-epoch log of their validation
figures, and the tag thresholds tuned on validation once the run is finished."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from skulens.engines import TorchEngine
from skulens.evaluation.inference import OutputCollector, dataset_probabilities
from skulens.models.attributes import tune_thresholds
from skulens.runs import RunFolder
from skulens.runtime import prepare_model

ATTRIBUTE_LOG_FILE = "attributes_log.csv"
log = logging.getLogger(__name__)


def headline(metrics: dict) -> float:
    """The one number per attribute a log shows: accuracy (softmax) or mAP (sigmoid)."""
    return metrics["accuracy"] if metrics["kind"] == "softmax" else metrics["mAP"]


def log_attribute_epoch(run_dir: Path, epoch: int, metrics: dict[str, dict]) -> None:
    """Validation accuracy / mAP per attribute, one row per epoch (beside log.csv, whose columns are fixed)."""
    path = Path(run_dir) / ATTRIBUTE_LOG_FILE
    row = {"epoch": epoch, **{name: f"{headline(m):.5f}" for name, m in metrics.items()}}
    new = not path.is_file() or epoch == 1
    with path.open("w" if new else "a", newline="") as handle:
        writer = csv.DictWriter(handle, list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    log.info(
        "epoch %d attributes (val): %s", epoch, ", ".join(f"{n} {100 * headline(m):.1f}%" for n, m in metrics.items())
    )


def tune_run_thresholds(
    run_dir: Path, samples, device, batch_size: int = 16, progress: bool = False
) -> dict[str, list[float]]:
    """Tune the sigmoid tags' thresholds of a finished run on ``samples`` (validation) and save them."""
    folder = RunFolder(run_dir)
    model, config = folder.load_model(device)
    collector = OutputCollector(TorchEngine(prepare_model(model, device), config, device))
    _, _, kept, _ = dataset_probabilities(
        collector, samples, config.preprocessing, batch_size=batch_size, progress=progress, desc="tuning tag thresholds"
    )
    thresholds = tune_thresholds(collector.attribute_probs(), [samples[i] for i in kept], config.model.attributes)
    folder.save_attribute_thresholds(thresholds)
    return thresholds
