"""Colour soft targets: typical colours measured from training photos, the smoothing spread by
perceptual closeness, the loss that uses them, and the training/CLI wiring."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from skulens.analytics.colours import srgb_to_lab
from skulens.cli import main
from skulens.data.datasets import CsvColumns, load_dataset
from skulens.errors import SkulensError
from skulens.models.attributes import attribute_loss
from skulens.training.colour_targets import colour_target_matrices, similarity_targets, value_colours
from skulens.training.config import TrainConfig
from skulens.training.trainer import train

SHADES = {"navy": (20, 30, 95), "black": (25, 25, 28), "yellow": (240, 210, 40)}
COLS = CsvColumns(image="image", label="label", split="split", attributes=["colour"], tags=["tags"])


def _product_photo(rgb, seed: int) -> Image.Image:
    """A 60x80 catalog photo: a product of one colour (with a little noise) on a white backdrop."""
    rng = np.random.default_rng(seed)
    arr = np.full((80, 60, 3), 255, np.uint8)
    body = np.clip(np.array(rgb) + rng.integers(-6, 7, (50, 34, 3)), 0, 255)
    arr[15:65, 13:47] = body.astype(np.uint8)
    return Image.fromarray(arr)


def _write_catalog(root: Path, per_shade: int = 6) -> Path:
    """Class = the product type (shirt or shoe: a label the colour does not decide); colour from SHADES,
    one cell left empty; a tags column for the sigmoid case."""
    (root / "img").mkdir(parents=True)
    rows, n = [], 0
    for split, count in (("train", per_shade), ("val", 2), ("test", 1)):
        for shade, rgb in SHADES.items():
            for i in range(count):
                path = f"img/{n:03d}.png"
                _product_photo(rgb, n).save(root / path)
                rows.append({"image": path, "label": "shirt" if i % 2 else "shoe", "split": split,
                             "colour": "" if n == 3 else shade, "tags": "sale" if i % 3 == 0 else "-"})
                n += 1
    manifest = root / "products.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return _write_catalog(tmp_path_factory.mktemp("colours"))


def test_each_value_gets_the_colour_of_its_products_not_of_the_backdrop(catalog):
    ds = load_dataset(catalog, csv_columns=COLS)
    values = ds.attributes["colour"]["values"]
    centres = value_colours(ds.split("train"), 0, len(values) + 1)  # one value with no photo at all
    for shade, rgb in SHADES.items():
        measured = centres[values.index(shade)]
        assert np.linalg.norm(measured - srgb_to_lab(np.array(rgb))) < 3.0, shade
    assert np.isnan(centres[-1]).all()


def test_the_smoothing_goes_to_the_colours_that_look_alike():
    lab = srgb_to_lab(np.array(list(SHADES.values())))
    t = similarity_targets(lab, 0.3)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(t), 0.7)
    navy, black, yellow = 0, 1, 2
    assert t[navy, black] > 0.29 and t[navy, yellow] < 0.01  # dE ~ 20 against ~ 95
    np.testing.assert_array_equal(similarity_targets(lab, 0.0), np.eye(3))
    # a value with no measured colour spreads uniformly and receives nothing from the others
    t = similarity_targets(np.vstack([lab, [np.nan] * 3]), 0.3)
    np.testing.assert_allclose(t[3, :3], 0.1)
    assert t[navy, 3] == 0 and t[navy, black] > 0.29
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    with pytest.raises(SkulensError, match=r"\[0, 1\)"):
        similarity_targets(lab, 1.0)


def test_the_loss_uses_the_matrix_rows_and_skips_unknown_values():
    specs = {"colour": {"values": list(SHADES), "kind": "softmax"}}
    logits = {"colour": torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])}
    target = {"colour": torch.tensor([0, 2, -1])}
    matrix = torch.tensor(similarity_targets(srgb_to_lab(np.array(list(SHADES.values()))), 0.3), dtype=torch.float32)
    by_hand = -(matrix[[0, 2]] * F.log_softmax(logits["colour"][:2], dim=-1)).sum(-1).mean()
    got = attribute_loss(logits, target, specs, label_smoothing=0.1, soft_targets={"colour": matrix})
    assert torch.allclose(got, by_hand)
    # the identity matrix is plain cross-entropy, whatever the uniform smoothing says
    plain = F.cross_entropy(logits["colour"][:2], target["colour"][:2])
    assert torch.allclose(attribute_loss(logits, target, specs, 0.1, {"colour": torch.eye(3)}), plain)


def test_training_with_colour_smoothing_records_it_and_refuses_a_tag_or_unknown_attribute(catalog, tmp_path):
    ds = load_dataset(catalog, csv_columns=COLS)
    cfg = TrainConfig(model="seedcnn", epochs=1, img_size=32, batch_size=6, patience=0, keep="last",
                      colour_smoothing={"colour": 0.3}, progress=False)
    train(cfg, ds, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train_args"]["colour_smoothing"]
    assert recorded == {"colour": 0.3}
    matrices = colour_target_matrices(ds.split("train"), ds.attributes, {"colour": 0.3})
    assert matrices["colour"].shape == (3, 3)
    for bad, message in (({"tags": 0.3}, "not one"), ({"size": 0.3}, "not one"), ({"colour": 1.5}, r"\[0, 1\)")):
        with pytest.raises(SkulensError, match=message):
            train(TrainConfig(model="seedcnn", epochs=1, img_size=32, colour_smoothing=bad, progress=False),
                  ds, tmp_path / "refused")
    assert not (tmp_path / "refused" / "model.safetensors").exists()


def test_cli_colour_smoothing_flag(catalog, tmp_path, capsys):
    base = ["train", str(catalog), "--model", "seedcnn", "--epochs", "1", "--img-size", "32", "--no-progress",
            "--attribute-columns", "colour", "--label", "label"]
    assert main(base + ["--colour-smoothing", "colour", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "ATTRIBUTE=SHARE" in err and "Traceback" not in err
    assert main(base + ["--colour-smoothing", "colour=0.2", "--out", str(tmp_path / "b")]) == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["train_args"]["colour_smoothing"] == {"colour": 0.2}
