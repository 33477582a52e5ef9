"""Model registry: ``create_model(name, num_classes, ...)`` for every architecture skulens trains.

``ModelSpec`` comes from the torch-free :mod:`skulens.models.spec`; the factory (which imports torch
and timm) is imported when asked for."""

from skulens.models.spec import ModelSpec

__all__ = ["ModelSpec", "create_model", "list_models"]  # noqa: F822 - the factory comes from __getattr__ (lazy)


def __getattr__(name: str):
    if name in ("create_model", "list_models"):
        from skulens.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'skulens.models' has no attribute {name!r}")
