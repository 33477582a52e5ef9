"""Attribute heads: colour, usage, gender... predicted beside the category, from the same features.

Each attribute is one linear layer on the backbone's pooled features (the features the classifier
sees), trained jointly with the category. An exclusive attribute (one colour per product) is a
softmax group; tags that can co-occur are independent sigmoids, each with its own threshold tuned
on validation. ``model(x)`` still returns the class logits alone, so everything that only knows
about classes (export, calibration, back-off) keeps working; :func:`forward_all` gives both in
one backbone pass.

Unknown values (empty CSV cells) are -1 targets and drop out of the loss: an empty cell says
nothing about the product, so learning it as a value of its own would teach the model to guess
"unknown" from the photo.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skulens.data.colour_families import COLOUR_ATTRIBUTES, family_of
from skulens.errors import SkulensError
from skulens.models.outputs import ONNX_OUTPUT_PREFIX, describe  # noqa: F401 - re-exported (torch-free home)

KINDS = ("softmax", "sigmoid")


def check_specs(specs: dict[str, dict]) -> None:
    for name, spec in specs.items():
        if spec.get("kind") not in KINDS:
            raise SkulensError(f"attribute {name!r}: kind must be softmax or sigmoid, not {spec.get('kind')!r}")
        if not spec.get("values"):
            raise SkulensError(f"attribute {name!r} has no values")


class AttributeHeads(nn.Module):
    """One linear layer per attribute; kept in spec order (names may hold characters a module name cannot)."""

    def __init__(self, in_features: int, specs: dict[str, dict]):
        super().__init__()
        check_specs(specs)
        self.names = list(specs)
        self.heads = nn.ModuleList(nn.Linear(in_features, len(spec["values"])) for spec in specs.values())

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(pooled) for name, head in zip(self.names, self.heads)}


def _classifier(model: nn.Module) -> nn.Module:
    head = getattr(model, "classifier", None)
    if head is None and hasattr(model, "get_classifier"):
        head = model.get_classifier()
    return head


def attach_attribute_heads(model: nn.Module, specs: dict[str, dict]) -> nn.Module:
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head") and _classifier(model) is not None):
        raise SkulensError(
            f"attribute heads need a backbone with pooled features (EfficientNet, seedcnn, most timm "
            f"models), not {type(model).__name__}"
        )
    model.attribute_heads = AttributeHeads(model.num_features, specs)
    return model


def has_attribute_heads(model: nn.Module) -> bool:
    return isinstance(getattr(model, "attribute_heads", None), AttributeHeads)


def forward_all(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(class logits, {attribute: logits})`` from one backbone pass.

    ``labels`` switch on the ArcFace margin of an embedding head while training, as ``model_logits`` does.
    """
    from skulens.models.embedding import pooled_features

    return heads_on_pooled(model, pooled_features(model, x), labels)


def heads_on_pooled(
    model: nn.Module, pooled: torch.Tensor, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``forward_all`` from pooled features already computed (e.g. kept as search vectors too)."""
    from skulens.models.embedding import has_embedding_head

    head = _classifier(model)
    logits = head(pooled, labels) if labels is not None and has_embedding_head(model) else head(pooled)
    attributes = model.attribute_heads(pooled) if has_attribute_heads(model) else {}
    return logits, attributes


def attribute_logits(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return forward_all(model, x)[1]


def attribute_probabilities(logits: dict[str, torch.Tensor], specs: dict[str, dict]) -> dict[str, torch.Tensor]:
    return {
        name: (v.float().softmax(-1) if specs[name]["kind"] == "softmax" else v.float().sigmoid())
        for name, v in logits.items()
    }


def attribute_loss(
    logits: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    specs: dict[str, dict],
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Sum over attributes of the mean loss over the known targets (a batch with none adds 0)."""
    total = None
    for name, spec in specs.items():
        out, target = logits[name].float(), targets[name]
        if spec["kind"] == "softmax":
            known = target >= 0
            if not known.any():
                continue
            # Not ignore_index: with no known target in the batch it would give NaN (0/0).
            loss = F.cross_entropy(out[known], target[known], label_smoothing=label_smoothing)
        else:
            known = target >= 0
            if not known.any():
                continue
            loss = F.binary_cross_entropy_with_logits(out[known], target[known].float())
        total = loss if total is None else total + loss
    if total is None:
        return next(iter(logits.values())).sum() * 0.0  # keeps the graph (and DDP) happy
    return total


# --- metrics and thresholds -----------------------------------------------------------------


def _softmax_targets(samples, position: int) -> np.ndarray:
    return np.array([s.attributes[position] if position < len(s.attributes) else -1 for s in samples], np.int64)


def _tag_targets(samples, position: int, n_values: int) -> np.ndarray:
    """Multi-hot rows; -1 rows where the tags are unknown."""
    out = np.full((len(samples), n_values), -1, np.int8)
    for row, s in enumerate(samples):
        value = s.attributes[position] if position < len(s.attributes) else None
        if value is not None:
            out[row] = 0
            out[row, list(value)] = 1
    return out


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Mean of the precision at the rank of each positive (ties broken by order; nan without positives)."""
    if not positives.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(bool)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def family_accuracy(probs: np.ndarray, target: np.ndarray, values: list[str]) -> float:
    """Colour scored by family (data/colour_families.toml): each family's probability is the sum of
    its values', as a category tree's levels are, and the answer is right when its family is the
    true value's (Navy Blue for Blue counts; Teal for Green does not)."""
    families = [family_of(v) for v in values]
    names = sorted(set(families))
    column = np.array([names.index(f) for f in families])
    summed = np.zeros((len(probs), len(names)))
    np.add.at(summed.T, column, probs.T)
    return float(np.mean(summed.argmax(1) == column[target]))


def attribute_metrics(
    attr_probs: dict[str, np.ndarray], samples, specs: dict[str, dict], thresholds: dict[str, list[float]] | None = None
) -> dict[str, dict]:
    """Per attribute, over the images whose value is known: accuracy (softmax) or mAP and
    micro precision/recall/F1 at the tuned thresholds (sigmoid). ``samples`` align with the rows."""
    out: dict[str, dict] = {}
    for position, (name, spec) in enumerate(specs.items()):
        probs = attr_probs[name]
        if spec["kind"] == "softmax":
            target = _softmax_targets(samples, position)
            known = target >= 0
            pred = probs.argmax(1)
            out[name] = {
                "kind": "softmax",
                "n_known": int(known.sum()),
                "n_unknown": int((~known).sum()),
                "accuracy": float(np.mean(pred[known] == target[known])) if known.any() else float("nan"),
            }
            if name.lower() in COLOUR_ATTRIBUTES and known.any():
                out[name]["family_accuracy"] = family_accuracy(probs[known], target[known], spec["values"])
            continue
        target = _tag_targets(samples, position, len(spec["values"]))
        known = target[:, 0] >= 0
        probs, target = probs[known], target[known]
        aps = [average_precision(probs[:, j], target[:, j] == 1) for j in range(target.shape[1])]
        scored = [a for a in aps if not np.isnan(a)]
        thr = np.array((thresholds or {}).get(name) or [0.5] * len(spec["values"]))
        pred = probs >= thr[None, :]
        tp = int(np.sum(pred & (target == 1)))
        fp, fn = int(np.sum(pred & (target == 0))), int(np.sum(~pred & (target == 1)))
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        out[name] = {
            "kind": "sigmoid",
            "n_known": int(known.sum()),
            "n_unknown": int((~known).sum()),
            "mAP": float(np.mean(scored)) if scored else float("nan"),
            "ap_per_tag": {v: a for v, a in zip(spec["values"], aps)},
            "precision": precision,
            "recall": recall,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
            "thresholds_tuned": bool(thresholds and name in thresholds),
        }
    return out


def tune_thresholds(attr_probs: dict[str, np.ndarray], samples, specs: dict[str, dict]) -> dict[str, list[float]]:
    """Per tag, the threshold with the best F1 on these (validation) images; 0.5 for a tag never seen."""
    out: dict[str, list[float]] = {}
    for position, (name, spec) in enumerate(specs.items()):
        if spec["kind"] != "sigmoid":
            continue
        target = _tag_targets(samples, position, len(spec["values"]))
        known = target[:, 0] >= 0
        probs, target = attr_probs[name][known], target[known]
        thresholds = []
        for j in range(target.shape[1]):
            positives = target[:, j] == 1
            if not positives.any():
                thresholds.append(0.5)
                continue
            # Candidate thresholds are the scores themselves; F1 at "score >= t" for each.
            candidates = np.unique(probs[:, j])
            f1 = [
                2 * np.sum((probs[:, j] >= t) & positives) / (np.sum(probs[:, j] >= t) + positives.sum())
                for t in candidates
            ]
            thresholds.append(float(candidates[int(np.argmax(f1))]))
        out[name] = thresholds
    return out


def align_attributes(samples, dataset_specs: dict[str, dict], model_specs: dict[str, dict]):
    """Re-index the samples' attribute targets from the dataset's value lists to the model's.

    Returns ``(samples, specs)`` with ``specs`` the model attributes the dataset has columns for.
    """
    from dataclasses import replace

    common = {n: s for n, s in model_specs.items() if n in dataset_specs and dataset_specs[n]["kind"] == s["kind"]}
    positions = {n: list(dataset_specs).index(n) for n in common}
    maps = {}
    for name, spec in common.items():
        unknown = sorted(set(dataset_specs[name]["values"]) - set(spec["values"]))
        if unknown:
            raise SkulensError(f"attribute {name!r} has values the model does not know: {', '.join(unknown[:5])}")
        maps[name] = [spec["values"].index(v) for v in dataset_specs[name]["values"]]

    def convert(s):
        values = []
        for name in common:
            v = s.attributes[positions[name]] if positions[name] < len(s.attributes) else None
            if common[name]["kind"] == "softmax":
                values.append(-1 if v is None or v < 0 else maps[name][v])
            else:
                values.append(None if v is None else tuple(sorted(maps[name][i] for i in v)))
        return replace(s, attributes=tuple(values))

    return [convert(s) for s in samples], common
