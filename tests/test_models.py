"""What differs between model families: heads, default Grad-CAM layers, token layouts, model creation."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from captum_salve import Site, collect_activations
from captum_salve.models import (
    create_model,
    default_cam_layer,
    find_head,
    fixed_image_size,
    keep_classes,
    model_device,
    model_input,
    token_layout,
)
from tests.helpers import small_timm_vit, small_torchvision_vit


@pytest.mark.parametrize(
    "fixture, head_name",
    [("timm_resnet", "fc"), ("timm_vit", "head"), ("torchvision_resnet", "fc"), ("torchvision_vit", "heads.head")],
)
def test_head_is_found_for_every_family(fixture, head_name, request):
    model = request.getfixturevalue(fixture)
    name, head = find_head(model)
    assert name == head_name and isinstance(head, nn.Linear)


def test_head_of_the_papers_full_size_models():
    assert find_head(timm.create_model("vit_base_patch16_224"))[1].in_features == 768
    assert find_head(torchvision.models.vit_b_16())[1].in_features == 768
    assert find_head(torchvision.models.resnet18())[1].in_features == 512


def test_model_without_linear_head_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="no linear classifier head found on Sequential"):
        collect_activations(model, torch.rand(1, 3, 8, 8), progress=False)
    headless = timm.create_model("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="its classifier is Identity"):
        find_head(headless)


def test_missing_module_name_lists_close_names(timm_resnet):
    with pytest.raises(ValueError, match=r"no module named 'layer5'.*closest names: layer"):
        collect_activations(timm_resnet, torch.rand(1, 3, 32, 32), Site("layer5"), progress=False)


def test_default_cam_layers_and_token_layouts(timm_resnet, timm_vit, torchvision_resnet, torchvision_vit):
    assert default_cam_layer(timm_resnet) is timm_resnet.layer4[-1]
    assert default_cam_layer(torchvision_resnet) is torchvision_resnet.layer4[-1]
    assert default_cam_layer(timm_vit) is timm_vit.blocks[-1].norm1
    assert default_cam_layer(torchvision_vit) is torchvision_vit.encoder.layers[-1].ln_1
    assert token_layout(timm_vit).grid == (4, 4) and token_layout(timm_vit).prefix_tokens == 1
    assert token_layout(torchvision_vit).grid == (4, 4)
    assert token_layout(timm_resnet) is None


def test_create_model_errors(tmp_path):
    with pytest.raises(ValueError, match="timm does not know the model 'resnet_nope'"):
        create_model("resnet_nope")
    with pytest.raises(ValueError, match="torchvision has no model 'resnet19'"):
        create_model("torchvision/resnet19")
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not fit ResNet"):
        create_model("resnet18", checkpoint_path=wrong, num_classes=5)
    model = create_model("resnet18", checkpoint_path=wrong, num_classes=3)
    assert model.fc.out_features == 3
    assert isinstance(create_model("torchvision/vit_b_16", num_classes=7).heads.head, nn.Linear)


def test_model_input_casts_to_the_models_dtype_and_device_and_names_what_does_not_fit(timm_resnet):
    half = model_input(timm_resnet.half(), torch.rand(2, 3, 32, 32, dtype=torch.float64))
    assert half.dtype == torch.float16 and half.shape == (2, 3, 32, 32) and half.device == model_device(timm_resnet)
    head = nn.Sequential(nn.Linear(4, 2))  # no convolution: any input shape goes to its forward
    assert model_input(head, torch.ones(3, 4, dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(TypeError, match="inputs must be a tensor of images"):
        model_input(timm_resnet, [[1.0]], "inputs")


@pytest.mark.parametrize(
    ("model", "size"),
    [
        (small_torchvision_vit(), (32, 32)),
        (small_timm_vit(), (32, 32)),
        (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, dynamic_img_size=True), None),
        (timm.create_model("resnet18"), None),
    ],
    ids=["torchvision ViT", "timm ViT", "timm ViT of dynamic size", "ResNet"],
)
def test_only_a_fixed_size_vit_refuses_other_image_sizes(model, size):
    assert fixed_image_size(model) == size
    images = torch.rand(1, 3, 48, 48)
    if size is None:
        model(model_input(model, images))  # runs at 48 × 48
    else:
        with pytest.raises(ValueError, match=r"images are 48×48 but the model takes 32×32 images"):
            model_input(model, images)


@pytest.mark.parametrize("name", ["resnet18", "torchvision/resnet18"])
def test_a_checkpoint_gives_its_head_size_when_num_classes_is_not_given(name, tmp_path):
    trained = create_model(name, num_classes=3)
    torch.save(trained.state_dict(), tmp_path / "model.pth")
    loaded = create_model(name, checkpoint_path=tmp_path / "model.pth")
    assert find_head(loaded)[1].out_features == 3
    pairs = zip(loaded.state_dict().values(), trained.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(ValueError, match=r"'fc.weight': \(3, 512\), the model has \(5, 512\)"):
        create_model(name, checkpoint_path=tmp_path / "model.pth", num_classes=5)  # a size asked for is kept


@pytest.mark.parametrize("name", ["resnetv2_18", "convnext_atto"])
def test_a_checkpoint_gives_its_head_size_for_any_recognised_head(name, tmp_path):
    """ResNetV2's head is a 1×1 convolution, ConvNeXt's sits in head.fc: the size still comes from the file."""
    trained = create_model(name, num_classes=3)
    torch.save(trained.state_dict(), tmp_path / "model.pth")
    loaded = create_model(name, checkpoint_path=tmp_path / "model.pth")
    assert find_head(loaded)[1].out_features == 3
    assert torch.equal(find_head(loaded)[1].weight, find_head(trained)[1].weight)


def _small_resnetv2(num_classes: int = 4) -> nn.Module:
    return timm.create_model("resnetv2_18", layers=(1, 1, 1, 1), num_classes=num_classes).eval()


def test_a_1x1_convolution_head_is_found_as_a_linear_view_that_writes_the_model():
    model = _small_resnetv2()
    name, head = find_head(model)
    conv = model.head.fc
    assert name == "head.fc" and isinstance(conv, nn.Conv2d) and isinstance(head, nn.Linear)
    pooled = torch.rand(3, head.in_features)
    torch.testing.assert_close(head(pooled), conv(pooled[:, :, None, None]).flatten(1))
    with torch.no_grad():
        head.weight[1, 2] = 7.0
        head.bias[0] = -3.0
    assert conv.weight[1, 2, 0, 0] == 7.0 and conv.bias[0] == -3.0
    acts = collect_activations(model, torch.rand(2, 3, 32, 32), progress=False)
    assert acts.features.shape == (2, head.in_features)  # the pooled features the convolution reads


def test_keep_classes_keeps_a_convolution_head_a_convolution():
    model = _small_resnetv2()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        after = keep_classes(model, [3, 0])(images)
    assert isinstance(model.head.fc, nn.Conv2d) and model.head.fc.out_channels == 2
    torch.testing.assert_close(after, before[:, [3, 0]])


class _ConvOnMaps(nn.Module):
    """A 1×1 convolution applied to unpooled feature maps, then averaged: not a head on one vector per image."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1)

    def get_classifier(self) -> nn.Conv2d:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x)).mean(dim=(2, 3))


def test_a_1x1_convolution_on_unpooled_maps_is_refused():
    with pytest.raises(ValueError, match=r"'fc' is a 1×1 convolution and reads \(2, 8, 6, 6\), not pooled"):
        collect_activations(_ConvOnMaps(), torch.rand(2, 3, 8, 8), progress=False)
