"""`skulens calibrate`: back-off thresholds picked on the validation split, kept in ``RUN/thresholds.json``.

The file records the SHA-256 of the weights it was calibrated for: after retraining, a stale file
is ignored (with a warning) rather than applied to a model it does not describe.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from skulens.data.datasets import ImageDataset
from skulens.engines import load_engine
from skulens.errors import DatasetError
from skulens.evaluation.backoff import (
    TreeIndex,
    calibrate_thresholds,
    consistent_paths,
    correct_nodes,
    coverage_curve,
    operating_point,
    tree_or_flat,
)
from skulens.evaluation.inference import dataset_probabilities, split_samples
from skulens.evaluation.thresholds import load_thresholds  # noqa: F401 - re-exported (torch-free home)
from skulens.runs import THRESHOLDS_FILE, RunConfig, RunFolder


def split_probabilities(
    runner,
    dataset: ImageDataset,
    split: str,
    *,
    tta: bool = False,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "calibrating",
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels (in the run's class order) for one split of a dataset."""
    config = runner.config
    samples = split_samples(dataset, split, config.classes)
    probs, labels, _, _ = dataset_probabilities(
        lambda x: runner.probabilities(x, tta),
        samples,
        config.preprocessing,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    if len(labels) == 0:
        raise DatasetError(f"none of the {len(samples)} images in split {split!r} could be read")
    return probs, labels


def calibrate_run(
    run_dir: str | Path,
    dataset: ImageDataset,
    split: str = "val",
    *,
    target_precision: float = 0.95,
    unknown_reject_rate: float | None = None,
    tta: bool = False,
    engine: str = "auto",
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Calibrate the run's back-off thresholds on ``split`` and write ``RUN/thresholds.json``; returns the record."""
    run_dir = Path(run_dir)
    runner = load_engine(run_dir, engine, device)
    config = runner.config
    probs, labels = split_probabilities(runner, dataset, split, tta=tta, batch_size=batch_size, progress=progress)
    tree = tree_or_flat(config.tree, config.classes)
    cal = calibrate_thresholds(
        probs, labels, tree, target_precision=target_precision, unknown_reject_rate=unknown_reject_rate
    )
    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "split": split,
        "dataset": str(dataset.root),
        "engine": runner.name,
        "tta_hflip": tta,
        "weights_sha256": RunFolder(run_dir).weights_sha256(),
        "level_names": list(tree.level_names),
        **cal.to_dict(),
    }
    RunFolder(run_dir).write_json(THRESHOLDS_FILE, record)
    record["path"] = str(run_dir / THRESHOLDS_FILE)
    return record


def backoff_evaluation(
    probs: np.ndarray,
    labels: np.ndarray,
    config: RunConfig,
    thresholds: list[float | None] | None,
    out_png: Path | None = None,
    title: str = "Back-off",
) -> dict:
    """Accuracy/coverage curve of the back-off (one threshold for all levels) and the calibrated point."""
    tree = tree_or_flat(config.tree, config.classes)
    curve = coverage_curve(probs, labels, tree)
    calibrated = None
    if thresholds is not None:
        index = TreeIndex(tree)
        paths = consistent_paths(probs, index)
        calibrated = {
            "thresholds": thresholds,
            **operating_point(paths, correct_nodes(paths, np.asarray(labels), index), thresholds),
        }
    if out_png is not None:
        plot_coverage_curve(curve, calibrated, Path(out_png), title, tree.level_names[-1])
    return {
        "level_names": list(tree.level_names),
        "curve": curve,
        "calibrated": calibrated,
        "plot": Path(out_png).name if out_png is not None else None,
    }


def plot_coverage_curve(
    curve: list[dict], calibrated: dict | None, out_png: Path, title: str, finest_level: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p["threshold"] for p in curve]
    pct = lambda key: [100 * p[key] if p[key] is not None else np.nan for p in curve]  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(t, pct("accuracy"), label="answers that are right")
    ax.plot(t, pct("coverage"), label="photos answered (any level)")
    ax.plot(t, pct("finest_level_share"), label=f"answered down to {finest_level}")
    if calibrated is not None:
        acc = calibrated["accuracy"]
        note = (
            f"calibrated thresholds: {100 * calibrated['coverage']:.1f}% answered, {100 * acc:.1f}% right"
            if acc is not None
            else "calibrated thresholds: nothing answered"
        )
        ax.text(
            0.02,
            0.04,
            note,
            transform=ax.transAxes,
            fontsize=9,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"},
        )
    ax.set(
        xlabel="confidence threshold (same for every level)",
        ylabel="% of photos / of answers",
        title=title,
        ylim=(0, 102),
        xlim=(0, 1),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 0.12), fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
