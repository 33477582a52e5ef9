"""CLI for the catalog and visual search: ``catalog import|info|list|remove|reindex|rebuild-index``,
``search``, ``similar`` and ``evaluate-search``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_PARTIAL = 0, 1


def _db_args(p: argparse.ArgumentParser, run_help: str) -> None:
    p.add_argument("--db", required=True, help="catalog database: a SQLite file path or a SQLAlchemy URL "
                                                "(postgresql://...)")
    p.add_argument("--run", default=None, help=run_help)
    p.add_argument("--index-dir", default=None, help="where the vector index lives (default: beside a SQLite file)")
    p.add_argument("--index-kind", default="auto", choices=["auto", "flat", "ivf"],
                   help="exact (flat) or approximate (ivf) search; auto switches to ivf for large catalogs")
    p.add_argument("--index-backend", default=None, choices=["faiss", "milvus"],
                   help="faiss: an index file beside this process; milvus: a Milvus shared by every server "
                        "(--milvus-uri). Default: $SKULENS_INDEX_BACKEND, else faiss")
    p.add_argument("--milvus-uri", default=None, help="Milvus server or cluster (http://host:19530), or a local "
                                                      "milvus-lite path ending in .db; default: $SKULENS_MILVUS_URI. "
                                                      "A token is read from $SKULENS_MILVUS_TOKEN")
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx"],
                   help="embedding engine for a new catalog: auto uses the run's ONNX export on a CPU when present")
    p.add_argument("--flip", action="store_true",
                   help="new catalog: average each vector with its mirror image's (twice the embedding time, "
                        "steadier vectors; BENCHMARKS.md)")
    p.add_argument("--projection", default=None, metavar="FILE",
                   help="new catalog: project every vector with this file (`skulens catalog fit-projection`)")


def _csv_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("products CSV columns")
    g.add_argument("--sku-column", default=None, help="default: sku, id or product_id")
    g.add_argument("--image-column", default="image")
    g.add_argument("--title-column", default=None, help="default: title")
    g.add_argument("--description-column", default=None, help="default: description")
    g.add_argument("--tree-columns", default="", help="category columns from the top down, e.g. "
                                                      "master_category,sub_category,article_type")
    g.add_argument("--attribute-columns", default=None,
                   help="comma-separated attribute columns (default: every other column except split)")
    g.add_argument("--split", default=None, help="only rows whose 'split' column has this value")


def add_catalog_commands(sub) -> None:
    cat = sub.add_parser("catalog", help="the product catalog: import, list, remove, re-embed")
    csub = cat.add_subparsers(dest="catalog_command", required=True)
    run_help = "trained run whose embedding indexes the catalog (default: the catalog's own, or pretrained Lite0)"

    imp = csub.add_parser("import", help="import products from a CSV or a dataset folder (idempotent; several "
                                         "processes: torchrun --nproc_per_node=N -m skulens catalog import ...)")
    imp.add_argument("source", help="products CSV, or a dataset (Grocery Store: its catalog of iconic images)")
    _db_args(imp, run_help)
    _csv_args(imp)
    imp.add_argument("--gallery-split", default=None,
                     help="dataset sources: also index this split's labelled photos as search examples")
    imp.add_argument("--on-conflict", default="error", choices=["error", "update", "skip"],
                     help="a SKU already in the catalog with different data: reject the row (default), update, skip")
    imp.add_argument("--chunk-size", type=int, default=64, help="products per transaction (default 64)")
    imp.add_argument("--json", action="store_true", help="print the import report as JSON")
    imp.add_argument("--no-progress", action="store_true")

    fp = csub.add_parser("fit-projection", help="fit a PCA projection of the run's vectors on labelled images, "
                                                "for --projection (smaller index; BENCHMARKS.md for what it does "
                                                "to recall)")
    fp.add_argument("source", help="a dataset (its --split photos and catalog images) or a products CSV (its images)")
    fp.add_argument("--run", default=None, help="trained run (default: pretrained Lite0 features)")
    fp.add_argument("--device", default="auto")
    fp.add_argument("--engine", default="torch", choices=["auto", "torch", "onnx"])
    fp.add_argument("--flip", action="store_true", help="fit on flip-averaged vectors (for a --flip catalog)")
    fp.add_argument("--dims", type=int, default=128, help="output dimension (default 128)")
    fp.add_argument("--whiten", action="store_true", help="scale every axis to unit variance")
    fp.add_argument("--split", default="train", help="the split to fit on (default train; a CSV without a split "
                                                      "column is used whole)")
    fp.add_argument("--image-column", default="image", help="CSV sources: the image column")
    fp.add_argument("--out", required=True, help="the projection file to write (.safetensors)")
    fp.add_argument("--no-progress", action="store_true")

    info = csub.add_parser("info", help="counts, embedding model, index")
    _db_args(info, run_help)
    ls = csub.add_parser("list", help="list products")
    _db_args(ls, run_help)
    ls.add_argument("--category", default=None, help="category path, e.g. 'Fruit > Apple'")
    ls.add_argument("--limit", type=int, default=50)
    rm = csub.add_parser("remove", help="remove products by SKU")
    rm.add_argument("skus", nargs="+")
    _db_args(rm, run_help)
    rx = csub.add_parser("reindex", help="re-embed every image with another model (--run), then rebuild the index")
    _db_args(rx, run_help)
    rb = csub.add_parser("rebuild-index", help="rebuild the vector index from the vectors in the database")
    _db_args(rb, run_help)
    rb.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query")

    se = sub.add_parser("search", help="products that look like a photo")
    se.add_argument("images", nargs="+")
    _db_args(se, run_help)
    se.add_argument("--top-k", type=int, default=10)
    se.add_argument("--category", default=None, help="only products under this category path, e.g. 'Fruit > Apple'")
    se.add_argument("--attribute", action="append", default=[], metavar="NAME=VALUE",
                    help="only products with this attribute value, e.g. colour=Blue (repeatable: all must match)")
    se.add_argument("--json", action="store_true")

    si = sub.add_parser("similar", help="products similar to a product (itself and near-duplicates left out)")
    si.add_argument("sku")
    _db_args(si, run_help)
    si.add_argument("--top-k", type=int, default=10)
    si.add_argument("--same-category", action="store_true")
    si.add_argument("--json", action="store_true")

    ev = sub.add_parser("evaluate-search", help="Recall@1/5/10 and mAP (or precision@k) of photo search")
    ev.add_argument("source", help="labelled queries: a dataset (right product = its class) or a products CSV")
    _db_args(ev, run_help)
    _csv_args(ev)
    ev.add_argument("--query-split", default="test")
    ev.add_argument("--match-attributes", default="", help="CSV sources: also report precision@k for category + "
                                                           "these attributes, e.g. colour")
    ev.add_argument("--out", default=None, help="write the metrics JSON here")
    ev.add_argument("--no-progress", action="store_true")


def _attributes(pairs: list[str]) -> dict[str, str] | None:
    from skulens.catalog.store import parse_attribute_filter

    return parse_attribute_filter(pairs) or None


def _category(text: str | None) -> list[str] | None:
    if not text:
        return None
    parts = [p.strip() for p in text.replace("/", ">").split(">")]
    return [p for p in parts if p]


def _open(args, embedder_needed: bool = True):
    from skulens.catalog import Catalog

    kwargs = {"index_dir": args.index_dir, "index_kind": args.index_kind, "index_backend": args.index_backend,
              "milvus_uri": args.milvus_uri}
    if not embedder_needed:
        return Catalog.open(args.db, **kwargs)
    return Catalog.open_with_model(args.db, args.run, args.device, args.engine, getattr(args, "flip", False),
                                   projection=getattr(args, "projection", None), **kwargs)


def _mapping(args):
    from skulens.catalog import CsvMapping

    return CsvMapping(sku=args.sku_column, image=args.image_column, title=args.title_column,
                      description=args.description_column,
                      tree=[c.strip() for c in args.tree_columns.split(",") if c.strip()],
                      attributes=[c.strip() for c in args.attribute_columns.split(",") if c.strip()]
                      if args.attribute_columns is not None else None)


def _print_hits(hits, as_json: bool, header: str | None = None) -> None:
    if as_json:
        return
    if header:
        print(header)
    if not hits:
        print("  (no products)")
    for rank, hit in enumerate(hits, start=1):
        path = " > ".join(hit.category_path)
        print(f"  {rank:2d}. {hit.score:.3f}  {hit.sku:24s} {hit.title[:40]:40s} {path}")


class _DatabaseOnly:
    """A catalog whose ``sync_index`` waits: in a multi-process import every rank writes products
    to the database, and rank 0 alone updates the index afterwards (one writer of the index files)."""

    def __init__(self, catalog):
        self._catalog = catalog

    def upsert(self, *args, **kwargs):
        return self._catalog.upsert(*args, **kwargs)

    def sync_index(self) -> None:
        pass


def _import_job(args, rows):
    """Import alone, or as one rank of ``torchrun --nproc_per_node=N -m skulens catalog import``:
    each rank embeds and writes the products it owns (a hash of the SKU, so duplicates meet on one
    rank). Imports are idempotent, so re-running after a crash embeds only what is missing.
    Returns (the job's report, whether this process speaks for the job)."""
    from skulens.catalog import ImportReport, import_products
    from skulens.training.distributed import setup

    kwargs = {"on_conflict": args.on_conflict, "chunk_size": max(1, args.chunk_size)}
    job = setup(args.device, backend="gloo")  # gloo: the ranks only exchange a few counters
    if not job.distributed:
        with _open(args) as catalog:
            return import_products(catalog, rows, progress=not args.no_progress, **kwargs), True
    args.device = str(job.device)  # one GPU per process when there are GPUs
    rows = [row for row in rows if job.owns(row[1].sku)]
    if not job.is_main:
        job.barrier()  # rank 0 creates the tables and records the embedding model first
    with _open(args) as catalog:
        if job.is_main:
            job.barrier()
        report = import_products(_DatabaseOnly(catalog), rows, progress=not args.no_progress and job.is_main,
                                 **kwargs)
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
    return total, job.is_main


def cmd_catalog(args) -> int:
    from skulens.catalog import products_from_dataset, read_products_csv

    command = args.catalog_command
    if command == "import":
        source = Path(args.source)
        if not source.exists():
            from skulens.errors import SkulensError

            raise SkulensError(f"{source}: no such file or folder")
        if source.suffix.lower() == ".csv":
            rows, bad = read_products_csv(source, _mapping(args), split=args.split)
        else:
            from skulens.data.datasets import load_dataset

            rows, bad = products_from_dataset(load_dataset(source), args.gallery_split), []
        report, speaker = _import_job(args, rows)
        report.rejected = sorted(bad + report.rejected)
        if not speaker:  # under torchrun, rank 0 reports for the job
            return EXIT_PARTIAL if report.rejected else EXIT_OK
        if args.json:
            print(json.dumps(report.to_dict(), indent=1))
        else:
            for row, sku, why in report.rejected:
                print(f"skulens: row {row}{f' ({sku})' if sku else ''}: {why}", file=sys.stderr)
            print(f"imported {report.added} new, {report.updated} updated, {report.unchanged} unchanged "
                  f"product(s) ({report.images} images) in {report.seconds:.1f} s; {len(report.rejected)} rejected")
        return EXIT_PARTIAL if report.rejected else EXIT_OK
    if command == "fit-projection":
        return _fit_projection(args)
    if command == "info":
        with _open(args, embedder_needed=False) as catalog:
            print(json.dumps(catalog.info(), indent=1))
        return EXIT_OK
    if command == "list":
        with _open(args, embedder_needed=False) as catalog:
            for hit in catalog.products(limit=args.limit, category=_category(args.category)):
                print(f"{hit.sku:24s} {hit.title[:40]:40s} {' > '.join(hit.category_path)}")
        return EXIT_OK
    if command == "remove":
        with _open(args, embedder_needed=False) as catalog:
            removed = catalog.remove(args.skus)
        for sku in sorted(set(args.skus) - set(removed)):
            print(f"skulens: unknown SKU {sku!r}", file=sys.stderr)
        print(f"removed {len(removed)} product(s)")
        return EXIT_OK if len(removed) == len(set(args.skus)) else EXIT_PARTIAL
    if command == "reindex":
        from skulens.catalog import load_embedder

        embedder = load_embedder(args.run, args.device, args.engine, args.flip, args.projection)
        with _open(args, embedder_needed=False) as catalog:
            n = catalog.reindex(embedder)
        print(f"re-embedded {n} image(s) with {embedder.description}")
        return EXIT_OK
    if command == "rebuild-index":
        with _open(args, embedder_needed=False) as catalog:
            state = catalog.rebuild_index(None if args.index_kind == "auto" else args.index_kind, args.nprobe).state
        print(f"index rebuilt: {state.kind}, {state.ntotal} vectors of dimension {state.dim}")
        return EXIT_OK
    raise AssertionError(command)


def _fit_projection(args) -> int:
    from skulens.catalog import load_embedder
    from skulens.catalog.projection import fit_on_images
    from skulens.errors import SkulensError

    source = Path(args.source)
    if not source.exists():
        raise SkulensError(f"{source}: no such file or folder")
    if source.suffix.lower() == ".csv":
        import csv

        from skulens.catalog import CsvMapping, read_products_csv

        try:
            with source.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
                has_split = "split" in next(csv.reader(handle), [])
        except (OSError, csv.Error):
            has_split = False  # read_products_csv says what is wrong with the file
        # a CSV without a split column is used whole
        rows, _ = read_products_csv(source, CsvMapping(image=args.image_column), split=args.split if has_split else None)
        images = [image for _, product in rows for image in product.images]
    else:
        from skulens.data.datasets import load_dataset

        dataset = load_dataset(source)
        images = [str(s.path) for s in dataset.split(args.split)]
        images += [str(p) for p in dataset.catalog_images.values()]
    embedder = load_embedder(args.run, args.device, args.engine, args.flip)
    projection = fit_on_images(embedder, images, args.dims, args.whiten, source=f"{source} ({len(images)} images)",
                               progress=not args.no_progress)
    projection.save(args.out)
    info = projection.info
    print(f"projection {embedder.dim} -> {projection.dim} dimensions fitted on {info['vectors']} vectors of "
          f"{embedder.description} ({info['skipped']} unreadable skipped; {info['explained_variance']:.1%} of the "
          f"variance kept): {args.out}")
    return EXIT_OK


def cmd_search(args) -> int:
    from skulens.errors import ImageError

    failures, results = 0, []
    attributes = _attributes(args.attribute)
    with _open(args) as catalog:
        for image in args.images:
            try:
                hits = catalog.search(image, top_k=args.top_k, category=_category(args.category),
                                      attributes=attributes)
            except ImageError as exc:
                print(f"skulens: {exc}", file=sys.stderr)
                failures += 1
                continue
            results.append({"image": image, "products": [h.to_dict() for h in hits]})
            _print_hits(hits, args.json, f"{image}:")
    if args.json:
        print(json.dumps(results, indent=1))
    return EXIT_PARTIAL if failures else EXIT_OK


def cmd_similar(args) -> int:
    with _open(args, embedder_needed=False) as catalog:
        hits = catalog.similar(args.sku, top_k=args.top_k, same_category=args.same_category)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=1))
    else:
        _print_hits(hits, False, f"similar to {args.sku}:")
    return EXIT_OK


def cmd_evaluate_search(args) -> int:
    from skulens.evaluation.search import Query, evaluate_search, queries_from_dataset

    source = Path(args.source)
    if source.suffix.lower() == ".csv":
        from skulens.catalog import read_products_csv

        rows, _ = read_products_csv(source, _mapping(args), split=args.query_split)
        queries = [Query(p.images[0], category_leaf=p.category_path[-1] if p.category_path else None,
                         attributes=p.attributes) for _, p in rows]
    else:
        from skulens.data.datasets import load_dataset

        queries = queries_from_dataset(load_dataset(source), args.query_split)
    attrs = tuple(a.strip() for a in args.match_attributes.split(",") if a.strip())
    with _open(args) as catalog:
        metrics = evaluate_search(catalog, queries, match_attributes=attrs, progress=not args.no_progress)
        metrics["embedding_model"] = catalog.model_info
    text = json.dumps(metrics, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return EXIT_OK


CATALOG_COMMANDS = {"catalog": cmd_catalog, "search": cmd_search, "similar": cmd_similar,
                    "evaluate-search": cmd_evaluate_search}
