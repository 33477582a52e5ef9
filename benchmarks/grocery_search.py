"""Photo-to-product search on Grocery Store: queries = test photos, right answer = the photo's product.

    python benchmarks/grocery_search.py --run runs/search-lite0 [--baseline-run runs/bench-lite0] [--pretrained]

For each embedder it reports Recall@1/5 and mAP against two galleries:
- ``iconic``: the 81 catalog (iconic) images only, one per product;
- ``iconic+train``: the catalog images plus the labelled train photos (a product = several images,
  scored by its best image).
It also reports what a PCA projection of the vectors (fitted on the gallery) costs in Recall@1,
and checks that the real catalog (SQLite + FAISS, ``skulens evaluate-search``'s code path) gives
the same iconic Recall@1 as the plain matrix computation. Saves benchmarks/results/grocery_search.json.
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
import torch

from skulens.catalog import Catalog, Embedder, import_products, products_from_dataset
from skulens.data.datasets import load_dataset
from skulens.evaluation.search import evaluate_search, queries_from_dataset

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"
RESULTS = Path(__file__).resolve().parent / "results"


def embed_paths(embedder: Embedder, paths: list[Path]) -> np.ndarray:
    vectors, errors = embedder.embed_many([str(p) for p in paths], batch_size=16)
    assert not any(errors), [e for e in errors if e][:3]
    return vectors


def product_ranking_metrics(q: np.ndarray, q_labels: np.ndarray, g: np.ndarray, g_labels: np.ndarray,
                            n_products: int) -> dict:
    """Rank products by their best gallery image; one right product per query."""
    sims = q @ g.T
    best = np.full((len(q), n_products), -np.inf, np.float32)
    for product in range(n_products):
        cols = np.flatnonzero(g_labels == product)
        if len(cols):
            best[:, product] = sims[:, cols].max(1)
    order = np.argsort(-best, axis=1)
    rank = np.argmax(order == q_labels[:, None], axis=1) + 1
    return {"recall@1": float(np.mean(rank <= 1)), "recall@5": float(np.mean(rank <= 5)),
            "recall@10": float(np.mean(rank <= 10)), "mAP": float(np.mean(1.0 / rank))}


def pca_project(train: np.ndarray, dims: int):
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:dims].T

    def project(x: np.ndarray) -> np.ndarray:
        y = (x - mean) @ basis
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    return project


def evaluate_embedder(name: str, embedder: Embedder, dataset, pca_dims: list[int]) -> dict:
    started = time.perf_counter()
    test = dataset.split("test")
    train = dataset.split("train")
    iconic_labels = np.array(sorted(dataset.catalog_images))
    q = embed_paths(embedder, [s.path for s in test])
    q_labels = np.array([s.label for s in test])
    g_iconic = embed_paths(embedder, [dataset.catalog_images[i] for i in iconic_labels])
    g_train = embed_paths(embedder, [s.path for s in train])
    train_labels = np.array([s.label for s in train])
    n = len(dataset.classes)
    out = {"embedder": embedder.description, "dim": embedder.dim, "img_size": embedder.preprocessing.img_size,
           "queries": len(test)}
    out["iconic"] = product_ranking_metrics(q, q_labels, g_iconic, iconic_labels, n)
    g_all, all_labels = np.vstack([g_iconic, g_train]), np.concatenate([iconic_labels, train_labels])
    out["iconic+train"] = product_ranking_metrics(q, q_labels, g_all, all_labels, n)
    out["pca"] = {}
    for dims in pca_dims:
        if dims >= embedder.dim:
            continue
        project = pca_project(g_all, dims)
        out["pca"][str(dims)] = {
            "iconic_recall@1": product_ranking_metrics(project(q), q_labels, project(g_iconic), iconic_labels, n)["recall@1"],
            "iconic+train_recall@1": product_ranking_metrics(project(q), q_labels, project(g_all), all_labels, n)["recall@1"],
        }
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{name}: {json.dumps(out)}", flush=True)
    out["_gallery_vectors"] = g_all
    return out


def catalog_check(embedder: Embedder, dataset) -> dict:
    """The same benchmark through the real catalog (database + FAISS + evaluate_search)."""
    with tempfile.TemporaryDirectory() as tmp, Catalog.open(Path(tmp) / "grocery.db", embedder) as catalog:
        report = import_products(catalog, products_from_dataset(dataset), progress=False)
        metrics = evaluate_search(catalog, queries_from_dataset(dataset, "test"), progress=False)
    return {"imported": report.added, **{k: metrics[k] for k in ("recall@1", "recall@5", "mAP")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the retrieval-trained run (ArcFace embedding)")
    p.add_argument("--baseline-run", action="append", default=[], help="other runs to compare (e.g. a classifier)")
    p.add_argument("--pretrained", action="store_true", help="also the frozen ImageNet Lite0 features")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--pca", default="128,256")
    p.add_argument("--save-vectors", default=None, help="save the run's gallery embeddings (.npy) for search_scale.py")
    p.add_argument("--flip", action="store_true",
                   help="the run's vectors averaged with their mirror images' (Embedder flip=True), queries and gallery")
    p.add_argument("--no-catalog-check", action="store_true", help="skip the SQLite + FAISS cross-check (saves a pass)")
    p.add_argument("--out", default=str(RESULTS / "grocery_search.json"))
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dataset = load_dataset(args.data)
    pca_dims = [int(d) for d in args.pca.split(",") if d]
    results = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
               "dataset": "Grocery Store: queries = test split (2485 photos); galleries = 81 iconic images, "
                          "and iconic + train split", "embedders": {}}
    embedder = Embedder.from_run(args.run, device="cpu", flip=args.flip)
    main_result = evaluate_embedder(args.run, embedder, dataset, pca_dims)
    if args.save_vectors:
        np.save(args.save_vectors, main_result["_gallery_vectors"], allow_pickle=False)
    results["embedders"][f"run:{Path(args.run).name}"] = main_result
    if not args.no_catalog_check:
        results["catalog_check"] = catalog_check(embedder, dataset)
        print("catalog check:", results["catalog_check"], flush=True)
    for run in args.baseline_run:
        results["embedders"][f"run:{Path(run).name}"] = evaluate_embedder(run, Embedder.from_run(run, device="cpu"),
                                                                         dataset, pca_dims)
    if args.pretrained:
        results["embedders"]["pretrained:efficientnet_lite0"] = evaluate_embedder(
            "pretrained", Embedder.pretrained(device="cpu"), dataset, pca_dims)
    for entry in results["embedders"].values():
        entry.pop("_gallery_vectors", None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
