"""Inference speed on this machine: PyTorch eager vs channels_last vs ONNX Runtime FP32 / INT8.

    python benchmarks/inference.py --run runs/grocery-lite0 [--data ../shared/datasets/grocery-store]

All engines are timed in one run, so the ratios are comparable on a shared, noisy machine:
- model throughput (images/s) at batch 1 and at each batch size, on preprocessed real photos;
- end to end from JPEG bytes to labels (decode + shared preprocessing + model + argmax);
- top-1 on the Grocery Store test split for the PyTorch FP32 model and the ONNX INT8 model;
- the size of the INT8 file.
The run must have been exported (`skulens export RUN --int8`). Saves benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from skulens.data.datasets import load_dataset
from skulens.data.images import load_image
from skulens.data.transforms import to_model_input
from skulens.engines.select import ONNX_FP32, ONNX_INT8, OnnxEngine, current_export
from skulens.evaluation.report import evaluate_run
from skulens.runs import load_run

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"


def images_per_second(fn, batch: torch.Tensor, min_seconds: float) -> float:
    fn(batch)
    fn(batch)  # warm-up (allocations, ORT arena)
    n, start = 0, time.perf_counter()
    while True:
        fn(batch)
        n += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and n >= 4 * len(batch):
            return n / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--batches", default="1,4,8,16,32")
    p.add_argument("--seconds", type=float, default=4.0, help="minimum timing per configuration")
    p.add_argument("--e2e-images", type=int, default=256)
    p.add_argument("--skip-accuracy", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    run = Path(args.run)
    if not current_export(run):
        raise SystemExit(f"{run}: export it first: skulens export {run} --format onnx --int8")
    model, config = load_run(run)
    model.eval()
    pre = config.preprocessing
    dataset = load_dataset(args.data)
    test = dataset.split("test")
    rng = np.random.default_rng(0)
    picked = [test[i] for i in rng.choice(len(test), size=min(args.e2e_images, len(test)), replace=False)]
    jpeg_bytes = [Path(s.path).read_bytes() for s in picked]
    inputs = torch.stack([to_model_input(load_image(b, draft_size=pre.img_size), pre) for b in jpeg_bytes[:32]])

    cl_model = load_run(run)[0].eval().to(memory_format=torch.channels_last)
    fp32, int8 = OnnxEngine(run / ONNX_FP32, config), OnnxEngine(run / ONNX_INT8, config)

    @torch.no_grad()
    def eager(x):
        return model(x)

    @torch.no_grad()
    def channels_last(x):
        return cl_model(x.contiguous(memory_format=torch.channels_last))

    engines = {
        "pytorch_eager": eager,
        "pytorch_channels_last": channels_last,
        "onnxruntime_fp32": fp32.probabilities,
        "onnxruntime_int8": int8.probabilities,
    }
    batches = [int(b) for b in args.batches.split(",")]
    throughput: dict[str, dict[int, float]] = {}
    for name, fn in engines.items():
        throughput[name] = {}
        for b in batches:
            x = inputs[:b] if b <= len(inputs) else inputs.repeat((b + len(inputs) - 1) // len(inputs), 1, 1, 1)[:b]
            throughput[name][b] = images_per_second(fn, x, args.seconds)
            print(f"{name:24s} batch {b:3d}: {throughput[name][b]:7.1f} img/s", flush=True)
    best = {name: max(r.items(), key=lambda kv: kv[1]) for name, r in throughput.items()}
    base = best["pytorch_eager"][1]

    def end_to_end(fn, batch: int) -> float:
        start = time.perf_counter()
        labels = []
        for i in range(0, len(jpeg_bytes), batch):
            x = torch.stack(
                [to_model_input(load_image(b, draft_size=pre.img_size), pre) for b in jpeg_bytes[i : i + batch]]
            )
            labels += [config.classes[j] for j in fn(x).argmax(-1).tolist()]
        assert len(labels) == len(jpeg_bytes)
        return len(jpeg_bytes) / (time.perf_counter() - start)

    e2e = {name: end_to_end(engines[name], best[name][0]) for name in ("pytorch_eager", "onnxruntime_int8")}
    decode_only_start = time.perf_counter()
    for b in jpeg_bytes:
        to_model_input(load_image(b, draft_size=pre.img_size), pre)
    decode_ips = len(jpeg_bytes) / (time.perf_counter() - decode_only_start)
    for name, v in e2e.items():
        print(f"end to end {name:20s}: {v:7.1f} img/s (batch {best[name][0]})")
    print(f"decode + preprocess only: {decode_ips:.1f} img/s")

    accuracy = {}
    if not args.skip_accuracy:
        for engine in ("torch", "onnx"):
            m = evaluate_run(run, dataset, "test", engine=engine, out_dir=run / f"eval-test-{engine}")
            accuracy[m["engine"]] = m["top1"]
            print(f"test top-1 {m['engine']}: {100 * m['top1']:.2f}%")

    out = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "torch": torch.__version__,
        "run": str(run),
        "model": config.model.name,
        "img_size": pre.img_size,
        "throughput_img_per_s": {k: {str(b): round(v, 1) for b, v in r.items()} for k, r in throughput.items()},
        "best_batch": {
            k: {"batch": b, "img_per_s": round(v, 1), "ratio_vs_eager_best": round(v / base, 2)}
            for k, (b, v) in best.items()
        },
        "end_to_end_img_per_s": {k: round(v, 1) for k, v in e2e.items()},
        "end_to_end_ratio_int8_vs_eager": round(e2e["onnxruntime_int8"] / e2e["pytorch_eager"], 2),
        "decode_preprocess_img_per_s": round(decode_ips, 1),
        "test_top1": accuracy,
        "int8_file_mb": round((run / ONNX_INT8).stat().st_size / 1e6, 2),
    }
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "inference.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out["best_batch"], indent=2))
    print(f"end-to-end INT8/eager: {out['end_to_end_ratio_int8_vs_eager']}x; INT8 file {out['int8_file_mb']} MB")


if __name__ == "__main__":
    main()
