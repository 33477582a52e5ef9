"""Does 2-process DistributedDataParallel training (gloo, CPU) learn as well as one process?

    nice -n 15 python benchmarks/ddp_parity.py [--seeds 0 1] [--epochs 2] [--out runs/ddp-parity]

For each seed it trains the same small Grocery Store recipe twice through the CLI: ``skulens train``
(one process, all cores) and ``torchrun --nproc_per_node=2 -m skulens train`` (two processes, one
thread each, each decoding and training on half of the images; the global batch is the same, so
both take the same optimizer steps). Then it scores both runs on the test split. Two seeds per
setting give the run-to-run noise the 1-vs-2 difference is judged against.

Writes benchmarks/results/ddp_parity.json and ddp_parity.png (the loss curves side by side).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--max-train-images", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (each of 2 processes takes half)")
    p.add_argument("--freeze-stages", type=int, default=3, help="frozen leading stages (faster steps on a CPU)")
    p.add_argument("--warmup-epochs", type=float, default=0.3)
    p.add_argument("--reuse", action="store_true", help="keep run folders a previous call finished")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="runs/ddp-parity")
    return p.parse_args()


def train(args, nproc: int, seed: int, out: Path) -> float:
    recipe = ["train", args.data, "--model", args.model, "--img-size", str(args.img_size),
              "--max-train-images", str(args.max_train_images), "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--seed", str(seed), "--keep", "last", "--patience", "0",
              "--freeze-stages", str(args.freeze_stages), "--warmup-epochs", str(args.warmup_epochs),
              "--device", "cpu", "--no-progress", "--out", str(out)]
    env = dict(os.environ)
    if nproc == 1:
        cmd = [sys.executable, "-m", "skulens", *recipe]
        env.pop("OMP_NUM_THREADS", None)  # one process may use every core
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "skulens", *recipe]
        env["OMP_NUM_THREADS"] = "1"  # one core per process (torchrun's default, stated here)
    timing = out / "wall_seconds.json"
    if args.reuse and timing.is_file():
        return json.loads(timing.read_text())["seconds"]
    if out.exists():
        shutil.rmtree(out)  # a fresh run each time
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.perf_counter() - started
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds


def read_log(run: Path) -> dict:
    rows = list(csv.DictReader((run / "log.csv").open()))
    return {key: [float(r[key]) for r in rows] for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, run in results["runs"].items():
        style = "-" if run["processes"] == 1 else "--"
        label = f"{run['processes']} process{'es' if run['processes'] > 1 else ''}, seed {run['seed']}"
        curves = run["curves"]
        for ax, key in zip(axes, ("train_loss", "val_loss", "val_acc")):
            ax.plot(curves["epoch"], curves[key], style, marker="o", label=label)
    for ax, title in zip(axes, ("training loss", "validation loss", "validation top-1")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"1 vs 2 processes (DDP, gloo, CPU): {results['recipe']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    from skulens.data.datasets import load_dataset
    from skulens.evaluation.report import evaluate_run

    dataset = load_dataset(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
               "recipe": f"{args.model}, {args.img_size} px, {args.max_train_images} train images, "
                         f"{args.epochs} epochs, global batch {args.batch_size}, {args.freeze_stages} frozen stages",
               "runs": {}}
    for seed in args.seeds:
        for nproc in (1, 2):
            name = f"p{nproc}-s{seed}"
            seconds = train(args, nproc, seed, out / name)
            scored = out / name / "eval-test" / "metrics.json"  # written by evaluate_run
            if args.reuse and scored.is_file():
                metrics = json.loads(scored.read_text())
            else:
                metrics = evaluate_run(out / name, dataset, "test", device="cpu", engine="torch", progress=False,
                                       out_dir=out / name / "eval-test")
            results["runs"][name] = {"processes": nproc, "seed": seed, "wall_seconds": round(seconds, 1),
                                     "test_top1": metrics["top1"], "test_top5": metrics["top5"],
                                     "curves": read_log(out / name)}
            print(f"{name}: test top-1 {100 * metrics['top1']:.2f}%, {seconds:.0f} s", flush=True)
            RESULTS.mkdir(exist_ok=True)  # saved as it goes: a long benchmark keeps what it measured
            (RESULTS / "ddp_parity.json").write_text(json.dumps(results, indent=1))
    one = [r["test_top1"] for r in results["runs"].values() if r["processes"] == 1]
    two = [r["test_top1"] for r in results["runs"].values() if r["processes"] == 2]
    results["summary"] = {
        "test_top1_1proc_mean": float(np.mean(one)), "test_top1_2proc_mean": float(np.mean(two)),
        "difference_points": 100 * float(np.mean(two) - np.mean(one)),
        # the seed-to-seed spread within each setting: the noise the difference is judged against
        "seed_spread_points_1proc": 100 * float(np.ptp(one)) if len(one) > 1 else None,
        "seed_spread_points_2proc": 100 * float(np.ptp(two)) if len(two) > 1 else None,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ddp_parity.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / "ddp_parity.png")
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
