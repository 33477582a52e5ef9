"""The product detector's groundwork (issue 18): composed scenes with known boxes, the detector
model, its training, its figures, running it on photos, and its CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from skulens.data.composition import (
    Composite,
    CompositionConfig,
    Piece,
    SceneComposer,
    compose,
    cutout_mask,
    make_eval_set,
)
from skulens.data.datasets import load_dataset
from skulens.errors import CheckpointError, ImageError, SkulensError

MINI = Path(__file__).resolve().parents[1] / "src/skulens/demo_data/grocery-mini"
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


def _solid(colour, size=(60, 40), label=0) -> Piece:
    return Piece(Image.new("RGB", size, colour), label)


def _pixel_box(image: np.ndarray, colour) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.all(image == np.array(colour, np.uint8), axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _disc_catalog_image(size=160) -> tuple[Image.Image, np.ndarray]:
    """A catalog-style image: a dark red ellipse with a white label on it, on a white background."""
    img = Image.new("RGB", (size, size), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    draw.ellipse((30, 50, 130, 120), fill=(150, 20, 30))
    draw.rectangle((70, 75, 90, 95), fill=(250, 250, 250))  # a hole the mask must fill
    truth = np.zeros((size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    truth[((xx - 80) / 50) ** 2 + ((yy - 85) / 35) ** 2 <= 1] = True
    return img, truth


# --- composition ---------------------------------------------------------------------------------


def test_solid_pieces_boxes_are_exact():
    config = CompositionConfig(
        canvas_size=200, min_pieces=3, max_pieces=3, scale_min=0.2, scale_max=0.3, max_overlap=0.0
    )
    pieces = [_solid(c, (50 + 10 * i, 30 + 5 * i), label=i) for i, c in enumerate(COLOURS[:3])]
    for seed in range(5):
        rng = np.random.default_rng(seed)
        scene = compose(pieces, config, rng, background=np.zeros((200, 200, 3), np.uint8))
        assert scene.labels == [0, 1, 2]
        for box, colour in zip(scene.boxes, COLOURS):
            assert _pixel_box(scene.image, colour) == tuple(int(v) for v in box)


def test_cutout_mask_fills_the_product_and_its_holes():
    img, truth = _disc_catalog_image()
    mask = cutout_mask(img) > 0
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95
    assert mask[85, 80], "the white label inside the product is product"


def test_cutout_boxes_hug_the_rotated_object():
    img, _ = _disc_catalog_image()
    piece = Piece(img, 7, cutout_mask(img))
    config = CompositionConfig(canvas_size=240, min_pieces=1, max_pieces=1, max_rotation=30.0)
    for seed in range(6):
        scene = compose([piece], config, np.random.default_rng(seed), background=np.zeros((240, 240, 3), np.uint8))
        red = scene.image[..., 0] > 60  # the product's pixels; the background is black
        ys, xs = np.nonzero(red)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert np.abs(found - scene.boxes[0]).max() <= 2, (seed, found, scene.boxes[0])


def test_overlap_limit_is_respected():
    config = CompositionConfig(
        canvas_size=160, min_pieces=4, max_pieces=4, scale_min=0.35, scale_max=0.45, max_overlap=0.2
    )
    pieces = [_solid(c, (50, 50), label=i) for i, c in enumerate(COLOURS[:4])]
    background = np.full((160, 160, 3), 40, np.uint8)
    placed, covered = 0, 0
    for seed in range(20):
        scene = compose(pieces, config, np.random.default_rng(seed), background=background)
        for box, label in zip(scene.boxes, scene.labels):
            x1, y1, x2, y2 = box.astype(int)
            visible = np.all(scene.image[y1:y2, x1:x2] == np.array(COLOURS[label], np.uint8), axis=2).mean()
            assert visible >= 0.8 - 1e-6
            placed += 1
            covered += visible < 1.0
    assert placed >= 60  # most pieces found room: the limit is checked, not dodged by leaving pieces out
    assert covered >= 5  # and pieces do overlap, up to the limit


def test_composites_are_deterministic_by_seed():
    dataset = load_dataset(MINI)
    config = CompositionConfig(canvas_size=128)
    a = SceneComposer(dataset, "train", config).composite(3, 5)
    b = SceneComposer(dataset, "train", config).composite(3, 5)
    c = SceneComposer(dataset, "train", config).composite(4, 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes) and a.labels == b.labels
    assert not np.array_equal(a.image, c.image)


def test_eval_set_boxes_are_inside_and_products_differ():
    dataset = load_dataset(MINI)
    scenes = make_eval_set(dataset, "test", 6, seed=1, config=CompositionConfig(canvas_size=128), progress=False)
    assert len(scenes) == 6
    for scene in scenes:
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.boxes) <= 4 and len(set(scene.labels)) == len(scene.labels)
        assert (scene.boxes >= 0).all() and (scene.boxes <= 128).all()
        sides = np.maximum(scene.boxes[:, 2] - scene.boxes[:, 0], scene.boxes[:, 3] - scene.boxes[:, 1])
        assert (sides >= 0.25 * 128 - 2).all() and (sides <= 0.6 * 128 + 2).all()


def test_single_scenes_are_one_photo_filling_the_canvas():
    dataset = load_dataset(MINI)
    plain = make_eval_set(dataset, "test", 12, seed=1, config=CompositionConfig(canvas_size=128), progress=False)
    config = CompositionConfig(canvas_size=128, single_share=0.5)
    mixed = make_eval_set(dataset, "test", 12, seed=1, config=config, progress=False)
    singles = [s for s in mixed if len(s.labels) == 1]
    assert 2 <= len(singles) <= 10
    for scene in singles:
        side = max(scene.boxes[0, 2] - scene.boxes[0, 0], scene.boxes[0, 3] - scene.boxes[0, 1])
        assert 0.85 * 128 - 2 <= side <= 128
    assert any(len(s.labels) > 1 for s in mixed) and all(len(s.labels) > 1 for s in plain)
    with pytest.raises(SkulensError, match="single_share"):
        CompositionConfig.from_dict({"single_share": 1.5})


def test_bad_composition_settings_are_refused():
    with pytest.raises(SkulensError, match="unknown setting"):
        CompositionConfig.from_dict({"max_peices": 3})
    with pytest.raises(SkulensError, match="scale_min must be float"):
        CompositionConfig.from_dict({"scale_min": "small"})
    assert CompositionConfig.from_dict({"scale_min": 0.1, "scale_max": 1}).scale_max == 1
    with pytest.raises(SkulensError, match="min_pieces"):
        CompositionConfig(min_pieces=5, max_pieces=2).check()


# --- figures and box filtering -------------------------------------------------------------------


def _scene_with(boxes) -> Composite:
    return Composite(np.zeros((100, 100, 3), np.uint8), np.asarray(boxes, np.float32), list(range(len(boxes))))


def test_figures_of_perfect_and_wrong_predictions():
    from skulens.evaluation.detection import detection_figures

    scenes = [_scene_with([[10, 10, 40, 40], [50, 50, 90, 95]]), _scene_with([[0, 0, 30, 60]])]
    perfect = [(s.boxes.copy(), np.array([0.9] * len(s.boxes), np.float32)) for s in scenes]
    figures = detection_figures(perfect, scenes, 0.5)
    assert figures["map50"] == pytest.approx(1.0) and figures["found_rate"] == 1.0 and figures["false_per_image"] == 0
    shifted = [(s.boxes + 25, np.array([0.9] * len(s.boxes), np.float32)) for s in scenes]
    figures = detection_figures(shifted, scenes, 0.5)
    assert figures["found_rate"] < 0.5 and figures["false_per_image"] > 0.5 and figures["map50"] < 0.5


def test_group_box_is_dropped_and_nested_part_is_dropped():
    from skulens.engines.detector import filter_boxes, most_central_largest

    boxes = np.array([[0, 0, 100, 100], [5, 5, 45, 45], [55, 55, 95, 95]], np.float32)  # a group box + 2 products
    kept, _ = filter_boxes(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.3)
    assert kept.tolist() == boxes[1:].tolist()
    boxes = np.array([[10, 10, 90, 90], [20, 20, 50, 50]], np.float32)  # a product and a part of it
    kept, _ = filter_boxes(boxes, np.array([0.6, 0.7], np.float32), 0.3)
    assert kept.tolist() == boxes[:1].tolist()
    boxes = np.array([[0, 0, 20, 20], [30, 30, 70, 70], [60, 0, 100, 30]], np.float32)
    assert most_central_largest(boxes, 100, 100) == 1


# --- the detector --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untrained_detector(tmp_path_factory):
    from skulens.engines.detector import Detector, save_detector
    from skulens.models.detector import DetectorSpec, create_detector

    spec = DetectorSpec(input_size=96)
    folder = tmp_path_factory.mktemp("det")
    save_detector(folder, create_detector(spec, pretrained=False), spec, {"score_threshold": 0.05})
    return folder, Detector.load(folder)


def test_detector_answers_any_photo_in_its_pixels(untrained_detector):
    _, detector = untrained_detector
    for size in [(640, 480), (40, 1800), (3000, 2000)]:
        photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        found = detector.detect(photo, score_threshold=0.0, max_objects=5)
        assert len(found) <= 5
        for item in found:
            x1, y1, x2, y2 = item.box
            assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]
    assert len(detector.detect(Image.new("RGB", (200, 200), "white"), score_threshold=0.0, single=True)) <= 1


def test_detector_refuses_bad_photos_in_one_line(untrained_detector, tmp_path):
    _, detector = untrained_detector
    with pytest.raises(ImageError, match="longer"):
        detector.detect(Image.new("RGB", (5000, 1)))
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 8000)).save(huge)
    with pytest.raises(ImageError, match="over the limit"):
        detector.detect(huge)
    with pytest.raises(ImageError, match="not an image"):
        detector.detect(b"not an image at all")
    with pytest.raises(SkulensError, match="max_objects"):
        detector.detect(Image.new("RGB", (64, 64)), max_objects=0)


def test_changed_weights_are_refused(untrained_detector, tmp_path):
    import shutil

    from skulens.engines.detector import DETECTOR_WEIGHTS, Detector

    folder = tmp_path / "copy"
    shutil.copytree(untrained_detector[0], folder)
    with (folder / DETECTOR_WEIGHTS).open("r+b") as handle:
        handle.seek(-16, 2)
        handle.write(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="checksum"):
        Detector.load(folder)
    with pytest.raises(CheckpointError, match="not found"):
        Detector.load(tmp_path / "missing")


def _synthetic_dataset(root: Path) -> None:
    """Three very distinct products as whole 'shopper photos': a checkerboard, red stripes, a disc."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for split, count in (("train", 6), ("val", 2), ("test", 2)):
        for name, pattern in (
            ("checker", ((xx // 8 + yy // 8) % 2)[..., None] * np.array([255, 255, 255])),
            ("stripes", ((xx // 6) % 2)[..., None] * np.array([220, 30, 30])),
            ("disc", (((xx - 32) ** 2 + (yy - 32) ** 2) < 500)[..., None] * np.array([30, 30, 220]) + 200),
        ):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noisy = np.clip(pattern + rng.normal(0, 10, pattern.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(folder / f"{i}.png")


@pytest.mark.slow
def test_a_few_training_steps_find_a_pasted_object(tmp_path):
    from skulens.engines.detector import Detector
    from skulens.evaluation.detection import box_iou
    from skulens.training.detector import DetectorConfig, train_detector

    _synthetic_dataset(tmp_path / "data")
    composition = CompositionConfig(min_pieces=1, max_pieces=2, cutout_share=0.0, backgrounds=["plain"])
    config = DetectorConfig(
        input_size=128, steps=60, batch_size=4, lr=2e-3, warmup_steps=5, eval_every=60, val_composites=6,
        progress=False, composition=composition,
    )  # fmt: skip
    record = train_detector(tmp_path / "data", tmp_path / "det", config)
    assert record["val"]["images"] == 6
    detector = Detector.load(tmp_path / "det")
    dataset = load_dataset(tmp_path / "data")
    scenes = make_eval_set(dataset, "test", 4, seed=9, config=record_composition(record), progress=False)
    best = [
        box_iou(
            np.array([d.box for d in detector.detect(s.image, score_threshold=0.2)] or [[0, 0, 0, 0]]), s.boxes
        ).max()
        for s in scenes
    ]
    assert max(best) >= 0.5, best
    assert np.mean([b >= 0.5 for b in best]) >= 0.5, best


def record_composition(record: dict) -> CompositionConfig:
    return CompositionConfig.from_dict(record["composition"])


# --- recipe and CLI ------------------------------------------------------------------------------


def test_recipe_loads_and_bad_keys_are_named():
    from skulens.training.detector import load_detector_config

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "detector" / "grocery.toml"
    config = load_detector_config(recipe, steps=7)
    assert config.steps == 7 and config.composition.max_overlap == 0.2
    with pytest.raises(SkulensError, match="did you mean 'steps'"):
        load_detector_config(None, stpes=3)
    with pytest.raises(SkulensError, match="must be int"):
        load_detector_config(None, steps="many")


@pytest.mark.parametrize(
    "argv",
    [
        ["detector", "evaluate", "/no/such/detector", str(MINI)],
        ["detector", "train", "/no/such/data", "--out", "/tmp/never"],
        ["detector", "train", str(MINI), "--out", "/tmp/never", "--config", "/no/such.toml"],
    ],
)
def test_cli_bad_input_is_one_line(argv, capsys):
    from skulens.cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("skulens: error:") and "\n" not in err and "Traceback" not in err
