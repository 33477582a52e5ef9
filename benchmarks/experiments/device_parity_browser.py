"""Issue 19: benchmarks/on_device.py with a candidate INT8 file in place of the demo's, in a copy.

    python benchmarks/experiments/device_parity_browser.py --model /tmp/candidate.onnx [--photos 100]

Copies src/skulens/demo_assets/model to a temporary folder, puts MODEL there as model.int8.onnx (and its
checksum into export.json, so the server runs it), then runs on_device.py's measurement (headless
chromium: the page's DeviceEngine vs the server's Recognizer on the same Grocery Store test photos) and
prints the agreement: top-1 equal, top-1 probability within 0.02, median and largest gap; latency too.
Without --model: the shipped file (a copy of the folder all the same). Nothing in the package is changed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import on_device  # noqa: E402

from skulens.files import sha256_file  # noqa: E402
from skulens.serving.config import demo_run_dir  # noqa: E402


def candidate_run(model: Path | None, folder: Path) -> Path:
    run = folder / "model"
    shutil.copytree(demo_run_dir(), run)
    if model is not None:
        shutil.copyfile(model, run / "model.int8.onnx")
        record = json.loads((run / "export.json").read_text())
        record["files"]["model.int8.onnx"] = sha256_file(run / "model.int8.onnx")
        (run / "export.json").write_text(json.dumps(record, indent=2))
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--photos", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "device_parity_browser.json")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="skulens-parity-"))
    run = candidate_run(args.model, folder)
    on_device.demo_run_dir = lambda: run  # what on_device serves and compares with
    original = on_device.report

    def report(a, photos, loading, timed):
        original(a, photos, loading, timed)
        reference = on_device.Recognizer.load(run).predict_batch(photos)
        rows = timed["device"]["rows"]
        gaps = np.array([abs(d["confidence"] - r.confidence) for d, r in zip(rows, reference)])
        same = sum(d["label"] == r.label for d, r in zip(rows, reference))
        summary = {
            "model": str(args.model or "shipped"),
            "bytes": (run / "model.int8.onnx").stat().st_size,
            "top1_equal": f"{same}/{len(rows)}",
            "within_0.02": int((gaps <= 0.02).sum()),
            "median_gap": round(float(np.median(gaps)), 5),
            "max_gap": round(float(gaps.max()), 5),
            "device_ms": on_device.summary([r["ms"] for r in rows]),
            "server_ms": on_device.summary([r["ms"] for r in timed["server"]["rows"]]),
            "device": [[d["label"], d["confidence"]] for d in rows],
            "server": [[r.label, r.confidence] for r in reference],
        }
        args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps({k: v for k, v in summary.items() if k not in ("device", "server")}))

    on_device.report = report
    sys.argv = [sys.argv[0], "--photos", str(args.photos), "--out", str(args.out)]
    try:
        on_device.main()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
