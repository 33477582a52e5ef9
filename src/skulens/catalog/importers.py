"""Bulk import: a products CSV, or a dataset folder (Grocery Store: its catalog of iconic images).

Rows are committed in chunks; a chunk is one transaction, so everything reported as imported
survives a crash, and a re-run skips what is already there unchanged (imports are idempotent).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from skulens.catalog.store import Catalog, Product
from skulens.errors import SkulensError

CHUNK = 64


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    images: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (row number, sku, reason)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged, "images": self.images,
                "rejected": [{"row": r, "sku": s, "reason": why} for r, s, why in self.rejected],
                "seconds": round(self.seconds, 2)}


@dataclass
class CsvMapping:
    """Which CSV column holds what; None picks the usual names (sku/id, image, title, description)."""

    sku: str | None = None
    image: str = "image"
    title: str | None = None
    description: str | None = None
    tree: list[str] = field(default_factory=list)
    attributes: list[str] | None = None  # None: every column not used otherwise (except 'split')


def import_products(catalog: Catalog, rows: list[tuple[int, Product]], *, on_conflict: str = "error",
                    progress: bool = True, desc: str = "importing", chunk_size: int = CHUNK) -> ImportReport:
    """``rows``: (row number for messages, product). Duplicate SKUs inside the input are checked here."""
    report = ImportReport()
    started = time.perf_counter()
    seen: dict[str, tuple[int, str]] = {}
    unique: list[tuple[int, Product]] = []
    for number, product in rows:
        signature = json.dumps(product.to_dict(), sort_keys=True, ensure_ascii=False)
        if product.sku in seen:
            first_row, first_sig = seen[product.sku]
            if first_sig != signature:
                report.rejected.append((number, product.sku, f"duplicate SKU with different data (first on row {first_row})"))
            continue
        seen[product.sku] = (number, signature)
        unique.append((number, product))
    with tqdm(total=len(unique), desc=desc, unit="product", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(unique), chunk_size):
            chunk = unique[start:start + chunk_size]
            result = catalog.upsert([p for _, p in chunk], on_conflict=on_conflict)
            report.added += len(result.added)
            report.updated += len(result.updated)
            report.unchanged += len(result.unchanged)
            done = set(result.added) | set(result.updated)
            report.images += sum(len(p.images) + len(p.gallery_images) for _, p in chunk if p.sku in done)
            report.rejected.extend((chunk[pos][0], sku, why) for pos, sku, why in result.rejected)
            bar.update(len(chunk))
    catalog.sync_index()
    report.rejected.sort()
    report.seconds = time.perf_counter() - started
    return report


def read_products_csv(path: Path, mapping: CsvMapping, split: str | None = None
                      ) -> tuple[list[tuple[int, Product]], list[tuple[int, str, str]]]:
    """Products from a CSV (image paths relative to the CSV's folder); bad rows come back separately."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SkulensError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
        except UnicodeDecodeError:  # binary junk, UTF-16, Latin-1: one clear line, not a traceback
            raise SkulensError(f"{path}: not UTF-8 text (save the CSV as UTF-8)") from None
        except csv.Error as exc:
            raise SkulensError(f"{path}: malformed CSV header ({exc})") from None
        sku_col = mapping.sku or next((c for c in ("sku", "id", "product_id") if c in header), None)
        title_col = mapping.title or ("title" if "title" in header else None)
        desc_col = mapping.description or ("description" if "description" in header else None)
        needed = [c for c in [sku_col, mapping.image, *mapping.tree] if c]
        missing = [c for c in needed if c not in header] + ([] if sku_col else ["sku"])
        if missing:
            raise SkulensError(f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(header)})")
        used = {sku_col, mapping.image, title_col, desc_col, "split", *mapping.tree}
        attrs = mapping.attributes if mapping.attributes is not None else [c for c in header if c not in used]
        rows, bad = [], []
        try:
            for number, record in enumerate(reader, start=2):  # row 1 is the header
                if None in record:
                    bad.append((number, "", "more fields than the header"))
                    continue
                if split is not None and (record.get("split") or "").strip() != split:
                    continue
                sku = (record.get(sku_col) or "").strip()
                image = (record.get(mapping.image) or "").strip()
                if not sku:
                    bad.append((number, "", "empty SKU"))
                    continue
                if not image:
                    bad.append((number, sku, "no image"))
                    continue
                image_path = Path(image) if Path(image).is_absolute() else path.parent / image
                if ".." in Path(image).parts:
                    bad.append((number, sku, f"image path {image!r} leaves the CSV's folder"))
                    continue
                tree = [(record.get(c) or "").strip() for c in mapping.tree]
                while tree and not tree[-1]:
                    tree.pop()
                rows.append((number, Product(
                    sku=sku, title=(record.get(title_col) or "").strip() if title_col else "",
                    category_path=tree,
                    attributes={c: record[c].strip() for c in attrs if c in record and (record[c] or "").strip()},
                    description=(record.get(desc_col) or "").strip() if desc_col else "",
                    images=[str(image_path)])))
        except csv.Error as exc:
            raise SkulensError(f"{path}: malformed CSV near row {reader.line_num} ({exc})") from None
        except UnicodeDecodeError:
            raise SkulensError(f"{path}: not UTF-8 text near row {reader.line_num + 1} (save the CSV as UTF-8)") from None
    return rows, bad


def products_from_dataset(dataset, gallery_split: str | None = None) -> list[tuple[int, Product]]:
    """One product per class: its catalog image (Grocery Store: iconic image + description), plus,
    with ``gallery_split``, that split's labelled photos as extra search examples."""
    from skulens.data.datasets import ImageDataset

    assert isinstance(dataset, ImageDataset)
    gallery: dict[int, list[str]] = {}
    if gallery_split:
        for sample in dataset.split(gallery_split):
            gallery.setdefault(sample.label, []).append(str(sample.path))
    rows = []
    for label, name in enumerate(dataset.classes):
        iconic = dataset.catalog_images.get(label)
        if iconic is None and label not in gallery:
            continue
        path = list(dataset.tree.paths[label]) if dataset.tree else [name]
        description = ""
        if iconic is not None:
            text = iconic.with_name(iconic.name.replace("_Iconic.jpg", "_Description.txt"))
            if text != iconic and text.is_file():
                description = text.read_text(encoding="utf-8", errors="replace").strip()
        rows.append((label + 1, Product(sku=name, title=name.replace("-", " "), category_path=path,
                                        description=description, images=[str(iconic)] if iconic else [],
                                        gallery_images=gallery.get(label, []))))
    return rows
