"""Evaluate a run's *last-epoch* EMA weights (from last.safetensors) at several input sizes.

    python benchmarks/experiments/evaluate_last_epoch.py RUN OUT_RUN SIZES [--data DATASET]
    e.g. python benchmarks/experiments/evaluate_last_epoch.py runs/bench-lite2-r1 runs/bench-lite2-r1-last 256,320

Writes OUT_RUN as a run folder holding those weights and prints val/test top-1 per size and level.
Used to compare "best validation epoch" against "last epoch" selection (BENCHMARKS.md).
"""

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from skulens.data.datasets import load_dataset
from skulens.evaluation.report import evaluate_run

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "grocery-store"

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("out")
p.add_argument("sizes")
p.add_argument("--data", default=str(DEFAULT_DATA))
args = p.parse_args()
src, dst = Path(args.run), Path(args.out)
dst.mkdir(exist_ok=True)
tensors = load_file(str(src / "last.safetensors"))
prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
save_file({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, str(dst / "model.safetensors"))
shutil.copy(src / "config.json", dst / "config.json")
dataset = load_dataset(args.data)
for split in ("val", "test"):
    for size in [int(s) for s in args.sizes.split(",")]:
        m = evaluate_run(
            dst, dataset, split, img_size=size, engine="torch", progress=False, out_dir=dst / f"eval-{split}-{size}"
        )
        levels = ", ".join(f"{lv['level']} {100 * lv['accuracy']:.2f}%" for lv in m["levels"])
        print(f"{split} at {size}px: top-1 {100 * m['top1']:.2f}% ({levels})", flush=True)
