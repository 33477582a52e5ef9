"""Multi-scale test-time augmentation for a Grocery Store classifier: class probabilities at several
test sizes, and every average of them, on val and test; the combination is chosen on val.

    python benchmarks/experiments/grocery_multiscale.py runs/bench-lite2-288 320,352,384

Prints one row per combination and saves benchmarks/results/grocery_multiscale.json.
"""

from __future__ import annotations

import itertools
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from skulens.data.datasets import load_dataset
from skulens.engines import TorchEngine
from skulens.evaluation.inference import dataset_probabilities
from skulens.evaluation.metrics import tree_level_accuracy
from skulens.runs import load_run

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "grocery-store"
RULE = "max val fine top-1, then val coarse, then fewer sizes"


def main() -> None:
    run, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    torch.set_num_threads(2)
    dataset = load_dataset(DATA)
    model, config = load_run(run)
    predict = TorchEngine(model.to(memory_format=torch.channels_last), config, torch.device("cpu")).probabilities
    probs = {}
    for split in ("val", "test"):
        for size in sizes:
            p, labels, _, _ = dataset_probabilities(
                predict, dataset.split(split), config.preprocessing, img_size=size, progress=False
            )
            probs[split, size] = (p, labels)
            print(split, size, float((p.argmax(1) == labels).mean()), flush=True)
    rows = []
    for k in range(1, len(sizes) + 1):
        for combo in itertools.combinations(sizes, k):
            row = {"sizes": combo}
            for split in ("val", "test"):
                p = np.mean([probs[split, s][0] for s in combo], axis=0)
                labels = probs[split, combo[0]][1]
                levels = {lv["level"]: lv["accuracy"] for lv in tree_level_accuracy(p, labels, dataset.tree)}
                row[split] = {"fine": float((p.argmax(1) == labels).mean()), "coarse": levels["coarse"]}
            rows.append(row)
            print(row, flush=True)
    best = max(rows, key=lambda r: (r["val"]["fine"], r["val"]["coarse"], -len(r["sizes"])))
    print("chosen on val:", best)
    out = Path(__file__).resolve().parents[1] / "results" / "grocery_multiscale.json"
    out.write_text(
        json.dumps(
            {
                "run": run,
                "date": date.today().isoformat(),
                "machine": "x86_64, 2 CPU cores",
                "rule": RULE,
                "combinations": rows,
                "chosen": best,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
