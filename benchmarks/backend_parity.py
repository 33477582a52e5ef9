"""Photo search on Grocery Store through the FAISS and the Milvus index backends: the same answers?

    nice -n 15 python benchmarks/backend_parity.py [--run RUN] [--db-prefix URL] [--milvus-uri URI]

Each catalog (SQLite files by default, PostgreSQL databases with ``--db-prefix``) is searched through
both backends: queries = the test photos, right answer = the photo's product. Two galleries:
- ``iconic``: the 81 catalog images (exact search in both backends: the answers must agree);
- ``iconic+train``: plus the labelled train photos, searched exactly (flat) and approximately
  (IVF: FAISS and Milvus each learn their own cells, so they agree up to the index's recall).
The embedder is the pretrained EfficientNet-Lite0 (``load_embedder(None)``) unless ``--run``.
Milvus is milvus-lite in a local file unless ``--milvus-uri`` names a server.
Work files stay in --work (runs/backend-parity), so a re-run embeds nothing again.
Writes benchmarks/results/backend_parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

from skulens.catalog import Catalog, import_products, load_embedder, products_from_dataset
from skulens.data.datasets import load_dataset

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--run", default=None, help="trained run to embed with (default: pretrained Lite0)")
    p.add_argument(
        "--work",
        default="runs/backend-parity",
        help="catalogs, milvus-lite file and query vectors, kept: a re-run embeds nothing again",
    )
    p.add_argument(
        "--db-prefix",
        default=None,
        help="PostgreSQL instead of SQLite: a URL to which 'iconic' / 'gallery' is appended as the database name",
    )
    p.add_argument("--milvus-uri", default=None, help="Milvus server (default: a milvus-lite file in --work)")
    p.add_argument("--query-split", default="test")
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def score(catalog: Catalog, vectors: np.ndarray, skus: list[str]) -> tuple[dict, list[list[str]], float]:
    ranks, rankings = [], []
    started = time.perf_counter()
    for vector, sku in zip(vectors, skus):
        ranked = [h.sku for h in catalog.search_vectors(vector[None], top_k=10)]
        rankings.append(ranked)
        ranks.append(ranked.index(sku) + 1 if sku in ranked else 11)
    seconds = time.perf_counter() - started
    ranks = np.array(ranks)
    metrics = {f"recall@{k}": float(np.mean(ranks <= k)) for k in (1, 5, 10)}
    metrics["mrr@10"] = float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)))
    return metrics, rankings, 1000 * seconds / max(1, len(skus))


def compare(name: str, faiss_catalog: Catalog, milvus_catalog: Catalog, vectors, skus) -> dict:
    out = {}
    rankings = {}
    for backend, catalog in (("faiss", faiss_catalog), ("milvus", milvus_catalog)):
        state = catalog.index().state
        metrics, rankings[backend], ms = score(catalog, vectors, skus)
        out[backend] = {
            **metrics,
            "index": state.kind,
            "vectors": state.ntotal,
            "nprobe": state.nprobe,
            "ms_per_query": round(ms, 2),
        }
        print(
            f"{name} {backend} ({state.kind}, {state.ntotal} vectors): "
            f"R@1 {100 * metrics['recall@1']:.2f}%, R@5 {100 * metrics['recall@5']:.2f}%",
            flush=True,
        )
    same_top1 = np.mean([a[:1] == b[:1] for a, b in zip(rankings["faiss"], rankings["milvus"])])
    same_top10 = np.mean([a == b for a, b in zip(rankings["faiss"], rankings["milvus"])])
    out["same_top1_share"] = float(same_top1)
    out["same_top10_list_share"] = float(same_top10)
    out["recall@1_difference_points"] = 100 * (out["milvus"]["recall@1"] - out["faiss"]["recall@1"])
    return out


def query_vectors(embedder, queries, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, kept query indices), embedded once per model and kept in ``cache`` (a NumPy file)."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            return saved["vectors"], saved["kept"]
    print(f"embedding {len(queries)} query photos with {embedder.description}", flush=True)
    vectors, errors = embedder.embed_many([str(s.path) for s in queries], batch_size=32)
    kept = np.array([i for i, e in enumerate(errors) if e is None], np.int64)
    np.savez(cache, vectors=vectors[kept], kept=kept)
    return vectors[kept], kept


def main() -> None:
    args = parse_args()
    dataset = load_dataset(args.data)
    embedder = load_embedder(args.run, args.device)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    milvus_uri = args.milvus_uri or str(work / "milvus.db")
    queries = dataset.split(args.query_split)
    started = time.perf_counter()
    vectors, kept = query_vectors(embedder, queries, work / f"queries-{args.query_split}-{embedder.model_id}.npz")
    skus = [dataset.classes[queries[i].label] for i in kept]
    results = {
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "embedder": embedder.description,
        "queries": len(skus),
        "database": "postgresql" if args.db_prefix else "sqlite",
        "milvus": "milvus-lite (local file)" if args.milvus_uri is None else "server",
        "galleries": {},
    }
    # iconic: the 81 catalog images; gallery: plus the labelled train photos (one catalog each, so
    # each is imported once and a re-run finds it unchanged)
    for gallery, split in (("iconic", None), ("gallery", "train")):
        db = f"{args.db_prefix}{gallery}" if args.db_prefix else str(work / f"{gallery}.db")
        faiss_catalog = Catalog.open(db, embedder, index_dir=work / f"{gallery}-faiss")
        milvus_catalog = Catalog.open(db, embedder, index_backend="milvus", milvus_uri=milvus_uri)
        try:
            report = import_products(
                faiss_catalog,
                products_from_dataset(dataset, split),
                progress=True,
                desc=f"importing the {gallery} catalog",
            )
            print(f"{gallery}: {report.added} products added, {report.unchanged} unchanged", flush=True)
            name = "iconic" if split is None else "iconic+train"
            for kind in ("flat",) if split is None else ("flat", "ivf"):
                faiss_catalog.rebuild_index(kind)
                milvus_catalog.rebuild_index(kind)
                results["galleries"][f"{name} {kind}"] = compare(
                    f"{name} {kind}", faiss_catalog, milvus_catalog, vectors, skus
                )
        finally:
            faiss_catalog.close()
            milvus_catalog.close()
    results["seconds"] = round(time.perf_counter() - started)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backend_parity.json").write_text(json.dumps(results, indent=1))
    print(
        json.dumps(
            {
                k: {b: v[b]["recall@1"] for b in ("faiss", "milvus")} | {"same_top1": v["same_top1_share"]}
                for k, v in results["galleries"].items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
