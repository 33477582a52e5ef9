"""Plots a person would rather look at than read: training curves and confusion matrices."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training_curves(log_csv: Path, out_png: Path) -> None:
    with log_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", label="train")
    ax_loss.plot(epochs, [float(r["val_loss"]) for r in rows], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * float(r["train_acc"]) for r in rows], "o-", label="train (augmented)")
    ax_acc.plot(epochs, [100 * float(r["val_acc"]) for r in rows], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(matrix: np.ndarray, labels: list[str], out_png: Path, title: str) -> None:
    """Row-normalised confusion matrix; large label sets get a bigger canvas and small ticks."""
    n = len(labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = matrix / matrix.sum(axis=1, keepdims=True)
    norm = np.nan_to_num(norm)
    side = min(30, max(6, 0.22 * n + 3))
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    font = max(4, min(10, 400 // max(n, 1)))
    ax.set_xticklabels(labels, rotation=90, fontsize=font)
    ax.set_yticklabels(labels, fontsize=font)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        int(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
