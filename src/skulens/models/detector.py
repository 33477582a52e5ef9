"""A class-agnostic product detector: torchvision's FCOS on an EfficientNet-Lite backbone with an FPN.

Why FCOS rather than RetinaNet: FCOS predicts one box per feature-map location where RetinaNet
predicts nine anchors, so its head outputs and its target matching are about nine times smaller,
and it has no anchor shapes to tune for products that range from a banana to a milk carton. On a
2-core CPU the head and the matching are a large part of a training step at 320 px.

The backbone is timm's ``efficientnet_lite{0,1,2}`` (``features_only``: strides 8, 16, 32) with the
packaged ImageNet weights (models.pretrained: no download), the FPN adds a max-pooled stride-64
level, and the head is torchvision's FCOSHead made narrower (``fpn_channels``, ``head_convs``) for
a CPU. Input: 0-1 RGB tensors, normalised as the backbone was trained (mean = std = 0.5), resized
inside the model so the longer side is ``input_size``.
"""

from __future__ import annotations

from collections import OrderedDict

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from skulens.errors import SkulensError
from skulens.models.detector_spec import BACKBONES, MEAN, STD, DetectorSpec
from skulens.models.pretrained import has_packaged_weights, load_packaged_weights

__all__ = ["MEAN", "STD", "DetectorSpec", "HeadOutputs", "create_detector"]

FEATURE_STAGES = (2, 3, 4)  # strides 8, 16, 32


class _BackboneWithFPN(nn.Module):
    """timm feature maps -> FPN levels, with ``out_channels`` as torchvision's detectors expect."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def _backbone_body(name: str, pretrained: bool, frozen_blocks: int) -> nn.Module:
    body = timm.create_model(name, features_only=True, out_indices=FEATURE_STAGES)
    if pretrained:
        # The packaged weights match the full classifier's tensors by position; the feature model
        # has the same names minus the head, so the full model is loaded first and copied over.
        full = timm.create_model(name)
        load_packaged_weights(full, name)
        source = full.state_dict()
        missing = [k for k in body.state_dict() if k not in source]
        if missing:
            raise SkulensError(f"{name}: the feature backbone has weights the classifier lacks ({missing[0]})")
        body.load_state_dict({k: source[k] for k in body.state_dict()})
    # Detection batches are a few images: BatchNorm statistics from them would be noise.
    body = freeze_batch_norm_2d(body)
    frozen = [body.conv_stem, body.bn1, *list(body.blocks)[:frozen_blocks]]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return body


def create_detector(spec: DetectorSpec | None = None, *, pretrained: bool = True) -> FCOS:
    """An FCOS detector of one foreground class ("product", label 0) built from ``spec``."""
    spec = spec or DetectorSpec()
    if spec.backbone not in BACKBONES:
        raise SkulensError(f"detector backbone {spec.backbone!r} is not one of {', '.join(BACKBONES)}")
    if spec.fpn_channels % 32:
        raise SkulensError(f"fpn_channels must be a multiple of 32 (FCOS's GroupNorm), not {spec.fpn_channels}")
    if spec.input_size < 64:
        raise SkulensError(f"detector input_size must be at least 64 px, not {spec.input_size}")
    body = _backbone_body(spec.backbone, pretrained and has_packaged_weights(spec.backbone), spec.frozen_blocks)
    backbone = _BackboneWithFPN(body, body.feature_info.channels(), spec.fpn_channels)
    # One location per feature-map cell: sizes equal to the strides (8..64) set FCOS's size ranges.
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)
    head = FCOSHead(spec.fpn_channels, num_anchors=1, num_classes=1, num_convs=spec.head_convs)
    return FCOS(
        backbone,
        num_classes=1,
        min_size=spec.input_size,
        max_size=spec.input_size,
        image_mean=list(MEAN),
        image_std=list(STD),
        anchor_generator=anchors,
        head=head,
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=50,
    )


class HeadOutputs(nn.Module):
    """The detector up to its head's raw outputs, for one normalised, padded NCHW batch:
    (class logits (N, L, 1), box regression (N, L, 4), centerness (N, L, 1)) over every location
    of every level. What the ONNX export holds and what both engines decode (engines.fcos_decode):
    torchvision's resizing, anchors and postprocessing stay out of the graph."""

    def __init__(self, detector: FCOS):
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.head(list(self.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]
