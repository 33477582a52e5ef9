"""A retrieval embedding on top of any classifier backbone (the PP-ShiTu recipe).

The classifier's last layer is replaced by a neck (dropout, linear to ``embedding_dim``,
BatchNorm) and a cosine classifier trained with an additive angular margin (ArcFace). The
normalised neck output is the product embedding the catalog index stores; the scaled cosines are
ordinary logits, so classification, evaluation and export work unchanged. The margin makes the
classes compact on the sphere, which is what nearest-neighbour search needs: a shopper photo must
land nearer its product's catalog photo than any other product's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from skulens.models.outputs import unit_rows  # noqa: F401 - re-exported (torch-free home)


class ArcMarginHead(nn.Module):
    """pooled features -> normalised embedding -> ``scale * cos`` (with the margin on the target when training)."""

    def __init__(
        self,
        in_features: int,
        embedding_dim: int,
        num_classes: int,
        *,
        scale: float = 30.0,
        margin: float = 0.3,
        drop_rate: float = 0.2,
    ):
        super().__init__()
        self.neck = nn.Sequential(
            nn.Dropout(drop_rate), nn.Linear(in_features, embedding_dim), nn.BatchNorm1d(embedding_dim)
        )
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = scale, margin

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.neck(pooled).float(), dim=-1)

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # Cosines and the margin in float32 even under GPU autocast: bf16 cosines are too coarse for a
        # margin of a few hundredths, and scatter needs one dtype on both sides.
        with torch.autocast(pooled.device.type, enabled=False):
            return self._logits(pooled.float(), labels)

    def cosines(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cosine of a normalised embedding to every class centre."""
        return embedding @ F.normalize(self.weight.float(), dim=-1).t()

    def _logits(self, pooled: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        cos = self.cosines(self.embed(pooled))
        if labels is None or self.margin <= 0:
            return self.scale * cos
        # cos(theta + m) on the target class only; past theta = pi - m the function stops being
        # monotonic, so there fall back to a linear penalty (the "easy margin" fix of ArcFace).
        cos_t = cos.gather(1, labels[:, None]).clamp(-1 + 1e-6, 1 - 1e-6)
        sin_t = (1 - cos_t**2).sqrt()
        with_margin = cos_t * math.cos(self.margin) - sin_t * math.sin(self.margin)
        threshold = math.cos(math.pi - self.margin)
        with_margin = torch.where(cos_t > threshold, with_margin, cos_t - math.sin(math.pi - self.margin) * self.margin)
        return self.scale * cos.scatter(1, labels[:, None], with_margin)


def attach_embedding_head(model: nn.Module, embedding_dim: int, num_classes: int) -> nn.Module:
    """Swap a timm model's classifier for an :class:`ArcMarginHead`; ``model(x)`` still returns logits."""
    from skulens.errors import SkulensError

    if not hasattr(model, "forward_head") or not hasattr(model, "classifier") or not hasattr(model, "num_features"):
        raise SkulensError(f"--embedding-dim needs an EfficientNet-style timm backbone, not {type(model).__name__}")
    # timm's forward_head already applies the model's dropout before the classifier.
    model.classifier = ArcMarginHead(model.num_features, embedding_dim, num_classes, drop_rate=0.0)
    return model


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def has_embedding_head(model: nn.Module) -> bool:
    return isinstance(getattr(model, "classifier", None), ArcMarginHead)


def model_logits(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Class logits; ``labels`` switch on the angular margin while training an embedding head."""
    if labels is not None and has_embedding_head(model):
        return model.classifier(pooled_features(model, x), labels)
    return model(x)


def model_embeddings(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings: the trained neck where the model has one, else the pooled features."""
    if has_embedding_head(model):
        return model.classifier.embed(pooled_features(model, x))
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return F.normalize(pooled_features(model, x).float(), dim=-1)
    if hasattr(model, "embed"):
        return F.normalize(model.embed(x).float(), dim=-1)
    from skulens.errors import SkulensError

    raise SkulensError(f"{type(model).__name__} has no embedding to search with")


class EmbeddingOutput(nn.Module):
    """``forward(x) -> embeddings``: the module exported to ONNX for catalog indexing."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return model_embeddings(self.model, x)
