"""The catalog and visual search: `catalog import|fit-projection|upgrade|info|list|remove|reindex|rebuild-index`,
`search`, `similar` and `evaluate-search` (each calls Catalog or skulens.catalog.operations)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from skulens.cli.options import EXIT_OK, EXIT_PARTIAL, add_device, add_engine, add_json, add_no_progress, float_between
from skulens.errors import SkulensError

RUN_HELP = "trained run whose embedding indexes the catalog (default: the catalog's own, or pretrained Lite0)"


def _db_args(p) -> None:
    p.add_argument(
        "--db", required=True, help="catalog database: a SQLite file path or a SQLAlchemy URL (postgresql://...)"
    )
    p.add_argument("--run", default=None, help=RUN_HELP)
    p.add_argument("--index-dir", default=None, help="where the vector index lives (default: beside a SQLite file)")
    p.add_argument(
        "--index-kind",
        default="auto",
        choices=["auto", "flat", "ivf"],
        help="exact (flat) or approximate (ivf) search; auto switches to ivf for large catalogs",
    )
    p.add_argument(
        "--index-backend",
        default=None,
        choices=["faiss", "milvus"],
        help="faiss: an index file beside this process; milvus: a Milvus shared by every server "
        "(--milvus-uri). Default: $SKULENS_INDEX_BACKEND, else faiss",
    )
    p.add_argument(
        "--milvus-uri",
        default=None,
        help="Milvus server or cluster (http://host:19530), or a local "
        "milvus-lite path ending in .db; default: $SKULENS_MILVUS_URI. "
        "A token is read from $SKULENS_MILVUS_TOKEN",
    )
    add_device(p)
    add_engine(p, help="embedding engine for a new catalog: auto uses the run's ONNX export on a CPU when present")
    p.add_argument(
        "--flip",
        action="store_true",
        help="new catalog: average each vector with its mirror image's (twice the embedding time, "
        "steadier vectors; BENCHMARKS.md)",
    )
    p.add_argument(
        "--projection",
        default=None,
        metavar="FILE",
        help="new catalog: project every vector with this file (`skulens catalog fit-projection`)",
    )


def _csv_args(p) -> None:
    g = p.add_argument_group("products CSV columns")
    g.add_argument("--sku-column", default=None, help="default: sku, id or product_id")
    g.add_argument("--image-column", default="image", help="(default: image)")
    g.add_argument("--title-column", default=None, help="default: title")
    g.add_argument("--description-column", default=None, help="default: description")
    g.add_argument(
        "--tree-columns",
        default="",
        help="category columns from the top down, e.g. master_category,sub_category,article_type",
    )
    g.add_argument(
        "--attribute-columns",
        default=None,
        help="comma-separated attribute columns (default: every other column except split)",
    )
    g.add_argument("--split", default=None, help="only rows whose 'split' column has this value")


def add_parsers(sub) -> None:
    cat = sub.add_parser("catalog", help="the product catalog: import, list, remove, re-embed, upgrade")
    csub = cat.add_subparsers(dest="catalog_command", required=True)
    _import_parser(csub)
    _fit_projection_parser(csub)
    _maintenance_parsers(csub)
    _search_parsers(sub)


def _import_parser(csub) -> None:
    imp = csub.add_parser(
        "import",
        help="import products from a CSV or a dataset folder (idempotent; several "
        "processes: torchrun --nproc_per_node=N -m skulens catalog import ...)",
    )
    imp.add_argument("source", help="products CSV, or a dataset (Grocery Store: its catalog of iconic images)")
    _db_args(imp)
    _csv_args(imp)
    imp.add_argument(
        "--gallery-split",
        default=None,
        help="dataset sources: also index this split's labelled photos as search examples",
    )
    imp.add_argument(
        "--on-conflict",
        default="error",
        choices=["error", "update", "skip"],
        help="a SKU already in the catalog with different data: reject the row (default), update, skip",
    )
    imp.add_argument("--chunk-size", type=int, default=64, help="products per transaction (default 64)")
    add_json(imp, "print the import report as JSON")
    add_no_progress(imp)
    imp.set_defaults(handler=cmd_catalog_import)


def _fit_projection_parser(csub) -> None:
    fp = csub.add_parser(
        "fit-projection",
        help="fit a PCA projection of the run's vectors on labelled images, "
        "for --projection (smaller index; BENCHMARKS.md for what it does "
        "to recall)",
    )
    fp.add_argument("source", help="a dataset (its --split photos and catalog images) or a products CSV (its images)")
    fp.add_argument("--run", default=None, help="trained run (default: pretrained Lite0 features)")
    add_device(fp)
    add_engine(fp, default="torch", help="embedding engine")
    fp.add_argument("--flip", action="store_true", help="fit on flip-averaged vectors (for a --flip catalog)")
    fp.add_argument("--dims", type=int, default=128, help="output dimension (default 128)")
    fp.add_argument("--whiten", action="store_true", help="scale every axis to unit variance")
    fp.add_argument(
        "--split",
        default="train",
        help="the split to fit on (default train; a CSV without a split column is used whole)",
    )
    fp.add_argument("--image-column", default="image", help="CSV sources: the image column")
    fp.add_argument("--out", required=True, help="the projection file to write (.safetensors)")
    add_no_progress(fp)
    fp.set_defaults(handler=cmd_catalog_fit_projection)


def _text_projection_parsers(csub) -> None:
    ft = csub.add_parser(
        "fit-text-projection",
        help="learn a map from words to this catalog's photo vectors (its products' words and photos), so "
        "words find products through their photos",
    )
    _db_args(ft)
    ft.add_argument("--out", required=True, metavar="FILE", help="where to save it (.safetensors)")
    ft.add_argument("--epochs", type=int, default=20, help="(default: 20)")
    ft.add_argument("--temperature", type=float, default=0.05, help="of the contrastive loss (default: 0.05)")
    ft.add_argument(
        "--mix",
        type=float_between(0.0, 10.0),
        default=None,
        help="weight of the category agreement next to the cosine (default: chosen on 10%% of the products held out)",
    )
    ft.add_argument("--use", action="store_true", help="and search this catalog with it")
    add_no_progress(ft)
    ft.set_defaults(handler=cmd_catalog_fit_text_projection)
    ut = csub.add_parser(
        "use-text-projection", help="search a catalog's photos by words with a text projection (or --none)"
    )
    ut.add_argument("file", nargs="?", default=None, metavar="FILE")
    ut.add_argument("--none", action="store_true", help="stop using one")
    _db_args(ut)
    ut.set_defaults(handler=cmd_catalog_use_text_projection)


def _maintenance_parsers(csub) -> None:
    _text_projection_parsers(csub)
    up = csub.add_parser(
        "upgrade",
        help="bring the catalog's schema to this skulens's (every product, image and vector kept); "
        "servers refuse an older schema until this has run",
    )
    up.add_argument("db", metavar="DB", help="a SQLite file path or a SQLAlchemy URL (postgresql://...)")
    up.set_defaults(handler=cmd_catalog_upgrade)
    info = csub.add_parser("info", help="counts, embedding model, index")
    _db_args(info)
    info.set_defaults(handler=cmd_catalog_info)
    ls = csub.add_parser("list", help="list products")
    _db_args(ls)
    ls.add_argument("--category", default=None, help="category path, e.g. 'Fruit > Apple'")
    ls.add_argument("--limit", type=int, default=50, help="(default: 50)")
    ls.set_defaults(handler=cmd_catalog_list)
    rm = csub.add_parser("remove", help="remove products by SKU")
    rm.add_argument("skus", nargs="+")
    _db_args(rm)
    rm.set_defaults(handler=cmd_catalog_remove)
    rx = csub.add_parser("reindex", help="re-embed every image with another model (--run), then rebuild the index")
    _db_args(rx)
    rx.set_defaults(handler=cmd_catalog_reindex)
    rb = csub.add_parser("rebuild-index", help="rebuild the vector index from the vectors in the database")
    _db_args(rb)
    rb.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query")
    rb.set_defaults(handler=cmd_catalog_rebuild_index)


def _search_parsers(sub) -> None:
    se = sub.add_parser(
        "search",
        help="products that look like a photo, that words describe (--text), or both",
        description="PHOTO...: products that look like each photo. --text WORDS alone: products the words "
        "describe (titles, descriptions, categories, attributes). Both: products that look like the photo, "
        're-ranked to the words ("in blue").',
    )
    se.add_argument("images", nargs="*", metavar="PHOTO")
    se.add_argument("--text", default=None, metavar="WORDS", help='e.g. "apple juice", or with a photo "in blue"')
    se.add_argument(
        "--mode",
        default="hybrid",
        choices=["hybrid", "lexical", "semantic"],
        help="text matching: BM25 and sentence vectors fused (hybrid, default), or one of them",
    )
    _db_args(se)
    se.add_argument("--top-k", type=int, default=10, help="(default: 10)")
    se.add_argument("--category", default=None, help="only products under this category path, e.g. 'Fruit > Apple'")
    se.add_argument(
        "--attribute",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="only products with this attribute value, e.g. colour=Blue (repeatable: all must match)",
    )
    add_json(se)
    se.set_defaults(handler=cmd_search)
    si = sub.add_parser("similar", help="products similar to a product (itself and near-duplicates left out)")
    si.add_argument("sku")
    _db_args(si)
    si.add_argument("--top-k", type=int, default=10, help="(default: 10)")
    si.add_argument("--same-category", action="store_true", help="only products in the same category")
    si.add_argument(
        "--flat",
        action="store_true",
        help="by look alone (default: the product's own category first, then one level up, then the rest)",
    )
    add_json(si)
    si.set_defaults(handler=cmd_similar)
    ev = sub.add_parser("evaluate-search", help="Recall@1/5/10 and mAP (or precision@k) of photo search")
    ev.add_argument("source", help="labelled queries: a dataset (right product = its class) or a products CSV")
    _db_args(ev)
    _csv_args(ev)
    ev.add_argument("--query-split", default="test", help="(default: test)")
    ev.add_argument(
        "--match-attributes",
        default="",
        help="CSV sources: also report precision@k for category + these attributes, e.g. colour",
    )
    ev.add_argument("--out", default=None, help="write the metrics JSON here")
    add_no_progress(ev)
    ev.set_defaults(handler=cmd_evaluate_search)


def _attributes(pairs: list[str]) -> dict[str, str] | None:
    from skulens.catalog.store import parse_attribute_filter

    return parse_attribute_filter(pairs) or None


def _category(text: str | None) -> list[str] | None:
    if not text:
        return None
    parts = [p.strip() for p in text.replace("/", ">").split(">")]
    return [p for p in parts if p]


def _index_options(args) -> dict:
    return {
        "index_dir": args.index_dir,
        "index_kind": args.index_kind,
        "index_backend": args.index_backend,
        "milvus_uri": args.milvus_uri,
    }


def _open(args, model: bool = True):
    """The catalog; with its embedding model (--run, else the catalog's own or pretrained Lite0) when
    the command embeds images."""
    from skulens.catalog import Catalog

    if not model:
        return Catalog.open(args.db, **_index_options(args))
    return Catalog.open_with_model(
        args.db, args.run, args.device, args.engine, args.flip, projection=args.projection, **_index_options(args)
    )


def _mapping(args):
    from skulens.catalog import CsvMapping

    return CsvMapping(
        sku=args.sku_column,
        image=args.image_column,
        title=args.title_column,
        description=args.description_column,
        tree=[c.strip() for c in args.tree_columns.split(",") if c.strip()],
        attributes=[c.strip() for c in args.attribute_columns.split(",") if c.strip()]
        if args.attribute_columns is not None
        else None,
    )


def _print_hits(hits, header: str | None = None) -> None:
    if header:
        print(header)
    if not hits:
        print("  (no products)")
    for rank, hit in enumerate(hits, start=1):
        path = " > ".join(hit.category_path)
        print(f"  {rank:2d}. {hit.score:.3f}  {hit.sku:24s} {hit.title[:40]:40s} {path}")


def cmd_catalog_import(args) -> int:
    from skulens.catalog import Catalog
    from skulens.training.distributed import is_main

    report = Catalog.import_job(
        args.db,
        args.source,
        run=args.run,
        device=args.device,
        engine=args.engine,
        flip=args.flip,
        projection=args.projection,
        mapping=_mapping(args),
        split=args.split,
        gallery_split=args.gallery_split,
        on_conflict=args.on_conflict,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
        **_index_options(args),
    )
    code = EXIT_PARTIAL if report.rejected else EXIT_OK
    if not is_main():  # under torchrun, rank 0 reports for the job
        return code
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return code
    for row, sku, why in report.rejected:
        print(f"skulens: row {row}{f' ({sku})' if sku else ''}: {why}", file=sys.stderr)
    print(
        f"imported {report.added} new, {report.updated} updated, {report.unchanged} unchanged "
        f"product(s) ({report.images} images) in {report.seconds:.1f} s; {len(report.rejected)} rejected"
    )
    return code


def cmd_catalog_fit_projection(args) -> int:
    from skulens.catalog.operations import fit_projection

    projection, embedder = fit_projection(
        args.source,
        args.out,
        run=args.run,
        device=args.device,
        engine=args.engine,
        flip=args.flip,
        dims=args.dims,
        whiten=args.whiten,
        split=args.split,
        image_column=args.image_column,
        progress=not args.no_progress,
    )
    info = projection.info
    print(
        f"projection {embedder.dim} -> {projection.dim} dimensions fitted on {info['vectors']} vectors of "
        f"{embedder.description} ({info['skipped']} unreadable skipped; {info['explained_variance']:.1%} of the "
        f"variance kept): {args.out}"
    )
    return EXIT_OK


def cmd_catalog_fit_text_projection(args) -> int:
    with _open(args, model=False) as catalog:
        fitted = catalog.fit_text_projection(
            args.out, epochs=args.epochs, temperature=args.temperature, mix=args.mix, progress=not args.no_progress
        )
        if args.use:
            catalog.use_text_projection(args.out)
    heads = f", {len(fitted.heads.categories)} categories, mix {fitted.mix:g}" if fitted.heads is not None else ""
    print(f"text projection fitted on {fitted.info['pairs']} products' words and photos{heads}: {args.out}")
    return EXIT_OK


def cmd_catalog_use_text_projection(args) -> int:
    if (args.file is None) == (not args.none):
        raise SkulensError("name a text projection file, or --none")
    with _open(args, model=False) as catalog:
        catalog.use_text_projection(None if args.none else args.file)
    print(
        "text search no longer goes through the photos"
        if args.none
        else f"text search goes through the photos with {args.file}"
    )
    return EXIT_OK


def cmd_catalog_upgrade(args) -> int:
    from skulens.catalog.store import Catalog

    if "://" not in args.db and not Path(args.db).is_file():
        raise SkulensError(f"{args.db}: no such catalog database file")
    before, after = Catalog.upgrade(args.db)
    if before == after:
        print(f"the catalog schema is current (revision {after})")
    else:
        print(f"catalog schema upgraded from revision {before or 'none'} to {after}")
    return EXIT_OK


def cmd_catalog_info(args) -> int:
    with _open(args, model=False) as catalog:
        print(json.dumps(catalog.info(), indent=1))
    return EXIT_OK


def cmd_catalog_list(args) -> int:
    with _open(args, model=False) as catalog:
        for hit in catalog.products(limit=args.limit, category=_category(args.category)):
            print(f"{hit.sku:24s} {hit.title[:40]:40s} {' > '.join(hit.category_path)}")
    return EXIT_OK


def cmd_catalog_remove(args) -> int:
    with _open(args, model=False) as catalog:
        removed = catalog.remove(args.skus)
    for sku in sorted(set(args.skus) - set(removed)):
        print(f"skulens: unknown SKU {sku!r}", file=sys.stderr)
    print(f"removed {len(removed)} product(s)")
    return EXIT_OK if len(removed) == len(set(args.skus)) else EXIT_PARTIAL


def cmd_catalog_reindex(args) -> int:
    from skulens.catalog import load_embedder

    embedder = load_embedder(args.run, args.device, args.engine, args.flip, args.projection)
    with _open(args, model=False) as catalog:
        n = catalog.reindex(embedder)
    print(f"re-embedded {n} image(s) with {embedder.description}")
    return EXIT_OK


def cmd_catalog_rebuild_index(args) -> int:
    with _open(args, model=False) as catalog:
        state = catalog.rebuild_index(None if args.index_kind == "auto" else args.index_kind, args.nprobe).state
    print(f"index rebuilt: {state.kind}, {state.ntotal} vectors of dimension {state.dim}")
    return EXIT_OK


def cmd_search(args) -> int:
    from skulens.errors import ImageError

    if not args.images and args.text is None:
        raise SkulensError("search needs a photo, --text WORDS, or both")
    failures, results = 0, []
    options = {
        "top_k": args.top_k,
        "category": _category(args.category),
        "attributes": _attributes(args.attribute),
        "text": args.text,
        "mode": args.mode,
    }
    with _open(args, model=bool(args.images)) as catalog:
        for image in args.images or [None]:
            try:
                hits = catalog.search(image, **options)
            except ImageError as exc:
                print(f"skulens: {exc}", file=sys.stderr)
                failures += 1
                continue
            results.append({"image": image, "text": args.text, "products": [h.to_dict() for h in hits]})
            if not args.json:
                _print_hits(hits, f"{image}:" if image else f"{args.text!r}:")
    if args.json:
        print(json.dumps(results, indent=1))
    return EXIT_PARTIAL if failures else EXIT_OK


def cmd_similar(args) -> int:
    with _open(args, model=False) as catalog:
        hits = catalog.similar(args.sku, top_k=args.top_k, same_category=args.same_category, tree=not args.flat)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=1))
    else:
        _print_hits(hits, f"similar to {args.sku}:")
    return EXIT_OK


def cmd_evaluate_search(args) -> int:
    from skulens.catalog.operations import search_queries
    from skulens.catalog.search_eval import evaluate_search

    queries = search_queries(args.source, _mapping(args), args.query_split)
    attrs = tuple(a.strip() for a in args.match_attributes.split(",") if a.strip())
    with _open(args) as catalog:
        metrics = evaluate_search(catalog, queries, match_attributes=attrs, progress=not args.no_progress)
        metrics["embedding_model"] = catalog.model_info
    text = json.dumps(metrics, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return EXIT_OK
