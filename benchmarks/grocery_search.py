"""Photo-to-product search on Grocery Store: queries = test photos, right answer = the photo's product.

    python benchmarks/grocery_search.py --run runs/search-lite0 [--baseline-run runs/bench-lite0] [--pretrained]

For each embedder it reports Recall@1/5 and mAP against two galleries:
- ``iconic``: the 81 catalog (iconic) images only, one per product;
- ``iconic+train``: the catalog images plus the labelled train photos (a product = several images,
  scored by its best image).
It also reports what a PCA projection of the vectors (fitted on the gallery) costs in Recall@1,
and checks that the real catalog (SQLite + FAISS, ``skulens evaluate-search``'s code path) gives
the same iconic Recall@1 as the plain matrix computation. Saves benchmarks/results/grocery_search.json.

``--choose-on-val``: chooses the embedding options of a catalog on the **val** split, then reports
test: flip averaging (on/off) x projection (none, or PCA to each ``--pca`` size, fitted as
``skulens catalog fit-projection`` fits it: on the train photos + catalog images, which are also
the gallery). Ranked by val Recall@1 against the iconic+train gallery; ties go to the higher val mAP,
then to the simpler option. The chosen option is then re-embedded through the real ``Embedder`` (flip + saved
projection file) on a sample of test photos to check the benchmark's vectors are the product's.
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
from skulens.catalog.search_eval import evaluate_search, queries_from_dataset
from skulens.data.datasets import load_dataset

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"
RESULTS = Path(__file__).resolve().parent / "results"


def embed_paths(embedder: Embedder, paths: list[Path]) -> np.ndarray:
    vectors, errors = embedder.embed_many([str(p) for p in paths], batch_size=16)
    assert not any(errors), [e for e in errors if e][:3]
    return vectors


def product_ranking_metrics(
    q: np.ndarray, q_labels: np.ndarray, g: np.ndarray, g_labels: np.ndarray, n_products: int
) -> dict:
    """Rank products by their best gallery image; one right product per query."""
    sims = q @ g.T
    best = np.full((len(q), n_products), -np.inf, np.float32)
    for product in range(n_products):
        cols = np.flatnonzero(g_labels == product)
        if len(cols):
            best[:, product] = sims[:, cols].max(1)
    order = np.argsort(-best, axis=1)
    rank = np.argmax(order == q_labels[:, None], axis=1) + 1
    return {
        "recall@1": float(np.mean(rank <= 1)),
        "recall@5": float(np.mean(rank <= 5)),
        "recall@10": float(np.mean(rank <= 10)),
        "mAP": float(np.mean(1.0 / rank)),
    }


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
    out = {
        "embedder": embedder.description,
        "dim": embedder.dim,
        "img_size": embedder.preprocessing.img_size,
        "queries": len(test),
    }
    out["iconic"] = product_ranking_metrics(q, q_labels, g_iconic, iconic_labels, n)
    g_all, all_labels = np.vstack([g_iconic, g_train]), np.concatenate([iconic_labels, train_labels])
    out["iconic+train"] = product_ranking_metrics(q, q_labels, g_all, all_labels, n)
    out["pca"] = {}
    for dims in pca_dims:
        if dims >= embedder.dim:
            continue
        project = pca_project(g_all, dims)
        out["pca"][str(dims)] = {
            "iconic_recall@1": product_ranking_metrics(project(q), q_labels, project(g_iconic), iconic_labels, n)[
                "recall@1"
            ],
            "iconic+train_recall@1": product_ranking_metrics(project(q), q_labels, project(g_all), all_labels, n)[
                "recall@1"
            ],
        }
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{name}: {json.dumps(out)}", flush=True)
    out["_gallery_vectors"] = g_all
    return out


def embed_views(embedder: Embedder, paths: list[Path], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's vector and its mirror image's, from one decode (flip averaging = their normalised sum)."""
    plain, mirrored = [], []
    for start in range(0, len(paths), batch_size):
        x = torch.stack([embedder.input_tensor(str(p)) for p in paths[start : start + batch_size]])
        plain.append(embedder.embed_tensors(x))
        mirrored.append(embedder.embed_tensors(torch.flip(x, dims=[3])))
    return np.vstack(plain), np.vstack(mirrored)


def choose_on_val(run: str, dataset, pca_dims: list[int], out_dir: Path) -> dict:
    """Flip x projection options ranked on val (iconic+train gallery), scored on test."""
    from skulens.catalog.projection import Projection, unit_rows

    started = time.perf_counter()
    base = Embedder.from_run(run, device="cpu")
    flip_embedder = Embedder.from_run(run, device="cpu", flip=True)
    iconic_labels = np.array(sorted(dataset.catalog_images))
    train = dataset.split("train")
    # the gallery = the images `skulens catalog fit-projection` fits on: train photos + catalog images
    gallery_paths = [s.path for s in train] + [dataset.catalog_images[i] for i in iconic_labels]
    gallery_labels = np.concatenate([[s.label for s in train], iconic_labels])
    views = {"gallery": embed_views(base, gallery_paths)}
    labels = {}
    for split in ("val", "test"):
        samples = dataset.split(split)
        views[split] = embed_views(base, [s.path for s in samples])
        labels[split] = np.array([s.label for s in samples])
    n = len(dataset.classes)
    options = []
    for flip in (False, True):
        vectors = {k: (unit_rows(u + f) if flip else u) for k, (u, f) in views.items()}
        model_id = flip_embedder.model_id if flip else base.model_id
        for dims in [0, *pca_dims]:
            if dims >= base.dim:
                continue
            projection = Projection.fit(vectors["gallery"], dims, model_id) if dims else None
            project = projection.transform if projection else (lambda v: v)
            g = project(vectors["gallery"])
            option = {"flip": flip, "projection_dims": dims or None}
            for split in ("val", "test"):
                option[split] = product_ranking_metrics(project(vectors[split]), labels[split], g, gallery_labels, n)
            iconic_rows = len(train) + np.arange(len(iconic_labels))
            option["test_iconic"] = product_ranking_metrics(
                project(vectors["test"]), labels["test"], g[iconic_rows], iconic_labels, n
            )
            option["_projection"] = projection
            options.append(option)
            print(
                f"flip={flip} pca={dims or '-'}: val R@1 {option['val']['recall@1']:.4f} "
                f"test R@1 {option['test']['recall@1']:.4f} (iconic {option['test_iconic']['recall@1']:.4f})",
                flush=True,
            )
    # ties go to the higher val mAP, then the simpler option: no flip before flip, no projection before one
    chosen = max(
        options, key=lambda o: (o["val"]["recall@1"], o["val"]["mAP"], -o["flip"], -(o["projection_dims"] is not None))
    )
    check = {}
    if chosen["_projection"] is not None:
        path = chosen["_projection"].save(out_dir / f"projection-{chosen['projection_dims']}.safetensors")
        product = Embedder.from_run(run, device="cpu", flip=chosen["flip"], projection=path)
        sample = dataset.split("test")[::50]
        u, f = embed_views(base, [s.path for s in sample])
        expected = chosen["_projection"].transform(unit_rows(u + f) if chosen["flip"] else u)
        got = product.embed([str(s.path) for s in sample])
        check = {
            "images": len(sample),
            "max_abs_difference": float(np.abs(got - expected).max()),
            "projection_file": str(path),
            "model_id": product.model_id,
        }
    for option in options:
        option.pop("_projection")
    return {
        "run": run,
        "rule": "max val recall@1 (iconic+train gallery); ties: higher val mAP, then the simpler option",
        "val_queries": len(labels["val"]),
        "test_queries": len(labels["test"]),
        "options": options,
        "chosen": {k: chosen[k] for k in ("flip", "projection_dims")},
        "chosen_test": chosen["test"],
        "chosen_test_iconic": chosen["test_iconic"],
        "product_check": check,
        "seconds": round(time.perf_counter() - started, 1),
    }


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
    p.add_argument(
        "--flip",
        action="store_true",
        help="the run's vectors averaged with their mirror images' (Embedder flip=True), queries and gallery",
    )
    p.add_argument("--no-catalog-check", action="store_true", help="skip the SQLite + FAISS cross-check (saves a pass)")
    p.add_argument(
        "--choose-on-val",
        action="store_true",
        help="only: choose flip x projection on val for --run, report test (see above)",
    )
    p.add_argument(
        "--projection-dir", default="runs/projections", help="--choose-on-val: where the chosen projection file goes"
    )
    p.add_argument("--out", default=str(RESULTS / "grocery_search.json"))
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dataset = load_dataset(args.data)
    pca_dims = [int(d) for d in args.pca.split(",") if d]
    results = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "dataset": "Grocery Store: queries = test split (2485 photos); galleries = 81 iconic images, "
        "and iconic + train split",
        "embedders": {},
    }
    if args.choose_on_val:
        results["choice"] = choose_on_val(args.run, dataset, pca_dims, Path(args.projection_dir))
        print(
            json.dumps(
                {k: results["choice"][k] for k in ("chosen", "chosen_test", "chosen_test_iconic", "product_check")}
            ),
            flush=True,
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"saved {args.out}")
        return
    embedder = Embedder.from_run(args.run, device="cpu", flip=args.flip)
    main_result = evaluate_embedder(args.run, embedder, dataset, pca_dims)
    if args.save_vectors:
        np.save(args.save_vectors, main_result["_gallery_vectors"], allow_pickle=False)
    results["embedders"][f"run:{Path(args.run).name}"] = main_result
    if not args.no_catalog_check:
        results["catalog_check"] = catalog_check(embedder, dataset)
        print("catalog check:", results["catalog_check"], flush=True)
    for run in args.baseline_run:
        results["embedders"][f"run:{Path(run).name}"] = evaluate_embedder(
            run, Embedder.from_run(run, device="cpu"), dataset, pca_dims
        )
    if args.pretrained:
        results["embedders"]["pretrained:efficientnet_lite0"] = evaluate_embedder(
            "pretrained", Embedder.pretrained(device="cpu"), dataset, pca_dims
        )
    for entry in results["embedders"].values():
        entry.pop("_gallery_vectors", None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
