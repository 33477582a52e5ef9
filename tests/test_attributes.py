"""Attribute heads: CSV attribute columns, joint training, the loss on unknown values, metrics, predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skulens.cli import main
from skulens.data.datasets import CsvColumns, Sample, load_dataset
from skulens.data.loading import encode_attribute_targets
from skulens.errors import SkulensError
from skulens.evaluation.report import evaluate_run
from skulens.models.attributes import (
    attribute_loss,
    attribute_metrics,
    average_precision,
    describe,
    forward_all,
    tune_thresholds,
)
from skulens.models.registry import ModelSpec, create_model
from skulens.recognition.recognizer import Recognizer
from skulens.runs import load_run
from skulens.training.config import TrainConfig
from skulens.training.trainer import train
from tests.conftest import COLOURS

COLS = CsvColumns(image="image", label="label", split="split", attributes=["background"], tags=["tags"])
SPECS = {
    "background": {"values": ["dark", "light"], "kind": "softmax"},
    "tags": {"values": ["dark", "warm"], "kind": "sigmoid"},
}


def photo(colour, dark: bool, seed: int, size: int = 40) -> Image.Image:
    """A coloured square (the class) on a dark or light background (the attribute)."""
    rng = np.random.default_rng(seed)
    base = 45 if dark else 200
    arr = rng.integers(base - 25, base + 25, (size, size, 3)).astype(np.uint8)
    lo = int(rng.integers(4, size // 2 - 2))
    arr[lo : lo + size // 2, lo : lo + size // 2] = np.array(colour)
    return Image.fromarray(arr)


def write_toy_csv(root: Path, per_cell: int = 8) -> Path:
    """3 colours x 2 backgrounds; every 5th row leaves the attribute cell empty, every 7th the tags cell."""
    (root / "img").mkdir(parents=True)
    rows, n = [], 0
    for split, count in (("train", per_cell), ("val", 3), ("test", 3)):
        for name, colour in COLOURS.items():
            for dark in (False, True):
                for _ in range(count):
                    path = f"img/{n:04d}.png"
                    photo(colour, dark, n).save(root / path)
                    tags = [t for t, on in (("dark", dark), ("warm", name == "red")) if on]
                    rows.append(
                        {
                            "image": path,
                            "label": name,
                            "split": split,
                            "background": "" if n % 5 == 4 else ("dark" if dark else "light"),
                            "tags": "" if n % 7 == 6 else ("|".join(tags) or "-"),
                        }
                    )
                    n += 1
    manifest = root / "products.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("attributes")
    manifest = write_toy_csv(base / "data")
    cfg = TrainConfig(
        model="seedcnn", epochs=6, img_size=40, batch_size=8, lr=2e-3, patience=0, keep="last", progress=False
    )
    train(cfg, load_dataset(manifest, csv_columns=COLS), base / "run")
    return base / "run", manifest


# --- the dataset ----------------------------------------------------------------------------


def test_csv_attribute_columns_empty_cells_are_unknown_not_a_value(tmp_path):
    manifest = write_toy_csv(tmp_path, per_cell=2)
    ds = load_dataset(manifest, csv_columns=COLS)
    assert ds.attributes == SPECS  # no "" value: an empty cell is not a class
    rows = list(csv.DictReader(manifest.open()))
    for row, sample in zip(rows, ds.samples):
        background, tags = sample.attributes
        assert background == (-1 if row["background"] == "" else SPECS["background"]["values"].index(row["background"]))
        if row["tags"] == "":
            assert tags is None  # unknown
        else:
            names = [] if row["tags"] == "-" else row["tags"].split("|")
            assert tags == tuple(sorted(SPECS["tags"]["values"].index(t) for t in names))
    # Without attribute columns nothing changes.
    plain = load_dataset(manifest, csv_columns=CsvColumns())
    assert plain.attributes == {} and all(s.attributes == () for s in plain.samples)
    with pytest.raises(SkulensError, match="colour"):
        load_dataset(manifest, csv_columns=CsvColumns(attributes=["colour"]))


def test_targets_encode_unknown_as_minus_one():
    t = encode_attribute_targets((-1, (1,)), SPECS)
    assert int(t["background"]) == -1 and t["tags"].tolist() == [0.0, 1.0]
    t = encode_attribute_targets((0, None), SPECS)
    assert int(t["background"]) == 0 and t["tags"].tolist() == [-1.0, -1.0]
    # A sample without attribute data (a catalog image) is unknown everywhere.
    t = encode_attribute_targets((), SPECS)
    assert int(t["background"]) == -1 and t["tags"].tolist() == [-1.0, -1.0]


# --- the loss -------------------------------------------------------------------------------


def test_unknown_values_are_ignored_by_the_loss():
    torch.manual_seed(0)
    logits = {"background": torch.randn(4, 2, requires_grad=True), "tags": torch.randn(4, 2, requires_grad=True)}
    targets = {
        "background": torch.tensor([0, -1, 1, -1]),
        "tags": torch.tensor([[1.0, 0.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 1.0]]),
    }
    loss = attribute_loss(logits, targets, SPECS)
    known_b, known_t = [0, 2], [0, 2, 3]
    expected = torch.nn.functional.cross_entropy(
        logits["background"][known_b], targets["background"][known_b]
    ) + torch.nn.functional.binary_cross_entropy_with_logits(logits["tags"][known_t], targets["tags"][known_t])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # The unknown rows get no gradient at all: they are not trained towards any value.
    assert logits["background"].grad[[1, 3]].abs().sum() == 0
    assert logits["tags"].grad[1].abs().sum() == 0 and logits["tags"].grad[0].abs().sum() > 0
    # A batch where everything is unknown adds 0 (not NaN, as a plain ignore_index mean would).
    none_known = {"background": torch.full((4,), -1), "tags": torch.full((4, 2), -1.0)}
    assert float(attribute_loss(logits, none_known, SPECS).detach()) == 0.0


# --- the model ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seedcnn", "efficientnet_lite0"])
def test_heads_leave_the_class_logits_alone(name):
    spec = ModelSpec(name, num_classes=3, img_size=40, attributes=SPECS)
    model = create_model(spec, pretrained=False).eval()
    x = torch.randn(2, 3, 40, 40)
    logits, attrs = forward_all(model, x)
    torch.testing.assert_close(model(x), logits)  # model(x) is still the class logits only
    assert {k: tuple(v.shape) for k, v in attrs.items()} == {"background": (2, 2), "tags": (2, 2)}
    with pytest.raises(SkulensError, match="kind"):
        create_model(ModelSpec("seedcnn", 3, 40, attributes={"a": {"values": ["x"], "kind": "other"}}))


# --- metrics --------------------------------------------------------------------------------


def test_metrics_match_a_hand_count():
    samples = [
        Sample(Path(f"{i}.jpg"), 0, "test", a)
        for i, a in enumerate([(0, (0,)), (1, (0, 1)), (1, ()), (-1, None), (0, (1,))])
    ]
    probs = {
        # argmax: 0, 0, 1, (unknown), 1 -> right, wrong, right, -, wrong: 2 of 4
        "background": np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5], [0.3, 0.7]]),
        "tags": np.array([[0.9, 0.2], [0.4, 0.8], [0.7, 0.1], [0.99, 0.99], [0.1, 0.6]]),
    }
    m = attribute_metrics(probs, samples, SPECS, {"tags": [0.5, 0.5]})
    assert m["background"]["accuracy"] == 0.5 and m["background"]["n_known"] == 4
    assert m["background"]["n_unknown"] == 1
    # Tag "dark" over the 4 known rows: scores 0.9(+) 0.7(-) 0.4(+) 0.1(-) -> AP = (1/1 + 2/3) / 2
    # Tag "warm": scores 0.8(+) 0.6(+) 0.2(-) 0.1(-) -> AP = 1
    assert m["tags"]["ap_per_tag"]["dark"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["tags"]["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    # At 0.5: predicted {dark}, {warm}, {dark}, {warm}; truth {dark}, {dark, warm}, {}, {warm}
    # tp = 3, fp = 1 (row 3 "dark"), fn = 1 (row 2 "dark")
    assert m["tags"]["precision"] == pytest.approx(3 / 4) and m["tags"]["recall"] == pytest.approx(3 / 4)
    assert m["tags"]["f1"] == pytest.approx(3 / 4) and m["tags"]["n_unknown"] == 1
    assert average_precision(np.array([0.3, 0.2]), np.array([False, False])) != average_precision(
        np.array([0.3, 0.2]), np.array([False, True])
    )


def test_thresholds_are_tuned_for_f1_on_validation():
    samples = [Sample(Path(f"{i}.jpg"), 0, "val", (0, t)) for i, t in enumerate([(0,), (0,), (), (), None])]
    # "dark" positives score 0.3 and 0.25, negatives 0.2 and 0.1: 0.5 would miss both, 0.25 gets both.
    probs = {"background": np.zeros((5, 2)), "tags": np.array([[0.3, 0], [0.25, 0], [0.2, 0], [0.1, 0], [0.9, 0]])}
    thresholds = tune_thresholds(probs, samples, SPECS)
    assert thresholds == {"tags": [0.25, 0.5]}  # "warm" has no positive: left at 0.5
    assert attribute_metrics(probs, samples, SPECS, thresholds)["tags"]["f1"] == 1.0
    assert describe({"background": np.array([0.2, 0.8]), "tags": np.array([0.3, 0.4])}, SPECS, thresholds) == {
        "background": {"value": "light", "confidence": 0.8},
        "tags": {"value": "dark", "confidence": None, "tags": {"dark": 0.3}},
    }
    both = describe({"background": np.array([0.9, 0.1]), "tags": np.array([0.3, 0.9])}, SPECS, thresholds)
    assert both["tags"]["value"] == "warm|dark"  # most probable first
    assert describe({"background": np.array([0.9, 0.1]), "tags": np.array([0.1, 0.2])}, SPECS, thresholds)["tags"] == {
        "value": "-",
        "confidence": None,
        "tags": {},
    }


# --- training, evaluation, prediction --------------------------------------------------------


@pytest.mark.slow
def test_heads_train_and_predict_on_a_toy_set(toy_run, tmp_path):
    run, manifest = toy_run
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["attributes"] == SPECS
    assert "val_attributes" in config["metrics"]
    assert (run / "attributes_log.csv").read_text().splitlines()[0] == "epoch,background,tags"
    thresholds = json.loads((run / "attribute_thresholds.json").read_text())
    assert thresholds["tuned_on"] == "val" and len(thresholds["thresholds"]["tags"]) == 2

    m = evaluate_run(
        run, load_dataset(manifest, csv_columns=COLS), "test", engine="torch", out_dir=tmp_path, progress=False
    )
    a = m["attributes"]
    # Chance is 50% for the background; it is a property the class label says nothing about.
    assert a["background"]["accuracy"] >= 0.8 and a["background"]["n_known"] + a["background"]["n_unknown"] == 18
    assert a["tags"]["mAP"] >= 0.8 and a["tags"]["thresholds_tuned"]
    assert "## Attributes" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["attributes"]["background"] == a["background"]

    recognizer = Recognizer.load(run, engine="torch")
    dark_photos = [
        row["image"]
        for row in csv.DictReader(manifest.open())
        if row["split"] == "test" and row["background"] == "dark"
    ]
    preds = [recognizer.predict(manifest.parent / p) for p in dark_photos]
    assert sum(p.attributes["background"]["value"] == "dark" for p in preds) >= 0.8 * len(preds)
    assert all(set(p.attributes["tags"]["tags"]) <= {"dark", "warm"} for p in preds)
    # The HTTP service's schema takes every attribute (tags included) without error.
    from skulens.serving.predictions import _attributes

    assert {a.name for a in _attributes(preds[0].attributes)} == {"background", "tags"}
    assert preds[0].to_dict()["attributes"] == preds[0].attributes
    # Batch prediction gives the same attributes as one by one.
    # (the same to float32 rounding: a batch of 3 and a batch of 1 may take different conv kernels)
    batch = recognizer.predict_batch([manifest.parent / p for p in dark_photos[:3]])
    for b, p in zip(batch, preds[:3]):
        assert {k: v["value"] for k, v in b.attributes.items()} == {k: v["value"] for k, v in p.attributes.items()}
        assert b.attributes["background"]["confidence"] == pytest.approx(
            p.attributes["background"]["confidence"], abs=1e-5
        )
        assert b.attributes["tags"]["tags"] == pytest.approx(p.attributes["tags"]["tags"], abs=1e-5)


def test_model_without_attributes_predicts_an_empty_dict(trained_run):
    run, data = trained_run
    pred = Recognizer.load(run, engine="torch").predict(next((data / "test" / "red").iterdir()))
    assert pred.attributes == {}


@pytest.mark.slow
def test_onnx_engine_without_attribute_outputs_is_refused(toy_run):
    from skulens.engines import OnnxEngine

    _, config = load_run(toy_run[0])

    class Session:  # an export made before attributes were exported: logits only
        def run(self, names, feed):
            assert names == ["logits"], names
            return [np.zeros((1, len(config.classes)), np.float32)]

    engine = OnnxEngine.__new__(OnnxEngine)
    engine.config, engine.name, engine.has_attributes = config, "onnx-fp32", False
    engine.session, engine.input_name, engine._output_names = Session(), "input", ["logits"]
    assert engine.probabilities(torch.zeros(1, 3, 40, 40)).shape == (1, len(config.classes))  # classes still work
    with pytest.raises(SkulensError, match="no attribute outputs"):
        engine.outputs(torch.zeros(1, 3, 40, 40))


@pytest.mark.slow
def test_cli_evaluate_prints_attributes(toy_run, capsys, tmp_path):
    run, manifest = toy_run
    rc = main(
        [
            "evaluate",
            str(run),
            str(manifest),
            "--attribute-columns",
            "background",
            "--tag-columns",
            "tags",
            "--engine",
            "torch",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "attribute background: accuracy" in out and "attribute tags: mAP" in out
    # Without column flags, the CSV is read with the columns the run was trained with.
    rc = main(
        ["evaluate", str(run), str(manifest), "--engine", "torch", "--out", str(tmp_path / "again"), "--no-progress"]
    )
    again = capsys.readouterr().out
    assert rc == 0 and again == out.replace(str(tmp_path), str(tmp_path / "again"))


@pytest.mark.slow
def test_onnx_export_carries_the_attribute_outputs(tmp_path):
    from skulens.engines.onnx_export import export_onnx

    manifest = write_toy_csv(tmp_path / "data")
    dataset = load_dataset(manifest, csv_columns=COLS)
    cfg = TrainConfig(
        model="efficientnet_lite0",
        epochs=1,
        img_size=32,
        batch_size=8,
        patience=0,
        keep="last",
        freeze_stages=4,
        progress=False,
    )
    train(cfg, dataset, tmp_path / "run")
    export_onnx(tmp_path / "run", dataset=dataset, check_images=40, min_agreement_fp32=0.95)
    photos = [s.path for s in dataset.split("test")][:6]
    by_torch = Recognizer.load(tmp_path / "run", engine="torch").predict_batch(photos)
    by_onnx = Recognizer.load(tmp_path / "run", engine="onnx").predict_batch(photos)
    # engine auto now picks ONNX for this run instead of falling back to PyTorch
    assert Recognizer.load(tmp_path / "run", engine="auto").engine.name.startswith("onnx")
    for a, b in zip(by_torch, by_onnx):
        assert set(a.attributes) == set(b.attributes) == set(SPECS)
        for name in SPECS:
            assert a.attributes[name]["value"] == b.attributes[name]["value"]
        assert abs(a.attributes["background"]["confidence"] - b.attributes["background"]["confidence"]) < 1e-3


def test_a_colour_attribute_is_scored_by_family_too():
    from types import SimpleNamespace

    from skulens.models.attributes import family_accuracy

    values = ["Blue", "Navy Blue", "Green", "Teal"]  # Teal is in the Blue family
    probs = np.array([[0.1, 0.6, 0.3, 0.0], [0.3, 0.3, 0.4, 0.0], [0.0, 0.0, 0.2, 0.8], [0.2, 0.5, 0.3, 0.0]])
    # Blue answered Navy Blue: wrong value, right family; Green answered Green at 0.4 while the Blue family
    # sums 0.6: right value, wrong family; Green answered Teal: wrong both ways; Blue answered Navy Blue again
    truth = np.array([0, 2, 2, 0])
    assert family_accuracy(probs, truth, values) == pytest.approx(2 / 4)
    specs = {"colour": {"kind": "softmax", "values": values}, "shade": {"kind": "softmax", "values": values}}
    samples = [SimpleNamespace(attributes=(int(t), int(t))) for t in truth]
    m = attribute_metrics({"colour": probs, "shade": probs}, samples, specs)
    assert m["colour"]["accuracy"] == pytest.approx(1 / 4) and m["colour"]["family_accuracy"] == pytest.approx(2 / 4)
    assert "family_accuracy" not in m["shade"]  # families belong to colour attributes only
