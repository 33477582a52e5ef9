"""One loader, three layouts, and clear errors for datasets that cannot be read."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from skulens.api import demo_dataset_path
from skulens.data.datasets import CsvColumns, load_dataset
from skulens.data.taxonomy import CategoryTree
from skulens.errors import DatasetError
from tests.conftest import FASHION, GROCERY, coloured_photo, requires, write_class_folders


def test_folder_layout_with_splits(folder_dataset):
    ds = load_dataset(folder_dataset)
    assert ds.layout == "folders" and ds.classes == ["blue", "green", "red"]
    counts = ds.counts()
    assert counts["train"] == {"blue": 12, "green": 12, "red": 12}
    assert counts["val"]["red"] == 4 and counts["test"]["green"] == 4
    assert all(ds.classes[s.label] == s.path.parent.name for s in ds.samples)


def test_validation_folder_alias(tmp_path):
    root = write_class_folders(tmp_path / "d", splits=("train", "validation"))
    assert load_dataset(root).has_split("val")


def test_class_folders_only_get_a_seeded_stratified_split(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=20, splits=None)
    a, b = load_dataset(root, seed=3), load_dataset(root, seed=3)
    assert [(s.path, s.split) for s in a.samples] == [(s.path, s.split) for s in b.samples]
    counts = a.counts()
    for cls in a.classes:  # every class appears in every split, in proportion
        assert counts["train"][cls] == 14 and counts["val"][cls] == 3 and counts["test"][cls] == 3
    other = load_dataset(root, seed=4)
    assert {(s.path, s.split) for s in other.samples} != {(s.path, s.split) for s in a.samples}


def test_class_with_one_image_stays_in_train(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=10, splits=None)
    (root / "rare").mkdir()
    coloured_photo((0, 0, 0), 1).save(root / "rare" / "only.jpg")
    ds = load_dataset(root)
    rare = [s for s in ds.samples if ds.classes[s.label] == "rare"]
    assert [s.split for s in rare] == ["train"]


def test_csv_manifest_with_split_and_tree(tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    rows = []
    for i, (kind, leaf, split) in enumerate(
        [
            ("Apparel", "Tshirts", "train"),
            ("Apparel", "Shirts", "train"),
            ("Footwear", "Shoes", "val"),
            ("Footwear", "Shoes", "test"),
        ]
    ):
        coloured_photo((i * 50, 0, 0), i).save(img_dir / f"{i}.jpg")
        rows.append({"file": f"img/{i}.jpg", "master": kind, "type": leaf, "part": split})
    manifest = tmp_path / "products.csv"
    with manifest.open("w", newline="") as h:
        writer = csv.DictWriter(h, ["file", "master", "type", "part"])
        writer.writeheader()
        writer.writerows(rows)
    ds = load_dataset(manifest, csv_columns=CsvColumns(image="file", label="type", split="part", tree=["master"]))
    assert ds.classes == ["Shirts", "Shoes", "Tshirts"]
    assert [s.split for s in ds.samples] == ["train", "train", "val", "test"]
    assert ds.samples[0].path == img_dir / "0.jpg"
    assert ds.tree.paths[ds.classes.index("Shoes")] == ("Footwear", "Shoes")


def test_csv_missing_column_names_the_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,cls\na.jpg,x\n")
    with pytest.raises(DatasetError, match="column\\(s\\) image, label not found; the CSV has: path, cls"):
        load_dataset(manifest)


def test_grocery_layout_keeps_the_tree():
    ds = load_dataset(demo_dataset_path())
    assert ds.layout == "grocery-store" and len(ds.classes) == 8
    path = ds.tree.paths[ds.classes.index("Granny-Smith")]
    assert path == ("Fruit", "Apple", "Granny-Smith")
    assert ds.tree.paths[ds.classes.index("Cucumber")] == ("Vegetables", "Cucumber", "Cucumber")
    assert len(ds.catalog_images) == 8 and all(p.is_file() for p in ds.catalog_images.values())
    assert all(s.path.is_file() for s in ds.samples)


@requires(GROCERY)
def test_full_grocery_store():
    ds = load_dataset(GROCERY)
    assert len(ds.classes) == 81 and len(ds.samples) == 5421
    assert {k: sum(v.values()) for k, v in ds.counts().items()} == {"train": 2640, "val": 296, "test": 2485}
    assert ds.tree.level_labels(0) == ["Fruit", "Packages", "Vegetables"]
    assert len(ds.tree.level_labels(1)) == 43


@requires(FASHION)
def test_fashion_csv_manifest():
    ds = load_dataset(
        FASHION / "products.csv", csv_columns=CsvColumns(label="article_type", tree=["master_category", "sub_category"])
    )
    assert len(ds.samples) == 22123 and len(ds.classes) == 136
    assert ds.tree.level_names == ["master_category", "sub_category", "article_type"]
    assert len(ds.tree.level_labels(0)) == 7


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path / "empty")


def test_tree_level_probabilities_sum_leaves():
    tree = CategoryTree(["top", "leaf"], [("Fruit", "Apple"), ("Fruit", "Pear"), ("Veg", "Leek")])
    probs = np.array([[0.3, 0.3, 0.4]])
    assert tree.level_labels(0) == ["Fruit", "Veg"]
    np.testing.assert_allclose(tree.level_probabilities(probs, 0), [[0.6, 0.4]])
    assert tree.ancestor_map(0).tolist() == [0, 0, 1]
