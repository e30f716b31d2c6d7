"""FeatureCodes as a Captum forward: the codes it returns, and what Captum's methods make of them.

Every claim is checked against a route that does not go through the package:
hand-made hooks and encoders, brute-force occlusion, ``torch.autograd.grad``
and the completeness axiom of the path methods.
"""

from __future__ import annotations

import pytest
import timm
import torch
from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    LayerConductance,
    LayerIntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

from captum_salve import SparseAutoencoder
from captum_salve.attr import FeatureCodes
from captum_salve.sites import Site
from tests.helpers import hook_count, random_sae

ATOL = 1e-5  # float32 forward passes of the same images, possibly batched differently
RTOL = 1e-4
COMPLETENESS = 1e-3  # |sum(attr) - (z(x) - z(0))| / |z(x) - z(0)| for the path methods

pytestmark = pytest.mark.usefixtures("one_thread")


def _by_hand(sae: SparseAutoencoder, a: torch.Tensor) -> torch.Tensor:
    """ReLU SAE codes written out: relu(E (a - b_d) + b_e)."""
    return torch.relu((a - sae.decoder.bias) @ sae.encoder.weight.T + sae.encoder.bias)


def _head_input(model: nn.Module, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen[0]


def _smooth_resnet() -> nn.Module:
    """A ResNet-18 on which IG's quadrature matters: SiLU, and BN statistics that break homogeneity.

    timm's initialisation (no conv biases, BN running mean 0, beta 0, ReLU) makes
    the network positively homogeneous, so z(a x) is linear in a and any step
    count integrates it exactly; this one is smooth but curved along the path.
    """
    model = timm.create_model("resnet18", num_classes=4, act_layer="silu").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0, 0.3)
    return model


# 1. The codes themselves


@pytest.mark.parametrize("family, head", [("timm_resnet", "fc"), ("timm_vit", "head")])
def test_codes_are_the_sae_encoding_of_the_head_input(family, head, request):
    model = request.getfixturevalue(family)
    head_module = getattr(model, head)
    sae = random_sae(head_module.in_features, "relu")
    images = torch.rand(3, 3, 32, 32)
    a = _head_input(model, head_module, images)
    with torch.no_grad():
        codes = FeatureCodes(model, sae)(images)
        expected = sae.encode(a)
        torch.testing.assert_close(codes, expected, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(codes, _by_hand(sae, a), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(
            FeatureCodes(model, sae).pre_activations(images), sae.pre_activation(a), atol=ATOL, rtol=RTOL
        )
        torch.testing.assert_close(FeatureCodes(model, sae).site_activations(images), a, atol=ATOL, rtol=RTOL)
    assert codes.shape == (3, 10) and codes.gt(0).any() and codes.eq(0).any()  # a ReLU code, neither all off nor all on
    assert hook_count(model) == 0


def test_the_default_site_is_the_one_stored_in_the_sae(timm_resnet):
    sae = random_sae(256, "relu", site="layer3:spatial_mean")
    images = torch.rand(3, 3, 32, 32)
    seen = []
    handle = timm_resnet.layer3.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
    with torch.no_grad():
        timm_resnet(images)
    handle.remove()
    a = seen[0].mean(dim=(2, 3))
    with torch.no_grad():
        default = FeatureCodes(timm_resnet, sae)(images)
        explicit = FeatureCodes(timm_resnet, sae, Site("layer3", reducer="spatial_mean"))(images)
    torch.testing.assert_close(default, _by_hand(sae, a), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(explicit, default, atol=0, rtol=0)
    assert FeatureCodes(timm_resnet, sae).site.key == "layer3:spatial_mean"
    assert hook_count(timm_resnet) == 0


def test_no_hook_is_left_behind_when_the_forward_raises(timm_resnet):
    codes = FeatureCodes(timm_resnet, random_sae(512))
    failing = timm_resnet.layer4.register_forward_pre_hook(lambda module, args: 1 / 0)  # after the site's hook went on
    try:
        with pytest.raises(ZeroDivisionError):
            codes(torch.rand(2, 3, 32, 32))
    finally:
        failing.remove()
    assert hook_count(timm_resnet) == 0
    assert codes(torch.rand(2, 3, 32, 32)).shape == (2, 10)  # and the module still works afterwards
    assert hook_count(timm_resnet) == 0


# 2. Integrated gradients: completeness


def _moving_target(forward, images: torch.Tensor, per_example: bool) -> int | list[int]:
    """A target whose code moves between the zero image and each image (so relative errors mean something).

    A random SAE row can be nearly orthogonal to z(x) - z(0); the int target is the feature
    that moves most on every image, the per-example target the one that moves most on each image.
    """
    with torch.no_grad():
        moves = (forward(images) - forward(torch.zeros_like(images))).abs()
    if per_example:
        return moves.argmax(dim=1).tolist()
    return int(moves.amin(dim=0).argmax())


def _completeness_error(
    forward, images: torch.Tensor, per_example: bool, n_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(|sum(attr) - diff| / |diff|, |delta| / |diff|) per example, for IG from a zero baseline."""
    baselines = torch.zeros_like(images)
    target = _moving_target(forward, images, per_example)
    attr, delta = IntegratedGradients(forward).attribute(
        images, baselines=baselines, target=target, n_steps=n_steps, return_convergence_delta=True
    )
    rows = torch.arange(len(images))
    with torch.no_grad():
        diff = forward(images)[rows, target] - forward(baselines)[rows, target]
    assert diff.abs().min() > 1e-3  # the code moves between baseline and image, so the ratio means something
    summed = attr.sum(dim=tuple(range(1, attr.dim())))
    torch.testing.assert_close(summed - diff, delta.to(diff.dtype), atol=1e-6, rtol=1e-3)  # delta is what it says
    return (summed - diff).abs() / diff.abs(), delta.abs() / diff.abs()


@pytest.mark.parametrize("per_example", [False, True], ids=["int", "per-example"])
def test_integrated_gradients_is_complete_on_timm_resnet(timm_resnet, per_example):
    """Timm's init makes the ResNet homogeneous, so this checks Euler's identity: x · ∇z(x) = z(x) - z(0)."""
    codes = FeatureCodes(timm_resnet, random_sae(512))
    attr_error, delta_error = _completeness_error(codes, torch.rand(2, 3, 32, 32), per_example, n_steps=10)
    assert attr_error.max() < COMPLETENESS and delta_error.max() < COMPLETENESS


@pytest.mark.parametrize("per_example", [False, True], ids=["int", "per-example"])
def test_integrated_gradients_is_complete_on_a_curved_resnet(per_example):
    """In float64: in float32, rounding alone leaves about 2e-4 of z(x) - z(0) unexplained on this model."""
    model = _smooth_resnet().double()
    codes = FeatureCodes(model, random_sae(512).double())
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    attr_error, delta_error = _completeness_error(codes, images, per_example, n_steps=32)
    assert attr_error.max() < COMPLETENESS and delta_error.max() < COMPLETENESS
    coarse, _ = _completeness_error(codes, images, per_example, n_steps=2)
    assert coarse.max() > attr_error.max()  # the path is curved: the step count matters here


@pytest.mark.parametrize("per_example", [False, True], ids=["int", "per-example"])
def test_integrated_gradients_is_complete_on_timm_vit(timm_vit, per_example):
    codes = FeatureCodes(timm_vit, random_sae(32))
    attr_error, delta_error = _completeness_error(codes, torch.rand(3, 3, 32, 32), per_example, n_steps=50)
    assert attr_error.max() < COMPLETENESS and delta_error.max() < COMPLETENESS


def test_noise_tunnel_without_noise_is_plain_integrated_gradients(timm_vit):
    codes = FeatureCodes(timm_vit, random_sae(32))
    images = torch.rand(2, 3, 32, 32)
    plain = IntegratedGradients(codes).attribute(images, target=4, n_steps=16)
    tunnel = NoiseTunnel(IntegratedGradients(codes)).attribute(
        images, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=4, n_steps=16
    )
    assert plain.abs().sum() > 0
    torch.testing.assert_close(tunnel, plain, atol=ATOL, rtol=RTOL)


# 3. Occlusion


@pytest.mark.parametrize("family, window", [("timm_resnet", 8), ("timm_vit", 8), ("timm_vit", 16)])
def test_occlusion_is_the_code_drop_of_blanking_each_window(family, window, request):
    model = request.getfixturevalue(family)
    codes = FeatureCodes(model, random_sae(model.get_classifier().in_features))
    images = torch.rand(2, 3, 32, 32)
    feature = 6
    attr = Occlusion(codes).attribute(
        images,
        target=feature,
        sliding_window_shapes=(3, window, window),
        strides=window,
        baselines=0,
        perturbations_per_eval=16,  # one forward per image instead of one per window: the answer is the same
    )
    cells = 32 // window
    expected = torch.empty_like(images)
    with torch.no_grad():
        for n in range(len(images)):
            blanked = images[n].repeat(cells * cells, 1, 1, 1)
            for i in range(cells):
                for j in range(cells):
                    blanked[i * cells + j, :, i * window : (i + 1) * window, j * window : (j + 1) * window] = 0
            drops = codes(images[n : n + 1])[0, feature] - codes(blanked)[:, feature]
            for i in range(cells):
                for j in range(cells):
                    expected[n, :, i * window : (i + 1) * window, j * window : (j + 1) * window] = drops[i * cells + j]
    assert expected.abs().amax() > 1e-3
    torch.testing.assert_close(attr, expected, atol=ATOL, rtol=RTOL)


# 4. Gradient methods


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("family", ["timm_resnet", "timm_vit"])
def test_saliency_and_input_x_gradient_are_the_code_gradient(family, request):
    model = request.getfixturevalue(family)
    codes = FeatureCodes(model, random_sae(model.get_classifier().in_features))
    images = torch.rand(2, 3, 32, 32)
    feature = 5
    x = images.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(codes(x)[:, feature].sum(), x)
    assert gradient.abs().sum() > 0
    torch.testing.assert_close(Saliency(codes).attribute(images, target=feature), gradient.abs(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        InputXGradient(codes).attribute(images, target=feature), gradient * images, atol=ATOL, rtol=RTOL
    )
    signed = Saliency(codes).attribute(images, target=feature, abs=False)
    torch.testing.assert_close(signed, gradient, atol=ATOL, rtol=RTOL)


# 5. Layer methods


def _layer_completeness(method, model: nn.Module, images: torch.Tensor, n_steps: int) -> None:
    codes = FeatureCodes(model, random_sae(512))
    baselines = torch.zeros_like(images)
    target = _moving_target(codes, images, per_example=False)
    attr, delta = method(codes, model.layer4).attribute(
        images, baselines=baselines, target=target, n_steps=n_steps, return_convergence_delta=True
    )
    with torch.no_grad():
        diff = codes(images)[:, target] - codes(baselines)[:, target]
    assert attr.shape == (len(images), 512, 2, 2)  # layer4's output at 64 px
    assert diff.abs().min() > 1e-3
    summed = attr.sum(dim=(1, 2, 3))
    torch.testing.assert_close(summed - diff, delta, atol=1e-6, rtol=1e-3)
    torch.testing.assert_close(summed, diff, atol=0, rtol=COMPLETENESS)
    assert hook_count(model) == 0


def test_layer_integrated_gradients_at_layer4_is_complete(timm_resnet):
    _layer_completeness(LayerIntegratedGradients, timm_resnet, torch.rand(2, 3, 64, 64), n_steps=8)


def test_layer_conductance_at_layer4_sums_to_the_code_difference(timm_resnet):
    # Captum's conductance sums layer differences between consecutive Gauss-Legendre points, which
    # leave out the ends of the path (about 0.6 % of it at 20 steps, 0.03 % at 100).
    _layer_completeness(LayerConductance, timm_resnet, torch.rand(2, 3, 64, 64), n_steps=100)


# 6. Bad input


def test_an_sae_that_is_not_an_sae_is_refused(timm_resnet):
    with pytest.raises(TypeError, match="sae must be a SparseAutoencoder"):
        FeatureCodes(timm_resnet, "not an sae")


def test_an_sae_of_another_width_is_refused_on_the_first_forward(timm_resnet):
    codes = FeatureCodes(timm_resnet, random_sae(256))  # the head input is 512 wide
    with pytest.raises(ValueError, match="512-dimensional.*reads 256.*trained on another site or model"):
        codes(torch.rand(2, 3, 32, 32))
    assert hook_count(timm_resnet) == 0


def test_an_sae_stored_with_a_custom_reducer_asks_for_the_site(timm_resnet):
    sae = random_sae(256, site="layer3:<mycallable>")
    with pytest.raises(ValueError, match=r"custom reducer.*pass site=Site\(module, reducer\) explicitly"):
        FeatureCodes(timm_resnet, sae)
    codes = FeatureCodes(timm_resnet, sae, Site("layer3", reducer=lambda out: out.amax(dim=(2, 3))))
    assert codes(torch.rand(2, 3, 32, 32)).shape == (2, 10)  # given explicitly, the site works
