"""fashion-small: latency of a text query once the catalog searches words through its photos too (issue 20).

    .venv/bin/python benchmarks/words_through_photos_latency.py [--work DIR] [--queries 100]

All 22,123 fashion-small products (titles, tree, attributes, photos by the pretrained EfficientNet-Lite0
at 128 px), a text projection with its category heads fitted on them and put in use
(`Catalog.fit_text_projection`, `use_text_projection`); then hybrid text queries (test titles, a fixed
sample): each query is lexical + semantic + the words through the photos (500 candidates by the cosine,
re-ordered by the heads). p50 / p95 over the queries, after one warm-up query. ``--work`` keeps the
catalog and the projection between runs (the same catalog timed by two versions of skulens).
Saves benchmarks/results/words_through_photos_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from fashion_text_search import DEFAULT_CSV, MAPPING

from skulens.catalog import Catalog, Embedder, import_products, read_products_csv

RESULTS = Path(__file__).resolve().parent / "results"


def timed_queries(catalog: Catalog, titles: list[str]) -> dict:
    catalog.search(text=titles[0], top_k=10)  # the models and the indexes, loaded once
    times = []
    for title in titles[1:]:
        started = time.perf_counter()
        catalog.search(text=title, top_k=10)
        times.append(1000 * (time.perf_counter() - started))
    return {"p50_ms": round(float(np.percentile(times, 50)), 1), "p95_ms": round(float(np.percentile(times, 95)), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--work", default=None, help="folder kept between runs (default: a temporary one)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--out", default=str(RESULTS / "words_through_photos_latency.json"))
    args = p.parse_args()
    embedder = Embedder.pretrained("efficientnet_lite0", img_size=128, device="cpu")
    rows = read_products_csv(Path(args.csv), MAPPING)[0]
    titles = [product.title for _, product in random.Random(0).sample(rows, args.queries + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        words = work / "words.safetensors"
        with Catalog.open(work / "fashion.db", embedder) as catalog:
            if len(catalog) < len(rows):
                import_products(catalog, rows, desc="ingesting")
            if not words.exists():
                catalog.fit_text_projection(words, temperature=0.03)
            catalog.use_text_projection(words)
            results = {
                "date": date.today().isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
                "products": len(catalog),
                "queries": args.queries,
                "hybrid_through_photos": timed_queries(catalog, titles),
            }
    print(results)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
