"""Writes docs/colour_families.md from src/skulens/data/colour_families.toml: each family, its typical
colour, its values and how many fashion-small products have each (tests/test_text_search.py checks the
page is current).

    .venv/bin/python scripts/colour_families_doc.py [--csv ../shared/datasets/fashion-small/products.csv]
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from skulens.data.colour_families import DEFAULT_FILE, load_families

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "colour_families.md"
CSV = ROOT.parent / "shared" / "datasets" / "fashion-small" / "products.csv"


def render(counts: Counter) -> str:
    families, values = load_families()
    lines = [
        "# Colour families",
        "",
        "Made by `scripts/colour_families_doc.py` from `src/skulens/data/colour_families.toml` (edit that file,",
        "then run the script). A filter or a query that names a family matches every value in it; a value",
        "still matches exactly. Counts: fashion-small products of each value (all splits).",
        "",
        "| family | typical sRGB | values (fashion-small products) | products |",
        "| --- | --- | --- | --- |",
    ]
    for family, rgb in families.items():
        members = sorted((v for v, f in values.items() if f == family), key=lambda v: (-counts[v], v))
        listed = ", ".join(f"{v} ({counts[v]:,})" for v in members)
        total = sum(counts[v] for v in members)
        lines.append(f"| {family} | {tuple(rgb)} | {listed} | {total:,} |")
    return "\n".join(lines) + "\n"


def fashion_counts(path: Path) -> Counter:
    with path.open(newline="", encoding="utf-8") as handle:
        return Counter(row["colour"] for row in csv.DictReader(handle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=CSV)
    args = parser.parse_args()
    OUT.write_text(render(fashion_counts(args.csv)))
    print(f"wrote {OUT} from {DEFAULT_FILE}")


if __name__ == "__main__":
    main()
