"""Every model family the README promises, through the public API, against routes that do not use the package.

On each small random-init model three equalities must hold: the "project" edit
equals steering the head input with a forward pre-hook; ``alpha_crit``'s exact
walk equals bisection; ``sae_metrics``' accuracies and ``alpha_sweep``'s counts
equal what the (edited) model really outputs. Grad-FAM at the family's default
layer equals Captum's ``LayerGradCam`` on the same layer, exposed channels first.
Models the package cannot describe by one linear head are refused, with the reason.

Each ``*_difference`` function returns the largest difference it saw, so the same
measurements print the architecture table of the README (``python -m tests.test_architectures``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
from captum.attr import LayerGradCam
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from captum_salve import (
    FeatureCodes,
    GradFAM,
    SparseAutoencoder,
    alpha_crit,
    alpha_sweep,
    collect_activations,
    edit_model,
    sae_metrics,
)
from captum_salve.models import default_cam_layer, find_head, module_name, token_layout
from captum_salve.sae import VARIANTS, code_activation
from tests.helpers import random_sae, small_torchvision_vit

CLASSES = 5
SIDE = 32
FEATURE = 3
ALPHAS = (0.5, 1.0, 2.0, 10.0)
SMALL_RESNET = {"layers": (1, 1, 1, 1)}
SMALL_VIT = {"img_size": SIDE, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, num_classes=CLASSES, **kwargs)


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "timm resnet18": _timm("resnet18", **SMALL_RESNET),
    "timm resnet18d": _timm("resnet18d", **SMALL_RESNET),
    "timm resnet10t": _timm("resnet10t"),
    "timm seresnet18": _timm("seresnet18", **SMALL_RESNET),
    "timm resnext50_32x4d": _timm("resnext50_32x4d", **SMALL_RESNET),
    "timm wide_resnet50_2": _timm("wide_resnet50_2", **SMALL_RESNET),
    "timm resnetv2_18 (1×1 conv head)": _timm("resnetv2_18", layers=(1, 1, 1, 1)),
    "timm vit (class token)": _timm("vit_tiny_patch16_224", **SMALL_VIT),
    "timm vit (avg pool + fc_norm)": _timm(
        "vit_tiny_patch16_224", class_token=False, global_pool="avg", fc_norm=True, **SMALL_VIT
    ),
    "timm vit (4 register tokens)": _timm("vit_tiny_patch16_224", reg_tokens=4, **SMALL_VIT),
    "timm deit": _timm("deit_tiny_patch16_224", **SMALL_VIT),
    "timm vit relpos": _timm("vit_relpos_small_patch16_224", **SMALL_VIT),
    "timm beit": _timm("beit_base_patch16_224", **SMALL_VIT),
    "timm eva02": _timm("eva02_tiny_patch14_224", **SMALL_VIT),
    "timm convnext": _timm("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
    "timm efficientnet_lite0": _timm("efficientnet_lite0"),
    "timm swin (channels last)": _timm(
        "swin_tiny_patch4_window7_224", img_size=SIDE, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2)
    ),
    "torchvision resnet18": lambda: torchvision.models.resnet18(num_classes=CLASSES),
    "torchvision vit": lambda: small_torchvision_vit(CLASSES),
}

REFUSED: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "timm deit distilled": (
        _timm("deit_tiny_distilled_patch16_224", **SMALL_VIT),
        r"2 classifier heads \(head, head_dist\).*head reads token 0, head_dist token 1.*average at inference",
    ),
}

# The default Grad-FAM layer of each family, as the README states it.
DEFAULT_LAYERS = {
    "timm resnet18": "layer4.0",
    "timm resnetv2_18 (1×1 conv head)": "norm",
    "timm vit (class token)": "blocks.1.norm1",
    "timm vit relpos": "blocks.1.norm1",
    "timm beit": "blocks.1.norm1",
    "timm eva02": "blocks.1.norm1",
    "timm convnext": "stages.3",
    "timm efficientnet_lite0": "bn2",
    "timm swin (channels last)": "layers.1",
    "torchvision resnet18": "layer4.1",
    "torchvision vit": "encoder.layers.encoder_layer_1.ln_1",
}

pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str) -> nn.Module:
    """The named small random model in eval mode, its head redrawn: logits that spread, biases below zero."""
    torch.manual_seed(0)
    model = ARCHITECTURES[name]().eval()
    _, head = find_head(model)
    with torch.no_grad():
        head.weight.normal_(0, 3 / head.in_features**0.5)
        head.bias.normal_(0, 0.1).abs_().neg_()
    return model


def images(n: int = 24) -> Tensor:
    return torch.rand(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def sae_for(model: nn.Module, x: Tensor) -> SparseAutoencoder:
    """A random linear SAE whose feature ``FEATURE`` flips the most predicted class's images near α = 1.

    The feature reads and writes ``d``, the unit direction from the next class's head row to
    the most predicted class's, so the "project" edit removes ``α (d·a) d``.
    """
    _, head = find_head(model)
    sae = random_sae(head.in_features, d_latent=8, seed=2)
    with torch.no_grad():
        a = collect_activations(model, x, progress=False).features
        top = int(head(a).argmax(1).mode().values)
        d = head.weight[top] - head.weight[(top + 1) % CLASSES]
        d = d / d.norm()
        sae.decoder.weight[:, FEATURE] = d
        sae.encoder.weight[FEATURE] = d
        sae.encoder.bias[FEATURE] = d @ sae.decoder.bias  # z = d·a: the input centring cancels
    return sae


def variant_sae_for(model: nn.Module, x: Tensor, activation: str) -> SparseAutoencoder:
    """:func:`sae_for`'s SAE as another variant, with feature ``FEATURE``'s code open on every image of ``x``.

    The other features never open (their pre-activations are −1000), and ``FEATURE``'s is
    shifted to at least 1 (TopK variants keep 1 code), so the variant's code of ``FEATURE``
    is its pre-activation and steering with it must equal the "project" edit exactly.
    """
    linear = sae_for(model, x)
    settings = VARIANTS[activation].default_settings(linear.d_latent)
    variant = code_activation(activation, **(settings | {"k": 1} if "k" in settings else settings))
    sae = SparseAutoencoder(linear.d_in, linear.d_latent, variant)
    sae.load_state_dict(linear.state_dict(), strict=False)  # the variant's own state is kept
    others = [latent for latent in range(sae.d_latent) if latent != FEATURE]
    with torch.no_grad():
        a = collect_activations(model, x, progress=False).features
        sae.encoder.weight[others] = 0.0
        sae.encoder.bias[others] = -1000.0
        if activation != "linear":
            sae.encoder.bias[FEATURE] += 1.0 - sae.pre_activation(a)[:, FEATURE].min().clamp_max(0)
        assert torch.equal(sae.encode(a)[:, FEATURE], sae.pre_activation(a)[:, FEATURE])
    return sae


def _logits_with_head_input(model: nn.Module, x: Tensor, change: Callable[[Tensor], Tensor]) -> Tensor:
    """The unedited model's logits with its head input ``a`` replaced by ``change(a)``, through a pre-hook.

    The hook sits on the module the model calls (a 1×1 convolution head reads (N, M, 1, 1)).
    """
    name, _ = find_head(model)

    def hook(module: nn.Module, args: tuple) -> tuple:
        a = args[0]
        return (change(a.flatten(1)).reshape(a.shape), *args[1:])

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def project_edit_difference(model: nn.Module, sae: SparseAutoencoder, x: Tensor, alpha: float = 2.0) -> float:
    """(a) Largest |logit| difference between the "project" edit and steering ``a − α z_l(a) D[:, l]`` with a hook."""
    d = sae.decoder_weight[:, FEATURE].detach()
    steered = _logits_with_head_input(model, x, lambda a: a - alpha * sae.encode(a)[:, FEATURE : FEATURE + 1] * d)
    with torch.no_grad():
        edited = edit_model(model, sae, FEATURE, alpha, rule="project")(x)
        original = model(x)
    assert not torch.allclose(edited, original, atol=1e-3)  # the edit reached the model's real head
    torch.testing.assert_close(edited, steered, rtol=1e-4, atol=1e-4)
    return (edited - steered).abs().max().item()


def alpha_crit_difference(model: nn.Module, sae: SparseAutoencoder, x: Tensor) -> float:
    """(b) Largest relative difference between alpha_crit's exact walk and bisection, over two rule/criterion pairs."""
    with torch.no_grad():
        targets = model(x).argmax(1)
    largest, finite_seen = 0.0, 0
    for rule, criterion in (("salve", "zero_logit"), ("project", "flip")):
        kwargs = {"rule": rule, "criterion": criterion}
        exact = alpha_crit(model, sae, FEATURE, x, targets, method="exact", **kwargs)
        bisect = alpha_crit(model, sae, FEATURE, x, targets, method="bisect", **kwargs)
        assert torch.equal(exact.isinf(), bisect.isinf())
        finite = exact.isfinite() & (exact > 0)
        finite_seen += int(finite.sum())
        torch.testing.assert_close(bisect[finite], exact[finite], rtol=1e-9, atol=1e-12)
        if finite.any():
            largest = max(largest, ((bisect[finite] - exact[finite]).abs() / exact[finite]).max().item())
    assert finite_seen > 0  # some samples cross at a strength > 0: the comparison is not vacuous
    return largest


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return (logits.argmax(1) == labels).double().mean().item()


def metrics_and_sweep_difference(model: nn.Module, sae: SparseAutoencoder, x: Tensor) -> float:
    """(c) Largest difference between sae_metrics / alpha_sweep accuracies and the real (edited) models' on ``x``."""
    with torch.no_grad():
        logits = model(x)
    labels = logits.argmax(1)
    labels[::3] = (labels[::3] + 1) % CLASSES  # a third wrong, so accuracy is neither 0 nor 1
    acts = collect_activations(model, TensorDataset(x, labels), progress=False)
    metrics = sae_metrics(sae, acts, head=model)
    spliced = _logits_with_head_input(model, x, lambda a: sae(a)[0])
    differences = [
        abs(metrics["accuracy"] - _accuracy(logits, labels)),
        abs(metrics["spliced_accuracy"] - _accuracy(spliced, labels)),
    ]
    sweep = alpha_sweep(model, sae, FEATURE, acts, ALPHAS, rule="project")
    changed = 0
    for i, alpha in enumerate(ALPHAS):
        with torch.no_grad():
            predicted = edit_model(model, sae, FEATURE, alpha, rule="project")(x).argmax(1)
        real = torch.zeros(CLASSES, CLASSES, dtype=torch.long)
        real.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
        # counts that differ, as a share of the samples: the largest accuracy difference they can make
        differences.append((sweep.confusion[i] - real).abs().sum().item() / 2 / len(x))
        changed += int((predicted != logits.argmax(1)).sum())
    assert changed > 0  # the edits move predictions: the counts are compared where they differ from α = 0
    assert max(differences) == 0
    return max(differences)


class _Expose(nn.Module):
    """Shows a layer's output channels first, so Captum's LayerGradCam can read it (written without the package)."""

    def __init__(self, prefix: int | None, grid: tuple[int, int] | None) -> None:
        super().__init__()
        self.prefix, self.grid, self.kept = prefix, grid, None

    def forward(self, output: Tensor) -> Tensor:
        if self.prefix is None:  # channels last: (N, h, w, C)
            return output.permute(0, 3, 1, 2)
        self.kept = output[:, : self.prefix]
        return rearrange(output[:, self.prefix :], "n (h w) c -> n c h w", h=self.grid[0], w=self.grid[1])


class _Restore(nn.Module):
    def __init__(self, exposed: _Expose) -> None:
        super().__init__()
        self.exposed = [exposed]

    def forward(self, maps: Tensor) -> Tensor:
        exposed = self.exposed[0]
        if exposed.prefix is None:
            return maps.permute(0, 2, 3, 1)
        return torch.cat([exposed.kept, rearrange(maps, "n c h w -> n (h w) c")], dim=1)


def grad_fam_difference(
    model: nn.Module, sae: SparseAutoencoder, x: Tensor, channels_last: bool, targets: tuple = (0, 1, 5, 7)
) -> float:
    """Largest difference between Grad-FAM at the default layer and Captum's LayerGradCam there, for ``targets``."""
    targets = list(targets)
    ours = GradFAM(model, None, sae).attribute(x, target=targets)
    exposed_model = copy.deepcopy(model)
    layer = default_cam_layer(exposed_model)
    layout = token_layout(exposed_model)
    if layout is None and not channels_last:
        exposed = layer
    else:
        exposed = _Expose(None, None) if channels_last else _Expose(layout.prefix_tokens, layout.grid)
        parent, _, attr = module_name(exposed_model, layer).rpartition(".")
        setattr(exposed_model.get_submodule(parent), attr, nn.Sequential(layer, exposed, _Restore(exposed)))
    captum = LayerGradCam(FeatureCodes(exposed_model, sae), exposed).attribute(x, target=targets)
    assert ours.shape == captum.shape and ours.shape[:2] == (len(x), 1) and ours.abs().sum() > 0
    torch.testing.assert_close(ours, captum, rtol=1e-4, atol=1e-5)
    return (ours - captum).abs().max().item()


def _channels_last(name: str) -> bool:
    return "channels last" in name


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_project_edit_equals_steering_the_head_input(name):
    model = build(name)
    project_edit_difference(model, sae_for(model, images()), images())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_exact_alpha_crit_equals_bisection(name):
    model = build(name)
    alpha_crit_difference(model, sae_for(model, images()), images())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_metrics_and_sweeps_agree_with_the_edited_models_outputs(name):
    model = build(name)
    metrics_and_sweep_difference(model, sae_for(model, images()), images())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_grad_fam_at_the_default_layer_equals_captum(name):
    model = build(name)
    grad_fam_difference(model, sae_for(model, images()), images(4), _channels_last(name))


@pytest.mark.parametrize("activation", VARIANTS)
def test_every_sae_variant_keeps_the_equalities_where_its_code_is_open(activation):
    model = build("timm resnet18")
    sae = variant_sae_for(model, images(), activation)
    project_edit_difference(model, sae, images())
    alpha_crit_difference(model, sae, images())
    metrics_and_sweep_difference(model, sae, images())
    grad_fam_difference(model, sae, images(4), channels_last=False, targets=(FEATURE,) * 4)


@pytest.mark.parametrize("name", DEFAULT_LAYERS)
def test_default_grad_fam_layers_are_the_stated_ones(name):
    model = build(name)
    assert module_name(model, default_cam_layer(model)) == DEFAULT_LAYERS[name]


@pytest.mark.parametrize("name", REFUSED)
def test_models_with_several_heads_are_refused_with_the_reason(name):
    make, reason = REFUSED[name]
    model = make().eval()
    with pytest.raises(ValueError, match=reason):
        find_head(model)
    with pytest.raises(ValueError, match=reason):
        collect_activations(model, images(2), progress=False)


def table() -> str:
    """The architecture matrix as a Markdown table: model, status, largest difference of each equality."""
    rows = [
        "| model | status | (a) project edit vs hook, max |Δlogit| | (b) α_crit exact vs bisect, max rel. Δ "
        "| (c) metrics & sweep vs real outputs, max |Δaccuracy| | Grad-FAM vs Captum, max |Δ| |",
        "|---|---|---|---|---|---|",
    ]
    for name in ARCHITECTURES:
        model = build(name)
        x = images()
        sae = sae_for(model, x)
        cells = [
            project_edit_difference(model, sae, x),
            alpha_crit_difference(model, sae, x),
            metrics_and_sweep_difference(model, sae, x),
            grad_fam_difference(model, sae, x[:4], _channels_last(name)),
        ]
        rows.append(f"| {name} | works | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    for name, (make, _) in REFUSED.items():
        try:
            find_head(make().eval())
        except ValueError as error:
            rows.append(f"| {name} | refused: {str(error).split(', so ')[0]} | | | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(table())
