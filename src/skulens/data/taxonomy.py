"""The shop's category tree: every class is a leaf with a path from the root.

A tree is stored in the checkpoint as JSON, so a prediction always comes with its category path
(Fruit > Apple > Granny-Smith) and evaluation can score every level of the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CategoryTree:
    """Leaf classes with their paths. ``paths[i]`` ends with the name of leaf class ``i``."""

    level_names: list[str]
    paths: list[tuple[str, ...]]
    _level_index: list[dict[tuple[str, ...], int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.paths = [tuple(p) for p in self.paths]
        depth = len(self.level_names)
        for path in self.paths:
            if len(path) != depth:
                raise ValueError(f"category path {path} has {len(path)} levels, expected {depth}")
        # A node is identified by its full prefix, so 'Apple' under two parents stays two nodes.
        self._level_index = []
        for level in range(depth):
            prefixes = sorted({p[: level + 1] for p in self.paths})
            self._level_index.append({prefix: i for i, prefix in enumerate(prefixes)})

    @property
    def depth(self) -> int:
        return len(self.level_names)

    def level_labels(self, level: int) -> list[str]:
        """Display names of the nodes at ``level`` (0 = top), in index order."""
        return [" > ".join(prefix) for prefix in self._level_index[level]]

    def ancestor_map(self, level: int) -> np.ndarray:
        """For every leaf class, the index of its ancestor node at ``level``."""
        index = self._level_index[level]
        return np.array([index[p[: level + 1]] for p in self.paths], dtype=np.int64)

    def level_probabilities(self, leaf_probs: np.ndarray, level: int) -> np.ndarray:
        """Probability of each node at ``level``: the sum of its leaves' probabilities."""
        mapping = self.ancestor_map(level)
        out = np.zeros((leaf_probs.shape[0], len(self._level_index[level])), dtype=leaf_probs.dtype)
        np.add.at(out.T, mapping, leaf_probs.T)
        return out

    def to_dict(self) -> dict:
        return {"level_names": list(self.level_names), "paths": [list(p) for p in self.paths]}

    @classmethod
    def from_dict(cls, data: dict) -> CategoryTree:
        return cls(level_names=list(data["level_names"]), paths=[tuple(p) for p in data["paths"]])
