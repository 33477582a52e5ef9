"""Rebuild the demo sample shipped in the package (src/skulens/demo_data/grocery-mini).

A few photos of 8 Grocery Store products (MIT licence, see the LICENSE copied beside them),
shrunk to 160 px, in the dataset's own layout so the demo shows the category tree too:

    python scripts/make_demo_data.py ../shared/datasets/grocery-store
"""

import shutil
import sys
from pathlib import Path

from PIL import Image

CLASSES = [
    "Granny-Smith",
    "Red-Delicious",
    "Banana",
    "Lemon",
    "Arla-Standard-Milk",
    "Oatly-Oat-Milk",
    "Red-Bell-Pepper",
    "Cucumber",
]
PER_SPLIT = {"train": 10, "val": 3, "test": 4}
SIDE = 160


def main(source: str) -> None:
    src = Path(source) / "dataset" if (Path(source) / "dataset").is_dir() else Path(source)
    out = Path(__file__).resolve().parents[1] / "src" / "skulens" / "demo_data" / "grocery-mini"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows = (src / "classes.csv").read_text().splitlines()
    keep = [r for r in rows[1:] if r.split(",")[0] in CLASSES]
    ids = {r.split(",")[1] for r in keep}
    (out / "classes.csv").write_text("\n".join([rows[0]] + keep) + "\n")
    for row in keep:
        iconic = row.split(",")[4].lstrip("/")
        shrink(src / iconic, out / iconic)
    for split, n in PER_SPLIT.items():
        lines = [l for l in (src / f"{split}.txt").read_text().splitlines() if l.split(",")[1].strip() in ids]
        chosen = []
        for cid in sorted(ids, key=int):
            chosen += [l for l in lines if l.split(",")[1].strip() == cid][:n]
        for line in chosen:
            shrink(src / line.split(",")[0], out / line.split(",")[0])
        (out / f"{split}.txt").write_text("\n".join(chosen) + "\n")
    shutil.copy(src.parent / "LICENSE", out / "LICENSE")
    (out / "SOURCE.md").write_text(
        "A small sample of the Grocery Store Dataset (M. Klasson, C. Zhang, H. Kjellstrom, WACV 2019),\n"
        "MIT licence (LICENSE), photos shrunk to 160 px by scripts/make_demo_data.py.\n"
    )


def shrink(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(src).convert("RGB")
    img.thumbnail((SIDE, SIDE))
    img.save(dst, quality=85)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/grocery-store")
