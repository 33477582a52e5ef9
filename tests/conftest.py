"""Shared fixtures: tiny synthetic datasets written to temp folders, and paths to the shared data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
GROCERY = SHARED / "grocery-store"
FASHION = SHARED / "fashion-small"

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def coloured_photo(colour: tuple[int, int, int], seed: int, size: int = 48) -> Image.Image:
    """A noisy photo of a coloured square on grey: easy to learn, not trivially identical."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(90, 150, (size, size, 3)).astype(np.uint8)
    lo, hi = sorted(rng.integers(4, size - 4, 2))
    hi = max(hi, lo + size // 3)
    arr[lo:hi, lo:hi] = np.clip(np.array(colour) + rng.integers(-25, 25, 3), 0, 255)
    return Image.fromarray(arr)


def write_class_folders(
    root: Path, per_class: int = 12, splits: tuple[str, ...] | None = ("train", "val", "test"), seed: int = 0
) -> Path:
    """ROOT/<split>/<class>/*.jpg (or ROOT/<class>/*.jpg when ``splits`` is None)."""
    n = 0
    for split in splits or (None,):
        for name, colour in COLOURS.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            count = per_class if split in (None, "train") else max(3, per_class // 3)
            for i in range(count):
                coloured_photo(colour, seed * 10_000 + n).save(folder / f"{name}_{i:03d}.jpg", quality=92)
                n += 1
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "shop")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A seedcnn trained for a few epochs on the colour dataset: (run folder, dataset folder)."""
    from skulens.data.datasets import load_dataset
    from skulens.training.config import TrainConfig
    from skulens.training.trainer import train

    base = tmp_path_factory.mktemp("trained")
    data = write_class_folders(base / "shop", per_class=16)
    cfg = TrainConfig(model="seedcnn", epochs=4, img_size=40, batch_size=8, lr=2e-3, patience=0, progress=False)
    train(cfg, load_dataset(data), base / "run")
    return base / "run", data


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def requires(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"needs the shared dataset at {path} (absent in this clone)")


# Scenes of two colour-shop photos: what the tiny product detector (issue 18) is trained and tested on.
TWO_PRODUCT_SCENES = dict(canvas_size=160, min_pieces=2, max_pieces=2, cutout_share=0.0, backgrounds=["plain"])


@pytest.fixture(scope="session")
def composition():
    from skulens.data.composition import CompositionConfig

    return CompositionConfig(**TWO_PRODUCT_SCENES)


@pytest.fixture(scope="session")
def detector_dir(trained_run, composition, tmp_path_factory):
    """A product detector trained for a few steps on composites of the colour shop (one per session)."""
    from skulens.training.detector import DetectorConfig, train_detector

    out = tmp_path_factory.mktemp("detector") / "det"
    config = DetectorConfig(
        input_size=128, steps=60, batch_size=4, lr=2e-3, warmup_steps=5, eval_every=60, val_composites=4,
        progress=False, composition=composition,
    )  # fmt: skip
    train_detector(trained_run[1], out, config)
    return out


@pytest.fixture(scope="session")
def recognizer(trained_run, detector_dir):
    """The colour shop's run with the tiny detector."""
    from skulens.recognition.recognizer import Recognizer

    return Recognizer.load(trained_run[0], detector=detector_dir)


@pytest.fixture(scope="session")
def scenes(trained_run, composition):
    """Six two-product scenes of the colour shop's test split."""
    from skulens.data.composition import make_eval_set
    from skulens.data.datasets import load_dataset

    return make_eval_set(load_dataset(trained_run[1]), "test", 6, seed=3, config=composition, progress=False)
