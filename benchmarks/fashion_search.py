"""fashion-small: catalog ingest speed and search precision.

    python benchmarks/fashion_search.py [--run RUN] [--img-size 128]

1. Ingest the train split (17,730 products) into a fresh catalog (SQLite + FAISS), end to end
   from JPEG files: read, decode, embed, commit, index. Reports images per second.
2. Queries = the test split (2,200 photos), gallery = the train split: precision@10 of the same
   article_type, and of the same article_type and colour.
3. Ingest the rest (val + test) too, for the whole 22k catalog's ingest figure.
Without --run the embedder is the pretrained EfficientNet-Lite0 (ImageNet features); the photos
are 60x80 px, so --img-size 128 loses nothing and is ~3x faster than 224.
Saves benchmarks/results/fashion_search.json.
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

import torch

from skulens.catalog import Catalog, CsvMapping, Embedder, import_products, read_products_csv
from skulens.catalog.search_eval import Query, evaluate_search

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashion-small" / "products.csv"
RESULTS = Path(__file__).resolve().parent / "results"
MAPPING = CsvMapping(tree=["master_category", "sub_category", "article_type"], attributes=["colour", "usage", "gender"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--run", default=None)
    p.add_argument("--img-size", type=int, default=128, help="pretrained embedder input size")
    p.add_argument("--out", default=str(RESULTS / "fashion_search.json"))
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    csv_path = Path(args.csv)
    embedder = (
        Embedder.from_run(args.run, device="cpu")
        if args.run
        else Embedder.pretrained("efficientnet_lite0", img_size=args.img_size, device="cpu")
    )
    results: dict = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "embedder": embedder.description,
        "img_size": embedder.preprocessing.img_size,
        "dim": embedder.dim,
    }
    with tempfile.TemporaryDirectory() as tmp:
        with Catalog.open(Path(tmp) / "fashion.db", embedder) as catalog:
            train_rows, bad = read_products_csv(csv_path, MAPPING, split="train")
            t0 = time.perf_counter()
            report = import_products(catalog, train_rows, desc="ingesting train split")
            seconds = time.perf_counter() - t0
            results["ingest_train"] = {
                "products": report.added,
                "images": report.images,
                "rejected": len(report.rejected),
                "seconds": round(seconds, 1),
                "images_per_s": round(report.images / seconds, 1),
            }
            print("ingest:", results["ingest_train"], flush=True)
            test_rows, _ = read_products_csv(csv_path, MAPPING, split="test")
            queries = [
                Query(p.images[0], category_leaf=p.category_path[-1], attributes=p.attributes) for _, p in test_rows
            ]
            metrics = evaluate_search(catalog, queries, ks=(1, 5, 10), match_attributes=("colour",))
            results["search_test_vs_train"] = metrics
            print("search:", json.dumps(metrics), flush=True)
            rest = [row for split in ("val", "test") for row in read_products_csv(csv_path, MAPPING, split=split)[0]]
            t0 = time.perf_counter()
            more = import_products(catalog, rest, desc="ingesting val + test")
            seconds_rest = time.perf_counter() - t0
            total_images = report.images + more.images
            results["ingest_all"] = {
                "products": len(catalog),
                "images": total_images,
                "seconds": round(seconds + seconds_rest, 1),
                "images_per_s": round(total_images / (seconds + seconds_rest), 1),
                "index": catalog.info()["index"],
            }
            print("ingest all:", results["ingest_all"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
