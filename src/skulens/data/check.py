"""`skulens data check`: what is wrong with a dataset before a model learns it.

Counts per class and split, unreadable or truncated files, exact duplicate files (and the ones
that cross splits, i.e. test images leaking into train), very small images and class imbalance.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from skulens.data.datasets import ImageDataset
from skulens.data.images import load_image
from skulens.errors import ImageError

SMALL_SIDE = 32
FEW_IMAGES = 5


def check_dataset(dataset: ImageDataset, *, small_side: int = SMALL_SIDE, progress: bool = True) -> dict:
    unreadable, small = [], []
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for sample in tqdm(dataset.samples, desc="checking images", unit="img", disable=not progress, leave=False):
        try:
            data = Path(sample.path).read_bytes()
        except OSError as exc:
            unreadable.append(
                {
                    "path": str(sample.path),
                    "split": sample.split,
                    "error": f"{sample.path}: cannot read file ({exc.strerror or exc})",
                }
            )
            continue
        by_hash[hashlib.sha256(data).hexdigest()].append((str(sample.path), sample.split))
        try:
            img = load_image(data)
        except ImageError as exc:
            unreadable.append(
                {
                    "path": str(sample.path),
                    "split": sample.split,
                    "error": f"{sample.path}: {str(exc).removeprefix('image: ')}",
                }
            )
            continue
        if min(img.size) < small_side:
            small.append({"path": str(sample.path), "split": sample.split, "size": list(img.size)})
    duplicates = [[{"path": p, "split": s} for p, s in group] for group in by_hash.values() if len(group) > 1]
    cross_split = [g for g in duplicates if len({d["split"] for d in g}) > 1]

    counts = dataset.counts()
    train_counts = counts.get("train", {})
    nonzero = [n for n in train_counts.values() if n > 0]
    imbalance = (max(nonzero) / min(nonzero)) if nonzero else None
    return {
        "dataset": str(dataset.root),
        "layout": dataset.layout,
        "n_images": len(dataset.samples),
        "n_classes": len(dataset.classes),
        "tree_levels": dataset.tree.level_names if dataset.tree else None,
        "counts": counts,
        "unreadable": unreadable,
        "duplicates": duplicates,
        "cross_split_duplicates": cross_split,
        "small_images": small,
        "imbalance_ratio": imbalance,
        "classes_missing_in_train": [c for c, n in train_counts.items() if n == 0]
        if train_counts
        else list(dataset.classes),
        "classes_with_few_train_images": [c for c, n in train_counts.items() if 0 < n < FEW_IMAGES],
    }


def has_problems(report: dict) -> bool:
    return bool(report["unreadable"] or report["cross_split_duplicates"] or report["classes_missing_in_train"])


def render_report(report: dict) -> None:
    """Print the check as tables on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    splits = list(report["counts"])
    table = Table(
        title=f"{report['dataset']} ({report['layout']}): {report['n_images']} images, {report['n_classes']} classes"
    )
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    classes = sorted({c for per in report["counts"].values() for c in per})
    for cls in classes:
        table.add_row(cls, *[str(report["counts"][s].get(cls, 0)) for s in splits])
    table.add_row("[bold]total", *[f"[bold]{sum(report['counts'][s].values())}" for s in splits])
    console.print(table)

    summary = Table(title="checks", show_header=True)
    summary.add_column("check")
    summary.add_column("result")
    ratio = report["imbalance_ratio"]
    summary.add_row("unreadable or truncated files", _flag(len(report["unreadable"])))
    summary.add_row("exact duplicate groups", str(len(report["duplicates"])))
    summary.add_row("duplicates across splits (leakage)", _flag(len(report["cross_split_duplicates"])))
    summary.add_row(f"images under {SMALL_SIDE} px", str(len(report["small_images"])))
    summary.add_row("class imbalance (largest / smallest train class)", f"{ratio:.1f}x" if ratio else "-")
    summary.add_row("classes with no training image", _flag(len(report["classes_missing_in_train"])))
    summary.add_row(
        f"classes with under {FEW_IMAGES} training images", str(len(report["classes_with_few_train_images"]))
    )
    console.print(summary)
    for item in report["unreadable"][:20]:
        console.print(f"[red]unreadable[/red] {item['error']}", markup=True, highlight=False)
    for group in report["cross_split_duplicates"][:20]:
        console.print(
            "[yellow]same file in several splits:[/yellow] " + ", ".join(f"{d['path']} ({d['split']})" for d in group),
            highlight=False,
        )


def _flag(n: int) -> str:
    return "[green]0[/green]" if n == 0 else f"[red]{n}[/red]"
