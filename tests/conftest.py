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
