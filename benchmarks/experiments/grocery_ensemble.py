"""Average the class probabilities of several trained runs (Grocery Store: val for choices, test to report).

    python benchmarks/experiments/grocery_ensemble.py runs/bench-lite2 runs/bench-lite0

Each run is evaluated at its own test-time size (chosen on val at training time); flip TTA is
chosen per run on val. Prints and saves (benchmarks/results/grocery_ensemble.json) the test
top-1 of each run alone and of the average, at every level of the category tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path

import numpy as np

from skulens.data.datasets import load_dataset
from skulens.engines.select import load_engine
from skulens.evaluation.inference import dataset_probabilities
from skulens.evaluation.metrics import classification_metrics

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "grocery-store"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--name", default="grocery_ensemble")
    args = p.parse_args()
    dataset = load_dataset(args.data)
    probs: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
    labels = {}
    chosen = {}
    for run in args.runs:
        engine = load_engine(run, "torch")
        if engine.config.classes != dataset.classes:
            raise SystemExit(f"{run}: trained on other classes")
        pre = engine.config.preprocessing
        val = {}
        for tta in (False, True):
            val[tta], labels["val"], _, _ = dataset_probabilities(
                lambda x: engine.probabilities(x, tta), dataset.split("val"), pre, desc=f"{run} val"
            )
        tta = bool(np.mean(val[True].argmax(1) == labels["val"]) > np.mean(val[False].argmax(1) == labels["val"]))
        chosen[run] = {"img_size": pre.img_size, "tta": tta}
        probs["val"][run] = val[tta]
        probs["test"][run], labels["test"], _, _ = dataset_probabilities(
            lambda x: engine.probabilities(x, tta), dataset.split("test"), pre, desc=f"{run} test"
        )
    tree = load_engine(args.runs[0], "torch").config.tree
    results = {}
    for split in ("val", "test"):
        members = {**probs[split], "ensemble": np.mean(list(probs[split].values()), axis=0)}
        for name, pr in members.items():
            m = classification_metrics(pr, labels[split], dataset.classes, tree)
            results.setdefault(name, {})[split] = {
                "top1": m["top1"],
                "top5": m["top5"],
                "levels": {lv["level"]: lv["accuracy"] for lv in m["levels"]},
            }
    for name, r in results.items():
        t = r["test"]
        print(
            f"{name:28s} test top-1 {100 * t['top1']:.2f}%  levels "
            + ", ".join(f"{k} {100 * v:.2f}%" for k, v in t["levels"].items())
        )
    out = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "runs": chosen,
        "results": results,
    }
    results_dir = Path(__file__).resolve().parents[1] / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"{args.name}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
