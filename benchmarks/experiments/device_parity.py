"""Issue 19: why the page's top-1 probability differs from the server's, and which INT8 export fixes it.

    python benchmarks/experiments/device_parity.py build --out /tmp/parity        # candidates, from a copy
    python benchmarks/experiments/device_parity.py measure /tmp/parity/*.onnx --test [--levels] [--photos 100]
    python benchmarks/experiments/device_parity_browser.py --model /tmp/parity/weights_only.onnx   # the page itself

``build`` copies the demo model folder (src/skulens/demo_assets/model: its float16 weights) to OUT, exports
FP32 ONNX from it and writes the candidates with engines.onnx_export's own code, calibrated as
`skulens export --int8` calibrates (300 training photos, seed 1):
  static.onnx        the shipped recipe (_quantize: static QDQ, per-channel 7-bit weights, minmax)
  percentile48.onnx  the same with percentile calibration on the first 48 of those photos (more runs out of memory)
  hybrid3.onnx       INT8 arithmetic for blocks 0-2 only; later blocks keep INT8-stored weights, FP32 arithmetic
  weights_only.onnx  _quantize_weights_only (what `skulens export --int8-weights-only` writes): INT8-stored weights, FP32 arithmetic everywhere
``measure`` runs each file on the photos on_device.py uses (Grocery test, spread over the split) with ONNX
Runtime on this CPU (what the server runs: ORT_ENABLE_ALL, 2 threads) and with the vendored
onnxruntime-web under node (WebAssembly SIMD, as the page; checked against headless chromium by
device_parity_browser.py: same probabilities to 1e-15), and prints the agreement: top-1 equal, top-1
probability within 0.02, median and largest gap; ``--levels``: CPU ORT at other optimisation levels
against ALL; ``--test``: fine top-1 on the whole Grocery test split (CPU ORT). Needs node (18+).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "datasets" / "grocery-store"
VENDOR = next((ROOT / "src" / "skulens" / "serving" / "static" / "vendor").glob("onnxruntime-web-*"), None)

NODE_RUNNER = """
import fs from 'fs';
const [vendor, model, inputs, n, out] = process.argv.slice(2);
const ort = await import(vendor + '/ort.wasm.bundle.min.mjs');
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmBinary = fs.readFileSync(vendor + '/ort-wasm-simd-threaded.wasm');
const session = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(model)),
  { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });  // as device.js
const raw = fs.readFileSync(inputs);
const x = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const per = x.length / Number(n), dims = [1, 3, Math.round(Math.sqrt(per / 3)), Math.round(Math.sqrt(per / 3))];
const chunks = [];
for (let i = 0; i < Number(n); i++) {
  const r = await session.run({ input: new ort.Tensor('float32', x.slice(i * per, (i + 1) * per), dims) }, ['logits']);
  chunks.push(Buffer.from(Float32Array.from(r.logits.data).buffer));
}
fs.writeFileSync(out, Buffer.concat(chunks));
"""


def photos(n: int) -> list[Path]:
    test = sorted((DATA / "dataset" / "test").rglob("*.jpg"))  # as benchmarks/on_device.py picks them
    return [test[i] for i in np.linspace(0, len(test) - 1, n).astype(int)]


def build(out: Path) -> None:
    import skulens.engines.onnx_export as ox
    from skulens.data.datasets import load_dataset
    from skulens.runs import RunFolder
    from skulens.serving.config import demo_run_dir

    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    for name in ("config.json", "model.safetensors", "checksums.json"):
        shutil.copyfile(demo_run_dir() / name, run / name)
    model, config = RunFolder(run).load_model("cpu")
    pre = config.preprocessing
    fp32 = ox._export_fp32(model, config, out / "fp32.onnx", 17)
    calib, _ = ox._load_batch(ox._pick(load_dataset(DATA).split("train"), 300, seed=1), pre, pre.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        ox._quantize(fp32, out / "static.onnx", calib, Path(tmp))
        ox._quantize_weights_only(fp32, out / "weights_only.onnx")
        # percentile: the histogram calibrator keeps every activation of every photo (300 photos: out of memory)
        reader = functools.partial(ox._CalibrationReader, batch_size=4)
        original = ox._CalibrationReader
        ox._CalibrationReader = lambda batch, name: reader(batch, name)
        try:
            ox._quantize(fp32, out / "percentile48.onnx", calib[:48], Path(tmp), "percentile")
        finally:
            ox._CalibrationReader = original
        _hybrid(fp32, out / "hybrid3.onnx", calib, Path(tmp), first_fp32_block=3)
    for f in sorted(out.glob("*.onnx")):
        print(f"{f}: {f.stat().st_size / 1e6:.2f} MB")


def _hybrid(fp32: Path, path: Path, calib, tmp: Path, first_fp32_block: int) -> None:
    """Static INT8 up to block ``first_fp32_block``; the later blocks stay FP32 (nodes_to_exclude), and
    then every weight still in FP32 is stored as INT8 (Cast + Mul, as weights_only)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import skulens.engines.onnx_export as ox

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    nodes = onnx.load(str(prepared)).graph.node
    pools = [i for i, n in enumerate(nodes) if n.op_type in ("GlobalAveragePool", "Flatten")]
    convs = [i for i, n in enumerate(nodes[: pools[-1]]) if n.op_type == "Conv"]
    keep = [n.name for n in nodes[pools[-1] + 1 :]] + [nodes[convs[0]].name, nodes[convs[-1]].name]
    keep += [n.name for n in nodes if any(f"/blocks.{j}/" in n.name for j in range(first_fp32_block, 10))]
    static = tmp / "hybrid_static.onnx"
    quantize_static(
        str(prepared),
        str(static),
        ox._CalibrationReader(calib, "input"),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep,
        reduce_range=True,
        extra_options={"CalibPercentile": 99.99},
    )
    ox._quantize_weights_only(static, path)  # the FP32 weights left: INT8-stored


def _inputs(paths: list[Path]) -> np.ndarray:
    from skulens.data.transforms import image_to_array
    from skulens.runs import RunFolder
    from skulens.serving.config import demo_run_dir

    pre = RunFolder(demo_run_dir()).config().preprocessing
    return np.stack([image_to_array(p, pre) for p in paths])


def _session(model: Path, level: str = "all"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _logits(session, x: np.ndarray, batch: int = 1) -> np.ndarray:
    return np.concatenate([session.run(["logits"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def _wasm(model: Path, x: np.ndarray, tmp: Path) -> np.ndarray:
    runner, inputs, out = tmp / "run.mjs", tmp / "inputs.f32", tmp / "logits.f32"
    runner.write_text(NODE_RUNNER)
    x.astype(np.float32).tofile(inputs)
    subprocess.run(["node", str(runner), str(VENDOR), str(model), str(inputs), str(len(x)), str(out)], check=True)
    return np.fromfile(out, dtype=np.float32).reshape(len(x), -1)


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    def softmax(v):
        e = np.exp(v.astype(np.float64) - v.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    r, p = softmax(reference), softmax(other)
    top, rows = r.argmax(1), np.arange(len(r))
    gaps = np.abs(p[rows, top] - r[rows, top])
    return {
        "top1_equal": int((p.argmax(1) == top).sum()),
        "within_0.02": int((gaps <= 0.02).sum()),
        "median_gap": round(float(np.median(gaps)), 5),
        "max_gap": round(float(gaps.max()), 5),
    }


def test_top1(model: Path) -> float:
    from skulens.data.datasets import load_dataset
    from skulens.data.transforms import image_to_array
    from skulens.runs import RunFolder
    from skulens.serving.config import demo_run_dir

    pre = RunFolder(demo_run_dir()).config().preprocessing
    test = load_dataset(DATA).split("test")
    session, right = _session(model), 0
    for i in range(0, len(test), 32):
        chunk = test[i : i + 32]
        x = np.stack([image_to_array(s.path, pre) for s in chunk])
        right += int((_logits(session, x, 32).argmax(1) == np.array([s.label for s in chunk])).sum())
    return round(100 * right / len(test), 2)


def measure(models: list[Path], n: int, levels: bool, test: bool) -> None:
    x = _inputs(photos(n))
    for model in models:
        server = _logits(_session(model), x)
        with tempfile.TemporaryDirectory() as tmp:
            row = {"model": model.name, "MB": round(model.stat().st_size / 1e6, 2)}
            row["wasm_vs_cpu"] = agreement(server, _wasm(model, x, Path(tmp)))
        if levels:
            for level in ("extended", "basic", "disabled"):
                row[f"cpu_{level}_vs_all"] = agreement(server, _logits(_session(model, level), x))
        if test:
            row["test_top1"] = test_top1(model)
        print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("measure")
    m.add_argument("models", type=Path, nargs="+")
    m.add_argument("--photos", type=int, default=100)
    m.add_argument("--levels", action="store_true")
    m.add_argument("--test", action="store_true")
    args = p.parse_args()
    if args.cmd == "build":
        build(args.out)
    else:
        measure(args.models, args.photos, args.levels, args.test)


if __name__ == "__main__":
    main()
