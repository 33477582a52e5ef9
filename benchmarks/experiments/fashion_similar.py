"""fashion-small: share of each product's 5 similar products in its own article_type, by look alone and
tree first, on a catalog made by `benchmarks/fashion_text_search.py` (a copy of its train catalog, kept
with `sqlite3 SRC ".backup DST"` while it ran). Used once, 2026-12-02, to re-measure after the fix that
made the tree order start at the product's own category: 67.6% by look, 99.5% tree first (500 train
products, random.Random(0)). A full `fashion_text_search.py` run measures the same with the fixed code.

    .venv/bin/python benchmarks/experiments/fashion_similar.py --db /tmp/fkeep/fashion.db
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fashion_text_search import DEFAULT_CSV, MAPPING, similar_share  # noqa: E402

from skulens.catalog import Catalog, Embedder, read_products_csv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a train catalog made by fashion_text_search.py")
    parser.add_argument("--sample", type=int, default=500)
    args = parser.parse_args()
    embedder = Embedder.pretrained("efficientnet_lite0", img_size=128, device="cpu")
    rows = read_products_csv(DEFAULT_CSV, MAPPING, split="train")[0]
    sample = random.Random(0).sample(rows, args.sample)
    with Catalog.open(args.db, embedder, index_dir=Path(args.db).with_suffix(".index")) as catalog:
        out = {
            "by_look": similar_share(catalog, sample, tree=False),
            "tree_first": similar_share(catalog, sample, tree=True),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
