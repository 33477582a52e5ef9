"""What the catalog verbs do with their sources, for the CLI and the Python API alike: fit a projection
on a source's images, and read labelled search queries from a source (importing is
:meth:`Catalog.import_` / :meth:`Catalog.import_job`, in skulens.catalog.importers)."""

from __future__ import annotations

from pathlib import Path

from skulens.catalog.importers import existing_source


def source_images(source: str | Path, split: str = "train", image_column: str = "image") -> list[str]:
    """Image paths of a source: a dataset's ``split`` photos and catalog images, or a products CSV's
    images (its ``split`` rows when it has a split column, else all of them)."""
    path = existing_source(source)
    if path.suffix.lower() == ".csv":
        import csv

        from skulens.catalog.importers import CsvMapping, read_products_csv

        try:
            with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
                has_split = "split" in next(csv.reader(handle), [])
        except (OSError, csv.Error):
            has_split = False  # read_products_csv says what is wrong with the file
        rows, _ = read_products_csv(path, CsvMapping(image=image_column), split=split if has_split else None)
        return [image for _, product in rows for image in product.images]
    from skulens.data.datasets import load_dataset

    dataset = load_dataset(path)
    return [str(s.path) for s in dataset.split(split)] + [str(p) for p in dataset.catalog_images.values()]


def fit_projection(
    source: str | Path,
    out: str | Path,
    *,
    run: str | Path | None = None,
    device: str = "auto",
    engine: str = "torch",
    flip: bool = False,
    dims: int = 128,
    whiten: bool = False,
    split: str = "train",
    image_column: str = "image",
    progress: bool = True,
):
    """Fit a PCA projection of ``run``'s vectors (None: pretrained Lite0) on ``source``'s images and save
    it to ``out`` (for a catalog's ``projection``); returns ``(projection, embedder)``."""
    from skulens.catalog.embedder import load_embedder
    from skulens.catalog.projection import fit_on_images

    images = source_images(source, split, image_column)
    embedder = load_embedder(run, device, engine, flip)
    projection = fit_on_images(
        embedder, images, dims, whiten, source=f"{source} ({len(images)} images)", progress=progress
    )
    projection.save(out)
    return projection, embedder


def search_queries(source: str | Path, mapping=None, split: str = "test") -> list:
    """Labelled search queries: a dataset's ``split`` photos (the right product is its class), or a
    products CSV's ``split`` rows (relevance: the same category leaf and attributes)."""
    from skulens.catalog.search_eval import Query, queries_from_dataset

    path = Path(source)
    if path.suffix.lower() == ".csv":
        from skulens.catalog.importers import CsvMapping, read_products_csv

        rows, _ = read_products_csv(path, mapping or CsvMapping(), split=split)
        return [
            Query(p.images[0], category_leaf=p.category_path[-1] if p.category_path else None, attributes=p.attributes)
            for _, p in rows
        ]
    from skulens.data.datasets import load_dataset

    return queries_from_dataset(load_dataset(path), split)
