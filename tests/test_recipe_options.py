"""Recipe options for catalog photos and colour-labelled classes: letterbox padding, hue-safe
augmentation, training on train + val for a final model, and the category-tree loss."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from skulens import Recognizer
from skulens.data.datasets import load_dataset
from skulens.data.taxonomy import CategoryTree
from skulens.data.transforms import AugmentConfig, Preprocessing, build_train_transform, pad_to_square, to_model_input
from skulens.errors import SkulensError
from skulens.runs import load_run
from skulens.training.config import TrainConfig
from skulens.training.trainer import split_train_val, train
from skulens.training.tree_loss import TreeLoss
from tests.conftest import write_class_folders


def _portrait_with_stripes() -> Image.Image:
    """60x80 like fashion-small: white background, a red stripe at the top, a blue one at the bottom."""
    arr = np.full((80, 60, 3), 255, np.uint8)
    arr[2:6, 20:40] = (220, 0, 0)
    arr[74:78, 20:40] = (0, 0, 220)
    arr[30:50, 25:35] = (0, 160, 0)
    return Image.fromarray(arr)


def test_pad_to_square_keeps_every_pixel_and_fills_with_the_border_colour():
    img = _portrait_with_stripes()
    square = pad_to_square(img)
    assert square.size == (80, 80)
    arr = np.asarray(square)
    np.testing.assert_array_equal(arr[:, 10:70], np.asarray(img))  # the photo, untouched, centred
    assert (arr[:, :10] == 255).all() and (arr[:, 70:] == 255).all()  # padded with the white border
    grey = Image.new("L", (30, 10), 77)
    assert pad_to_square(grey).size == (30, 30) and np.asarray(pad_to_square(grey)).min() == 77


def test_pad_mode_shows_what_a_centre_crop_cuts_off():
    pre_crop = Preprocessing(img_size=40, mean=[0, 0, 0], std=[1, 1, 1])
    pre_pad = Preprocessing(img_size=40, mean=[0, 0, 0], std=[1, 1, 1], resize="pad")
    cropped, padded = (
        to_model_input(_portrait_with_stripes(), pre_crop),
        to_model_input(_portrait_with_stripes(), pre_pad),
    )
    assert cropped.shape == padded.shape == (3, 40, 40)

    def red(x):  # pixels that are clearly the red stripe
        return int(((x[0] > 0.6) & (x[1] < 0.3) & (x[2] < 0.3)).sum())

    assert red(cropped) == 0 and red(padded) > 0
    with pytest.raises(SkulensError, match="resize"):
        Preprocessing(img_size=40, mean=[0.5] * 3, std=[0.5] * 3, resize="stretch")


def test_hue_jitter_zero_keeps_hue():
    pre = Preprocessing(img_size=32, mean=[0, 0, 0], std=[1, 1, 1])

    def jitter(aug):
        return next(s for s in build_train_transform(pre, aug).transforms if isinstance(s, v2.ColorJitter))

    assert jitter(AugmentConfig(color_jitter=0.3)).hue == pytest.approx((-0.05, 0.05))
    assert jitter(AugmentConfig(color_jitter=0.3, hue_jitter=0)).hue is None
    assert jitter(AugmentConfig(color_jitter=0.3, hue_jitter=0)).saturation is not None


def test_tree_loss_is_leaf_loss_plus_weighted_upper_levels():
    tree = CategoryTree(level_names=["top", "leaf"], paths=[("Fruit", "Apple"), ("Fruit", "Pear"), ("Dairy", "Milk")])
    loss = TreeLoss(tree, 0.5, nn.CrossEntropyLoss())
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 0.5, 3.0]])
    target = torch.tensor([1, 0])
    p = logits.softmax(-1).numpy()
    fruit = p[:, 0] + p[:, 1]  # the top level's probability of Fruit, the true ancestor of both
    expected = nn.functional.cross_entropy(logits, target).item() + 0.5 * float(np.mean(-np.log(fruit)))
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    # A wrong leaf under the right parent costs less than the same confidence elsewhere in the tree.
    sibling = torch.tensor([[3.0, 0.0, 0.0]])  # says Apple, truth Pear
    stranger = torch.tensor([[0.0, 0.0, 3.0]])  # says Milk, truth Pear
    pear = torch.tensor([1])
    plain = nn.CrossEntropyLoss()
    assert plain(sibling, pear).item() == pytest.approx(plain(stranger, pear).item())
    assert loss(sibling, pear).item() < loss(stranger, pear).item()


def test_train_splits_train_plus_val(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=6)
    dataset = load_dataset(data)
    train_only, val = split_train_val(dataset, 0)
    both, val_again = split_train_val(dataset, 0, ["train", "val"])
    assert len(both) == len(train_only) + len(val) and val_again == val
    with pytest.raises(SkulensError, match="test"):
        split_train_val(dataset, 0, ["train", "test"])
    with pytest.raises(SkulensError, match="unknown training split"):
        split_train_val(dataset, 0, ["train", "trian"])
    cfg = TrainConfig(
        model="seedcnn",
        epochs=2,
        img_size=32,
        batch_size=8,
        train_splits=["train", "val"],
        resize="pad",
        patience=1,
        keep="best",
        progress=False,
    )
    train(cfg, dataset, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    # val was seen in training: the run keeps its last epoch and never stops early
    assert config["metrics"]["kept"] == "last" and config["metrics"]["epoch"] == 2
    assert config["preprocessing"]["resize"] == "pad"
    assert config["train_args"]["train_splits"] == ["train", "val"]
    # Recognition letterboxes a non-square photo as training did: its answer is the kept model's on the
    # padded square, not on a centre crop (which differs for this portrait).
    model, run_config = load_run(tmp_path / "run")
    portrait = _portrait_with_stripes()
    with torch.no_grad():
        padded, cropped = (
            model(to_model_input(portrait, replace(run_config.preprocessing, resize=mode))[None]).softmax(-1)[0]
            for mode in ("pad", "crop")
        )
    assert (padded - cropped).abs().max() > 1e-4
    prediction = Recognizer.load(tmp_path / "run", engine="torch", device="cpu").predict(portrait)
    assert {c.label: c.confidence for c in prediction.top_k} == pytest.approx(
        dict(zip(run_config.classes, padded.tolist())), abs=1e-5
    )
    assert prediction.label == run_config.classes[int(padded.argmax())]
    # Grad-CAM lays its map over what the model saw: the padded square, not a crop of the photo
    from skulens.explain import explain_image

    explanation = explain_image(tmp_path / "run", _portrait_with_stripes())
    assert explanation.photo.size == (80, 80)
    assert explanation.overlay().size[0] == explanation.overlay().size[1]


def test_cli_recipe_flags(tmp_path, capsys):
    from skulens.cli import main

    data = write_class_folders(tmp_path / "d", per_class=6)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(data),
            "--model",
            "seedcnn",
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--resize",
            "pad",
            "--hue-jitter",
            "0",
            "--color-jitter",
            "0.2",
            "--scale-min",
            "0.5",
            "--train-splits",
            "train,val",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    args = json.loads((out / "config.json").read_text())["train_args"]
    assert args["augment"]["hue_jitter"] == 0 and args["augment"]["color_jitter"] == 0.2
    assert args["augment"]["scale_min"] == 0.5 and args["resize"] == "pad"
    assert (
        main(
            [
                "train",
                str(data),
                "--model",
                "seedcnn",
                "--epochs",
                "1",
                "--tree-loss-weight",
                "-1",
                "--no-progress",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        != 0
    )
    assert "tree-loss-weight" in capsys.readouterr().err
    for flag, value in (("--hue-jitter", "0.7"), ("--scale-min", "0"), ("--color-jitter", "-0.1")):
        assert (
            main(
                [
                    "train",
                    str(data),
                    "--model",
                    "seedcnn",
                    "--epochs",
                    "1",
                    flag,
                    value,
                    "--no-progress",
                    "--out",
                    str(tmp_path / "bad"),
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert flag[2:] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
