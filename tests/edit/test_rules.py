"""Edit rules and HeadEdit: every form of a rule agrees with the others, and a new rule is one class."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_salve import ActivationSet, HeadEdit, SparseAutoencoder, alpha_crit, alpha_sweep, edit_model, edited
from captum_salve.edit import RULES, EditRule, FeatureDirections, LogitPieces, ProjectOut, ScaleColumns, edit_rule
from tests.helpers import float64_head_and_sae

RULE_NAMES = sorted(RULES)


@settings(max_examples=25, deadline=None)
@given(
    rule=st.sampled_from(RULE_NAMES),
    mode=st.sampled_from(["suppress", "enhance"]),
    features=st.lists(st.integers(0, 4), min_size=1, max_size=3, unique=True),
    alpha=st.floats(0, 30),
    seed=st.integers(0, 50),
)
def test_the_activation_form_and_the_weight_form_give_the_same_logits(rule, mode, features, alpha, seed):
    head, sae, a = float64_head_and_sae(seed=seed)
    edit = HeadEdit.of(sae, features, alpha, mode=mode, rule=rule)
    weight, bias = edit.weights(head)
    torch.testing.assert_close(head(edit(a)), a @ weight.T + bias, rtol=1e-10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    rule=st.sampled_from(RULE_NAMES),
    mode=st.sampled_from(["suppress", "enhance"]),
    alphas=st.lists(st.floats(0, 40), min_size=1, max_size=6),
    seed=st.integers(0, 50),
)
def test_the_exact_pieces_give_the_weight_forms_logits_at_every_alpha(rule, mode, alphas, seed):
    head, sae, a = float64_head_and_sae(seed=seed)
    edit = HeadEdit.of(sae, 2, 0.0, mode=mode, rule=rule)
    weight, bias = head.weight.detach(), head.bias.detach()
    pieces = edit.rule.pieces(weight, bias, edit.directions, a, edit.sign)
    for alpha in alphas:
        new_weight, new_bias = edit.rule.weights(
            weight, bias, edit.directions, torch.tensor([alpha], dtype=torch.float64), edit.sign
        )
        torch.testing.assert_close(pieces.at(alpha), a @ new_weight.T + new_bias, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_the_linear_pieces_equal_the_exact_ones_before_the_first_breakpoint(rule):
    head, sae, a = float64_head_and_sae()
    edit = HeadEdit.of(sae, 1, 0.0, rule=rule)
    args = (head.weight.detach(), head.bias.detach(), edit.directions, a, -1.0)
    exact, linear = edit.rule.pieces(*args), edit.rule.pieces(*args, exact=False)
    first_break = float(exact.hi[0])
    for alpha in (0.0, 0.3 * first_break, 0.99 * first_break) if first_break < float("inf") else (0.0, 1.0, 50.0):
        torch.testing.assert_close(linear.at(alpha), exact.at(alpha), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["suppress", "enhance"])
def test_the_rank_one_sweep_curve_equals_rebuilding_the_head_at_every_alpha(mode):
    head, sae, a = float64_head_and_sae(m=16, k=7, d=8, n=40)
    edit = HeadEdit.of(sae, [1, 5], 0.0, mode=mode, rule="project")
    args = (head.weight.detach(), head.bias.detach(), edit.directions, a, edit.sign)
    fast, generic = ProjectOut().logit_curve(*args), EditRule.logit_curve(ProjectOut(), *args)
    for alphas in ([0.0, 0.0], [0.5, 2.0], [10.0, 3.0], [1e3, 1e-3]):
        strength = torch.tensor(alphas, dtype=torch.float64)
        torch.testing.assert_close(fast(strength), generic(strength), rtol=1e-10, atol=1e-9)


def test_sweeps_take_the_head_alone_and_equal_the_model_route(timm_resnet):
    torch.manual_seed(1)
    sae = SparseAutoencoder(512, 8, "relu")
    acts = ActivationSet(torch.rand(30, 512) * 2, torch.arange(30) % 4)
    by_model = alpha_sweep(timm_resnet, sae, 3, acts, [0, 1, 5, 20], rule="project")
    by_head = alpha_sweep(timm_resnet.fc, sae, 3, acts, [0, 1, 5, 20], rule="project")
    assert torch.equal(by_model.confusion, by_head.confusion) and torch.equal(by_model.baseline, by_head.baseline)
    crit_model = alpha_crit(timm_resnet, sae, 3, acts, 1, criterion="flip", rule="project")
    crit_head = alpha_crit(timm_resnet.fc, sae, 3, acts, 1, criterion="flip", rule="project")
    assert torch.equal(crit_model, crit_head)
    with pytest.raises(ValueError, match="with the head alone, inputs must be head-input activations"):
        alpha_crit(timm_resnet.fc, sae, 3, torch.rand(2, 3, 32, 32), 1)


def test_the_sweep_predicts_what_the_edited_model_predicts(timm_resnet):
    torch.manual_seed(2)
    sae = SparseAutoencoder(512, 8, "linear")
    acts = ActivationSet(torch.rand(40, 512) * 2, torch.arange(40) % 4)
    alphas = [0.0, 2.0, 8.0]
    sweep = alpha_sweep(timm_resnet, sae, [2, 6], acts, alphas, rule="project")
    for i, alpha in enumerate(alphas):
        with edited(timm_resnet, sae, [2, 6], alpha, rule="project") as model, torch.no_grad():
            predicted = model.fc(acts.features).argmax(1)
        expected = torch.bincount(acts.labels * 4 + predicted, minlength=16).reshape(4, 4)
        assert torch.equal(sweep.confusion[i], expected)


class ShiftAlong(EditRule):
    """A rule written for this test: the head input moves by ``s α d`` whatever its code (a constant shift)."""

    name = "shift"

    def weights(self, weight, bias, directions, alphas, sign):
        d = directions.cast(weight)[0]
        return weight.expand(*alphas.shape[:-1], *weight.shape), bias + sign * (weight @ d * alphas[..., None, :]).sum(
            -1
        )

    def activations(self, a, directions, alphas, sign):
        return a + sign * (directions.cast(a)[0] * alphas).sum(-1)

    def pieces(self, weight, bias, directions, a, sign, *, exact=True):
        d = directions.cast(a)[0][:, 0]
        return LogitPieces.single(a @ weight.T + bias, (sign * weight @ d).expand(len(a), -1))


def test_a_new_rule_is_one_class_that_every_entry_point_accepts(timm_resnet):
    torch.manual_seed(3)
    sae = SparseAutoencoder(512, 8, "linear")
    acts = ActivationSet(torch.rand(25, 512), torch.arange(25) % 4)
    rule = ShiftAlong()
    edited_model = edit_model(timm_resnet, sae, 4, 3.0, rule=rule)
    d = sae.decoder_weight[:, 4].detach()
    with torch.no_grad():
        torch.testing.assert_close(
            edited_model.fc(acts.features), timm_resnet.fc(acts.features - 3.0 * d), rtol=1e-5, atol=1e-5
        )
    sweep = alpha_sweep(timm_resnet, sae, 4, acts, [0.0, 3.0], rule=rule)
    assert sweep.label.endswith("(shift)")
    exact = alpha_crit(timm_resnet, sae, 4, acts, 0, rule=rule)
    bisect = alpha_crit(timm_resnet, sae, 4, acts, 0, rule=rule, method="bisect")
    assert torch.equal(exact.isfinite(), bisect.isfinite())
    torch.testing.assert_close(exact[exact.isfinite()], bisect[bisect.isfinite()], rtol=1e-6, atol=1e-9)


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
    with pytest.raises(ValueError, match=r"a must be \(N, 6\) head inputs"):
        HeadEdit.of(sae, 0, 1.0)(a[:, :5])


def test_alpha_crit_refuses_an_sae_whose_width_is_not_the_heads(timm_resnet):
    narrow = SparseAutoencoder(32, 8, "linear")
    acts = ActivationSet(torch.rand(4, 512), torch.arange(4))
    with pytest.raises(ValueError, match="directions are 32-dimensional but the head takes 512"):
        alpha_crit(timm_resnet, narrow, 0, acts, 1)
