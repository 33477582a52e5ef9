"""Grad-CAM and feature maps: exact where the maths allows, and on a trained model, pointing at the object."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from skulens import nn_math as nm
from skulens.errors import SkulensError
from skulens.explain import explain_image, feature_map_grid, feature_maps, feature_split, gradcam, gradcam_overlay
from skulens.explain.gradcam import chain_geometry, crop_box, gradcam_with_scores
from skulens.models.seedcnn import SeedCNN
from tests.conftest import COLOURS


def _timm(name: str, **kw) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=3, **kw).eval()


@pytest.mark.parametrize(
    "make, size",
    [
        (lambda: SeedCNN(4, img_size=40), 40),
        (lambda: _timm("efficientnet_lite0"), 64),
        (lambda: _timm("resnet18"), 64),
    ],
)
def test_feature_split_reproduces_the_model(make, size):
    model = make().eval()
    split = feature_split(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(split.head(split.features(x)), model(x))


def test_gradcam_equals_the_class_activation_map_for_a_pooled_linear_head():
    # EfficientNet ends in global average pooling + one linear layer, where Grad-CAM's channel
    # weights are exactly W[c, k] / positions: the map must be ReLU(sum_k W[c, k] A_k), rescaled.
    model = _timm("efficientnet_lite0")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        acts = model.forward_features(x)[0]
    for c in range(3):
        with torch.no_grad():
            cam = torch.relu(torch.einsum("k,khw->hw", model.classifier.weight[c], acts))
        expected = (cam - cam.min()) / (cam.max() - cam.min())
        got, probs, index = gradcam_with_scores(model, x[0], c, upsample=False)
        assert index == c and got.shape == (4, 4)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    full = gradcam(model, x)
    assert full.shape == (128, 128) and full.dtype == np.float32 and 0 <= full.min() and full.max() == pytest.approx(1)


def test_seedcnn_feature_cells_are_placed_where_they_look():
    # Three 'valid' 3x3 convolutions and two 2x2 pools: cell i sees input pixels 4i ... 4i + 17.
    assert chain_geometry([(3, 1, 0), (2, 2, 0), (3, 1, 0), (2, 2, 0), (3, 1, 0)]) == (8.5, 4.0)
    assert feature_split(SeedCNN(2, img_size=42)).geometry == (8.5, 4.0)
    # On 42 px nothing is rounded away, so the 7 cells sit symmetrically about the centre.
    offset, stride = 8.5, 4.0
    assert offset + stride * (7 - 1) == pytest.approx(41 - offset)
    # A map hot only in its first column: full heat up to that cell's centre (pixel 8.5), fading
    # to nothing at the next cell's centre (12.5). Spreading 7 cells evenly over 42 px would
    # instead put the first centre at 2.5 and be cold from pixel 9 on.
    from skulens.explain.gradcam import _upsample

    cam = torch.zeros(1, 1, 7, 7)
    cam[0, 0, :, 0] = 1
    row = _upsample(cam, (42, 42), (offset, stride))[0, 0, 20]
    assert row[:9].tolist() == [1.0] * 9
    assert row[10].item() == pytest.approx(0.625) and row[12].item() == pytest.approx(0.125)
    assert row[13:].abs().max() == 0


def test_gradcam_refuses_what_it_cannot_explain():
    model = SeedCNN(3, img_size=40)
    with pytest.raises(SkulensError, match="out of range"):
        gradcam(model, torch.randn(3, 40, 40), class_index=3)
    with pytest.raises(SkulensError, match="one image"):
        gradcam(model, torch.randn(2, 3, 40, 40))
    with pytest.raises(SkulensError, match="last convolutional stage"):
        gradcam(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()), torch.randn(3, 8, 8))
    with pytest.raises(SkulensError, match="vision transformer"):
        gradcam(_timm("vit_tiny_patch16_224", img_size=32), torch.randn(3, 32, 32))


def test_gradcam_restores_the_models_training_mode():
    model = SeedCNN(3, img_size=40).train()
    gradcam(model, torch.randn(3, 40, 40))
    assert model.training


# --- On a trained model: the heat lies on the object ----------------------------------------------


def _scene(colour: str, top: int, left: int, side: int) -> Image.Image:
    """One coloured square on a blank grey background, 48 px like the training photos."""
    arr = np.full((48, 48, 3), 120, np.uint8)
    arr[top : top + side, left : left + side] = COLOURS[colour]
    return Image.fromarray(arr)


# Away from the diagonal where the training squares lay, so a swapped x/y would show.
SCENES = [
    ("red", 4, 22, 20),
    ("green", 24, 4, 20),
    ("blue", 6, 6, 22),
    ("red", 24, 24, 22),
    ("green", 3, 26, 20),
    ("blue", 26, 2, 20),
]


def test_gradcam_puts_most_of_the_heat_on_the_object(trained_run):
    run, _ = trained_run
    shares, areas = [], []
    for colour, top, left, side in SCENES:
        exp = explain_image(run, _scene(colour, top, left, side))
        assert exp.label == exp.predicted_label == colour
        heat = exp.heatmap
        scale = heat.shape[0] / 48  # the model saw the 48 px photo resized to its 40 px input
        box = np.array([top, left, top + side, left + side]) * scale
        # The map has one cell per 4 input pixels, so it cannot place heat more finely than that:
        # "on the object" means inside its box grown by one cell.
        cell = feature_split(SeedCNN(3, img_size=heat.shape[0])).geometry[1]

        def inside(pad: float, heat=heat, box=box) -> np.ndarray:
            mask = np.zeros(heat.shape, bool)
            top, left, bottom, right = box + [-pad, -pad, pad, pad]
            mask[max(0, int(top)) : int(np.ceil(bottom)), max(0, int(left)) : int(np.ceil(right))] = True
            return mask

        near, exact = inside(cell), inside(0)
        share = heat[near].sum() / heat.sum()
        assert share > 0.5, f"{colour} square at {top},{left}: only {share:.0%} of the heat on it"
        assert share > near.mean() + 0.15  # far more than heat spread evenly would put there
        yy, xx = np.mgrid[: heat.shape[0], : heat.shape[1]]
        centre = (int((heat * yy).sum() / heat.sum()), int((heat * xx).sum() / heat.sum()))
        assert exact[centre], f"{colour} square at {top},{left}: the heat is centred off the object at {centre}"
        shares.append(heat[exact].sum() / heat.sum())
        areas.append(exact.mean())
    assert np.mean(shares) > 2 * np.mean(areas)


def test_overlay_covers_the_photo_and_dims_what_the_model_did_not_see(trained_run):
    run, _ = trained_run
    photo = _scene("red", 10, 10, 24).resize((96, 64))  # wider than tall: the model sees the middle square
    overlay = gradcam_overlay(run, photo, max_side=None)
    assert overlay.size == (384, 256)  # tiny photos are enlarged to 256 px on the shorter side
    left, top, right, bottom = crop_box(photo.size, 40)
    assert (left, top, right, bottom) == pytest.approx((16, 0, 80, 64), abs=1)
    big = np.asarray(photo.resize(overlay.size, Image.BILINEAR), dtype=np.float32)
    out = np.asarray(overlay, dtype=np.float32)
    dimmed = big * 0.35 + 255 * 0.65 * 0.25
    np.testing.assert_allclose(out[:, :50], dimmed[:, :50], atol=1.5)  # left strip: never seen
    assert np.abs(out[:, 80:300] - dimmed[:, 80:300]).mean() > 20  # the crop carries the heat


def test_recognizer_and_run_folder_give_the_same_explanation(trained_run, tmp_path):
    from skulens.recognition.recognizer import Recognizer

    run, _ = trained_run
    photo = _scene("blue", 8, 20, 20)
    path = tmp_path / "blue.png"
    photo.save(path)
    by_run = explain_image(run, str(path))
    by_recognizer = explain_image(Recognizer.load(run, engine="torch"), path.read_bytes())
    np.testing.assert_allclose(by_run.heatmap, by_recognizer.heatmap, atol=1e-5)
    other = explain_image(run, path, class_index="green")
    assert other.label == "green" and other.predicted_label == "blue" and other.probability < by_run.probability
    assert not np.allclose(other.heatmap, by_run.heatmap)
    with pytest.raises(SkulensError, match="unknown class 'purple'"):
        explain_image(run, path, class_index="purple")


# --- Feature maps --------------------------------------------------------------------------------


def test_seedcnn_feature_maps_are_its_relu_convolutions():
    torch.manual_seed(1)
    model = SeedCNN(3, img_size=40).eval()
    x = torch.randn(3, 40, 40)
    maps = feature_maps(model, x, layers=2)
    assert [(name, m.shape) for name, m in maps] == [("conv1 + ReLU", (32, 38, 38)), ("conv2 + ReLU", (64, 17, 17))]
    w, b = model.conv1.weight.detach().numpy(), model.conv1.bias.detach().numpy()
    np.testing.assert_allclose(maps[0][1], nm.relu(nm.conv2d(x.numpy(), w, b)), atol=1e-5)
    sheet = feature_map_grid(maps, max_channels=8, columns=4, tile=20)
    assert sheet.mode == "RGB" and sheet.width == 6 + 4 * 26 and sheet.height > 4 * 20


def test_timm_feature_maps_are_its_first_stages():
    model = _timm("efficientnet_lite0")
    maps = feature_maps(model, torch.randn(3, 64, 64), layers=2)
    assert [m.shape for _, m in maps] == [(16, 32, 32), (24, 16, 16)]
    assert "blocks.0" in maps[0][0]


def test_cli_explain_writes_both_pictures_and_reports_errors_in_one_line(trained_run, tmp_path, capsys):
    from skulens.cli import main

    run, _ = trained_run
    photo = tmp_path / "photo.jpg"
    _scene("green", 20, 4, 22).save(photo)
    heat, maps = tmp_path / "out" / "heat.png", tmp_path / "maps.png"
    assert main(["explain", str(run), str(photo), "--out", str(heat), "--feature-maps", str(maps), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["predicted_label"] == "green" and record["heatmap"] == str(heat)
    assert Image.open(heat).size == (256, 256) and Image.open(maps).width > 100
    assert main(["explain", str(run), str(photo)]) == 2
    assert "nothing to write" in capsys.readouterr().err
    assert main(["explain", str(run), str(photo), "--out", str(tmp_path / "heat.gif")]) == 2
    assert "write a .png" in capsys.readouterr().err
    assert main(["explain", str(run), str(tmp_path / "missing.jpg"), "--out", str(heat)]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "Traceback" not in err
