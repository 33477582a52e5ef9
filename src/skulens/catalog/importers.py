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

from skulens.catalog.products import Product
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
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "images": self.images,
            "rejected": [{"row": r, "sku": s, "reason": why} for r, s, why in self.rejected],
            "seconds": round(self.seconds, 2),
        }


@dataclass
class CsvMapping:
    """Which CSV column holds what; None picks the usual names (sku/id, image, title, description)."""

    sku: str | None = None
    image: str = "image"
    title: str | None = None
    description: str | None = None
    tree: list[str] = field(default_factory=list)
    attributes: list[str] | None = None  # None: every column not used otherwise (except 'split')


def import_products(
    catalog,
    rows: list[tuple[int, Product]],
    *,
    on_conflict: str = "error",
    progress: bool = True,
    desc: str = "importing",
    chunk_size: int = CHUNK,
) -> ImportReport:
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
                report.rejected.append(
                    (number, product.sku, f"duplicate SKU with different data (first on row {first_row})")
                )
            continue
        seen[product.sku] = (number, signature)
        unique.append((number, product))
    with tqdm(total=len(unique), desc=desc, unit="product", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(unique), chunk_size):
            chunk = unique[start : start + chunk_size]
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


def read_products_csv(
    path: Path, mapping: CsvMapping, split: str | None = None
) -> tuple[list[tuple[int, Product]], list[tuple[int, str, str]]]:
    """Products from a CSV (image paths relative to the CSV's folder); bad rows come back separately."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SkulensError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        reader = csv.DictReader(handle)
        columns = _resolve_columns(path, _read_header(path, reader), mapping)
        try:
            return _read_rows(path, reader, columns, split)
        except csv.Error as exc:
            raise SkulensError(f"{path}: malformed CSV near row {reader.line_num} ({exc})") from None
        except UnicodeDecodeError:
            raise SkulensError(
                f"{path}: not UTF-8 text near row {reader.line_num + 1} (save the CSV as UTF-8)"
            ) from None


@dataclass
class _CsvColumns:
    """The columns a CSV's products are read from, once the mapping's defaults are settled against its header."""

    sku: str
    image: str
    title: str | None
    description: str | None
    tree: list[str]
    attributes: list[str]


def _read_header(path: Path, reader: csv.DictReader) -> list[str]:
    try:
        return reader.fieldnames or []
    except UnicodeDecodeError:  # binary junk, UTF-16, Latin-1: one clear line, not a traceback
        raise SkulensError(f"{path}: not UTF-8 text (save the CSV as UTF-8)") from None
    except csv.Error as exc:
        raise SkulensError(f"{path}: malformed CSV header ({exc})") from None


def _resolve_columns(path: Path, header: list[str], mapping: CsvMapping) -> _CsvColumns:
    """The mapping's columns, or the usual names where it gives none; missing required columns are an error."""
    sku_col = mapping.sku or next((c for c in ("sku", "id", "product_id") if c in header), None)
    title_col = mapping.title or ("title" if "title" in header else None)
    desc_col = mapping.description or ("description" if "description" in header else None)
    needed = [c for c in [sku_col, mapping.image, *mapping.tree] if c]
    missing = [c for c in needed if c not in header] + ([] if sku_col else ["sku"])
    if missing:
        raise SkulensError(f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(header)})")
    used = {sku_col, mapping.image, title_col, desc_col, "split", *mapping.tree}
    attrs = mapping.attributes if mapping.attributes is not None else [c for c in header if c not in used]
    return _CsvColumns(sku_col, mapping.image, title_col, desc_col, mapping.tree, attrs)


def _read_rows(
    path: Path, reader: csv.DictReader, columns: _CsvColumns, split: str | None
) -> tuple[list[tuple[int, Product]], list[tuple[int, str, str]]]:
    """(row number, product) for the good rows of ``split`` (None: all), (row number, sku, reason) for the bad."""
    rows, bad = [], []
    for number, record in enumerate(reader, start=2):  # row 1 is the header
        if None in record:
            bad.append((number, "", "more fields than the header"))
            continue
        if split is not None and (record.get("split") or "").strip() != split:
            continue
        product = _product_from_record(path, record, columns)
        if isinstance(product, Product):
            rows.append((number, product))
        else:
            bad.append((number, *product))
    return rows, bad


def _product_from_record(path: Path, record: dict, columns: _CsvColumns) -> Product | tuple[str, str]:
    """The row's product, or (sku, reason) when the row cannot become one."""
    sku = (record.get(columns.sku) or "").strip()
    image = (record.get(columns.image) or "").strip()
    if not sku:
        return "", "empty SKU"
    if not image:
        return sku, "no image"
    image_path = Path(image) if Path(image).is_absolute() else path.parent / image
    if ".." in Path(image).parts:
        return sku, f"image path {image!r} leaves the CSV's folder"
    tree = [(record.get(c) or "").strip() for c in columns.tree]
    while tree and not tree[-1]:  # trailing empty levels: the product sits higher up the tree
        tree.pop()
    return Product(
        sku=sku,
        title=(record.get(columns.title) or "").strip() if columns.title else "",
        category_path=tree,
        attributes={c: record[c].strip() for c in columns.attributes if c in record and (record[c] or "").strip()},
        description=(record.get(columns.description) or "").strip() if columns.description else "",
        images=[str(image_path)],
    )


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
        rows.append(
            (
                label + 1,
                Product(
                    sku=name,
                    title=name.replace("-", " "),
                    category_path=path,
                    description=description,
                    images=[str(iconic)] if iconic else [],
                    gallery_images=gallery.get(label, []),
                ),
            )
        )
    return rows


def existing_source(source: str | Path) -> Path:
    path = Path(source)
    if not path.exists():
        raise SkulensError(f"{path}: no such file or folder")
    return path


def read_source(source: str | Path, mapping=None, *, split: str | None = None, gallery_split: str | None = None):
    """``(rows, bad rows)`` from a products CSV (``mapping``: its CsvMapping; ``split``: only rows whose
    'split' column says so) or a dataset (its catalog images; ``gallery_split``: that split's photos
    as extra search examples)."""
    path = existing_source(source)
    if path.suffix.lower() == ".csv":
        return read_products_csv(path, mapping or CsvMapping(), split=split)
    from skulens.data.datasets import load_dataset

    return products_from_dataset(load_dataset(path), gallery_split), []


def import_source(
    catalog,
    source: str | Path,
    *,
    mapping=None,
    split: str | None = None,
    gallery_split: str | None = None,
    on_conflict: str = "error",
    chunk_size: int = 64,
    progress: bool = True,
):
    """Import ``source`` into an open catalog in this process; the ImportReport lists bad rows too."""
    rows, bad = read_source(source, mapping, split=split, gallery_split=gallery_split)
    report = import_products(catalog, rows, on_conflict=on_conflict, chunk_size=max(1, chunk_size), progress=progress)
    report.rejected = sorted(bad + report.rejected)
    return report


class _DatabaseOnly:
    """A catalog whose ``sync_index`` waits: in a multi-process import every rank writes products
    to the database, and rank 0 alone updates the index afterwards (one writer of the index files)."""

    def __init__(self, catalog):
        self._catalog = catalog

    def upsert(self, *args, **kwargs):
        return self._catalog.upsert(*args, **kwargs)

    def sync_index(self) -> None:
        pass


def import_job(
    open_with_model,
    db,
    source: str | Path,
    *,
    run: str | Path | None = None,
    device: str = "auto",
    engine: str = "auto",
    flip: bool = False,
    projection: str | Path | None = None,
    mapping=None,
    split: str | None = None,
    gallery_split: str | None = None,
    on_conflict: str = "error",
    chunk_size: int = 64,
    progress: bool = True,
    **open_kwargs,
):
    """Open the catalog ``db`` with ``open_with_model`` (the caller's Catalog.open_with_model) and
    ``run``'s embedder (None: the catalog's own, or pretrained Lite0), and import ``source``. Under
    torchrun each rank embeds and writes the products it owns (a hash of the
    SKU, so duplicates meet on one rank) and every rank gets the job's summed report. Imports are
    idempotent, so re-running after a crash embeds only what is missing."""
    from skulens.training.distributed import setup

    rows, bad = read_source(source, mapping, split=split, gallery_split=gallery_split)
    kwargs = {"on_conflict": on_conflict, "chunk_size": max(1, chunk_size)}

    def open_catalog(on_device: str):
        return open_with_model(db, run, on_device, engine, flip, projection=projection, **open_kwargs)

    job = setup(device, backend="gloo")  # gloo: the ranks only exchange a few counters
    if not job.distributed:
        with open_catalog(device) as catalog:
            report = import_products(catalog, rows, progress=progress, **kwargs)
    else:
        report = _import_shard(job, open_catalog, rows, progress, kwargs)
    report.rejected = sorted(bad + report.rejected)
    return report


def _import_shard(job, open_catalog, rows, progress: bool, kwargs: dict):
    """This rank's share of a torchrun import; returns the job's report, summed over the ranks."""
    rows = [row for row in rows if job.owns(row[1].sku)]
    if not job.is_main:
        job.barrier()  # rank 0 creates the tables and records the embedding model first
    with open_catalog(str(job.device)) as catalog:  # one GPU per process when there are GPUs
        if job.is_main:
            job.barrier()
        report = import_products(_DatabaseOnly(catalog), rows, progress=progress and job.is_main, **kwargs)
        job.barrier()  # every rank's products are committed
        if job.is_main:
            catalog.sync_index()
    total = ImportReport()
    for part in job.gather_json(report.to_dict()):
        total.added += part["added"]
        total.updated += part["updated"]
        total.unchanged += part["unchanged"]
        total.images += part["images"]
        total.rejected += [(r["row"], r["sku"], r["reason"]) for r in part["rejected"]]
        total.seconds = max(total.seconds, part["seconds"])
    return total
