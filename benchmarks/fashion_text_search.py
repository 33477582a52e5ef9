"""fashion-small: text search, photos refined by a colour word, and similar products (issue 20).

    .venv/bin/python benchmarks/fashion_text_search.py [--img-size 128] [--sample 500]

The catalog is the train + val products (titles, 3-level tree, colour / usage / gender), photos
embedded by the pretrained EfficientNet-Lite0 (the default embedder of a new catalog), titles by
all-MiniLM-L6-v2. Held-out queries come from the test split, whose products are not in the catalog:

1. Ingest cost: products per second with the text vectors, and the text vectors' own share.
2. Text search: query = a test product's title; precision@10 of the same article_type, and of the
   same article_type + colour family, for lexical (BM25), semantic (sentence vectors) and hybrid.
3. Photo + colour word: query = a test photo + "in <family>" for a family other than its own;
   precision@10 of products with the photo's article_type in the asked family, against photo only.
4. Similar products: share of the 5 most similar in the product's own article_type, by look alone
   and tree first (`Catalog.similar(sku, tree=...)`), over --sample catalog products.
5. Latency of a text query once the test products are added too (22,123 products): p50 / p95.
Saves benchmarks/results/fashion_text_search.json.
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

from skulens.catalog import Catalog, CsvMapping, Embedder, import_products, read_products_csv
from skulens.data.colour_families import family_of

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashion-small" / "products.csv"
RESULTS = Path(__file__).resolve().parent / "results"
MAPPING = CsvMapping(tree=["master_category", "sub_category", "article_type"], attributes=["colour", "usage", "gender"])
ASKED = ["Blue", "Black", "White", "Red", "Green", "Grey", "Pink", "Brown"]  # families a shopper asks for


def _family(hit_or_product) -> str:
    return family_of(str(hit_or_product.attributes.get("colour", "")))


def ingest(catalog: Catalog, rows: list, desc: str) -> dict:
    started = time.perf_counter()
    report = import_products(catalog, rows, desc=desc)
    seconds = time.perf_counter() - started
    return {"products": report.added, "seconds": round(seconds, 1), "products_per_s": round(report.added / seconds, 1)}


def text_precision(catalog: Catalog, queries: list, mode: str) -> dict:
    same_type, same_both = [], []
    for _, product in queries:
        hits = catalog.search(text=product.title, top_k=10, mode=mode)
        same_type.append(np.mean([h.category_path[-1] == product.category_path[-1] for h in hits] or [0]))
        same_both.append(
            np.mean(
                [h.category_path[-1] == product.category_path[-1] and _family(h) == _family(product) for h in hits]
                or [0]
            )
        )
    return {"article_type_p@10": float(np.mean(same_type)), "article_type_and_family_p@10": float(np.mean(same_both))}


def photo_and_colour(catalog: Catalog, queries: list) -> dict:
    """precision@10 of (the photo's article_type and the asked family), with the words and without."""
    refined, plain = [], []
    for i, (_, product) in enumerate(queries):
        asked = next(f for f in ASKED[i % len(ASKED) :] + ASKED if f != _family(product))
        for out, text in ((refined, f"in {asked.lower()}"), (plain, None)):
            hits = catalog.search(product.images[0], top_k=10, text=text)
            out.append(
                np.mean([h.category_path[-1] == product.category_path[-1] and _family(h) == asked for h in hits])
            )
    return {"photo_and_words_p@10": float(np.mean(refined)), "photo_only_p@10": float(np.mean(plain))}


def similar_share(catalog: Catalog, rows: list, tree: bool) -> float:
    shares = []
    for _, product in rows:
        hits = catalog.similar(product.sku, top_k=5, tree=tree)
        shares.append(np.mean([h.category_path[-1] == product.category_path[-1] for h in hits] or [0]))
    return float(np.mean(shares))


def latency(catalog: Catalog, titles: list[str], mode: str) -> dict:
    catalog.search(text=titles[0], mode=mode)  # the index and the model, loaded once
    times = []
    for title in titles:
        started = time.perf_counter()
        catalog.search(text=title, top_k=10, mode=mode)
        times.append(1000 * (time.perf_counter() - started))
    return {"p50_ms": round(float(np.percentile(times, 50)), 1), "p95_ms": round(float(np.percentile(times, 95)), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--img-size", type=int, default=128, help="pretrained embedder input size")
    p.add_argument("--sample", type=int, default=500, help="queries per measurement (a fixed random sample)")
    p.add_argument("--out", default=str(RESULTS / "fashion_text_search.json"))
    args = p.parse_args()
    embedder = Embedder.pretrained("efficientnet_lite0", img_size=args.img_size, device="cpu")
    rows = {s: read_products_csv(Path(args.csv), MAPPING, split=s)[0] for s in ("train", "val", "test")}
    rng = random.Random(0)
    test_sample = rng.sample(rows["test"], min(args.sample, len(rows["test"])))
    results: dict = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "embedder": embedder.description,
        "queries": len(test_sample),
    }
    with tempfile.TemporaryDirectory() as tmp, Catalog.open(Path(tmp) / "fashion.db", embedder) as catalog:
        results["ingest"] = ingest(catalog, rows["train"] + rows["val"], "ingesting train + val")
        catalog.text.index()  # built once here: the queries below time the search, not the build
        results["text_vectors_only"] = _text_vector_cost(rows["train"][:2000])
        for mode in ("lexical", "semantic", "hybrid"):
            results[f"text_{mode}"] = text_precision(catalog, test_sample, mode)
            print(mode, results[f"text_{mode}"], flush=True)
        results["photo_and_colour_word"] = photo_and_colour(catalog, test_sample)
        print("photo + colour word", results["photo_and_colour_word"], flush=True)
        sample = rng.sample(rows["train"], min(args.sample, len(rows["train"])))
        results["similar_article_type_share@5"] = {
            "by_look": similar_share(catalog, sample, tree=False),
            "tree_first": similar_share(catalog, sample, tree=True),
        }
        print("similar", results["similar_article_type_share@5"], flush=True)
        ingest(catalog, rows["test"], "ingesting test")
        results["latency_22k"] = {
            "products": len(catalog),
            **{mode: latency(catalog, [p.title for _, p in test_sample[:200]], mode) for mode in ("lexical", "hybrid")},
        }
        print("latency", results["latency_22k"], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


def _text_vector_cost(rows: list) -> dict:
    """Sentence vectors alone: what text search adds to an import, per product."""
    from skulens.catalog.text_search import document
    from skulens.models.text_encoder import load_text_encoder

    encoder = load_text_encoder()
    texts = [document(p.title, p.description, p.category_path, p.attributes) for _, p in rows]
    started = time.perf_counter()
    encoder.encode(texts)
    seconds = time.perf_counter() - started
    return {"products": len(texts), "seconds": round(seconds, 1), "products_per_s": round(len(texts) / seconds, 1)}


if __name__ == "__main__":
    main()
