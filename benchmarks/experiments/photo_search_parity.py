"""Photo -> catalog search, the same before and after a change: each query's top 5 SKUs on the demo catalog.

The demo catalog `skulens serve` starts with (81 Grocery Store products, the embedded demo model), queried
with every 5th Grocery Store test photo. Run it with two versions of skulens and compare the files:

    .venv/bin/python benchmarks/experiments/photo_search_parity.py --out /tmp/after.json
    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/experiments/photo_search_parity.py --out /tmp/before.json \\
        --compare /tmp/after.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import skulens
from skulens.data.datasets import load_dataset
from skulens.serving.catalog_setup import open_demo_catalog
from skulens.serving.config import demo_catalog_dir, demo_run_dir

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "grocery-store"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--every", type=int, default=5, help="every Nth test photo")
    p.add_argument("--out", required=True, help="JSON: each query's top 5 SKUs")
    p.add_argument("--compare", default=None, help="another run's --out: how many queries got the same top 5")
    args = p.parse_args()
    queries = load_dataset(Path(args.data)).split("test")[:: args.every]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["SKULENS_CACHE_DIR"] = cache  # a fresh demo catalog, as a first `skulens serve` makes it
        catalog = open_demo_catalog(demo_run_dir(), demo_catalog_dir(), device="cpu")
        tops = [[hit.sku for hit in catalog.search(str(q.path), top_k=5)] for q in queries]
        catalog.close()
    Path(args.out).write_text(json.dumps({"skulens": skulens.__file__, "queries": len(tops), "top5": tops}))
    print(f"{len(tops)} queries with {skulens.__file__}; saved {args.out}")
    if args.compare:
        other = json.loads(Path(args.compare).read_text())["top5"]
        same = sum(a == b for a, b in zip(tops, other))
        print(f"same top 5 as {args.compare}: {same} of {len(tops)}")


if __name__ == "__main__":
    main()
