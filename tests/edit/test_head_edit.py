"""HeadEdit, edit_model and edited: the rules against independent routes, restoration, persistence, bad input."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from captum_salve import (
    FeatureDirections,
    HeadEdit,
    SparseAutoencoder,
    collect_activations,
    edit_model,
    edited,
)
from captum_salve.edit import RULES, ScaleColumns, edit_rule
from captum_salve.models import find_head
from tests.helpers import float64_head_and_sae, hook_count, random_sae, small_timm_vit, small_torchvision_vit


def _logits_with_head_input(model: nn.Module, images: torch.Tensor, change) -> torch.Tensor:
    """Run the unedited model with its head input replaced by change(a), through a pre-hook."""
    _, head = find_head(model)
    handle = head.register_forward_pre_hook(lambda module, args: (change(args[0]),))
    try:
        with torch.no_grad():
            return model(images)
    finally:
        handle.remove()


@pytest.mark.parametrize("mode", ["suppress", "enhance"])
def test_salve_rule_scales_every_column_as_the_formula_says(timm_resnet, mode):
    sae = random_sae(512, d_latent=12, seed=0)
    alpha = 7.5
    edited_model = edit_model(timm_resnet, sae, 3, alpha, mode=mode, rule="salve")
    w = timm_resnet.fc.weight.detach().double()
    c = sae.decoder_weight[:, 3].detach().double().abs()
    expected = torch.empty_like(w)
    for j in range(w.shape[1]):  # column by column, as Eq. 1 is written
        factor = max(0.0, 1 - alpha * c[j].item()) if mode == "suppress" else 1 + alpha * c[j].item()
        expected[:, j] = w[:, j] * factor
    torch.testing.assert_close(edited_model.fc.weight.double(), expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(edited_model.fc.bias, timm_resnet.fc.bias)
    assert not torch.equal(edited_model.fc.weight, timm_resnet.fc.weight)


@pytest.mark.parametrize("family", ["timm_resnet", "timm_vit", "torchvision_resnet", "torchvision_vit"])
@pytest.mark.parametrize("mode", ["suppress", "enhance"])
def test_project_rule_on_a_linear_sae_equals_editing_the_head_input(family, mode, request):
    model = request.getfixturevalue(family)
    size = 32
    images = torch.rand(5, 3, size, size)
    _, head = find_head(model)
    sae = random_sae(head.in_features, d_latent=12, seed=0)
    alpha, sign = 2.5, (-1 if mode == "suppress" else 1)
    d = sae.decoder_weight[:, 4].detach()

    def change(a):
        return a + sign * alpha * sae.encode(a)[:, 4:5] * d

    expected = _logits_with_head_input(model, images, change)
    with torch.no_grad():
        actual = edit_model(model, sae, 4, alpha, mode=mode, rule="project")(images)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "activation, k",
    [("relu", None), ("jumprelu", None), ("topk", 1), ("batchtopk", 3), ("matryoshka", 3), ("archetypal", 1)],
)
def test_project_rule_equals_the_gated_edit_where_the_code_is_active(timm_resnet, activation, k):
    images = torch.rand(16, 3, 32, 32)
    sae = random_sae(512, activation, d_latent=12, k=k, seed=0)
    acts = collect_activations(timm_resnet, images, progress=False)
    top_1 = activation in ("topk", "archetypal")
    with torch.no_grad():  # put feature 5's threshold mid-way through the data (for top-1: its lead over the rest)
        pre = sae.pre_activation(acts.features)
        lead = pre[:, 5] - torch.cat([pre[:, :5], pre[:, 6:]], 1).max(1).values if top_1 else pre[:, 5]
        sae.encoder.bias[5] -= lead.median() + 1e-3
    active = sae.encode(acts.features)[:, 5] > 0
    assert 0 < active.sum() < len(active)  # both cases occur
    d = sae.decoder_weight[:, 5].detach()
    gated = _logits_with_head_input(timm_resnet, images, lambda a: a - 3.0 * sae.encode(a)[:, 5:6] * d)
    with torch.no_grad():
        folded = edit_model(timm_resnet, sae, 5, 3.0, rule="project")(images)
        original = timm_resnet(images)
    torch.testing.assert_close(folded[active], gated[active], rtol=1e-4, atol=1e-4)
    # where the code is inactive the gated edit changes nothing, the folded one edits the affine part
    assert torch.equal(gated[~active], original[~active])
    assert not torch.allclose(folded[~active], original[~active])


def test_several_features_combine_as_documented(timm_resnet):
    images = torch.rand(4, 3, 32, 32)
    sae = random_sae(512, d_latent=12, seed=0)
    features, alphas = [1, 6], [2.0, 0.5]
    d = sae.decoder_weight[:, features].detach()
    expected = _logits_with_head_input(
        timm_resnet, images, lambda a: a - (sae.encode(a)[:, features] * torch.tensor(alphas)) @ d.T
    )
    with torch.no_grad():
        actual = edit_model(timm_resnet, sae, features, alphas, rule="project")(images)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    both = edit_model(timm_resnet, sae, features, 3.0, rule="salve").fc.weight
    one_then_other = edit_model(edit_model(timm_resnet, sae, 1, 3.0, rule="salve"), sae, 6, 3.0, rule="salve").fc.weight
    torch.testing.assert_close(both, one_then_other)  # salve factors multiply


def test_alpha_zero_is_the_identity(timm_vit):
    sae = random_sae(32, d_latent=12, seed=0)
    for rule in ("salve", "project"):
        model = edit_model(timm_vit, sae, 2, 0.0, rule=rule)
        assert torch.equal(model.head.weight, timm_vit.head.weight) and torch.equal(model.head.bias, timm_vit.head.bias)


def test_edit_model_leaves_the_original_alone_unless_inplace(timm_resnet):
    before = timm_resnet.fc.weight.clone()
    copy = edit_model(timm_resnet, random_sae(512, d_latent=12, seed=0), 0, 1.0)
    assert torch.equal(timm_resnet.fc.weight, before) and copy is not timm_resnet
    same = edit_model(timm_resnet, random_sae(512, d_latent=12, seed=0), 0, 1.0, inplace=True)
    assert same is timm_resnet and not torch.equal(timm_resnet.fc.weight, before)


def test_edited_restores_bit_exactly_also_on_error(timm_resnet):
    weight, bias = timm_resnet.fc.weight.clone(), timm_resnet.fc.bias.clone()
    sae = random_sae(512, d_latent=12, seed=0)
    with edited(timm_resnet, sae, 3, 4.0, rule="project") as model:
        assert not torch.equal(model.fc.weight, weight) and not torch.equal(model.fc.bias, bias)
    assert torch.equal(timm_resnet.fc.weight, weight) and torch.equal(timm_resnet.fc.bias, bias)
    with pytest.raises(RuntimeError, match="boom"), edited(timm_resnet, sae, [3, 4], [1.0, 9.0], mode="enhance"):
        raise RuntimeError("boom")
    assert torch.equal(timm_resnet.fc.weight, weight) and torch.equal(timm_resnet.fc.bias, bias)


@pytest.mark.parametrize(
    "build", [lambda: timm.create_model("resnet18", num_classes=4), small_timm_vit, small_torchvision_vit]
)
def test_edited_state_dict_loads_into_a_fresh_model(build, tmp_path):
    model = build().eval()
    _, head = find_head(model)
    edited_model = edit_model(model, random_sae(head.in_features, d_latent=12, seed=0), 1, 3.0, rule="project")
    torch.save(edited_model.state_dict(), tmp_path / "edited.pt")
    fresh = build().eval()
    fresh.load_state_dict(torch.load(tmp_path / "edited.pt", weights_only=True))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(images), edited_model(images))
    assert hook_count(edited_model) == 0


def test_bad_input_is_refused(timm_resnet):
    sae = random_sae(512, d_latent=12, seed=0)
    for kwargs, message in [
        (dict(alpha=-1.0), r"alpha must be finite and >= 0"),
        (dict(alpha=float("inf")), r"alpha must be finite and >= 0"),
        (dict(alpha=float("nan")), r"alpha must be finite and >= 0"),
        (dict(feature=12), r"feature must be SAE feature indices in \[0, 11\]"),
        (dict(feature=[]), "at least one SAE feature"),
        (dict(mode="erase"), "mode must be one of"),
        (dict(rule="rome"), "rule must be one of"),
        (dict(feature=[1, 2], alpha=[1.0, 2.0, 3.0]), "one per feature"),
    ]:
        arguments = dict(feature=0, alpha=1.0) | kwargs
        with pytest.raises(ValueError, match=message):
            edit_model(timm_resnet, sae, **arguments)
    with pytest.raises(
        ValueError, match="directions are 32-dimensional but the head takes 512: the SAE was trained on another site"
    ):
        edit_model(timm_resnet, random_sae(32, d_latent=12, seed=0), 0, 1.0)
    with pytest.raises(TypeError, match="sae must be a SparseAutoencoder or FeatureDirections"):
        edit_model(timm_resnet, torch.zeros(3), 0, 1.0)


def test_head_edit_is_a_frozen_value_with_its_strengths_in_float64():
    _, sae, _ = float64_head_and_sae()
    edit = HeadEdit.of(sae, [0, 3], [1.0, 2.5], rule="project")
    assert edit.rule is RULES["project"] and edit.alpha.dtype == torch.float64 and edit.alpha.tolist() == [1.0, 2.5]
    with pytest.raises(AttributeError):
        edit.mode = "enhance"
    assert edit_rule(ScaleColumns()) is not None and isinstance(edit_rule("salve"), ScaleColumns)


def test_head_edit_refuses_what_would_be_silently_wrong():
    head, sae, a = float64_head_and_sae()
    with pytest.raises(ValueError, match=r"features repeat \[3\]: editing a feature twice"):
        HeadEdit.of(sae, [3, 1, 3], 1.0)
    with pytest.raises(ValueError, match=r"feature must be SAE feature indices \(integers\), got 2.7"):
        HeadEdit.of(sae, 2.7, 1.0)
    elsewhere = SparseAutoencoder(6, 5, "relu", site="layer3:spatial_mean")
    with pytest.raises(ValueError, match="trained on 'layer3:spatial_mean', not on the head input"):
        HeadEdit.of(elsewhere, 0, 1.0)
    with pytest.raises(ValueError, match="features must be None when FeatureDirections are passed"):
        HeadEdit.of(FeatureDirections.from_sae(sae, 0), 0, 1.0)
    no_bias = nn.Linear(6, 4, bias=False).double()
    with pytest.raises(ValueError, match="the head has no bias, but this edit"):
        HeadEdit.of(sae, 0, 1.0, rule="project").weights(no_bias)
    weight, bias = HeadEdit.of(sae, 0, 1.0, rule="salve").weights(no_bias)
    assert bias is None and weight.shape == (4, 6)
    with pytest.raises(ValueError, match=r"a must be an \(N, 6\) tensor of head inputs"):
        HeadEdit.of(sae, 0, 1.0)(a[:, :5])
