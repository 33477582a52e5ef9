"""Answers a shopper can trust: a consistent category path that backs off when the leaf is unsure.

From leaf (class) probabilities:

- the path is chosen top-down: at each level, the most probable child of the node chosen above,
  where a node's probability is the sum of its leaves'. A child therefore never contradicts its
  parent, and confidence never rises going down the path;
- the answer is the deepest node on that path whose confidence reaches its level's threshold
  ("Apple, 97%" rather than a coin toss between two varieties);
- when no level reaches its threshold, not even the top one, the answer is "unknown / not in
  catalog".

Thresholds come from :func:`calibrate_thresholds` on validation probabilities. This module is
plain numpy: no model, no files (see ``calibration.py`` for those).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from skulens.data.taxonomy import CategoryTree
from skulens.errors import SkulensError

UNKNOWN_LABEL = "unknown"


def tree_or_flat(tree: CategoryTree | None, classes: list[str]) -> CategoryTree:
    """The run's tree, or a one-level tree of its classes, so flat runs back off to "unknown" only."""
    if tree is not None:
        return tree
    return CategoryTree(level_names=["class"], paths=[(c,) for c in classes])


class TreeIndex:
    """Node structure of a tree, computed once: node paths per level and each node's parent."""

    def __init__(self, tree: CategoryTree):
        self.tree = tree
        self.level_names = list(tree.level_names)
        n_leaves = len(tree.paths)
        self.ancestors = [tree.ancestor_map(level) for level in range(tree.depth)]
        self.node_paths: list[list[tuple[str, ...]]] = []
        self.parents: list[np.ndarray] = []
        for level, mapping in enumerate(self.ancestors):
            n_nodes = int(mapping.max()) + 1 if n_leaves else 0
            paths: list[tuple[str, ...]] = [()] * n_nodes
            parents = np.zeros(n_nodes, dtype=np.int64)
            for leaf in range(n_leaves):
                node = mapping[leaf]
                paths[node] = tree.paths[leaf][: level + 1]
                if level:
                    parents[node] = self.ancestors[level - 1][leaf]
            self.node_paths.append(paths)
            self.parents.append(parents)

    @property
    def depth(self) -> int:
        return len(self.level_names)


@dataclass
class ConsistentPaths:
    """For N images: the chosen node at every level ``[N, depth]`` and its summed probability."""

    nodes: np.ndarray
    confidences: np.ndarray


def consistent_paths(probs: np.ndarray, index: TreeIndex) -> ConsistentPaths:
    """Top-down path per image: each level takes the most probable child of the node chosen above."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(index.tree.paths):
        raise SkulensError(f"expected probabilities of shape [N, {len(index.tree.paths)}], got {list(probs.shape)}")
    n = probs.shape[0]
    nodes = np.zeros((n, index.depth), dtype=np.int64)
    confs = np.zeros((n, index.depth), dtype=np.float64)
    rows = np.arange(n)
    for level in range(index.depth):
        level_probs = index.tree.level_probabilities(probs, level)
        if level:
            # Only children of the parent chosen above may win, so the path stays consistent.
            allowed = index.parents[level][None, :] == nodes[:, level - 1][:, None]
            level_probs = np.where(allowed, level_probs, -1.0)
        nodes[:, level] = level_probs.argmax(axis=1)
        confs[:, level] = level_probs[rows, nodes[:, level]]
    return ConsistentPaths(nodes, confs)


def _effective(thresholds: list[float | None], depth: int) -> np.ndarray:
    if len(thresholds) != depth:
        raise SkulensError(f"{len(thresholds)} threshold(s) for a category tree of {depth} level(s)")
    # None marks a level the target could not be met at: it is never answered.
    return np.array([math.inf if t is None else float(t) for t in thresholds], dtype=np.float64)


def answer_depths(confidences: np.ndarray, thresholds: list[float | None]) -> np.ndarray:
    """The deepest level whose confidence reaches its threshold, per image; -1 means unknown."""
    passes = confidences >= _effective(thresholds, confidences.shape[1])[None, :]
    deepest = confidences.shape[1] - 1 - np.argmax(passes[:, ::-1], axis=1)
    return np.where(passes.any(axis=1), deepest, -1)


def correct_nodes(paths: ConsistentPaths, labels: np.ndarray, index: TreeIndex) -> np.ndarray:
    """``[N, depth]``: whether the chosen node at each level is the true label's ancestor."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.stack([paths.nodes[:, lv] == index.ancestors[lv][labels] for lv in range(index.depth)], axis=1)


@dataclass
class LevelConfidence:
    level: str
    name: str
    confidence: float


@dataclass
class Answer:
    """The backed-off answer for one image. ``path`` is empty and ``unknown`` true when not confident at all."""

    path: list[str]
    confidence: float
    depth: int
    unknown: bool
    levels: list[LevelConfidence] = field(default_factory=list)

    @property
    def label(self) -> str:
        return UNKNOWN_LABEL if self.unknown else self.path[-1]


class Backoff:
    """Back-off answers for one tree and one set of per-level thresholds (0 everywhere: never backs off)."""

    def __init__(self, tree: CategoryTree, thresholds: list[float | None] | None = None):
        self.index = TreeIndex(tree)
        self.thresholds = list(thresholds) if thresholds is not None else [0.0] * self.index.depth
        _effective(self.thresholds, self.index.depth)  # validate the count now, not at the first photo

    def answers(self, probs: np.ndarray) -> list[Answer]:
        paths = consistent_paths(np.atleast_2d(probs), self.index)
        depths = answer_depths(paths.confidences, self.thresholds)
        out = []
        for nodes, confs, depth in zip(paths.nodes, paths.confidences, depths):
            levels = [
                LevelConfidence(self.index.level_names[lv], self.index.node_paths[lv][node][-1], float(confs[lv]))
                for lv, node in enumerate(nodes)
            ]
            if depth < 0:
                out.append(Answer([], float(confs[0]), -1, True, levels))
            else:
                out.append(
                    Answer(
                        list(self.index.node_paths[depth][nodes[depth]]), float(confs[depth]), int(depth), False, levels
                    )
                )
        return out


# --- calibration ------------------------------------------------------------------------------


def precision_threshold(confidences: np.ndarray, correct: np.ndarray, target: float) -> float | None:
    """The lowest confidence threshold whose answered set (confidence >= it) is at least ``target`` correct.

    Among all cut-offs, the one that answers the most images while meeting the target; ties in
    confidence are never split (a threshold cannot separate equal values). None when no cut-off
    meets the target.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    if conf.size == 0:
        return None
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], np.asarray(correct, dtype=bool)[order]
    precision = np.cumsum(ok) / np.arange(1, conf.size + 1)
    cut_allowed = np.r_[conf[:-1] > conf[1:], True]
    good = np.flatnonzero(cut_allowed & (precision >= target - 1e-12))
    return float(conf[good[-1]]) if good.size else None


def reject_rate_threshold(confidences: np.ndarray, n_rejected: int) -> float:
    """A threshold with (about, ties aside) ``n_rejected`` of ``confidences`` strictly below it."""
    conf = np.sort(np.asarray(confidences, dtype=np.float64))
    if n_rejected <= 0 or conf.size == 0:
        return 0.0
    if n_rejected >= conf.size:
        return float(np.nextafter(conf[-1], math.inf))
    return float(conf[n_rejected])


@dataclass
class Calibration:
    """Per-level thresholds and what they gave on the calibration images."""

    level_names: list[str]
    thresholds: list[float | None]
    target_precision: float
    unknown_method: str  # "precision" or "reject_rate"
    unknown_reject_rate_target: float | None
    n_images: int
    levels: list[dict]  # per level: threshold, answered (share), precision of those answers
    unknown_rate: float
    accuracy: float  # of all answers given, at whatever level
    coverage: float  # share of images answered at any level

    def to_dict(self) -> dict:
        return {
            "target_precision": self.target_precision,
            "unknown": {
                "method": self.unknown_method,
                "threshold": self.thresholds[0],
                "reject_rate_target": self.unknown_reject_rate_target,
                "rate": self.unknown_rate,
            },
            "levels": self.levels,
            "n_images": self.n_images,
            "accuracy": self.accuracy,
            "coverage": self.coverage,
        }


def calibrate_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    tree: CategoryTree,
    *,
    target_precision: float = 0.95,
    unknown_reject_rate: float | None = None,
) -> Calibration:
    """Pick per-level thresholds on held-out probabilities so each answered level meets ``target_precision``.

    Calibrated bottom-up, on exactly the images each level would answer: the finest level first on
    all images, then each level above on the images the levels below it did not take (the hard
    ones), so the precision target holds for the answers each level actually gives. The top
    level's threshold is the "unknown" threshold; with ``unknown_reject_rate`` it is instead set
    so that this share of the calibration images is answered "unknown".
    """
    _check_targets(target_precision, unknown_reject_rate)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise SkulensError("no images to calibrate on")
    index = TreeIndex(tree)
    paths = consistent_paths(probs, index)
    correct = correct_nodes(paths, labels, index)
    n = paths.confidences.shape[0]
    thresholds = _bottom_up_thresholds(paths.confidences, correct, target_precision, unknown_reject_rate)
    depths = answer_depths(paths.confidences, thresholds)
    answered = depths >= 0
    right = np.zeros(n, dtype=bool)
    right[answered] = correct[np.flatnonzero(answered), depths[answered]]
    return Calibration(
        level_names=index.level_names,
        thresholds=thresholds,
        target_precision=target_precision,
        unknown_method="precision" if unknown_reject_rate is None else "reject_rate",
        unknown_reject_rate_target=unknown_reject_rate,
        n_images=n,
        levels=_level_results(index.level_names, thresholds, depths, right),
        unknown_rate=float((~answered).mean()),
        accuracy=float(right[answered].mean()) if answered.any() else 0.0,
        coverage=float(answered.mean()),
    )


def _check_targets(target_precision: float, unknown_reject_rate: float | None) -> None:
    if not 0 < target_precision <= 1:
        raise SkulensError(f"target precision must be in (0, 1], got {target_precision}")
    if unknown_reject_rate is not None and not 0 <= unknown_reject_rate < 1:
        raise SkulensError(f"unknown reject rate must be in [0, 1), got {unknown_reject_rate}")


def _bottom_up_thresholds(
    confidences: np.ndarray, correct: np.ndarray, target_precision: float, unknown_reject_rate: float | None
) -> list[float | None]:
    """Each level's threshold, finest first, each on the images the finer levels left unanswered."""
    n, depth = confidences.shape
    thresholds: list[float | None] = [None] * depth
    remaining = np.ones(n, dtype=bool)
    for level in range(depth - 1, -1, -1):
        conf = confidences[remaining, level]
        if level == 0 and unknown_reject_rate is not None:
            # The share is of all calibration images, not of those the levels below left over.
            thresholds[0] = reject_rate_threshold(conf, int(math.floor(unknown_reject_rate * n + 1e-9)))
        else:
            thresholds[level] = precision_threshold(conf, correct[remaining, level], target_precision)
        if thresholds[level] is not None:
            remaining &= ~(confidences[:, level] >= thresholds[level])
    return thresholds


def _level_results(
    level_names: list[str], thresholds: list[float | None], depths: np.ndarray, right: np.ndarray
) -> list[dict]:
    """Per level: its threshold, the share of images answered there, and how many of those were right."""
    levels = []
    for level in range(len(thresholds)):
        at_level = depths == level
        levels.append(
            {
                "level": level_names[level],
                "depth": level,
                "threshold": thresholds[level],
                "answered": float(at_level.mean()),
                "precision": float(right[at_level].mean()) if at_level.any() else None,
            }
        )
    return levels


# --- evaluation -------------------------------------------------------------------------------


def operating_point(paths: ConsistentPaths, correct: np.ndarray, thresholds: list[float | None]) -> dict:
    """Coverage and accuracy of the answers the given thresholds produce."""
    depths = answer_depths(paths.confidences, thresholds)
    answered = depths >= 0
    right = correct[np.flatnonzero(answered), depths[answered]]
    return {
        "coverage": float(answered.mean()),
        "accuracy": float(right.mean()) if right.size else None,
        "finest_level_share": float((depths == paths.confidences.shape[1] - 1).mean()),
        "level_shares": [float((depths == lv).mean()) for lv in range(paths.confidences.shape[1])],
        "unknown_rate": float((~answered).mean()),
    }


def coverage_curve(
    probs: np.ndarray, labels: np.ndarray, tree: CategoryTree, grid: np.ndarray | None = None
) -> list[dict]:
    """Back-off with one threshold for every level, swept over ``grid``: how accuracy trades against coverage."""
    index = TreeIndex(tree)
    paths = consistent_paths(probs, index)
    correct = correct_nodes(paths, np.asarray(labels), index)
    grid = np.round(np.linspace(0.0, 1.0, 101), 4) if grid is None else np.asarray(grid, dtype=np.float64)
    return [{"threshold": float(t), **operating_point(paths, correct, [float(t)] * index.depth)} for t in grid]
