"""Grocery Store classification benchmark: train on train, choose settings on val, report on test.

Example (the recorded run, see BENCHMARKS.md):
    python benchmarks/grocery_classification.py --model efficientnet_lite2 --img-size 256 \
        --epochs 12 --freeze-stages 3 --ema-decay 0.998 --catalog-images --keep last \
        --cache-scale 1.6 --out runs/bench-lite2

Prints and saves (benchmarks/results/<name>.json): training wall time, the eval settings chosen
on val (test-time size, flip TTA), and test top-1 / top-5 / macro F1 / per-level accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from skulens.data.datasets import load_dataset
from skulens.data.transforms import AugmentConfig
from skulens.evaluation.report import evaluate_run
from skulens.training.config import TrainConfig
from skulens.training.trainer import train

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="efficientnet_lite2")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--freeze-stages", type=int, default=3)
    p.add_argument("--ema-decay", type=float, default=0.998)
    p.add_argument("--catalog-images", action="store_true")
    p.add_argument("--eval-sizes", default="256,288,320,348")
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--keep", default="last", choices=["best", "last"])
    p.add_argument("--cache-scale", type=float, default=1.6)
    p.add_argument(
        "--hue-jitter",
        type=float,
        default=None,
        help="hue shift of the colour jitter (default min(0.05, 0.3/6); 0: colour-safe)",
    )
    p.add_argument("--tree-loss-weight", type=float, default=0.0, help="loss weight of each upper tree level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--name", default=None)
    args = p.parse_args()

    name = args.name or f"grocery_{args.model}"
    out = Path(args.out or f"runs/bench-{name}")
    dataset = load_dataset(args.data)
    cfg = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        img_size=args.img_size,
        batch_size=args.batch_size,
        lr=args.lr,
        freeze_stages=args.freeze_stages,
        ema_decay=args.ema_decay,
        catalog_images=args.catalog_images,
        patience=args.patience,
        keep=args.keep,
        cache_scale=args.cache_scale,
        seed=args.seed,
        workers=args.workers,
        augment=AugmentConfig(hue_jitter=args.hue_jitter),
        tree_loss_weight=args.tree_loss_weight,
        progress=sys.stderr.isatty(),
        eval_sizes=[int(s) for s in args.eval_sizes.split(",") if s],
    )
    t0 = time.perf_counter()
    result = train(cfg, dataset, out)
    train_wall = time.perf_counter() - t0

    # Flip TTA on or off: decided on val, like every other setting.
    val = {
        tta: evaluate_run(out, dataset, "val", tta=tta, out_dir=out / f"eval-val-tta{int(tta)}")
        for tta in (False, True)
    }
    use_tta = val[True]["top1"] > val[False]["top1"]
    test = evaluate_run(out, dataset, "test", tta=use_tta)
    levels = {lv["level"]: lv["accuracy"] for lv in test.get("levels", [])}
    summary = {
        "benchmark": "grocery-store classification",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"
        + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "config": cfg.to_dict(),
        "run_dir": str(out),
        "train_seconds": round(result.train_seconds, 1),
        "train_wall_seconds_incl_eval_size": round(train_wall, 1),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "val_top1_no_tta": val[False]["top1"],
        "val_top1_tta": val[True]["top1"],
        "tta_chosen": use_tta,
        "eval_img_size": test["img_size"],
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "test_macro_f1": test["macro_f1"],
        "test_level_accuracy": levels,
    }
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
