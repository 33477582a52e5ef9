"""Which model should the built-in demo ship (issue 19)? Each candidate's INT8 export, as the server and the
shopper's browser would run it: file size against the budget, Grocery Store test top-1 and coarse top-1
(no test-time augmentation: one pass, as the page runs it), and CPU speed, all measured in one run.

    python benchmarks/demo_model_candidates.py --run runs/demo-lite0 --run runs/demo-lite2 \\
        [--data ../shared/datasets/grocery-store] [--budget-mb 10]

Each run must carry a checked INT8 export (`skulens export RUN --int8-only --calibration DATASET`).
The budget: the page downloads the model once (then the service worker keeps it); with the runtime
(3.6 MB compressed) the first visit should stay near what a product page with a few photos costs.
Saves benchmarks/results/demo_model_candidates.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

from skulens.data.datasets import load_dataset
from skulens.data.transforms import image_to_array
from skulens.engines.select import ONNX_INT8, OnnxEngine, current_export
from skulens.evaluation.report import evaluate_run
from skulens.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "grocery-store"


def speed(run: Path, photos: list[Path], min_seconds: float = 5.0) -> float:
    """Photos per second, batch 1, JPEG bytes to probabilities (decode, preprocessing, INT8 model)."""
    config = RunFolder(run).config()
    engine = OnnxEngine(run / ONNX_INT8, config)
    engine.probabilities(engine.batch([image_to_array(photos[0], config.preprocessing)]))  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        photo = photos[n % len(photos)]
        engine.probabilities(engine.batch([image_to_array(photo, config.preprocessing)]))
        n += 1
    return n / (time.perf_counter() - start)


def candidate(run: Path, dataset, budget_bytes: int) -> dict:
    record = current_export(run)
    if not record or ONNX_INT8 not in record.get("files", {}):
        raise SystemExit(f"{run}: no checked INT8 export; run `skulens export {run} --int8-only --calibration DATA`")
    size = (run / ONNX_INT8).stat().st_size
    metrics = evaluate_run(run, dataset, "test", engine="onnx", device="cpu", out_dir=run / "eval-test-int8")
    config = RunFolder(run).config()
    photos = [s.path for s in dataset.split("test")][:40]
    return {
        "run": str(run),
        "model": config.model.name,
        "img_size": config.preprocessing.img_size,
        "int8_bytes": size,
        "within_budget": size <= budget_bytes,
        "test_top1": metrics["top1"],
        "test_levels": {lv["level"]: lv["accuracy"] for lv in metrics.get("levels") or []},
        "n_test": metrics["n_images"],
        "cpu_photos_per_s_batch1": round(speed(run, photos), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, type=Path, help="a candidate run (repeat)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--budget-mb", type=float, default=10.0, help="largest INT8 file the page may download")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo_model_candidates.json")
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    budget = int(args.budget_mb * 1e6)
    rows = [candidate(run, dataset, budget) for run in args.run]
    fitting = [r for r in rows if r["within_budget"]]
    best = max(fitting, key=lambda r: r["test_top1"]) if fitting else None
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "budget_bytes": budget,
        "candidates": rows,
        "best_within_budget": best and best["run"],
        "note": "test split, one pass (no TTA), ONNX Runtime INT8 on the CPU: what `skulens serve` and the page run",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['run']}: {r['model']} {r['img_size']} px, INT8 {r['int8_bytes'] / 1e6:.2f} MB, "
            f"test top-1 {100 * r['test_top1']:.2f}%, {r['cpu_photos_per_s_batch1']} photos/s"
        )
    print(f"best within {args.budget_mb} MB: {result['best_within_budget']}")


if __name__ == "__main__":
    main()
