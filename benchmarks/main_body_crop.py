"""Main-body crop for photo search (issue 18): search the catalog with the detected product instead of the whole
photo, where it helps. Single Grocery Store photos against the demo catalog (81 products, one catalog image
each), photo -> product Recall@1 with the whole photo and with the detector's main box (single-object
mode: the largest, most central product; the whole photo when nothing is found). The choice is made on
val; test is reported either way.

    python benchmarks/main_body_crop.py --detector runs/det-grocery [--data ../shared/datasets/grocery-store]

Saves benchmarks/results/main_body_crop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import date
from pathlib import Path

from tqdm import tqdm

from skulens.data.datasets import load_dataset
from skulens.data.images import load_image
from skulens.engines.detector import Detector
from skulens.serving.catalog_setup import open_demo_catalog
from skulens.serving.config import demo_catalog_dir, demo_run_dir

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "grocery-store"


def main_body(detector: Detector, photo):
    boxes = detector.detect(photo, single=True)
    return photo.crop(tuple(round(v) for v in boxes[0].box)) if boxes else photo


def recall_at_1(catalog, detector: Detector, samples, classes: list[str], split: str) -> dict:
    hits = {"whole": 0, "crop": 0}
    for sample in tqdm(samples, desc=split, unit="photo"):
        photo = load_image(sample.path)
        for name, query in (("whole", photo), ("crop", main_body(detector, photo))):
            top = catalog.search(query, top_k=1)
            hits[name] += bool(top) and top[0].sku == classes[sample.label]
    return {name: n / len(samples) for name, n in hits.items()} | {"photos": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "main_body_crop.json")
    args = parser.parse_args()
    os.environ["SKULENS_CACHE_DIR"] = tempfile.mkdtemp(prefix="skulens-crop-")
    catalog = open_demo_catalog(demo_run_dir(), demo_catalog_dir(), "cpu", progress=False)
    detector = Detector.load(args.detector)
    dataset = load_dataset(args.data)
    figures = {s: recall_at_1(catalog, detector, dataset.split(s), dataset.classes, s) for s in ("val", "test")}
    keep_crop = figures["val"]["crop"] > figures["val"]["whole"]
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "catalog": "the demo catalog: 81 Grocery Store products, one catalog image each, demo model (INT8)",
        "detector": str(args.detector),
        "recall_at_1": figures,
        "chosen_on_val": "crop" if keep_crop else "whole",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
