"""Test-time sizes and flip for a fashion-small model with attribute heads, chosen on val.

Two steps, so the choice is made on a model that never saw val and then applied, unchanged, to
another model's test photos (e.g. the same recipe retrained on train + val, which has no held-out val):

    # 1. probabilities of every head (class and attributes) at each size, with and without the flip
    python benchmarks/experiments/fashion_tta.py dump RUN --data products.csv --splits val --sizes 260,292,324 --out A.npz
    # 2. every combination (a set of sizes, flip or not) scored on the first dump's val; the best by
    #    the rule below is applied to every other dump's test
    python benchmarks/experiments/fashion_tta.py score A.npz B.npz --name fashion_tta

The rule: the largest val sum of article_type top-1 and colour accuracy (the issue's two floors
that are not met), then fewer views.
"""

from __future__ import annotations

import argparse
import itertools
import json
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from skulens.data.datasets import load_dataset, recorded_columns
from skulens.data.loading import PreprocessedImages, collate_skip_bad
from skulens.engines import TorchEngine
from skulens.errors import SkulensError
from skulens.runs import load_run
from skulens.runtime import prepare_model, resolve_device

RULE = "max val (article_type top-1 + colour accuracy), then fewer views"


def _head_probabilities(model, config, samples, device, size: int, batch_size: int):
    """{head: [probs without flip, probs with flip]} for every readable sample, and the kept indices."""
    loader = DataLoader(
        PreprocessedImages(samples, config.preprocessing, size),
        batch_size=batch_size,
        num_workers=0,
        collate_fn=collate_skip_bad,
    )
    out: dict[str, list[list[torch.Tensor]]] = {}
    kept = []
    for x, _, idx, _bad in tqdm(loader, desc=f"{size} px", unit="batch", leave=False):
        if x is None:
            continue
        for view, flipped in ((x, 0), (torch.flip(x, dims=[3]), 1)):
            probs, attr_probs = TorchEngine(model, config, device).outputs(view)
            for name, p in {"class": probs, **attr_probs}.items():
                out.setdefault(name, [[], []])[flipped].append(p)
        kept.append(idx)
    return {k: [torch.cat(v[0]).numpy(), torch.cat(v[1]).numpy()] for k, v in out.items()}, torch.cat(kept).numpy()


def dump(args) -> None:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, config = load_run(args.run)
    model = prepare_model(model.eval(), device)
    dataset = load_dataset(args.data, csv_columns=recorded_columns(config.train_args))
    names = list(dataset.attributes)
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict[str, np.ndarray] = {
        "sizes": np.array(sizes),
        "attributes": np.array(names),
        "run": np.array(str(args.run)),
    }
    for split in args.splits.split(","):
        samples = dataset.split(split)
        for size in sizes:
            probs, kept = _head_probabilities(model, config, samples, device, size, args.batch_size)
            out[f"{split}_labels"] = np.array([samples[i].label for i in kept])
            for j, name in enumerate(names):
                out[f"{split}_{name}"] = np.array([samples[i].attributes[j] for i in kept])
            for head, (plain, flipped) in probs.items():
                out[f"{split}_{size}_{head}_0"] = plain.astype(np.float16)
                out[f"{split}_{size}_{head}_1"] = flipped.astype(np.float16)
            top1 = float(np.mean(probs["class"][0].argmax(1) == out[f"{split}_labels"]))
            print(f"{split} {size} px: article_type top-1 {top1:.4f} (no flip)", flush=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}")


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    known = labels >= 0  # empty attribute cells are not scored
    return float(np.mean(probs[known].argmax(1) == labels[known]))


def _scores(d, split: str, sizes: tuple[int, ...], flip: bool) -> dict[str, float]:
    views = [(s, f) for s in sizes for f in ((0, 1) if flip else (0,))]
    row = {}
    for head in ["class", *[str(a) for a in d["attributes"]]]:
        p = np.mean([d[f"{split}_{s}_{head}_{f}"].astype(np.float32) for s, f in views], axis=0)
        labels = d[f"{split}_labels"] if head == "class" else d[f"{split}_{head}"]
        row["article_type" if head == "class" else head] = _accuracy(p, labels)
    return row


def score(args) -> None:
    dumps = [np.load(p, allow_pickle=False) for p in args.dumps]
    chooser = dumps[0]
    if "val_labels" not in chooser.files:
        raise SystemExit(
            f"{args.dumps[0]} has no val probabilities: the first dump chooses (dump it with --splits val)"
        )
    sizes = [int(s) for s in chooser["sizes"]]
    rows = []
    for k in range(1, len(sizes) + 1):
        for combo in itertools.combinations(sizes, k):
            for flip in (False, True):
                rows.append({"sizes": list(combo), "flip": flip, "val": _scores(chooser, "val", combo, flip)})
    for r in rows:
        print(r["sizes"], "flip" if r["flip"] else "    ", {k: round(v * 100, 2) for k, v in r["val"].items()})
    best = max(
        rows, key=lambda r: (r["val"]["article_type"] + r["val"]["colour"], -len(r["sizes"]) * (2 if r["flip"] else 1))
    )
    print("chosen on val:", best["sizes"], "flip" if best["flip"] else "no flip")
    applied = []
    for path, d in zip(args.dumps, dumps):
        if "test_labels" not in d.files:
            continue
        combo = tuple(best["sizes"])
        if not all(f"test_{s}_class_0" in d.files for s in combo):
            raise SystemExit(f"{path} has no test probabilities at {combo}")
        base = (int(d["sizes"][0]),)
        entry = {
            "dump": path,
            "run": str(d["run"]),
            "test_chosen": _scores(d, "test", combo, best["flip"]),
            "test_first_size_no_flip": _scores(d, "test", base, False),
        }
        applied.append(entry)
        print(path, "test, chosen:", {k: round(v * 100, 2) for k, v in entry["test_chosen"].items()})
        print(
            path,
            f"test, {base[0]} px no flip:",
            {k: round(v * 100, 2) for k, v in entry["test_first_size_no_flip"].items()},
        )
    out = Path(__file__).resolve().parents[1] / "results" / f"{args.name}.json"
    out.write_text(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "machine": "x86_64, 2 CPU cores",
                "rule": RULE,
                "chosen_on": args.dumps[0],
                "combinations": rows,
                "chosen": best,
                "applied": applied,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    d = sub.add_parser("dump")
    d.add_argument("run")
    d.add_argument("--data", required=True)
    d.add_argument("--splits", default="val,test")
    d.add_argument("--sizes", default="260,292,324")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--device", default="auto")
    d.add_argument("--out", required=True)
    s = sub.add_parser("score")
    s.add_argument("dumps", nargs="+")
    s.add_argument("--name", default="fashion_tta")
    args = parser.parse_args()
    try:
        dump(args) if args.step == "dump" else score(args)
    except (SkulensError, OSError) as exc:  # a missing run, dataset or dump: one line, not a traceback
        raise SystemExit(f"fashion_tta.py: {exc}") from None


if __name__ == "__main__":
    main()
