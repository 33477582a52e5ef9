"""Issue 19: what INT8 weights with FP32 arithmetic cost on the server, next to static INT8 and PyTorch eager.

    git show d8c2ca2:src/skulens/demo_assets/model/model.int8.onnx > /tmp/static.onnx   # the static INT8 demo file
    python benchmarks/experiments/int8_weights_speed.py --static-onnx /tmp/static.onnx

Two measurements, each interleaved in one run: (1) ONNX Runtime model time per photo (2 threads) of the
demo's INT8-weights file and the static INT8 file, at batch 1 and 16; (2) a whole one-photo
`Recognizer.predict` of 30 Grocery Store test JPEGs with the demo model as served (INT8 weights) and with
its PyTorch engine (what `skulens serve` ran before issue 19).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from skulens.recognition.recognizer import Recognizer
from skulens.serving.config import demo_run_dir

DATA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "grocery-store"


def model_time(files: dict[str, Path]) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 288, 288)).astype(np.float32)
    sessions = {}
    for name, path in files.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for batch in (1, 16):
        xb, times = np.repeat(x, batch, 0), {k: [] for k in sessions}
        for _ in range(30 if batch == 1 else 6):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: xb})
                times[name].append(1000 * (time.perf_counter() - start) / batch)
        print("model ms per photo, batch", batch, {k: round(float(np.median(v)), 2) for k, v in times.items()})


def predict_time(data: Path) -> None:
    photos = sorted(data.rglob("test/**/*.jpg"))[::80][:30]
    recognizers = {"served": Recognizer.load(demo_run_dir()), "torch": Recognizer.load(demo_run_dir(), engine="torch")}
    times = {k: [] for k in recognizers}
    for _ in range(4):
        for photo in photos:
            for name, recognizer in recognizers.items():
                start = time.perf_counter()
                recognizer.predict(photo)
                times[name].append(1000 * (time.perf_counter() - start))
    print("one-photo predict ms", {k: round(float(np.median(v)), 1) for k, v in times.items()}, len(photos), "photos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--static-onnx", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    model_time({"int8_weights": demo_run_dir() / "model.int8.onnx", "static": args.static_onnx})
    predict_time(args.data)


if __name__ == "__main__":
    main()
