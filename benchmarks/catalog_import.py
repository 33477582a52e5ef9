"""Catalog import speed (issue 22): `skulens catalog import` of the Grocery Store catalog (81 products,
their iconic images) with the train photos as search examples (2,640), photos per second, for each
engine; with --before, an older skulens checkout's import timed beside it in the same run.

    python benchmarks/catalog_import.py --run RUN [--data ../shared/datasets/grocery-store] [--before OLD/src]

RUN must have a current ONNX export with an embedding output for the onnx rows. Writes
benchmarks/results/catalog_import.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"


def timed_import(run: str, data: str, engine: str, src: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": src} if src else None
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "skulens", "catalog", "import", data, "--db", f"{tmp}/shop.db", "--run", run,
               "--engine", engine, "--gallery-split", "train", "--json", "--no-progress"]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    report = json.loads(done.stdout)
    return {"code": "before" if src else "now", "engine": engine, "products": report["added"],
            "images": report["images"], "seconds": round(seconds, 1),
            "images_per_s": round(report["images"] / seconds, 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--engines", default="onnx,torch")
    p.add_argument("--before", help="an older skulens checkout's src/ folder, timed beside")
    args = p.parse_args()
    rows = []
    for engine in args.engines.split(","):
        for src in [None] + ([args.before] if args.before else []):
            rows.append(timed_import(args.run, args.data, engine, src))
            print(json.dumps(rows[-1]), flush=True)
    out = {"benchmark": "catalog import, Grocery Store catalog + train photos (issue 22)",
           "date": date.today().isoformat(), "command": "python " + " ".join(sys.argv),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": rows}  # fmt: skip
    path = Path(__file__).resolve().parent / "results" / "catalog_import.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
