"""Does 2-process DistributedDataParallel training (gloo, CPU) learn as well as one process?

    nice -n 15 python benchmarks/ddp_parity.py [--seeds 0 1] [--epochs 2] [--out runs/ddp-parity]

For each seed it trains the same small Grocery Store recipe twice through the CLI: ``skulens train``
(one process, all cores) and ``torchrun --nproc_per_node=2 -m skulens train`` (two processes, one
thread each, each decoding and training on half of the images; the global batch is the same, so
both take the same optimizer steps; BatchNorm statistics are synced over both processes, the
default). ``--no-sync-control`` adds 2-process runs with per-process BatchNorm, ``--bn-control``
1-process runs whose BatchNorm sees half-batches. Then it scores both runs on the test split. Two seeds per
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
    p.add_argument(
        "--bn-control",
        action="store_true",
        help="also train 1 process with BatchNorm over half-batches, as each of 2 processes sees them",
    )
    p.add_argument(
        "--no-sync-control",
        action="store_true",
        help="also train 2 processes without synced BatchNorm (each normalises its half-batch)",
    )
    p.add_argument("--as-bn-control", action="store_true", help=argparse.SUPPRESS)  # the control's own process
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="runs/ddp-parity")
    return p.parse_args()


def train(args, nproc: int, seed: int, out: Path, bn_control: bool = False, sync_bn: bool = True) -> float:
    recipe = [
        "train",
        args.data,
        "--model",
        args.model,
        "--img-size",
        str(args.img_size),
        "--max-train-images",
        str(args.max_train_images),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(seed),
        "--keep",
        "last",
        "--patience",
        "0",
        "--freeze-stages",
        str(args.freeze_stages),
        "--warmup-epochs",
        str(args.warmup_epochs),
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ] + ([] if sync_bn else ["--no-sync-bn"])
    env = dict(os.environ)
    if bn_control:
        cmd = [sys.executable, __file__, "--as-bn-control", *recipe]
        env.pop("OMP_NUM_THREADS", None)
    elif nproc == 1:
        cmd = [sys.executable, "-m", "skulens", *recipe]
        env.pop("OMP_NUM_THREADS", None)  # one process may use every core
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "skulens",
            *recipe,
        ]
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


def run_bn_control(recipe: list[str]) -> None:
    """One process whose BatchNorm layers see each half of every batch separately, as each of two
    DDP processes does (the only computation that differs): separates that effect from DDP's."""
    import torch

    import skulens.training.trainer as trainer
    from skulens.cli import main as skulens_main

    whole = trainer.model_logits

    def halves(model, x, y=None):
        h = len(x) // 2
        return torch.cat(
            [whole(model, x[:h], None if y is None else y[:h]), whole(model, x[h:], None if y is None else y[h:])]
        )

    trainer.model_logits = halves
    raise SystemExit(skulens_main(recipe))


def read_log(run: Path) -> dict:
    rows = list(csv.DictReader((run / "log.csv").open()))
    return {key: [float(r[key]) for r in rows] for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")}


def plot(results: dict, path: Path) -> None:
    """Training loss, validation loss and accuracy per epoch: each setting's mean over the seeds,
    with the band from its lowest to its highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = {
        "1 process": lambda r: r["processes"] == 1 and not r["batchnorm_over_half_batches"],
        "2 processes (DDP, gloo, synced BatchNorm)": lambda r: r["processes"] == 2 and r["synced_batchnorm"],
        "2 processes, BatchNorm per process": lambda r: r["processes"] == 2 and not r["synced_batchnorm"],
        "1 process, BatchNorm over half-batches": lambda r: r["batchnorm_over_half_batches"],
    }
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for (label, chosen), style in zip(settings.items(), ("-", "--", "-.", ":")):
        runs = [r for r in results["runs"].values() if chosen(r)]
        if not runs:
            continue
        epochs = runs[0]["curves"]["epoch"]
        for ax, key in zip(axes, ("train_loss", "val_loss", "val_acc")):
            values = np.array([r["curves"][key] for r in runs])
            (line,) = ax.plot(epochs, values.mean(0), style, marker="o", label=f"{label} ({len(runs)} seeds)")
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
    for ax, title in zip(axes, ("training loss", "validation loss", "validation top-1")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_xticks(results["runs"][next(iter(results["runs"]))]["curves"]["epoch"])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"1 vs 2 processes on a 2-core CPU: {results['recipe']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    if "--as-bn-control" in sys.argv:
        run_bn_control([a for a in sys.argv[1:] if a != "--as-bn-control"])
    args = parse_args()
    from skulens.data.datasets import load_dataset
    from skulens.evaluation.report import evaluate_run

    dataset = load_dataset(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "recipe": f"{args.model}, {args.img_size} px, {args.max_train_images} train images, "
        f"{args.epochs} epochs, global batch {args.batch_size}, {args.freeze_stages} frozen stages",
        "runs": {},
    }
    for seed in args.seeds:
        settings = (
            [(1, False, True), (2, False, True)]
            + ([(1, True, True)] if args.bn_control else [])
            + ([(2, False, False)] if args.no_sync_control else [])
        )
        for nproc, control, sync_bn in settings:
            name = f"p{nproc}{'-halfbn' if control else ''}{'' if sync_bn else '-nosync'}-s{seed}"
            seconds = train(args, nproc, seed, out / name, control, sync_bn)
            scored = out / name / "eval-test" / "metrics.json"  # written by evaluate_run
            if args.reuse and scored.is_file():
                metrics = json.loads(scored.read_text())
            else:
                metrics = evaluate_run(
                    out / name,
                    dataset,
                    "test",
                    device="cpu",
                    engine="torch",
                    progress=False,
                    out_dir=out / name / "eval-test",
                )
            results["runs"][name] = {
                "processes": nproc,
                "batchnorm_over_half_batches": control,
                "synced_batchnorm": sync_bn and nproc > 1,
                "seed": seed,
                "wall_seconds": round(seconds, 1),
                "test_top1": metrics["top1"],
                "test_top5": metrics["top5"],
                "curves": read_log(out / name),
            }
            print(f"{name}: test top-1 {100 * metrics['top1']:.2f}%, {seconds:.0f} s", flush=True)
            RESULTS.mkdir(exist_ok=True)  # saved as it goes: a long benchmark keeps what it measured
            (RESULTS / "ddp_parity.json").write_text(json.dumps(results, indent=1))
    groups = {
        "1proc": [r for r in results["runs"].values() if r["processes"] == 1 and not r["batchnorm_over_half_batches"]],
        "2proc": [r for r in results["runs"].values() if r["processes"] == 2 and r["synced_batchnorm"]],
        "2proc_nosync": [r for r in results["runs"].values() if r["processes"] == 2 and not r["synced_batchnorm"]],
        "1proc_halfbn": [r for r in results["runs"].values() if r["batchnorm_over_half_batches"]],
    }
    summary = {}
    for group, runs in groups.items():
        if runs:
            top1 = 100 * np.array([r["test_top1"] for r in runs])
            # the seed-to-seed standard deviation: the noise differences are judged against
            summary[group] = {
                "test_top1_mean": float(top1.mean()),
                "seeds": len(top1),
                "test_top1_std": float(top1.std(ddof=1)) if len(top1) > 1 else None,
            }
    one, two = summary["1proc"], summary["2proc"]
    summary["difference_points_2proc_minus_1proc"] = two["test_top1_mean"] - one["test_top1_mean"]
    if one["test_top1_std"] is not None and two["test_top1_std"] is not None:
        summary["standard_error_of_difference"] = float(
            np.sqrt(one["test_top1_std"] ** 2 / one["seeds"] + two["test_top1_std"] ** 2 / two["seeds"])
        )
    results["summary"] = summary
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ddp_parity.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / "ddp_parity.png")
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    main()
