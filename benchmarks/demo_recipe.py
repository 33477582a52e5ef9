"""Which settings should `skulens demo` train with? Trains each candidate on the bundled Grocery Store
sample (8 products, 80 train / 21 val / 32 test photos) and prints val and test top-1 and the time.
The demo's recipe is chosen on val; test is printed to report, not to choose.

    .venv/bin/python benchmarks/demo_recipe.py [--seeds 0 1] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from skulens.api import DEMO_RECIPE, DEMO_TARGET_PRECISION, Run, demo_dataset_path

CANDIDATES = {
    "lite2, 160 px": {**DEMO_RECIPE, "model": "efficientnet_lite2", "augment": {}},
    "lite1, 160 px": {**DEMO_RECIPE, "model": "efficientnet_lite1", "augment": {}},
    "the demo recipe (12 ep, 160 px, hue 0.05)": {**DEMO_RECIPE, "epochs": 12, "img_size": 160, "augment": {}},
    "no hue jitter": {**DEMO_RECIPE, "epochs": 12, "img_size": 160, "augment": {"hue_jitter": 0.0}},
    "no hue, 224 px": {**DEMO_RECIPE, "epochs": 12, "img_size": 224, "augment": {"hue_jitter": 0.0}},
    "no hue, 18 ep": {**DEMO_RECIPE, "epochs": 18, "img_size": 160, "augment": {"hue_jitter": 0.0}},
    "no hue, 18 ep, lr 2e-3": {
        **DEMO_RECIPE,
        "epochs": 18,
        "img_size": 160,
        "lr": 2e-3,
        "augment": {"hue_jitter": 0.0},
    },
    "no hue, 18 ep, freeze 2": {
        **DEMO_RECIPE,
        "epochs": 18,
        "img_size": 160,
        "freeze_stages": 2,
        "augment": {"hue_jitter": 0.0},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", help="candidate names to run (default: all)")
    args = parser.parse_args()
    data = demo_dataset_path()
    rows = []
    for name, recipe in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                run = Run.train(data, out=f"{out}/run", recipe={**recipe, "seed": seed, "progress": False})
                seconds = time.perf_counter() - start
                run.calibrate(data, "val", target_precision=DEMO_TARGET_PRECISION, progress=False)
                test = run.evaluate(data, "test", progress=False)
                point = test["backoff"]["calibrated"]
            rows.append(
                {
                    "candidate": name,
                    "seed": seed,
                    "val_top1": run.result.best_val_acc,
                    "test_top1": test["top1"],
                    "train_seconds": round(seconds, 1),
                    # after the back-off calibrated on val: share of test photos answered wrongly (any depth)
                    "test_answered": round(point["coverage"], 4),
                    "test_answered_wrong": round(point["coverage"] * (1 - (point["accuracy"] or 0)), 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
