"""Compare runs by their validation curves (log.csv): the mean val top-1 over a window of epochs.

For runs that share a schedule but not an end (a call that ran out of time), the same epochs of
the same schedule are the fair comparison. Example (the Grocery Store augmentation arms, BENCHMARKS.md):

    python benchmarks/experiments/val_curves.py runs/gpu/s5/g0s0 runs/gpu/s5/g0s1 runs/gpu/s5/g1s0 runs/gpu/s5/g1s1 \
        runs/gpu/s5/g2s0 runs/gpu/s5/g2s1 --epochs 5-9 --name grocery_gpu_augment_arms
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import date
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--epochs", default="5-9", help="inclusive window, e.g. 5-9")
    p.add_argument("--name", default="val_curves")
    args = p.parse_args()
    first, last = (int(v) for v in args.epochs.split("-"))
    out = {}
    for run in args.runs:
        rows = list(csv.DictReader((Path(run) / "log.csv").open()))
        window = [float(r["val_acc"]) for r in rows if first <= int(r["epoch"]) <= last]
        if len(window) != last - first + 1:
            print(f"{run}: has epochs 1-{len(rows)}, not the whole window {args.epochs}", file=sys.stderr)
            continue
        config = json.loads((Path(run) / "config.json").read_text())["train_args"]
        out[Path(run).name] = {
            "mean_val_top1": sum(window) / len(window),
            "val_top1": window,
            "epochs_logged": len(rows),
            "seed": config.get("seed"),
            "hue_jitter": config.get("augment", {}).get("hue_jitter"),
            "tree_loss_weight": config.get("tree_loss_weight", 0.0),
        }
        print(
            f"{Path(run).name}: mean val top-1 over epochs {args.epochs} = {100 * out[Path(run).name]['mean_val_top1']:.2f}%"
        )
    summary = {
        "date": date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "epochs": args.epochs,
        "runs": out,
    }
    results = Path(__file__).resolve().parents[1] / "results"
    results.mkdir(exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
