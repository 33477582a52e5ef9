"""Does a vote of the nearest labelled photos add to the classifier? (recognition = classifier + gallery)

Two steps, so the expensive one can run on a GPU and the cheap one anywhere:

    # 1. one pass of the run's model over gallery and query photos (flip-averaged unless --no-flip): unit-length
    #    pooled features, class and attribute probabilities, and each query's 50 nearest gallery photos
    python benchmarks/experiments/knn_vote.py dump RUN --data products.csv --gallery train --queries val,test --out F.npz
    # 2. blend p = (1 - w) * classifier + w * softmax-weighted neighbour vote; k, temperature and w are
    #    chosen on the first query split (val), then the other splits are scored once
    python benchmarks/experiments/knn_vote.py score F.npz [G.npz ...] --choose-on val --name fashion_knn_vote

Step 2 accepts several dumps: the settings are chosen on the first dump's val queries (a model
trained on train only, so val is held out), then applied to every dump's test queries (e.g. the
same recipe retrained on train + val, with train + val as its gallery).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from skulens.data.datasets import load_dataset, recorded_columns
from skulens.data.loading import PreprocessedImages, collate_skip_bad
from skulens.models.attributes import attribute_probabilities, heads_on_pooled
from skulens.models.embedding import pooled_features
from skulens.runs import load_run
from skulens.runtime import autocast, prepare_model, resolve_device, to_device

N_NEIGHBOURS = 50


@torch.no_grad()
def _outputs(model, config, samples, device, batch_size: int, workers: int, flip: bool = True):
    loader = DataLoader(
        PreprocessedImages(samples, config.preprocessing),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_skip_bad,
    )
    feats, probs, attrs, kept = [], [], {}, []
    specs = config.model.attributes or {}
    for x, _, idx, _bad in loader:
        if x is None:
            continue
        x = to_device(x, device)
        f_sum, p_sum, a_sum = 0, 0, {}
        views = (x, torch.flip(x, dims=[3])) if flip else (x,)
        for view in views:
            with autocast(device):
                pooled = pooled_features(model, view)  # one backbone pass: search vector and heads
                logits, attr_logits = heads_on_pooled(model, pooled)
            f_sum = f_sum + torch.nn.functional.normalize(pooled.float(), dim=-1)
            p_sum = p_sum + logits.float().softmax(-1)
            for k, v in attribute_probabilities(attr_logits, specs).items():
                a_sum[k] = a_sum.get(k, 0) + v
        feats.append(torch.nn.functional.normalize(f_sum, dim=-1).cpu())
        probs.append((p_sum / len(views)).cpu())
        for k, v in a_sum.items():
            attrs.setdefault(k, []).append((v / len(views)).cpu())
        kept.append(idx)
    return (torch.cat(feats), torch.cat(probs), {k: torch.cat(v) for k, v in attrs.items()}, torch.cat(kept))


def dump(args) -> None:
    device = resolve_device(args.device)
    model, config = load_run(args.run)
    model = prepare_model(model.eval(), device)
    # a CSV is read with the columns the run was trained on
    dataset = load_dataset(args.data, csv_columns=recorded_columns(config.train_args))
    attr_names = list(dataset.attributes)
    out: dict[str, np.ndarray] = {"classes": np.array(config.classes)}
    gallery = [s for split in args.gallery.split(",") for s in dataset.split(split)]
    g_feat, _, _, g_kept = _outputs(model, config, gallery, device, args.batch_size, args.workers, not args.no_flip)
    g_kept = g_kept.numpy()
    out["gallery_labels"] = np.array([gallery[i].label for i in g_kept])
    for j, name in enumerate(attr_names):
        out[f"gallery_{name}"] = np.array([gallery[i].attributes[j] for i in g_kept])
    g_feat = g_feat.to(device)
    for split in args.queries.split(","):
        samples = dataset.split(split)
        feat, probs, attrs, kept = _outputs(
            model, config, samples, device, args.batch_size, args.workers, not args.no_flip
        )
        kept = kept.numpy()
        sims, idx = (feat.to(device) @ g_feat.T).topk(N_NEIGHBOURS, dim=1)
        out[f"{split}_labels"] = np.array([samples[i].label for i in kept])
        out[f"{split}_probs"] = probs.numpy().astype(np.float16)
        out[f"{split}_nn_index"] = idx.cpu().numpy().astype(np.int32)
        out[f"{split}_nn_sim"] = sims.cpu().numpy().astype(np.float16)
        for j, name in enumerate(attr_names):
            out[f"{split}_{name}"] = np.array([samples[i].attributes[j] for i in kept])
            out[f"{split}_{name}_probs"] = attrs[name].numpy().astype(np.float16)
        print(
            f"{split}: {len(kept)} queries, classifier top-1 {np.mean(probs.numpy().argmax(1) == out[f'{split}_labels']):.4f}"
        )
    out["attributes"] = np.array(attr_names)
    out["flip"] = np.array(not args.no_flip)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}")


def vote(nn_labels: np.ndarray, nn_sim: np.ndarray, n_classes: int, k: int, temperature: float) -> np.ndarray:
    """Soft vote of the k nearest photos, each weighted by exp(similarity / temperature); a neighbour
    with an unknown label (-1) has no vote."""
    labels, sims = nn_labels[:, :k], nn_sim[:, :k].astype(np.float64)
    known = labels >= 0
    top = np.where(known, sims, -np.inf).max(axis=1, keepdims=True)
    weights = np.where(known, np.exp((sims - np.where(np.isfinite(top), top, 0.0)) / temperature), 0.0)
    out = np.zeros((len(labels), n_classes))
    rows = np.repeat(np.arange(len(labels)), k)
    np.add.at(out, (rows, np.maximum(labels, 0).ravel()), weights.ravel())
    return out / np.maximum(out.sum(1, keepdims=True), 1e-12)


def blended_accuracy(d, split: str, target: str, setting: tuple[int, float, float]) -> float:
    k, temperature, w = setting
    if target == "class":
        probs, truth, gallery = d[f"{split}_probs"].astype(np.float64), d[f"{split}_labels"], d["gallery_labels"]
    else:
        probs = d[f"{split}_{target}_probs"].astype(np.float64)
        truth, gallery = d[f"{split}_{target}"], d[f"gallery_{target}"]
    nn_labels = gallery[d[f"{split}_nn_index"]]
    blended = (1 - w) * probs + w * vote(nn_labels, d[f"{split}_nn_sim"], probs.shape[1], k, temperature)
    known = truth >= 0
    return float(np.mean(blended.argmax(1)[known] == truth[known]))


def score(args) -> None:
    dumps = [np.load(f, allow_pickle=False) for f in args.dumps]
    first = dumps[0]
    grid = [
        (k, t, w)
        for k in (1, 3, 5, 10, 20, 50)
        for t in (0.02, 0.05, 0.1)
        for w in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
    ]
    targets = ["class"] + [a for a in first["attributes"] if f"{args.choose_on}_{a}_probs" in first]
    chosen, results = {}, {}
    for target in targets:
        scored = [(blended_accuracy(first, args.choose_on, target, s), -s[2], s) for s in grid]
        best = max(scored)  # ties: the smaller blend weight
        chosen[target] = {
            "k": best[2][0],
            "temperature": best[2][1],
            "weight": best[2][2],
            f"{args.choose_on}_accuracy": best[0],
            f"{args.choose_on}_classifier_only": blended_accuracy(first, args.choose_on, target, (1, 1, 0.0)),
        }
    for path, d in zip(args.dumps, dumps):
        results[path] = {}
        for target in targets:
            s = chosen[target]
            setting = (s["k"], s["temperature"], s["weight"])
            results[path][target] = {
                "classifier_only": blended_accuracy(d, args.score_on, target, (1, 1, 0.0)),
                "with_vote": blended_accuracy(d, args.score_on, target, setting),
            }
    summary = {
        "benchmark": "classifier + nearest-neighbour vote over the labelled gallery",
        "date": date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "chosen_on": f"{args.choose_on} of {args.dumps[0]}",
        "chosen": chosen,
        f"{args.score_on}": results,
    }
    results_dir = Path(__file__).resolve().parents[1] / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"{args.name}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("run")
    d.add_argument("--data", required=True)
    d.add_argument("--gallery", default="train")
    d.add_argument("--queries", default="val,test")
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--workers", type=int, default=4)
    d.add_argument("--device", default="auto")
    d.add_argument("--no-flip", action="store_true", help="one view per photo (half the compute of flip-averaging)")
    d.add_argument("--out", required=True)
    s = sub.add_parser("score")
    s.add_argument("dumps", nargs="+")
    s.add_argument("--choose-on", default="val")
    s.add_argument("--score-on", default="test")
    s.add_argument("--name", default="knn_vote")
    args = p.parse_args()
    dump(args) if args.command == "dump" else score(args)


if __name__ == "__main__":
    main()
