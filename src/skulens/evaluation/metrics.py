"""Classification metrics: top-k, macro precision/recall/F1, per class, per level of the category tree."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from skulens.data.taxonomy import CategoryTree


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, kth=k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], tree: CategoryTree | None = None
) -> dict:
    preds = probs.argmax(axis=1)
    n_classes = len(classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=list(range(n_classes)), zero_division=0
    )
    present = support > 0  # macro averages over the classes this split actually has
    result = {
        "n_images": int(len(labels)),
        "top1": float(np.mean(preds == labels)),
        "top5": top_k_accuracy(probs, labels, 5),
        "macro_precision": float(precision[present].mean()) if present.any() else float("nan"),
        "macro_recall": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class": [
            {
                "class": classes[i],
                "support": int(support[i]),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
            }
            for i in range(n_classes)
        ],
        "confusion_matrix": confusion_matrix(labels, preds, labels=list(range(n_classes))).tolist(),
    }
    if tree is not None:
        result["levels"] = tree_level_accuracy(probs, labels, tree)
    return result


def tree_level_accuracy(probs: np.ndarray, labels: np.ndarray, tree: CategoryTree) -> list[dict]:
    """Accuracy at each level of the tree.

    ``accuracy`` scores what a prediction shows: the path of the predicted leaf. ``accuracy_summed``
    is the alternative of summing each node's leaf probabilities, reported beside it.
    """
    leaf_pred = probs.argmax(axis=1)
    out = []
    for level, name in enumerate(tree.level_names):
        mapping = tree.ancestor_map(level)
        true = mapping[labels]
        summed = tree.level_probabilities(probs, level).argmax(axis=1)
        out.append(
            {
                "level": name,
                "depth": level,
                "n_nodes": int(mapping.max() + 1),
                "accuracy": float(np.mean(mapping[leaf_pred] == true)),
                "accuracy_summed": float(np.mean(summed == true)),
            }
        )
    return out
