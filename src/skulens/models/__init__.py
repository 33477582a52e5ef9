"""Model registry: ``create_model(name, num_classes, ...)`` for every architecture skulens trains."""

from skulens.models.registry import ModelSpec, create_model, list_models

__all__ = ["ModelSpec", "create_model", "list_models"]
