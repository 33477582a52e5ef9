"""fashion-small: which photo probe and which agreement for the text projection's category heads (issue 20)

`skulens catalog fit-text-projection` ranks a photo for some words by cos(projected words, photo) +
mix x A, where A comes from two heads over the frozen vectors (text -> category, photo -> category).
This script measures the choices behind the shipped form, on the products held out of the fit (what the
fit itself sees) and on VAL (never TEST):

- the photo probe: linear (a logistic regression on the unit photo vector) or one ReLU hidden layer of
  ``text_projection.PROBE_HIDDEN`` units (dropout 0.2) trained for 20 or 40 epochs;
- the agreement A: the probability that text and photo name the same category, or its log (the map
  ranks by cos / T, a softmax's logits; a log prior belongs next to a logit).

One map (``text_projection.fit``, temperature 0.02, the experiment's settings), its own held-out split and
text head; only the photo probe and A change. For each, every mix of ``text_projection.MIX_GRID``:
Recall@10 of the exact product and precision@10 of its article_type (the fit's own rule: their sum).

    python benchmarks/experiments/category_heads_variants.py --cache /tmp/t2i   # the vectors text_to_image.py cached

Writes benchmarks/results/category_heads_variants.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import numpy as np
import text_to_image as t2i
import torch

from skulens.catalog import text_projection as tp
from skulens.catalog.text_projection import CategoryHeads
from skulens.models.outputs import unit_rows

OUT = t2i.RESULTS / "category_heads_variants.json"
PROBES = (("linear", 30), ("hidden", 20), ("hidden", 40))  # (kind, epochs); the linear head's usual 30


def photo_probe(kind: str, epochs: int, images, labels, classes: int, seed: int):
    """(weight, bias, hidden weight, hidden bias) of one photo probe, numpy (hidden: None for linear)."""
    x, y = torch.as_tensor(images), torch.as_tensor(labels)
    if kind == "linear":
        layer = tp._logistic(x, y, classes, seed, True, "linear photo probe", epochs=epochs)
        return tp._numpy(layer.weight), tp._numpy(layer.bias), None, None
    hidden, output = tp._photo_probe(x, y, classes, seed, True, epochs=epochs)
    return tp._numpy(output.weight), tp._numpy(output.bias), tp._numpy(hidden.weight), tp._numpy(hidden.bias)


def curve(cosine, agreement, labels, log: bool) -> list[dict]:
    """Recall@10 and category precision@10 at every mix of the fit's grid."""
    a = tp.floored_log(agreement) if log else agreement
    rows = []
    for mix in tp.MIX_GRID:
        recall, precision = tp.recall_and_precision(cosine + mix * a, labels)
        rows.append({"mix": mix, "recall@10": round(recall, 4), "p@10": round(precision, 4)})
    return rows


def best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r["recall@10"] + r["p@10"], -r["mix"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(t2i.DEFAULT_DATA))
    p.add_argument("--cache", default="/tmp", help="text_to_image.py's cache (photo and title vectors, MiniLM)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ns = argparse.Namespace(data=args.data, cache=args.cache)
    train, val, _test, image_model, _encoder = t2i.load_splits(ns)  # test is loaded with them, never scored here
    categories = list(train["labels"]["article_type"])
    fitted = tp.fit(
        train["txt"],
        train["img"],
        text_model=t2i.MINILM,
        image_model="lite0-224",
        epochs=12,
        categories=categories,
        batch_size=512,
        lr=3e-3,
        temperature=0.02,
        seed=0,
    )
    names, labels = tp._category_labels(categories, len(categories))
    held = tp._held_out(labels, 0)
    fit_rows = np.setdiff1d(np.flatnonzero(labels >= 0), held)
    index = {n: i for i, n in enumerate(names)}
    sets = {
        "held_out": (train["txt"][held], train["img"][held], labels[held]),
        "val": (val["txt"], val["img"], np.array([index.get(v, -1) for v in val["labels"]["article_type"]])),
    }
    unit = unit_rows(train["img"])
    results = {"date": date.today().isoformat(), "image_model": image_model["id"], "mix_grid": tp.MIX_GRID, "arms": []}
    for kind, epochs in PROBES:
        t0 = time.perf_counter()
        weight, bias, hidden_w, hidden_b = photo_probe(kind, epochs, unit[fit_rows], labels[fit_rows], len(names), 0)
        heads = CategoryHeads(names, fitted.heads.text_weight, fitted.heads.text_bias, weight, bias, hidden_w, hidden_b)
        seconds = round(time.perf_counter() - t0, 1)
        for name, (texts, images, truth) in sets.items():
            cosine = fitted.cosines(texts, images)
            agreement = heads.agreement(texts, images)
            accuracy = float((heads.image_probabilities(images).argmax(1) == truth).mean())
            for log in (False, True):
                rows = curve(cosine, agreement, truth, log)
                arm = {"probe": kind, "epochs": epochs, "agreement": "log" if log else "probability", "on": name}
                results["arms"].append(
                    {
                        **arm,
                        "probe_accuracy": round(accuracy, 4),
                        "probe_seconds": seconds,
                        "best": best(rows),
                        "curve": rows,
                    }
                )
                b = best(rows)
                print(
                    f"{name:8s} {kind:6s} {epochs:2d} ep  {arm['agreement']:11s} probe acc {accuracy:.3f}: best mix "
                    f"{b['mix']:<5} R@10 {b['recall@10']:.3f} p@10 {b['p@10']:.3f} (sum {b['recall@10'] + b['p@10']:.3f})"
                )
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
