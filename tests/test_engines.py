"""ONNX export round trip, INT8 export, engine auto-selection and refusal of bad exports."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from skulens import Recognizer
from skulens.data.datasets import load_dataset
from skulens.engines.onnx_export import export_onnx
from skulens.engines.select import load_engine
from skulens.errors import CheckpointError, SkulensError
from skulens.evaluation.report import evaluate_run
from skulens.runs import load_run


@pytest.fixture
def run_copy(trained_run, tmp_path):
    run, data = trained_run
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", data


def test_fp32_export_matches_pytorch(run_copy):
    run, data = run_copy
    report = export_onnx(run, dataset=load_dataset(data))
    check = report.checks[0]
    assert check.file == "model.onnx" and check.top1_agreement == 1.0 and check.max_abs_prob_diff < 1e-4
    engine = load_engine(run, "onnx")
    model, _ = load_run(run)
    x = torch.randn(5, 3, 40, 40)  # dynamic batch axis: 5 was never seen at export time
    with torch.no_grad():
        expected = model(x).softmax(-1)
    torch.testing.assert_close(engine.probabilities(x), expected, atol=1e-4, rtol=1e-3)


def test_int8_export_and_auto_engine(run_copy):
    run, data = run_copy
    dataset = load_dataset(data)
    report = export_onnx(run, int8=True, dataset=dataset, calibration_images=24, max_top1_drop_int8=100)
    assert [c.file for c in report.checks] == ["model.onnx", "model.int8.onnx"]
    assert report.calibration_images == 24
    int8 = report.checks[1]
    assert int8.top1_agreement >= 0.8 and int8.size_bytes < report.checks[0].size_bytes
    record = json.loads((run / "export.json").read_text())
    assert set(record["files"]) == {"model.onnx", "model.int8.onnx"}

    assert Recognizer.load(run).engine.name == "onnx-int8"  # auto on a CPU
    assert Recognizer.load(run, engine="torch").engine.name == "torch"
    photo = next((data / "test" / "green").iterdir())
    onnx_pred, torch_pred = Recognizer.load(run).predict(photo), Recognizer.load(run, engine="torch").predict(photo)
    assert onnx_pred.top_k[0].confidence == pytest.approx(torch_pred.top_k[0].confidence, abs=0.1)
    metrics = evaluate_run(run, dataset, "test", progress=False)
    assert metrics["engine"] == "onnx-int8"


def test_int8_weights_only_export_computes_in_fp32(run_copy):
    """INT8-stored weights, FP32 arithmetic: nothing is calibrated, no activation is rounded to 8 bits,
    so the answers are the FP32 model's up to the weights' rounding; a catalog tells the two apart."""
    import onnx

    from skulens.catalog.embedder import Embedder

    run, data = run_copy
    export_onnx(run, int8=True, dataset=load_dataset(data), calibration_images=24, max_top1_drop_int8=100)
    static_id = Embedder.from_run(run, "cpu", "onnx").model_id
    report = export_onnx(run, int8=True, int8_weights_only=True, dataset=load_dataset(data))
    assert report.int8_mode == "weights-only" and report.calibration_images == 0
    graph = onnx.load(str(run / "model.int8.onnx")).graph
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in graph.node}
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    x = torch.randn(6, 3, 40, 40)
    int8, fp32 = load_engine(run, "onnx", int8=True), load_engine(run, "onnx", int8=False)
    torch.testing.assert_close(int8.probabilities(x), fp32.probabilities(x), atol=0.02, rtol=0)
    # both are "onnx-int8" with the same weights: the exported file is what tells their vectors apart
    assert Embedder.from_run(run, "cpu", "onnx").model_id != static_id
    with pytest.raises(SkulensError, match="need int8"):
        export_onnx(run, int8_weights_only=True, dataset=load_dataset(data))


def test_stale_or_tampered_exports_are_not_used(run_copy):
    run, data = run_copy
    export_onnx(run, dataset=load_dataset(data))
    onnx_bytes = (run / "model.onnx").read_bytes()
    (run / "model.onnx").write_bytes(onnx_bytes[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="checksum"):
        load_engine(run, "auto")
    (run / "model.onnx").write_bytes(onnx_bytes)
    assert load_engine(run, "auto").name == "onnx-fp32"
    # New weights (e.g. a resumed run): the old export no longer describes the model.
    from safetensors.torch import load_file

    from skulens.runs import save_tensors_atomic

    weights = load_file(str(run / "model.safetensors"))
    weights["classifier.bias"] = weights["classifier.bias"] + 1
    save_tensors_atomic(run / "model.safetensors", weights)  # as training does: the checksum is recorded too
    assert load_engine(run, "auto").name == "torch"
    with pytest.raises(SkulensError, match="no up-to-date"):
        load_engine(run, "onnx")


def test_bad_exports_are_refused_and_nothing_is_written(run_copy):
    run, data = run_copy
    dataset = load_dataset(data)
    with pytest.raises(SkulensError, match="refused"):
        export_onnx(run, dataset=dataset, min_agreement_fp32=1.01)  # an impossible bar: must refuse
    assert not (run / "model.onnx").exists() and not (run / "export.json").exists()
    with pytest.raises(SkulensError, match="refused: INT8"):
        export_onnx(run, int8=True, dataset=dataset, calibration_images=8, max_top1_drop_int8=-100)
    assert not (run / "model.int8.onnx").exists()
    with pytest.raises(SkulensError, match="calibration"):
        export_onnx(run, int8=True)


@pytest.mark.slow
def test_export_cli(run_copy):
    from tests.helpers import run_cli as skulens

    run, data = run_copy
    proc = skulens("export", str(run), "--format", "onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    checks = json.loads(proc.stdout)["checks"]
    assert checks[0]["top1_agreement"] == 1.0 and checks[0]["torch_top1"] is not None  # used the run's own data
    proc = skulens("predict", str(run), str(data / "test" / "red"), "--engine", "onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 5
    proc = skulens("evaluate", str(run), str(data), "--engine", "onnx", "--img-size", "48")
    assert proc.returncode == 2 and "only accepts its training size" in proc.stderr
