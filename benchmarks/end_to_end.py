"""JPEG to answer on the CPU, end to end (issue 22): decode alone, the model alone, and the two
together (serial, then overlapped by skulens.data.pipeline), in one process and through
`skulens predict`; and one-photo start-up against `python -c "import torch, timm"`. Everything is
measured in one run, so the ratios hold on a noisy machine.

    python benchmarks/end_to_end.py --run RUN [--data ../shared/datasets/grocery-store] [--images 600]

RUN must have a current ONNX export (`skulens export RUN --int8`). Writes benchmarks/results/end_to_end.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from skulens.data.pipeline import ordered_map, threads_beside
from skulens.data.transforms import image_to_array
from skulens.engines.select import load_engine

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"


def test_photos(data: Path, n: int) -> list[Path]:
    photos = sorted((data / "dataset" / "test").rglob("*.jpg"))
    if len(photos) < n:
        raise SystemExit(f"{data}: {len(photos)} test photos, fewer than {n}")
    return photos[:: max(1, len(photos) // n)][:n]


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def in_process(run: Path, photos: list[Path], threads: int | None, workers: int, batch: int) -> dict:
    """Photos/s of decode alone, the model alone, serial end to end and overlapped end to end."""
    engine = load_engine(run, "onnx", "cpu", threads=threads)
    pre = engine.config.preprocessing
    blobs = [p.read_bytes() for p in photos]
    start = time.perf_counter()
    inputs = [image_to_array(b, pre) for b in blobs]
    decode = time.perf_counter() - start
    engine.outputs(engine.batch(inputs[:batch]))  # warm-up
    start = time.perf_counter()
    for i in range(0, len(inputs), batch):
        engine.outputs(engine.batch(inputs[i : i + batch]))
    model = time.perf_counter() - start
    start = time.perf_counter()
    for b in blobs:
        engine.outputs(engine.batch([image_to_array(b, pre)]))[0].argmax(1)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    pending = []
    for _, x, _ in ordered_map(lambda b: image_to_array(b, pre), blobs, workers, ahead=2 * batch):
        pending.append(x)
        if len(pending) == batch:
            engine.outputs(engine.batch(pending))[0].argmax(1)
            pending = []
    if pending:
        engine.outputs(engine.batch(pending))[0].argmax(1)
    overlapped = time.perf_counter() - start
    n = len(blobs)
    return {
        "engine": engine.name,
        "ort_threads": threads,
        "decode_workers": workers,
        "batch": batch,
        "decode_only_per_s": rate(n, decode),
        "model_only_per_s": rate(n, model),
        "serial_end_to_end_per_s": rate(n, serial),
        "overlapped_end_to_end_per_s": rate(n, overlapped),
    }


def same_answers(run: Path, photos: list[Path]) -> dict:
    """The NumPy path (no torch) against the torch-tensor path skulens took before, per engine: the
    largest probability difference over these photos, and top-1 agreement."""
    import torch

    from skulens.data.transforms import image_to_input

    out = {}
    for name in ("onnx", "torch"):
        engine = load_engine(run, name, "cpu")
        pre = engine.config.preprocessing
        arrays = [image_to_array(p, pre) for p in photos]
        tensors = torch.stack([image_to_input(p, pre) for p in photos])
        new = np.asarray(engine.outputs(engine.batch(arrays))[0])
        old = engine.outputs(tensors)[0].numpy()
        out[engine.name] = {"photos": len(photos), "max_abs_difference": float(np.abs(new - old).max()),
                            "same_top1": float(np.mean(new.argmax(1) == old.argmax(1)))}  # fmt: skip
    return out


def wall(cmd: list[str], repeats: int, src: str | None = None) -> float:
    """Median wall time of ``cmd``; ``src``: run that skulens source tree instead (PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": src} if src else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def through_the_cli(run: Path, photos: list[Path], repeats: int, src: str | None = None) -> dict:
    skulens = [sys.executable, "-m", "skulens"]
    one = wall([*skulens, "predict", str(run), str(photos[0])], repeats, src)
    torch_timm = wall([sys.executable, "-c", "import torch, timm"], repeats)
    many = wall([*skulens, "predict", str(run), *map(str, photos)], 1, src)
    return {
        "one_photo_seconds": one,
        "import_torch_timm_seconds": torch_timm,
        "one_photo_vs_import_torch_timm": round(one / torch_timm, 3),
        "photos": len(photos),
        "predict_all_seconds": many,
        "predict_all_per_s": rate(len(photos), many),
        "predict_after_startup_per_s": rate(len(photos), many - one),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--repeats", type=int, default=3, help="start-up timings (median)")
    p.add_argument("--before", help="an older skulens checkout (its src/ folder): its `skulens predict`, timed beside")
    args = p.parse_args()
    run, photos = Path(args.run), test_photos(Path(args.data), args.images)
    cores = os.cpu_count() or 1
    # (model threads, decode threads, batch): serial at batch 1 and 8; skulens' default (the model on the
    # cores the decoder leaves); the model's one-thread-per-core beside a decoder (oversubscribed)
    settings = [(cores, 0, 1), (cores, 0, 8), (threads_beside(1), 1, 8), (cores, 1, 8), (cores, cores, 8)]
    rows = []
    for threads, workers, batch in settings:
        rows.append(in_process(run, photos, threads, workers, batch))
        print(json.dumps(rows[-1]), flush=True)
    same = same_answers(run, photos[:100])
    print(json.dumps(same), flush=True)
    cli = through_the_cli(run, photos, args.repeats)
    print(json.dumps(cli), flush=True)
    if args.before:
        cli = {"now": cli, "before": through_the_cli(run, photos, args.repeats, args.before)}
        print(json.dumps(cli["before"]), flush=True)
    out = {
        "benchmark": "JPEG to answer, end to end (issue 22)",
        "date": date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {cores} cores",
        "run": str(run),
        "photos": len(photos),
        "in_process": rows,
        "same_answers": same,
        "cli": cli,
    }
    path = Path(__file__).resolve().parent / "results" / "end_to_end.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
