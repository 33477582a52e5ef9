"""Issue 18: what objects=true does to single-product photos (Grocery Store val, and every third test photo):
the first object's top-1 vs the whole photo's, with the demo recogniser and the demo detector.

    python benchmarks/experiments/objects_on_single_photos.py [--detector DIR] [--every-test 3]
"""

import argparse

from skulens.data.datasets import load_dataset
from skulens.recognition.recognizer import Recognizer
from skulens.serving.config import demo_detector_dir, demo_run_dir

parser = argparse.ArgumentParser()
parser.add_argument("--detector", default=str(demo_detector_dir()))
parser.add_argument("--every-test", type=int, default=3, help="every k-th test photo (default: 3)")
args = parser.parse_args()
ds = load_dataset("../shared/datasets/grocery-store")
rec = Recognizer.load(demo_run_dir(), detector=args.detector)
for split in ("val", "test"):
    samples = ds.split(split)
    if split == "test":
        samples = samples[:: args.every_test]
    whole = obj = n_one = 0
    for s in samples:
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
        flush=True,
    )
