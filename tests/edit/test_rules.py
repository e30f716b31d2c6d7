"""Edit rules: every form of a rule agrees with the others, and a new rule is one class."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from captum_salve import (
    ActivationSet,
    FeatureDirections,
    HeadEdit,
    SparseAutoencoder,
    alpha_crit,
    alpha_sweep,
    edit_model,
)
from captum_salve.edit import RULES, EditRule, LogitPieces, ProjectOut
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


def test_directions_from_vectors_give_centred_scaled_codes():
    mean = torch.tensor([1.0, 2.0, 3.0])
    directions = FeatureDirections.from_vectors(torch.tensor([0.0, 3.0, 4.0]), mean=mean, code_scale=2.0)
    a = torch.tensor([[1.0, 3.0, 3.0]])
    torch.testing.assert_close(directions.decoder[:, 0], torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64))
    code = a.double() @ directions.encoder.T + directions.offset
    torch.testing.assert_close(code, torch.tensor([[2.0 * 0.6]], dtype=torch.float64))


def test_directions_from_an_sae_with_non_unit_columns_are_unit_with_the_norm_moved_into_the_code():
    sae = SparseAutoencoder(5, 4, "relu")  # as loaded from another library
    with torch.no_grad():
        sae.decoder.weight.mul_(torch.tensor([0.5, 3.0, 1.0, 0.0]))  # feature 3's column is zero
        sae.decoder.bias.normal_()
    directions = FeatureDirections.from_sae(sae, [1, 3])
    torch.testing.assert_close(directions.decoder.norm(dim=0), torch.tensor([1.0, 0.0]))
    a = torch.randn(7, 5)
    alphas = torch.tensor([0.7, 2.0])
    codes = sae.pre_activation(a)[:, [1, 3]].detach()
    # "project" adds α z_l(a) d_l with the SAE's own code and column, whatever their scale
    pushed = a - (codes * alphas) @ sae.decoder_weight[:, [1, 3]].detach().T
    torch.testing.assert_close(ProjectOut().activations(a, directions, alphas, -1.0), pushed)
    # "salve" scales by |d| of the unit direction (the zero column's factor is 1)
    unit = sae.decoder_weight[:, 1].detach() / sae.decoder_weight[:, 1].detach().norm()
    salve = RULES["salve"].activations(a, directions, alphas, -1.0)
    torch.testing.assert_close(salve, a * (1 - 0.7 * unit.abs()).clamp_min(0))
