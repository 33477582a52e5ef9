"""A loss that knows the category tree: the leaf cross-entropy plus the loss at every upper level.

Why: plain cross-entropy charges the same for Orange -> Satsumas (right family) as for Orange ->
Milk. Shoppers and the shop's navigation care about the upper levels first (coarse accuracy is a
floor of its own), so each upper level adds ``weight x NLL`` of the true ancestor, computed on that
level's probabilities: the sum of its leaves' softmax probabilities, the same quantity evaluation and
the back-off score (``CategoryTree.level_probabilities``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skulens.data.taxonomy import CategoryTree


class TreeLoss(nn.Module):
    def __init__(self, tree: CategoryTree, weight: float, leaf_loss: nn.Module):
        super().__init__()
        self.weight = float(weight)
        self.leaf_loss = leaf_loss
        n_leaves = len(tree.paths)
        self._levels = []
        for level in range(tree.depth - 1):  # the last level is the leaves themselves
            ancestors = torch.as_tensor(tree.ancestor_map(level))
            n_nodes = int(ancestors.max()) + 1
            # log of the 0/1 membership matrix: logsumexp over it sums a node's leaf probabilities
            log_member = torch.full((n_nodes, n_leaves), float("-inf"))
            log_member[ancestors, torch.arange(n_leaves)] = 0.0
            self.register_buffer(f"ancestors_{level}", ancestors, persistent=False)
            self.register_buffer(f"log_member_{level}", log_member, persistent=False)
            self._levels.append(level)

    def level_log_probs(self, log_p: torch.Tensor, level: int) -> torch.Tensor:
        """``[N, nodes]``: log of each node's summed leaf probabilities, from leaf log-probabilities."""
        return torch.logsumexp(log_p[:, None, :] + getattr(self, f"log_member_{level}")[None], dim=-1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.leaf_loss(logits, target)
        log_p = F.log_softmax(logits.float(), dim=-1)  # once, shared by every level
        for level in self._levels:
            ancestors = getattr(self, f"ancestors_{level}")
            loss = loss + self.weight * F.nll_loss(self.level_log_probs(log_p, level), ancestors[target])
        return loss
