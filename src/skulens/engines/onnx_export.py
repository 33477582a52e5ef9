"""`skulens export RUN --format onnx [--int8]`: ONNX models that prove themselves before they are kept.

The FP32 export has a dynamic batch axis. The INT8 model is static QDQ quantization (per-channel
weights) calibrated on the user's own training images with onnxruntime's quantization tools.
Each written model is compared with the PyTorch model on real validation images: top-1 agreement
and the accuracy change are reported, and a model that disagrees beyond the tolerance is refused
(nothing is written). ``export.json`` records the checks and the files' checksums, tied to the
weights they came from.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from skulens.data.datasets import ImageDataset, Sample
from skulens.data.transforms import image_to_input
from skulens.engines.onnx import OnnxEngine
from skulens.errors import ImageError, SkulensError
from skulens.files import sha256_file
from skulens.runs import EXPORT_FILE, ONNX_FP32, ONNX_INT8, RunFolder

log = logging.getLogger(__name__)


class _LogitsAndEmbedding(torch.nn.Module):
    """The exported graph: ``logits`` for recognition and ``embedding`` for catalog search, one pass."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        from skulens.models.attributes import has_attribute_heads
        from skulens.models.embedding import has_embedding_head, pooled_features

        pooled = pooled_features(self.model, x)
        head = self.model.classifier
        if has_embedding_head(self.model):
            # one pass through the neck: the logits are the scaled cosines of the same embedding
            embedding = head.embed(pooled)
            logits = head.scale * head.cosines(embedding)
        else:
            logits, embedding = head(pooled), torch.nn.functional.normalize(pooled.float(), dim=-1)
        # attribute heads (colour, usage, ...): their logits, as outputs named attribute:NAME in spec order
        attributes = tuple(self.model.attribute_heads(pooled).values()) if has_attribute_heads(self.model) else ()
        return (logits, embedding, *attributes)


def _has_embedding(model) -> bool:
    return hasattr(model, "forward_features") and hasattr(model, "forward_head") and hasattr(model, "classifier")


@dataclass
class ModelCheck:
    file: str
    n_images: int
    top1_agreement: float
    max_abs_prob_diff: float
    torch_top1: float | None
    onnx_top1: float | None
    size_bytes: int
    # mean cosine between ONNX and PyTorch embeddings (the catalog's search vectors); None: no embedding
    embedding_cosine: float | None = None

    @property
    def top1_change_points(self) -> float | None:
        if self.torch_top1 is None or self.onnx_top1 is None:
            return None
        return 100 * (self.onnx_top1 - self.torch_top1)


@dataclass
class ExportReport:
    run_dir: str
    checks: list[ModelCheck] = field(default_factory=list)
    calibration_images: int = 0
    int8_mode: str | None = None  # "static" (INT8 arithmetic) or "weights-only" (INT8 weights, FP32 arithmetic)

    def to_dict(self) -> dict:
        return {
            "run_dir": self.run_dir,
            "calibration_images": self.calibration_images,
            "int8_mode": self.int8_mode,
            "checks": [{**asdict(c), "top1_change_points": c.top1_change_points} for c in self.checks],
        }


def _load_batch(samples: list[Sample], pre, size: int) -> tuple[torch.Tensor, np.ndarray]:
    tensors, labels = [], []
    for s in samples:
        try:
            tensors.append(image_to_input(s.path, pre, size))
            labels.append(s.label)
        except ImageError as exc:
            log.warning("skipping %s", exc)
    if not tensors:
        raise SkulensError("none of the check images could be read")
    return torch.stack(tensors), np.array(labels)


def _pick(samples: list[Sample], n: int, seed: int = 0) -> list[Sample]:
    samples = list(samples)
    random.Random(seed).shuffle(samples)
    return samples[:n]


class _CalibrationReader:
    """Feeds onnxruntime's calibrator one preprocessed batch at a time."""

    def __init__(self, batch: torch.Tensor, input_name: str, batch_size: int = 16):
        # Equal-sized chunks only: the histogram calibrators (percentile, entropy) stack them.
        batch_size = max(1, min(batch_size, len(batch)))
        usable = len(batch) - len(batch) % batch_size
        self.chunks = [batch[i : i + batch_size].numpy() for i in range(0, usable, batch_size)]
        self.input_name = input_name
        self.i = 0

    def get_next(self):
        if self.i >= len(self.chunks):
            return None
        self.i += 1
        return {self.input_name: self.chunks[self.i - 1]}

    def rewind(self):
        self.i = 0


def export_onnx(
    run_dir: str | Path,
    *,
    int8: bool = False,
    dataset: ImageDataset | None = None,
    calibration_images: int = 300,
    check_images: int = 500,
    min_agreement_fp32: float = 0.99,
    max_top1_drop_int8: float = 1.0,
    opset: int = 17,
    calibration_method: str = "minmax",
    int8_only: bool = False,
    int8_weights_only: bool = False,
) -> ExportReport:
    """Export ``run_dir`` to ONNX (and INT8); refuse models that disagree with PyTorch.

    ``int8_only``: keep the checked INT8 file alone (the FP32 one is a step on the way): what a
    folder shipped to a CPU server or to the browser needs, at a third of the size.

    ``calibration_method``: how INT8 activation ranges are set from the calibration images:
    ``minmax`` (fast), ``percentile`` (clips rare outliers: often more accurate) or ``entropy``.

    ``int8_weights_only``: INT8 weights, FP32 arithmetic (see _quantize_weights_only)."""
    if calibration_method not in CALIBRATION_METHODS:
        raise SkulensError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}")
    _require_onnx()
    run_dir = Path(run_dir)
    model, config = RunFolder(run_dir).load_model("cpu")
    model.eval()
    size = config.preprocessing.img_size
    if (int8_only or int8_weights_only) and not int8:
        raise SkulensError("int8_only and int8_weights_only need int8 (on the command line they imply --int8)")
    if int8 and dataset is None:
        raise SkulensError("--int8 needs calibration images: pass --calibration DATASET (your training data)")
    check_x, check_y = _check_batch(dataset, config, check_images)
    torch_probs, torch_emb = _torch_outputs(model, check_x)

    def check(path: Path) -> ModelCheck:
        return _check(path, config, check_x, check_y, torch_probs, torch_emb)

    report = ExportReport(run_dir=str(run_dir))
    # Models are written and checked in a temporary folder first: a refused one never reaches the run.
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".export-") as tmp:
        tmp_dir = Path(tmp)
        files = {ONNX_FP32: _export_fp32(model, config, tmp_dir / ONNX_FP32, opset)}
        report.checks.append(check(files[ONNX_FP32]))
        _refuse_if_fp32_disagrees(report.checks[-1], min_agreement_fp32)
        if int8:
            calibration = "weights-only" if int8_weights_only else calibration_method
            files[ONNX_INT8] = _export_int8(
                model, dataset, config, files[ONNX_FP32], tmp_dir, calibration_images, calibration, report
            )
            report.checks.append(check(files[ONNX_INT8]))
            _refuse_if_int8_drops(report.checks[-1], max_top1_drop_int8)
            if int8_only:
                del files[ONNX_FP32]
        for name, path in files.items():
            shutil.move(str(path), run_dir / name)
    _record_export(run_dir, files, size, opset, report)
    return report


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise SkulensError("ONNX export needs onnx and onnxruntime: pip install onnx onnxruntime") from None


def _check_batch(dataset: ImageDataset | None, config, n: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """The images every exported model is compared with PyTorch on, and their labels (None: no labels)."""
    pre = config.preprocessing
    size = pre.img_size
    if dataset is not None:
        if list(dataset.classes) != list(config.classes):
            raise SkulensError("the calibration dataset's classes differ from the model's")
        check_pool = dataset.split("val") or dataset.split("test") or dataset.split("train")
        return _load_batch(_pick(check_pool, n), pre, size)
    # No data given: compare on random inputs (agreement only; no accuracy change can be measured).
    return torch.randn(32, pre.in_chans, size, size), None


def _torch_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """PyTorch's probabilities, and embeddings when the model has them: what the ONNX models must match."""
    with torch.no_grad():
        probs = torch.cat([model(x[i : i + 32]).softmax(-1) for i in range(0, len(x), 32)]).numpy()
    if not _has_embedding(model):
        return probs, None
    wrapped = _LogitsAndEmbedding(model).eval()
    with torch.no_grad():
        emb = torch.cat([wrapped(x[i : i + 32])[1] for i in range(0, len(x), 32)]).numpy()
    return probs, emb


def _export_fp32(model: torch.nn.Module, config, path: Path, opset: int) -> Path:
    pre = config.preprocessing
    size = pre.img_size
    with_embedding = _has_embedding(model)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream but gives a plain static graph that
        # onnxruntime's quantizer handles well; the warning is not actionable for users.
        warnings.simplefilter("ignore", DeprecationWarning)
        outputs = ["logits", "embedding"] if with_embedding else ["logits"]
        if with_embedding:
            from skulens.models.attributes import ONNX_OUTPUT_PREFIX

            outputs += [ONNX_OUTPUT_PREFIX + name for name in config.model.attributes]
        torch.onnx.export(
            _LogitsAndEmbedding(model).eval() if with_embedding else model,
            torch.zeros(1, pre.in_chans, size, size),
            str(path),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def _export_int8(
    model: torch.nn.Module,
    dataset: ImageDataset,
    config,
    fp32_path: Path,
    tmp_dir: Path,
    calibration_images: int,
    calibration_method: str,
    report: ExportReport,
) -> Path:
    """The INT8 model, calibrated on training images (their count goes into ``report``); with
    ``calibration_method`` "weights-only", INT8 weights alone (nothing to calibrate)."""
    pre = config.preprocessing
    int8_path = tmp_dir / ONNX_INT8
    if calibration_method == "weights-only":
        report.int8_mode = "weights-only"
        _quantize_weights_only(fp32_path, int8_path)
        return int8_path
    report.int8_mode = "static"
    calib = _pick(dataset.split("train"), calibration_images, seed=1)
    calib_x, _ = _load_batch(calib, pre, pre.img_size)
    report.calibration_images = len(calib_x)
    from skulens.models.embedding import has_embedding_head

    _quantize(fp32_path, int8_path, calib_x, tmp_dir, calibration_method, has_embedding_head(model))
    return int8_path


def _refuse_if_fp32_disagrees(fp32_check: ModelCheck, min_agreement_fp32: float) -> None:
    if fp32_check.top1_agreement < min_agreement_fp32:
        raise SkulensError(
            f"refused: the ONNX model agrees with PyTorch on only "
            f"{100 * fp32_check.top1_agreement:.1f}% of top-1 answers (need "
            f"{100 * min_agreement_fp32:.0f}%); nothing written"
        )


def _refuse_if_int8_drops(int8_check: ModelCheck, max_top1_drop_int8: float) -> None:
    drop = -(int8_check.top1_change_points or 0.0)
    if drop > max_top1_drop_int8:
        raise SkulensError(
            f"refused: INT8 top-1 is {drop:.2f} points below PyTorch on the validation images "
            f"(tolerance {max_top1_drop_int8}); nothing written"
        )


def _record_export(run_dir: Path, files: dict[str, Path], size: int, opset: int, report: ExportReport) -> None:
    """export.json: the checks, and checksums tying the ONNX files to the weights they came from."""
    stale = [n for n in (ONNX_FP32, ONNX_INT8) if n not in files and (run_dir / n).exists()]
    for name in stale:
        (run_dir / name).unlink()  # an older INT8 file would not match the new weights
    RunFolder(run_dir).write_json(
        EXPORT_FILE,
        {
            "weights_sha256": RunFolder(run_dir).weights_sha256(),
            "img_size": size,
            "opset": opset,
            "files": {name: sha256_file(run_dir / name) for name in files},
            **report.to_dict(),
        },
    )


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def _quantize(
    fp32_path: Path,
    int8_path: Path,
    calib_x: torch.Tensor,
    tmp_dir: Path,
    method: str = "minmax",
    quantize_neck: bool = False,
) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp_dir / "prepared.onnx"
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    # Everything after the global pooling (neck, normalisation, classifier) stays in FP32: it is a
    # sliver of the compute, and an ArcFace head multiplies small cosine differences by its scale
    # (30), so 8-bit rounding there flips answers. ONNX graphs are topologically sorted.
    nodes = onnx.load(str(prepared)).graph.node
    pools = [i for i, n in enumerate(nodes) if n.op_type in ("GlobalAveragePool", "ReduceMean", "Flatten")]
    tail = list(nodes[pools[-1] + 1 :]) if pools else []
    if quantize_neck:
        # ...except the embedding neck's linear layer: 1280x512 weights are 2.6 MB in FP32,
        # a third of the INT8 file; quantized, Grocery test top-1 moved 80.89% -> 80.93% (BENCHMARKS.md).
        neck = next((i for i, n in enumerate(tail) if n.op_type in ("Gemm", "MatMul")), None)
        tail = [n for i, n in enumerate(tail) if i != neck]
    head = [n.name for n in tail]
    # So do the first and the last convolution (the usual mixed-precision recipe): the stem sees the
    # raw image, the last conv writes the features every answer is read from; together they are
    # under a tenth of the compute.
    convs = [i for i, n in enumerate(nodes[: pools[-1] if pools else len(nodes)]) if n.op_type == "Conv"]
    head += [nodes[i].name for i in {convs[0], convs[-1]}] if convs else []
    quantize_static(
        str(prepared),
        str(int8_path),
        _CalibrationReader(calib_x, "input"),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=head,
        # 7-bit weights: x86 CPUs without VNNI multiply u8 x s8 pairs into int16 with
        # saturation; full-range weights cost 2-3 top-1 points on Grocery Store here.
        reduce_range=True,
        calibrate_method={
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[method],
        extra_options={"CalibPercentile": 99.99},
    )


def _quantize_weights_only(fp32_path: Path, int8_path: Path) -> None:
    """INT8 weights, FP32 arithmetic (issue 19, a model the web page runs too): each Conv/Gemm/MatMul weight is stored
    as INT8, symmetric, one scale per output channel, and widened by Cast + Mul, which ONNX Runtime's
    constant folding (CPU and onnxruntime-web alike) turns back into FP32 weights when the session
    loads. Nothing is calibrated and no activation is rounded to 8 bits, so the browser (WebAssembly)
    and the server (x86) agree to float rounding: with static INT8 their different kernels round a
    few activations the other way and the 8-bit network amplifies those 1-step differences (demo model:
    top-1 probability up to 0.037 apart; weights-only under 1e-5). The file is smaller (no layer kept
    in FP32); a CPU with VNNI computes it in about twice the INT8 time, WebAssembly faster than INT8.
    Our own few lines: onnxruntime's quantizers (static and dynamic) all compute in 8 bits; this is
    only the weight-storage half of what they do."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    nodes, done = [], set()
    for node in graph.node:
        name = node.input[1] if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 else None
        if name in floats and name not in done and len(floats[name].dims) >= 2:
            weight = numpy_helper.to_array(floats[name])
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            # the output-channel axis: Conv [out, in, kh, kw]; Gemm [out, in] with transB, else [in, out]
            axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else weight.ndim - 1
            reduce = tuple(i for i in range(weight.ndim) if i != axis)
            scale = (np.abs(weight).max(axis=reduce, keepdims=True) / 127.0).astype(np.float32)
            scale[scale == 0] = 1.0
            q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
            graph.initializer.remove(floats[name])
            for listed in [i for i in graph.input if i.name == name]:  # initializers listed as inputs
                graph.input.remove(listed)
            graph.initializer.extend(
                [numpy_helper.from_array(q, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale")]
            )
            nodes += [
                helper.make_node("Cast", [f"{name}_int8"], [f"{name}_wide"], to=TensorProto.FLOAT, name=f"{name}_Cast"),
                helper.make_node("Mul", [f"{name}_wide", f"{name}_scale"], [name], name=f"{name}_Scale"),
            ]
            done.add(name)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)  # each Cast + Mul right before its first user: still topologically sorted
    onnx.save(model, str(int8_path))


def _check(
    path: Path,
    config,
    x: torch.Tensor,
    labels: np.ndarray | None,
    torch_probs: np.ndarray,
    torch_emb: np.ndarray | None = None,
) -> ModelCheck:
    engine = OnnxEngine(path, config)
    onnx_probs = torch.cat([engine.probabilities(x[i : i + 32]) for i in range(0, len(x), 32)]).numpy()
    cosine = None
    if torch_emb is not None and engine.has_embedding:
        onnx_emb = np.concatenate([engine.embeddings(x[i : i + 32]) for i in range(0, len(x), 32)])
        cosine = float(np.mean(np.sum(onnx_emb * torch_emb, axis=1)))
    agreement = float(np.mean(onnx_probs.argmax(1) == torch_probs.argmax(1)))
    return ModelCheck(
        file=path.name,
        n_images=len(x),
        top1_agreement=agreement,
        max_abs_prob_diff=float(np.abs(onnx_probs - torch_probs).max()),
        torch_top1=float(np.mean(torch_probs.argmax(1) == labels)) if labels is not None else None,
        onnx_top1=float(np.mean(onnx_probs.argmax(1) == labels)) if labels is not None else None,
        size_bytes=path.stat().st_size,
        embedding_cosine=cosine,
    )
