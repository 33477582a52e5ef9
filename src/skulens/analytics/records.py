"""The plain records the report reads, and readers that make them from a dataset, a CSV or a log.

A product is a category path, free-form attributes and an image; a recognition is a time, a label,
a category path and a confidence. Anything that can produce these (the catalog database included)
can feed :func:`skulens.analytics.report.build_report`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from skulens.data.datasets import ImageDataset
from skulens.errors import DatasetError, SkulensError

NOT_GIVEN = "(not given)"
UNKNOWN = "unknown"
# An attribute column with more distinct values than this is an identifier or free text, not a facet.
MAX_ATTRIBUTE_VALUES = 60


def _path_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        parts = value.split(">") if ">" in value else [value]
    else:
        parts = list(value)
    return tuple(str(p).strip() for p in parts if str(p).strip())


@dataclass
class ProductRecord:
    """One product (or one product photo): its category path from the top, attributes, and image."""

    path: tuple[str, ...]
    attributes: dict[str, str] = field(default_factory=dict)
    image: Path | None = None

    @classmethod
    def coerce(cls, item: ProductRecord | dict) -> ProductRecord:
        """Accept a record or a dict ``{"path": [...] or "A > B", "attributes": {...}, "image": ...}``."""
        if isinstance(item, cls):
            return item
        if not isinstance(item, dict):
            raise SkulensError(f"a product record must be a dict, got {type(item).__name__}")
        image = item.get("image")
        attributes = {str(k): "" if v is None else str(v).strip() for k, v in (item.get("attributes") or {}).items()}
        return cls(_path_tuple(item.get("path")), attributes, Path(image) if image else None)


@dataclass
class Recognition:
    """One photo a shopper had recognised. An empty path or ``unknown`` means no catalog answer."""

    time: datetime
    label: str
    path: tuple[str, ...] = ()
    confidence: float | None = None
    unknown: bool = False

    @property
    def top_category(self) -> str:
        if self.unknown or self.label == UNKNOWN:
            return UNKNOWN
        return self.path[0] if self.path else self.label

    @classmethod
    def coerce(cls, item: Recognition | dict) -> Recognition:
        if isinstance(item, cls):
            return item
        if not isinstance(item, dict):
            raise ValueError("not a JSON object")
        raw_time = item.get("time")
        if isinstance(raw_time, datetime):
            when = raw_time
        elif isinstance(raw_time, str):
            when = datetime.fromisoformat(raw_time.strip())
        else:
            raise ValueError("no ISO-8601 'time'")
        label = item.get("label")
        path = _path_tuple(item.get("path"))
        if not label and not path:
            raise ValueError("no 'label' or 'path'")
        confidence = item.get("confidence")
        return cls(
            time=when,
            label=str(label or path[-1]),
            path=path,
            confidence=float(confidence) if isinstance(confidence, (int, float)) else None,
            unknown=bool(item.get("unknown", False)),
        )


@dataclass
class Catalog:
    """Products plus what their columns mean: names of the tree levels and of the attributes."""

    records: list[ProductRecord]
    level_names: list[str]
    attribute_names: list[str]
    source: str


def records_from_dataset(dataset: ImageDataset) -> Catalog:
    """One record per image, in every split (a dataset has no attributes beyond its tree)."""
    if dataset.tree is not None:
        paths = dataset.tree.paths
        level_names = list(dataset.tree.level_names)
    else:
        paths = [(c,) for c in dataset.classes]
        level_names = ["class"]
    records = [ProductRecord(tuple(paths[s.label]), {}, s.path) for s in dataset.samples]
    return Catalog(records, level_names, [], str(dataset.source or dataset.root))


def records_from_csv(
    path: str | Path,
    *,
    label: str = "label",
    tree_columns: list[str] | None = None,
    image_column: str | None = "image",
    attributes: list[str] | None = None,
    skip_columns: Iterable[str] = ("split",),
) -> Catalog:
    """Products from a CSV: the tree is ``tree_columns`` then ``label`` (or, with no such column, the last
    tree column is the leaf); attributes are ``attributes``
    or, when None, every other column with few distinct values (colour, usage, gender...)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc})") from None
    if tree_columns and label not in header:
        label = tree_columns[-1]  # the catalog's convention: the tree columns run down to the leaf
    tree = [c for c in (tree_columns or []) if c != label] + [label]
    missing = [c for c in tree + list(attributes or []) if c not in header]
    if missing:
        raise DatasetError(
            f"{path}: column(s) {', '.join(missing)} not found (the CSV has: {', '.join(header)}); "
            f"choose the category columns with --label and --tree-columns"
        )
    if not rows:
        raise DatasetError(f"{path}: no rows")
    use_images = bool(image_column) and image_column in header
    if attributes is None:
        ignore = set(tree) | set(skip_columns) | {image_column}
        attributes = [c for c in header if c not in ignore and _looks_like_attribute(c, rows)]
    base = path.parent
    records = []
    for row in rows:
        cat_path = tuple((row.get(c) or "").strip() or NOT_GIVEN for c in tree)
        attrs = {a: (row.get(a) or "").strip() for a in attributes}
        image = None
        if use_images and (row.get(image_column) or "").strip():
            image = Path(row[image_column].strip())
            image = image if image.is_absolute() else base / image
        records.append(ProductRecord(cat_path, attrs, image))
    return Catalog(records, tree, list(attributes), str(path))


def _looks_like_attribute(column: str, rows: list[dict]) -> bool:
    values = {(r.get(column) or "").strip() for r in rows} - {""}
    # Few distinct values, and repeated ones: an identifier or a title is unique per row.
    return 1 <= len(values) <= MAX_ATTRIBUTE_VALUES and len(values) <= max(1, len(rows) // 2)


def read_recognitions(path: str | Path) -> tuple[list[Recognition], list[str]]:
    """A JSON-lines log of recognitions; returns the records and one message per line left out."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    records, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(Recognition.coerce(json.loads(line)))
        except (ValueError, TypeError) as exc:
            problems.append(f"line {number}: {exc}")
    if not records:
        first = f" (first problem: {problems[0]})" if problems else ""
        raise DatasetError(
            f"{path}: no usable recognitions; expected JSON lines like "
            f'{{"time": "2024-05-01T10:00:00", "label": ..., "path": [...], "confidence": ...}}{first}'
        )
    return records, problems
