"""The model factory: packaged ImageNet weights, the design-notes CNN, any timm architecture."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from skulens.errors import SkulensError
from skulens.models.pretrained import packaged_weights_path
from skulens.models.registry import ModelSpec, create_model


def test_efficientnet_lite0_gets_the_packaged_imagenet_weights():
    model = create_model(ModelSpec("efficientnet_lite0", num_classes=5, img_size=224))
    source = torch.load(packaged_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, source["_bn1.running_var"])  # last BN, matched by position
    assert model.classifier.out_features == 5
    random_init = create_model(ModelSpec("efficientnet_lite0", num_classes=5, img_size=224), pretrained=False)
    assert not torch.equal(random_init.conv_stem.weight, source["_conv_stem.weight"])


@pytest.mark.parametrize("size,chans", [(28, 1), (150, 3), (64, 3)])
def test_seedcnn_any_size_gray_or_colour(size, chans):
    model = create_model(ModelSpec("seedcnn", num_classes=10, img_size=size, in_chans=chans)).eval()
    assert model(torch.zeros(2, chans, size, size)).shape == (2, 10)
    assert model.forward_head(model.forward_features(torch.zeros(1, chans, size, size)), pre_logits=True).shape == (
        1,
        512,
    )


def test_seedcnn_has_the_design_notes_layers():
    model = create_model(ModelSpec("seedcnn", num_classes=4, img_size=150))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert model.fc1.out_features == 512 and model.drop.p == 0.5
    assert model.fc1.in_features == 128 * 17 * 17  # 150 -> 148 -> 74 -> 72 -> 36 -> 34 -> 17


def test_seedcnn_too_small_input():
    with pytest.raises(ValueError, match="at least 22 px"):
        create_model(ModelSpec("seedcnn", num_classes=2, img_size=16))


def test_any_timm_architecture_and_local_weights(tmp_path):
    spec = ModelSpec("resnet18", num_classes=3, img_size=64)
    a = create_model(spec)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(weights))
    b = create_model(spec, weights=weights)
    assert torch.equal(a.conv1.weight, b.conv1.weight)


def test_pickled_weights_and_unknown_names_are_refused(tmp_path):
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"not loaded")
    with pytest.raises(SkulensError, match="safetensors"):
        create_model(ModelSpec("resnet18", num_classes=3, img_size=64), weights=pth)
    with pytest.raises(SkulensError, match="unknown model"):
        create_model(ModelSpec("no_such_net", num_classes=3, img_size=64))


def test_arcface_head_trains_under_mixed_precision_autocast():
    # GPU training runs under bf16 autocast; the margin (a few hundredths of a cosine) and the
    # scatter onto the target class need float32 there. CPU autocast has the same casting rules.
    import torch

    from skulens.models.embedding import ArcMarginHead

    torch.manual_seed(0)
    head = ArcMarginHead(16, 8, 5).train()
    pooled, labels = torch.randn(6, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.manual_seed(1)  # the same dropout mask for both calls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(pooled, labels)
    assert logits.dtype == torch.float32 and logits.shape == (6, 5)
    torch.manual_seed(1)
    plain = head(pooled, labels)
    assert torch.allclose(logits, plain, atol=1e-5)  # the same numbers as without autocast
    logits.logsumexp(-1).sum().backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
