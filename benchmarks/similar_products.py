"""Similar products that make sense (issue 20): of each product's 5 most similar products, the share in
its own coarse category (Apple, Milk...) and in its department (Fruit, Vegetables, Packages), by look
alone (`Catalog.similar(sku, tree=False)`, the old behaviour) and tree first (the default).

Catalog: the demo catalog `skulens serve` starts with (81 Grocery Store products, one iconic photo each,
the embedded demo model's vectors). No split is involved: every product of the catalog is a query.
The ceiling is what any ordering can reach: 31 of the 43 coarse categories hold a single product, so
most products have fewer than 5 siblings.

    .venv/bin/python benchmarks/similar_products.py [--k 5] [--json benchmarks/results/similar_products.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def shares(catalog, k: int, tree: bool) -> dict[str, float]:
    """Mean over products of the share of its k similar products in the same coarse category /
    department, and the same figures' ceiling (min(siblings, k) / k)."""
    rows = catalog.products(limit=10_000)
    by_coarse: dict[tuple, int] = {}
    for row in rows:
        by_coarse[tuple(row.category_path[:2])] = by_coarse.get(tuple(row.category_path[:2]), 0) + 1
    coarse, department, first, ceiling = [], [], [], []
    for row in rows:
        hits = catalog.similar(row.sku, top_k=k, tree=tree)
        coarse.append(np.mean([h.category_path[:2] == row.category_path[:2] for h in hits]))
        department.append(np.mean([h.category_path[:1] == row.category_path[:1] for h in hits]))
        first.append(bool(hits) and hits[0].category_path[:2] == row.category_path[:2])
        ceiling.append(min(by_coarse[tuple(row.category_path[:2])] - 1, k) / k)
    return {
        "products": len(rows),
        "coarse_share": float(np.mean(coarse)),
        "coarse_share_of_ceiling": float(np.mean(coarse) / np.mean(ceiling)),
        "department_share": float(np.mean(department)),
        "first_in_coarse": float(np.mean(first)),
        "coarse_ceiling": float(np.mean(ceiling)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from skulens.serving.catalog_setup import open_demo_catalog
    from skulens.serving.config import demo_catalog_dir, demo_run_dir

    with tempfile.TemporaryDirectory() as cache:
        os.environ["SKULENS_CACHE_DIR"] = cache  # a fresh demo catalog, as a first `skulens serve` makes it
        catalog = open_demo_catalog(demo_run_dir(), demo_catalog_dir(), device="cpu")
        results = {f"tree={tree}": shares(catalog, args.k, tree) for tree in (False, True)}
        catalog.close()
    for name, figures in results.items():
        print(name, " ".join(f"{key}={value:.3f}" for key, value in figures.items()))
    if args.json:
        args.json.write_text(json.dumps({"k": args.k, **results}, indent=1))


if __name__ == "__main__":
    main()
