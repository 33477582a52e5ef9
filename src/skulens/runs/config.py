"""``RunConfig``: what a run folder's ``config.json`` says (architecture, classes, category tree,
preprocessing, metrics, training arguments), and the keys that let timm read the folder too."""

from __future__ import annotations

from dataclasses import dataclass, field

from skulens import __version__
from skulens.data.taxonomy import CategoryTree
from skulens.data.transforms import Preprocessing
from skulens.models.spec import ModelSpec


@dataclass
class RunConfig:
    model: ModelSpec
    classes: list[str]
    preprocessing: Preprocessing
    tree: CategoryTree | None = None
    metrics: dict = field(default_factory=dict)
    train_args: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {
            "skulens_version": __version__,
            "model": self.model.to_dict(),
            "classes": list(self.classes),
            "tree": self.tree.to_dict() if self.tree else None,
            "preprocessing": self.preprocessing.to_dict(),
            "metrics": self.metrics,
            "train_args": self.train_args,
        }
        return {**data, **self.timm_keys()}

    def timm_keys(self) -> dict:
        """timm's own keys (``timm.create_model("local-dir:RUN")``) for a plain classifier run: a timm
        architecture with its linear classifier. Runs timm cannot rebuild (seedcnn, an ArcFace or
        attribute head) carry none, so timm says so instead of loading half a model."""
        spec = self.model
        if spec.name == "seedcnn" or spec.embedding_dim or spec.attributes:
            return {}
        size = self.preprocessing.img_size
        return {
            "architecture": spec.name,
            "num_classes": spec.num_classes,
            "label_names": list(self.classes),
            "model_args": {"in_chans": spec.in_chans},
            "pretrained_cfg": {
                "input_size": [spec.in_chans, size, size],
                "mean": list(self.preprocessing.mean),
                "std": list(self.preprocessing.std),
                "num_classes": spec.num_classes,
                "interpolation": "bilinear",
                "crop_pct": 1.0,
                "crop_mode": "center" if self.preprocessing.resize == "crop" else "border",
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        return cls(
            model=ModelSpec.from_dict(data["model"]),
            classes=list(data["classes"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            tree=CategoryTree.from_dict(data["tree"]) if data.get("tree") else None,
            metrics=data.get("metrics", {}),
            train_args=data.get("train_args", {}),
        )
