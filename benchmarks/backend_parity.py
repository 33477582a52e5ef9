"""Photo search on Grocery Store through the FAISS and the Milvus index backends: the same answers?

    nice -n 15 python benchmarks/backend_parity.py [--run RUN] [--db URL] [--milvus-uri URI]

One catalog (SQLite by default, or ``--db postgresql+psycopg://...``) is searched through both
backends: queries = the test photos, right answer = the photo's product. Two galleries:
- ``iconic``: the 81 catalog images (exact search in both backends: the answers must agree);
- ``iconic+train``: plus the labelled train photos, searched exactly (flat) and approximately
  (IVF: FAISS and Milvus each learn their own cells, so they agree up to the index's recall).
The embedder is the pretrained EfficientNet-Lite0 (``load_embedder(None)``) unless ``--run``.
Milvus is milvus-lite in a local file unless ``--milvus-uri`` names a server.
Writes benchmarks/results/backend_parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
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
    p.add_argument("--db", default=None, help="catalog database URL (default: a temporary SQLite file)")
    p.add_argument("--milvus-uri", default=None, help="Milvus server (default: a temporary milvus-lite file)")
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
        out[backend] = {**metrics, "index": state.kind, "vectors": state.ntotal, "nprobe": state.nprobe,
                        "ms_per_query": round(ms, 2)}
        print(f"{name} {backend} ({state.kind}, {state.ntotal} vectors): "
              f"R@1 {100 * metrics['recall@1']:.2f}%, R@5 {100 * metrics['recall@5']:.2f}%", flush=True)
    same_top1 = np.mean([a[:1] == b[:1] for a, b in zip(rankings["faiss"], rankings["milvus"])])
    same_top10 = np.mean([a == b for a, b in zip(rankings["faiss"], rankings["milvus"])])
    out["same_top1_share"] = float(same_top1)
    out["same_top10_list_share"] = float(same_top10)
    out["recall@1_difference_points"] = 100 * (out["milvus"]["recall@1"] - out["faiss"]["recall@1"])
    return out


def main() -> None:
    args = parse_args()
    dataset = load_dataset(args.data)
    embedder = load_embedder(args.run, args.device)
    tmp = Path(tempfile.mkdtemp(prefix="skulens-parity-"))
    db = args.db or str(tmp / "catalog.db")
    milvus_uri = args.milvus_uri or str(tmp / "milvus.db")
    queries = dataset.split(args.query_split)
    skus = [dataset.classes[s.label] for s in queries]
    print(f"embedding {len(queries)} {args.query_split} photos with {embedder.description}", flush=True)
    started = time.perf_counter()
    vectors, errors = embedder.embed_many([str(s.path) for s in queries], batch_size=32)
    keep = [i for i, e in enumerate(errors) if e is None]
    vectors, skus = vectors[keep], [skus[i] for i in keep]
    embed_seconds = time.perf_counter() - started

    results = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
               "embedder": embedder.description, "queries": len(skus), "query_embedding_seconds": round(embed_seconds),
               "database": "sqlite" if args.db is None else args.db.split("://")[0],
               "milvus": "milvus-lite (local file)" if args.milvus_uri is None else "server", "galleries": {}}
    faiss_catalog = Catalog.open(db, embedder, index_dir=tmp / "faiss-index")
    milvus_catalog = Catalog.open(db, embedder, index_backend="milvus", milvus_uri=milvus_uri)
    try:
        import_products(faiss_catalog, products_from_dataset(dataset), progress=False)
        results["galleries"]["iconic"] = compare("iconic", faiss_catalog, milvus_catalog, vectors, skus)

        report = import_products(faiss_catalog, products_from_dataset(dataset, "train"), on_conflict="update",
                                 progress=True, desc="adding the train photos")
        print(f"gallery now {report.images} images", flush=True)
        results["galleries"]["iconic+train flat"] = compare("iconic+train flat", faiss_catalog, milvus_catalog,
                                                             vectors, skus)
        faiss_catalog.rebuild_index("ivf")
        milvus_catalog.rebuild_index("ivf")
        results["galleries"]["iconic+train ivf"] = compare("iconic+train ivf", faiss_catalog, milvus_catalog,
                                                            vectors, skus)
    finally:
        faiss_catalog.close()
        milvus_catalog.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backend_parity.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: {b: v[b]["recall@1"] for b in ("faiss", "milvus")} | {"same_top1": v["same_top1_share"]}
                      for k, v in results["galleries"].items()}, indent=1))


if __name__ == "__main__":
    main()
