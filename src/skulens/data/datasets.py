"""One loader for three dataset layouts.

1. Folder per class (Keras ``flow_from_directory`` / torchvision ``ImageFolder``):
   ``ROOT/train/<class>/*``, optional ``ROOT/val`` or ``ROOT/validation``, optional ``ROOT/test``;
   a ROOT holding only class folders is split train/val/test by a seeded, stratified split.
2. A CSV manifest: one row per image, with image-path, label and optional split columns.
3. The Grocery Store layout (``train.txt`` + ``classes.csv``), whose folder names give a
   3-level category tree (Fruit/Vegetables/Packages > coarse > fine).

All three produce an :class:`ImageDataset`: samples (path, label index, split), the class names,
and a category tree when the layout has one.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from skulens.data.images import is_image_file
from skulens.data.taxonomy import CategoryTree
from skulens.errors import DatasetError

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    split: str
    # One entry per dataset attribute, in ``ImageDataset.attributes`` order: a value index (-1 when
    # the cell is empty) for a softmax attribute, a tuple of tag indices (None when empty) for tags.
    attributes: tuple = ()


@dataclass
class ImageDataset:
    root: Path
    layout: str
    classes: list[str]
    samples: list[Sample]
    tree: CategoryTree | None = None
    # Catalog-style reference images per class (Grocery Store iconic images), when the layout has them.
    catalog_images: dict[int, Path] = field(default_factory=dict)
    # What the user passed, so a run can find its data again (export calibration, re-evaluation).
    source: Path | None = None
    csv_columns: dict | None = None
    # {name: {"values": [...], "kind": "softmax" | "sigmoid"}} (the ModelSpec format), CSV only.
    attributes: dict[str, dict] = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def has_split(self, name: str) -> bool:
        return any(s.split == name for s in self.samples)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class per split: ``{split: {class: n}}``."""
        out: dict[str, dict[str, int]] = {s: {c: 0 for c in self.classes} for s in SPLITS}
        for sample in self.samples:
            out[sample.split][self.classes[sample.label]] += 1
        return {s: c for s, c in out.items() if sum(c.values())}


@dataclass
class CsvColumns:
    image: str = "image"
    label: str = "label"
    split: str | None = "split"
    tree: list[str] | None = None  # columns from the top of the tree down to the label
    attributes: list[str] | None = None  # one value per image (colour, gender): a softmax head each
    tags: list[str] | None = None  # "|"-separated tags that can co-occur: a sigmoid per tag


def recorded_columns(train_args: dict) -> CsvColumns | None:
    """The CSV columns a run was trained with (its config's ``train_args``); None for other layouts."""
    columns = train_args.get("csv_columns")
    return CsvColumns(**columns) if columns else None


def load_dataset(
    path: str | Path,
    *,
    csv_columns: CsvColumns | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> ImageDataset:
    """Read a dataset in any of the three layouts (detected from what ``path`` holds)."""
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{root}: dataset not found")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root}: a dataset is a folder or a .csv manifest")
        cols = csv_columns or CsvColumns()
        dataset = _load_csv(root, cols)
        dataset.csv_columns = asdict(cols)
    elif (grocery_root := _grocery_root(root)) is not None:
        dataset = _load_grocery(grocery_root)
    else:
        dataset = _load_folders(root, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    dataset.source = root
    return dataset


# --- layout 1: folder per class -------------------------------------------------------------


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def _load_folders(root: Path, *, seed: int, val_fraction: float, test_fraction: float) -> ImageDataset:
    split_dirs: dict[str, Path] = {}
    for child in _class_dirs(root):
        alias = _SPLIT_ALIASES.get(child.name.lower())
        if alias and alias not in split_dirs:
            split_dirs[alias] = child
    if split_dirs and "train" not in split_dirs:
        raise DatasetError(f"{root}: has {', '.join(d.name for d in split_dirs.values())} but no train/ folder")

    if split_dirs:
        class_names = sorted({d.name for s in split_dirs.values() for d in _class_dirs(s)})
        if not class_names:
            raise DatasetError(f"{root}/train: no class folders found")
        index = {c: i for i, c in enumerate(class_names)}
        samples = [
            Sample(img, index[class_dir.name], split)
            for split, split_root in split_dirs.items()
            for class_dir in _class_dirs(split_root)
            for img in _images_in(class_dir)
        ]
    else:
        class_dirs = _class_dirs(root)
        if not class_dirs:
            raise DatasetError(f"{root}: no class folders found (expected ROOT/<class>/*.jpg or ROOT/train/<class>/)")
        class_names = [d.name for d in class_dirs]
        per_class = {i: _images_in(d) for i, d in enumerate(class_dirs)}
        samples = stratified_split(per_class, seed, val_fraction, test_fraction)
    if not any(s.split == "train" for s in samples):
        raise DatasetError(f"{root}: no images found in the class folders")
    return ImageDataset(root=root, layout="folders", classes=class_names, samples=samples)


def stratified_split(
    per_class: dict[int, list[Path]], seed: int, val_fraction: float, test_fraction: float
) -> list[Sample]:
    """Split each class on its own so every split keeps the class balance; seeded, so repeatable.

    A class with very few images keeps at least one in train (it could not be learnt otherwise).
    """
    rng = random.Random(seed)
    samples: list[Sample] = []
    for label, paths in per_class.items():
        paths = list(paths)
        rng.shuffle(paths)
        n = len(paths)
        n_val = int(round(n * val_fraction)) if n >= 3 else 0
        n_test = int(round(n * test_fraction)) if n >= 3 else 0
        if n - n_val - n_test < 1:
            n_test = max(0, n - n_val - 1)
        for i, p in enumerate(paths):
            split = "val" if i < n_val else "test" if i < n_val + n_test else "train"
            samples.append(Sample(p, label, split))
    return samples


# --- layout 2: CSV manifest -----------------------------------------------------------------


def _load_csv(path: Path, cols: CsvColumns) -> ImageDataset:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc})") from None
    needed = [cols.image, cols.label] + list(cols.tree or []) + list(cols.attributes or []) + list(cols.tags or [])
    missing = [c for c in needed if c not in header]
    if missing:
        raise DatasetError(f"{path}: column(s) {', '.join(missing)} not found; the CSV has: {', '.join(header)}")
    use_split = bool(cols.split) and cols.split in header
    rows = [r for r in rows if (r.get(cols.label) or "").strip() and (r.get(cols.image) or "").strip()]
    if not rows:
        raise DatasetError(f"{path}: no rows with both an image and a label")
    class_names = sorted({r[cols.label].strip() for r in rows})
    index = {c: i for i, c in enumerate(class_names)}
    base = path.parent
    attributes = attribute_specs(rows, cols)
    value_index = {name: {v: i for i, v in enumerate(spec["values"])} for name, spec in attributes.items()}
    samples: list[Sample] = []
    unsplit: dict[int, list[Path]] = defaultdict(list)
    unsplit_attributes: dict[Path, tuple] = {}
    for row_number, row in enumerate(rows, start=2):
        image_path = Path(row[cols.image].strip())
        if not image_path.is_absolute():
            image_path = base / image_path
        label = index[row[cols.label].strip()]
        targets = attribute_targets(row, attributes, value_index)
        if use_split:
            split = _SPLIT_ALIASES.get((row.get(cols.split) or "").strip().lower())
            if split is None:
                raise DatasetError(
                    f"{path}: row {row_number}: unknown split {row.get(cols.split)!r} (use train/val/test)"
                )
            samples.append(Sample(image_path, label, split, targets))
        else:
            unsplit[label].append(image_path)
            unsplit_attributes[image_path] = targets
    if unsplit:
        samples.extend(
            replace(s, attributes=unsplit_attributes[s.path]) for s in stratified_split(unsplit, 0, 0.15, 0.15)
        )
    tree = None
    if cols.tree:
        tree_columns = list(cols.tree)
        if tree_columns[-1] != cols.label:
            tree_columns.append(cols.label)
        leaf_paths: dict[str, tuple[str, ...]] = {}
        for row in rows:
            leaf = row[cols.label].strip()
            leaf_path = tuple((row[c] or "").strip() or "(none)" for c in tree_columns)
            leaf_paths.setdefault(leaf, leaf_path)
        tree = CategoryTree(level_names=tree_columns, paths=[leaf_paths[c] for c in class_names])
    return ImageDataset(root=base, layout="csv", classes=class_names, samples=samples, tree=tree, attributes=attributes)


TAG_SEPARATOR = "|"
NO_TAGS = "-"  # a tag cell saying "none of the tags"; an empty cell means "not known"


def _tags(cell: str) -> list[str]:
    return [t.strip() for t in cell.split(TAG_SEPARATOR) if t.strip() and t.strip() != NO_TAGS]


def attribute_specs(rows: list[dict], cols: CsvColumns) -> dict[str, dict]:
    """Value lists per attribute column (sorted, so they do not depend on row order)."""
    names = list(cols.attributes or []) + list(cols.tags or [])
    if len(set(names)) != len(names):
        raise DatasetError(f"a column is listed twice among attributes/tags: {', '.join(names)}")
    specs: dict[str, dict] = {}
    for name in cols.attributes or []:
        values = sorted({(r.get(name) or "").strip() for r in rows} - {""})
        if not values:
            raise DatasetError(f"attribute column {name!r} has no values")
        specs[name] = {"values": values, "kind": "softmax"}
    for name in cols.tags or []:
        values = sorted({t for r in rows for t in _tags(r.get(name) or "")})
        if not values:
            raise DatasetError(f"tag column {name!r} has no tags")
        specs[name] = {"values": values, "kind": "sigmoid"}
    return specs


def attribute_targets(row: dict, specs: dict[str, dict], value_index: dict[str, dict[str, int]]) -> tuple:
    out: list = []
    for name, spec in specs.items():
        cell = (row.get(name) or "").strip()
        index = value_index[name]
        if spec["kind"] == "softmax":
            out.append(index[cell] if cell else -1)
        else:
            out.append(tuple(sorted(index[t] for t in _tags(cell))) if cell else None)
    return tuple(out)


# --- layout 3: Grocery Store ----------------------------------------------------------------


def _grocery_root(root: Path) -> Path | None:
    for candidate in (root, root / "dataset"):
        if (candidate / "train.txt").is_file() and (candidate / "classes.csv").is_file():
            return candidate
    return None


def _load_grocery(root: Path) -> ImageDataset:
    try:
        with (root / "classes.csv").open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))[1:]
    except (OSError, csv.Error) as exc:
        raise DatasetError(f"{root}/classes.csv: cannot read ({exc})") from None
    fine_names: dict[int, str] = {}
    iconic: dict[int, Path] = {}
    for row in rows:
        if len(row) < 4:
            continue
        try:
            fine_id = int(row[1])
        except ValueError:
            raise DatasetError(f"{root}/classes.csv: bad class id {row[1]!r}") from None
        fine_names[fine_id] = row[0].strip()
        if len(row) > 4 and row[4].strip():
            iconic[fine_id] = root / row[4].strip().lstrip("/")
    ids = sorted(fine_names)
    classes = [fine_names[i] for i in ids]
    position = {fine_id: pos for pos, fine_id in enumerate(ids)}  # ids need not be contiguous
    paths: dict[int, tuple[str, ...]] = {}
    samples: list[Sample] = []
    for split in SPLITS:
        listing = root / f"{split}.txt"
        if not listing.is_file():
            continue
        for line in listing.read_text(encoding="utf-8").splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 3 or not parts[0]:
                continue
            rel = parts[0]
            try:
                fine_id = int(parts[1])
            except ValueError:
                raise DatasetError(f"{listing}: bad class id in line {line!r}") from None
            if fine_id not in position:
                raise DatasetError(f"{listing}: class id {fine_id} is not in classes.csv")
            folders = Path(rel).parts[1:-1]  # e.g. Fruit/Apple/Golden-Delicious or Fruit/Avocado
            if fine_id not in paths:
                top, coarse = folders[0], folders[1]
                paths[fine_id] = (top, coarse, fine_names[fine_id])
            samples.append(Sample(root / rel, position[fine_id], split))
    missing = [fine_names[i] for i in ids if i not in paths]
    if missing:
        raise DatasetError(f"{root}: class(es) with no image in any split: {', '.join(missing[:5])}")
    tree = CategoryTree(level_names=["department", "coarse", "fine"], paths=[paths[i] for i in ids])
    return ImageDataset(
        root=root,
        layout="grocery-store",
        classes=classes,
        samples=samples,
        tree=tree,
        catalog_images={position[k]: v for k, v in iconic.items() if v.is_file()},
    )
