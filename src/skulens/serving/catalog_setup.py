"""Opening the catalog a server searches: a user's database, or the demo catalog built on first start.

The demo's products ship as a CSV + images inside the package; its database is derived data, so it
lives in the user's cache folder, named after the embedding model and the package folder: a new
model or a moved install gets a fresh database instead of vectors or paths that no longer fit.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from skulens.errors import SkulensError
from skulens.files import cache_dir

log = logging.getLogger("skulens.serving")
DEMO_TREE = ["department", "coarse", "fine"]


def open_catalog(db: str | Path, run: str | Path | None, device: str = "auto", engine: str = "auto"):
    """A catalog searched with the model it recorded (which may differ from the served run); a new,
    empty catalog gets ``run``'s embedder, so products added through the API match the served model."""
    from skulens.catalog import Catalog

    probe = Catalog.open(db)
    recorded = probe.model_info
    probe.engine.dispose()
    catalog = Catalog.open_with_model(db, run=None if recorded else run, device=device, engine=engine)
    if not recorded:
        from skulens.catalog.db import redacted_url

        log.info(
            "catalog %s is new: it will be indexed with %s", redacted_url(catalog.url), catalog.embedder.description
        )
    return catalog


def open_demo_catalog(run: Path, catalog_dir: Path, device: str = "auto", progress: bool = True, engine: str = "auto"):
    """The demo catalog, imported into its cache database (idempotent: later starts find every
    product unchanged and embed nothing). ``engine`` as the server's: with ``auto`` on a CPU the demo
    model's INT8 export embeds, the file the web page runs on the shopper's device too, so the page
    can search by the vector it computed (issue 19). The engine is part of the cache's name."""
    from skulens.catalog import Catalog, CsvMapping, import_products, load_embedder, read_products_csv
    from skulens.catalog.schema import SchemaError

    embedder = load_embedder(run, device, engine)
    place = hashlib.sha256(str(catalog_dir.resolve()).encode()).hexdigest()[:8]
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SkulensError(
            f"{folder}: cannot create the cache folder for the demo catalog ({exc.strerror}); "
            "set SKULENS_CACHE_DIR to a writable folder"
        ) from None
    db = folder / f"demo-catalog-{embedder.model_id}-{place}.db"
    try:
        catalog = Catalog.open(db, embedder)
    except SchemaError:  # made by an earlier skulens: the demo's own cache, so upgraded without asking
        Catalog.upgrade(db)
        catalog = Catalog.open(db, embedder)
    rows, bad = read_products_csv(catalog_dir / "products.csv", CsvMapping(tree=DEMO_TREE))
    report = import_products(catalog, rows, on_conflict="update", progress=progress, desc="demo catalog")
    for number, sku, reason in [*bad, *report.rejected]:
        log.warning("demo catalog row %d (%s): %s", number, sku, reason)
    if report.added or report.updated:
        log.info("demo catalog: %d products indexed in %.1f s", report.added + report.updated, report.seconds)
    return catalog
