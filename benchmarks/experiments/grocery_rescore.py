"""Score a trained Grocery Store classifier the way grocery_classification.py does, for a run trained
elsewhere (e.g. on a GPU machine from re-encoded photos): the test-time size and flip TTA are chosen
on the val photos (original files), then test is scored once.

    python benchmarks/experiments/grocery_rescore.py RUN --sizes 256,288,320,352 --name grocery_gpu_lite2

Saves benchmarks/results/<name>.json: val top-1 for every (size, flip), the choice, and test top-1 /
top-5 / macro F1 / accuracy per tree level (coarse = the predicted product's path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path

import torch

from skulens.data.datasets import load_dataset
from skulens.evaluation.report import evaluate_run

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "grocery-store"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--sizes", default="256,288,320,352")
    p.add_argument("--name", required=True)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dataset, run = load_dataset(args.data), Path(args.run)
    val = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        for tta in (False, True):
            m = evaluate_run(
                run,
                dataset,
                "val",
                tta=tta,
                img_size=size,
                engine="torch",
                progress=False,
                out_dir=run / f"eval-val-{size}-tta{int(tta)}",
            )
            val[f"{size}/{'flip' if tta else 'plain'}"] = m["top1"]
            print(f"val {size} px, flip {tta}: {m['top1']:.4f}", flush=True)
    # ties go to the cheaper setting: the smaller size, then no flip
    key = max(val, key=lambda k: (val[k], -int(k.split("/")[0]), k.endswith("plain")))
    size, tta = int(key.split("/")[0]), key.endswith("flip")
    test = evaluate_run(run, dataset, "test", tta=tta, img_size=size, engine="torch", progress=False)
    config = json.loads((run / "config.json").read_text())
    summary = {
        "benchmark": "grocery-store classification, scored here",
        "date": date.today().isoformat(),
        "machine (scoring)": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "run_dir": str(run),
        "train_args": config.get("train_args"),
        "val_top1": val,
        "chosen": {"img_size": size, "flip_tta": tta},
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "test_macro_f1": test["macro_f1"],
        "test_level_accuracy": {lv["level"]: lv["accuracy"] for lv in test.get("levels", [])},
        "test_level_accuracy_summed": {lv["level"]: lv.get("accuracy_summed") for lv in test.get("levels", [])},
    }
    out = Path(__file__).resolve().parents[1] / "results" / f"{args.name}.json"
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("chosen", "test_top1", "test_level_accuracy")}))


if __name__ == "__main__":
    main()
