"""Grad-FAM against Captum's LayerGradCam, the closed form, and the pitfalls CAM users know."""

from __future__ import annotations

import pytest
import timm
import torch
from captum.attr import (
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
)
from torch import nn

from captum_salve.attr import FeatureCodes, GradFAM, TokenGradCam, channels_last_to_first
from captum_salve.sites import eval_mode
from tests.helpers import FromGrid, ToGrid, hook_count, random_sae

ATOL = 1e-5
RTOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["timm_resnet", "torchvision_resnet"])
def test_equals_captum_layer_grad_cam_on_the_codes(family, request):
    model = request.getfixturevalue(family)
    sae = random_sae(512)
    images = torch.rand(4, 3, 64, 64)
    targets = [0, 3, 3, 9]
    ours = GradFAM(model, model.layer3[-1], sae).attribute(images, target=targets)
    captum = LayerGradCam(FeatureCodes(model, sae), model.layer3[-1]).attribute(images, target=targets)
    assert ours.shape == (4, 1, 4, 4)
    torch.testing.assert_close(ours, captum, atol=ATOL, rtol=1e-4)
    ours_relu = GradFAM(model, model.layer3[-1], sae).attribute(images, target=2, relu_attributions=True)
    captum_relu = LayerGradCam(FeatureCodes(model, sae), model.layer3[-1]).attribute(
        images, target=2, relu_attributions=True
    )
    torch.testing.assert_close(ours_relu, captum_relu, atol=ATOL, rtol=1e-4)


def test_vit_equals_captum_after_the_same_reshape(timm_vit):
    sae = random_sae(32)
    images = torch.rand(3, 3, 32, 32)
    ours = GradFAM(timm_vit, timm_vit.blocks[-1].norm1, sae).attribute(images, target=[1, 4, 7])
    to_grid = ToGrid(4)
    timm_vit.blocks[-1].norm1 = nn.Sequential(timm_vit.blocks[-1].norm1, to_grid, FromGrid(to_grid))
    captum = LayerGradCam(FeatureCodes(timm_vit, sae), to_grid).attribute(images, target=[1, 4, 7])
    assert ours.shape == (3, 1, 4, 4)
    torch.testing.assert_close(ours, captum, atol=ATOL, rtol=1e-4)


def test_torchvision_vit_maps_have_the_patch_grid(torchvision_vit):
    maps = GradFAM(torchvision_vit, None, random_sae(32)).attribute(torch.rand(2, 3, 32, 32), target=1)
    assert maps.shape == (2, 1, 4, 4) and maps.abs().sum() > 0


def test_linear_sae_at_resnet_layer4_is_a_cam_weighted_by_the_encoder_row(timm_resnet):
    """layer4 → global average pool → linear code: ∂z_l/∂A is e_l / (h w) at every cell."""
    sae = random_sae(512)
    images = torch.rand(3, 3, 64, 64)
    maps = GradFAM(timm_resnet, timm_resnet.layer4[-1], sae).attribute(images, target=5)
    with torch.no_grad():
        features = timm_resnet.layer4(
            timm_resnet.layer3(
                timm_resnet.layer2(
                    timm_resnet.layer1(
                        timm_resnet.maxpool(timm_resnet.act1(timm_resnet.bn1(timm_resnet.conv1(images))))
                    )
                )
            )
        )
        expected = torch.einsum("c,nchw->nhw", sae.encoder.weight[5], features)[:, None] / (2 * 2)
    torch.testing.assert_close(maps, expected, atol=ATOL, rtol=1e-4)


def test_every_image_of_a_batch_gets_its_own_map(timm_resnet):
    sae = random_sae(512)
    images = torch.rand(4, 3, 64, 64)
    fam = GradFAM(timm_resnet, "layer3.1", sae)
    batch = fam.attribute(images, target=2)
    singles = torch.cat([fam.attribute(images[i : i + 1], target=2) for i in range(4)])
    torch.testing.assert_close(batch, singles, atol=ATOL, rtol=1e-4)
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize("family, layer", [("timm_resnet", "layer3.1"), ("timm_vit", None)])
def test_attribute_features_equals_one_call_per_feature(family, layer, request):
    model = request.getfixturevalue(family)
    sae = random_sae(model.get_classifier().in_features)
    images = torch.rand(3, 3, 64 if family == "timm_resnet" else 32, 64 if family == "timm_resnet" else 32)
    fam = GradFAM(model, layer, sae)
    features = [0, 7, 3, 7]
    together = fam.attribute_features(images, features)
    looped = torch.cat([fam.attribute(images, target=f) for f in features], dim=1)
    assert together.shape == (3, 4, *looped.shape[-2:])
    torch.testing.assert_close(together, looped, atol=ATOL, rtol=1e-4)


def test_composes_with_noise_tunnel(timm_resnet):
    sae = random_sae(512)
    images = torch.rand(2, 3, 64, 64)
    fam = GradFAM(timm_resnet, "layer3.1", sae)
    plain = fam.attribute(images, target=3)
    smoothed = NoiseTunnel(fam).attribute(images, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=3)
    torch.testing.assert_close(smoothed, plain, atol=ATOL, rtol=1e-4)  # zero noise: the same map
    noisy = NoiseTunnel(fam).attribute(images, nt_type="smoothgrad", nt_samples=3, stdevs=0.2, target=3)
    assert noisy.shape == plain.shape and not torch.allclose(noisy, plain)
    up = LayerAttribution.interpolate(plain, (64, 64), "bilinear")
    assert up.shape == (2, 1, 64, 64)


def test_the_last_vit_block_output_is_refused_with_the_reason(timm_vit):
    fam = GradFAM(timm_vit, timm_vit.blocks[-1], random_sae(32))
    with pytest.raises(ValueError, match=r"zero gradient on the patch tokens.*blocks\[-1\]\.norm1"):
        fam.attribute(torch.rand(2, 3, 32, 32), target=1)
    assert hook_count(timm_vit) == 0


def test_a_layer_after_the_site_is_refused(timm_resnet):
    fam = GradFAM(timm_resnet, timm_resnet.fc, random_sae(512))
    for call in (lambda x: fam.attribute(x, target=1), lambda x: fam.attribute_features(x, [1, 2])):
        with pytest.raises(ValueError, match="does not depend on layer 'fc'.*pick a layer before it"):
            call(torch.rand(2, 3, 64, 64))
    assert hook_count(timm_resnet) == 0


def test_inactive_relu_codes_give_zero_maps_not_errors(timm_resnet):
    sae = random_sae(512, "relu")
    with torch.no_grad():
        sae.encoder.bias[4] = -1e6  # feature 4 never fires
    maps = GradFAM(timm_resnet, "layer3.1", sae).attribute(torch.rand(2, 3, 64, 64), target=4)
    assert torch.equal(maps, torch.zeros_like(maps))


def test_bad_targets_and_no_hooks_left(timm_resnet):
    fam = GradFAM(timm_resnet, None, random_sae(512))
    for target, message in [
        (None, "target must name the SAE feature"),
        (10, r"in \[0, 9\]"),
        ([1, -1], r"in \[0, 9\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            fam.attribute(torch.rand(2, 3, 64, 64), target=target)
    with pytest.raises(TypeError, match="sae must be a SparseAutoencoder"):
        GradFAM(timm_resnet, None, "not an sae")
    with pytest.raises(ValueError, match="no module named 'layer9'"):
        GradFAM(timm_resnet, "layer9", random_sae(512))
    fam.attribute(torch.rand(2, 3, 64, 64), target=[1, 2])
    fam.attribute_features(torch.rand(2, 3, 64, 64), [1, 2])
    assert hook_count(timm_resnet) == 0
    assert fam.multiplies_by_inputs is False and fam.has_convergence_delta() is False


@pytest.mark.parametrize("family", ["timm_resnet", "torchvision_resnet"])
@pytest.mark.parametrize("target", [2, [0, 9]], ids=["int", "per-example"])
def test_layer_grad_cam_of_the_codes_is_grad_fam(family, target, request):
    model = request.getfixturevalue(family)
    sae = random_sae(512)
    images = torch.rand(2, 3, 64, 64)
    captum = LayerGradCam(FeatureCodes(model, sae), model.layer3[-1]).attribute(images, target=target)
    ours = GradFAM(model, model.layer3[-1], sae).attribute(images, target=target)
    assert ours.shape == (2, 1, 4, 4) and ours.abs().sum() > 0
    torch.testing.assert_close(captum, ours, atol=ATOL, rtol=RTOL)
    assert hook_count(model) == 0


def test_attribute_features_falls_back_to_a_loop_under_a_grad_cam_hook(timm_resnet):
    layer = timm_resnet.layer3[-1]
    stored: list[torch.Tensor] = []

    def grad_cam_hook(module, args, output):  # what pytorch-grad-cam's ActivationsAndGradients does
        output.register_hook(lambda grad: stored.append(grad.cpu().detach()))

    handle = layer.register_forward_hook(grad_cam_hook)
    images = torch.rand(2, 3, 32, 32)  # layer3's map is 2 x 2

    # Precondition: in this torch version, the hook breaks batched gradients.
    x = images.clone().requires_grad_()
    out = timm_resnet(x)
    with pytest.raises(RuntimeError, match="Batching rule not implemented"):
        torch.autograd.grad(out, x, grad_outputs=torch.eye(4)[:, None].expand(4, 2, 4), is_grads_batched=True)
    stored.clear()

    fam = GradFAM(timm_resnet, layer, random_sae(512))
    features = [1, 7, 7]
    together = fam.attribute_features(images, features)
    assert len(stored) == len(features)  # the hook saw one backward pass per feature: the loop ran
    looped = torch.cat([fam.attribute(images, target=f) for f in features], dim=1)
    assert together.shape == (2, 3, 2, 2) and looped.abs().sum() > 0
    torch.testing.assert_close(together, looped, atol=ATOL, rtol=RTOL)
    assert list(layer._forward_hooks) == [handle.id] and hook_count(timm_resnet) == 1
    handle.remove()


def test_a_model_in_training_mode_keeps_its_batchnorm_statistics_and_its_modes(timm_resnet):
    model = timm_resnet.train()
    model.layer1.eval()  # a mix of modes must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    sae = random_sae(512, d_latent=8)
    images = torch.randn(3, 3, 64, 64)
    fam = GradFAM(model, "layer4.1", sae)
    maps = fam.attribute(images, target=2)
    stacked = fam.attribute_features(images, [2, 5])
    class_maps = TokenGradCam(model, model.layer4[1]).attribute(images, target=1)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    with eval_mode(model):  # the maps are the eval-mode model's
        torch.testing.assert_close(maps, GradFAM(model, "layer4.1", sae).attribute(images, target=2))
        torch.testing.assert_close(stacked[:, :1], maps)
        torch.testing.assert_close(class_maps, LayerGradCam(model, model.layer4[1]).attribute(images, target=1))


def _small_swin(name: str) -> nn.Module:
    return timm.create_model(
        name, img_size=32, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=3
    ).eval()


def test_a_channels_last_layer_is_never_read_as_channels_first():
    """Captum alone averages a Swin stage's (N, h, w, C) output over (w, C) and returns an (N, 1, w, C) "map"."""
    swin = _small_swin("swin_tiny_patch4_window7_224")
    with pytest.raises(ValueError, match=r"'layers.1' gives channels-last .*reshape_transform=channels_last_to_first"):
        TokenGradCam(swin, swin.layers[-1])
    maps = TokenGradCam(swin, swin.layers[-1], channels_last_to_first).attribute(torch.rand(2, 3, 32, 32), target=0)
    assert maps.shape == (2, 1, 4, 4)
    assert GradFAM(swin, None, random_sae(32)).attribute(torch.rand(2, 3, 32, 32), target=0).shape == (2, 1, 4, 4)


def test_a_model_of_no_family_that_declares_channels_last_features_needs_a_reshape():
    swin_v2 = _small_swin("swinv2_tiny_window8_256")
    sae = random_sae(32)
    with pytest.raises(ValueError, match=r"SwinTransformerV2 declares channels-last features.*pass reshape_transform"):
        GradFAM(swin_v2, "layers.1", sae)
    with pytest.raises(ValueError, match="no default Grad-FAM layer is known for SwinTransformerV2"):
        GradFAM(swin_v2, None, sae)
    images = torch.rand(2, 3, 32, 32)
    given = GradFAM(swin_v2, "layers.1", sae, reshape_transform=channels_last_to_first).attribute(images, target=1)
    assert given.shape == (2, 1, 4, 4)
