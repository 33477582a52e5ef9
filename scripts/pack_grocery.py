"""Copy the Grocery Store train/val photos and catalog images, re-encoded small, for a remote GPU run.

    python scripts/pack_grocery.py ../shared/datasets/grocery-store .gpu/grocery [--side 320 --quality 75]

The copy keeps the dataset's layout (train.txt, val.txt, classes.csv with its tree) so `skulens train`
reads it as it reads the original; images become WebP at `--side` px on the shorter side, about a
quarter of the original bytes. Test photos are left out: test is scored on the original files.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image
from tqdm import tqdm


def reencode(src: Path, dst: Path, side: int, quality: int) -> None:
    img = Image.open(src).convert("RGB")
    scale = side / min(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, "WEBP", quality=quality, method=6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--side", type=int, default=320)
    p.add_argument("--quality", type=int, default=75)
    args = p.parse_args()
    src = Path(args.source)
    src = src / "dataset" if (src / "dataset" / "train.txt").is_file() else src
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for split in ("train", "val"):
        lines = []
        for line in (src / f"{split}.txt").read_text().splitlines():
            if not line.strip():
                continue
            path, *rest = [part.strip() for part in line.split(",")]
            new = str(Path(path).with_suffix(".webp"))
            jobs.append((src / path, out / new))
            lines.append(", ".join([new, *rest]))
        (out / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (out / "test.txt").write_text("")
    with (src / "classes.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        iconic = row[4]
        jobs.append((src / iconic.lstrip("/"), out / Path(iconic.lstrip("/")).with_suffix(".webp")))
        row[4] = str(Path(iconic).with_suffix(".webp"))
        description = src / row[5].lstrip("/")
        if description.is_file():
            (out / row[5].lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (out / row[5].lstrip("/")).write_bytes(description.read_bytes())
    with (out / "classes.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    for source, target in tqdm(jobs, desc="re-encoding", unit="img"):
        reencode(source, target, args.side, args.quality)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{len(jobs)} images -> {out} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
