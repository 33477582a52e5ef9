"""Issue 18: what objects=true does to single-product photos (Grocery Store val, and every third test photo):
the first object's top-1 vs the whole photo's, with the demo recogniser and the demo detector. Also what
ONE_PRODUCT_SHARE (recognition/recognizer.py) is chosen from: the detector's largest box as a share of the
photo, smallest over the val photos, against the largest over val composites of 2-4 products (800 px, the
multi_product benchmark's kind).

    python benchmarks/experiments/objects_on_single_photos.py [--detector DIR] [--every-test 3]
"""

import argparse
from dataclasses import replace

import numpy as np

from skulens.data.composition import CompositionConfig, make_eval_set
from skulens.data.datasets import load_dataset
from skulens.data.images import load_image
from skulens.engines.detector import box_areas
from skulens.recognition.recognizer import Recognizer
from skulens.serving.config import demo_detector_dir, demo_run_dir

parser = argparse.ArgumentParser()
parser.add_argument("--detector", default=str(demo_detector_dir()))
parser.add_argument("--every-test", type=int, default=3, help="every k-th test photo (default: 3; 0: no test)")
parser.add_argument("--composites", type=int, default=150, help="val composites for the largest-box share")
args = parser.parse_args()
ds = load_dataset("../shared/datasets/grocery-store")
rec = Recognizer.load(demo_run_dir(), detector=args.detector)


def largest_share(photo) -> float:
    boxes = np.array([b.box for b in rec.detector.detect(photo)], np.float32).reshape(-1, 4)
    return float(box_areas(boxes).max() / (photo.width * photo.height)) if len(boxes) else 0.0


config = replace(CompositionConfig(), cutout_share=0.0, canvas_size=800)
scenes = make_eval_set(ds, "val", args.composites, seed=1, config=config)
print("val composites", len(scenes), "largest box share, max", round(max(largest_share(c.pil()) for c in scenes), 3))
for split in ("val", "test") if args.every_test else ("val",):
    samples = ds.split(split)
    if split == "test":
        samples = samples[:: args.every_test]
    whole = obj = n_one = 0
    shares = []
    for s in samples:
        shares.append(largest_share(load_image(s.path)))
        truth = ds.classes[s.label]
        w = rec.predict(s.path).label
        objs = rec.predict_objects(s.path)
        whole += w == truth
        obj += objs[0].prediction.label == truth
        n_one += sum(o.score is not None for o in objs) == 1
    n = len(samples)
    print(
        split,
        n,
        "whole",
        round(whole / n, 4),
        "objects-first",
        round(obj / n, 4),
        "one box",
        round(n_one / n, 3),
        "largest box share, min",
        round(min(shares), 3),
        flush=True,
    )
