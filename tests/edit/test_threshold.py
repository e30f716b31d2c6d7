"""α_crit: the exact walk against bisection on the edited model's outputs, and its relations to α_lin and α_50."""

from __future__ import annotations

import pytest
import torch

from captum_salve import (
    ActivationSet,
    SparseAutoencoder,
    alpha_50,
    alpha_crit,
    alpha_sweep,
    edited,
)
from tests.helpers import HeadOnly

RTOL = 1e-9  # exact vs bisect, relative (both in float64)


def _setup(family: str, seed: int = 0):
    """A 4-class head over ResNet-like (non-negative, 512) or ViT-like (signed, 32) head inputs."""
    generator = torch.Generator().manual_seed(seed)
    width = 512 if family == "resnet" else 32
    features = torch.randn(64, width, generator=generator)
    features = features.relu() * 2 if family == "resnet" else features
    head = torch.nn.Linear(width, 4)
    with torch.no_grad():
        head.weight.copy_(torch.randn(4, width, generator=generator) / width**0.5 * 3)
        head.bias.copy_(torch.tensor([0.5, -0.2, 0.1, -1.0]))
    sae = SparseAutoencoder(width, 8, "linear")
    with torch.no_grad():  # a peaked direction: a few large |d_j| so clipping starts early
        d = torch.randn(width, generator=generator).abs() ** 3
        sae.decoder.weight[:, 0] = d / d.norm()
    targets = torch.arange(len(features)) % 4
    return HeadOnly(head), sae, ActivationSet(features), targets


def _assert_same(exact: torch.Tensor, other: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(exact), torch.isinf(other))
    finite = torch.isfinite(exact)
    torch.testing.assert_close(other[finite], exact[finite], rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("family", ["resnet", "vit"])
@pytest.mark.parametrize("criterion", ["zero_logit", "flip"])
@pytest.mark.parametrize("mode", ["suppress", "enhance"])
@pytest.mark.parametrize("rule", ["salve", "project"])
def test_exact_equals_bisection_on_every_sample(family, criterion, mode, rule):
    model, sae, acts, targets = _setup(family)
    kwargs = dict(criterion=criterion, rule=rule, mode=mode)
    exact = alpha_crit(model, sae, 0, acts, targets, method="exact", **kwargs)
    bisect = alpha_crit(model, sae, 0, acts, targets, method="bisect", **kwargs)
    _assert_same(exact, bisect)
    assert exact.shape == (len(acts),) and exact.dtype == torch.float64


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_the_cases_that_matter_all_occur_and_agree(family):
    """Clipping active before the root, never crossing (inf), and already crossed (0)."""
    model, sae, acts, targets = _setup(family)
    exact = alpha_crit(model, sae, 0, acts, targets, method="exact")
    bisect = alpha_crit(model, sae, 0, acts, targets, method="bisect")
    first_break = 1 / sae.decoder_weight[:, 0].abs().max().item()
    clipped = torch.isfinite(exact) & (exact > first_break)
    assert clipped.any() and torch.isinf(exact).any() and (exact == 0).any()
    _assert_same(exact, bisect)


def test_answers_are_where_the_edited_model_says():
    model, sae, acts, targets = _setup("resnet")
    exact = alpha_crit(model, sae, 0, acts, targets, criterion="zero_logit")
    sample = int(((exact > 0) & torch.isfinite(exact)).nonzero()[0])
    images_logit = []
    for alpha in (exact[sample].item() * (1 - 1e-6), exact[sample].item() * (1 + 1e-6)):
        with edited(model, sae, 0, alpha):
            head = model.get_classifier()
            images_logit.append(head(acts.features[sample : sample + 1])[0, targets[sample]].item())
    assert images_logit[0] > 0 >= images_logit[1]


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_linear_equals_exact_when_nothing_is_clipped_before_the_root(family):
    model, sae, acts, targets = _setup(family)
    exact = alpha_crit(model, sae, 0, acts, targets, method="exact")
    linear = alpha_crit(model, sae, 0, acts, targets, method="linear")
    first_break = 1 / sae.decoder_weight[:, 0].abs().max().item()
    unclipped = exact < first_break
    assert unclipped.sum() >= 5
    torch.testing.assert_close(linear[unclipped], exact[unclipped], rtol=1e-9, atol=1e-12)


def test_linear_is_a_lower_bound_when_every_contribution_is_non_negative():
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 3)
    with torch.no_grad():
        head.weight.uniform_(0, 1)
        head.bias.fill_(-0.5)
    model = HeadOnly(head)
    acts = ActivationSet(torch.rand(200, 16))
    sae = SparseAutoencoder(16, 2, "linear")
    exact = alpha_crit(model, sae, 0, acts, 1, method="exact", rule="salve")
    linear = alpha_crit(model, sae, 0, acts, 1, method="linear", rule="salve")
    assert (linear <= exact * (1 + 1e-12)).all() and (linear < exact).any()


def test_linear_can_exceed_exact_when_a_negative_contribution_is_clipped():
    """The paper's bound needs W_tj a_j >= 0: clipping a negative term raises the logit's fall."""
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-1.0, 10.0], [0.0, 0.0]]))
        head.bias.zero_()
    model = HeadOnly(head)
    sae = SparseAutoencoder(2, 1, "linear")
    with torch.no_grad():
        sae.decoder.weight.copy_(torch.tensor([[0.995], [0.0995]]) / torch.tensor([[0.995], [0.0995]]).norm())
    acts = ActivationSet(torch.tensor([[1.0, 1.0]]))
    exact = alpha_crit(model, sae, 0, acts, 0, method="exact", rule="salve")
    linear = alpha_crit(model, sae, 0, acts, 0, method="linear", rule="salve")
    bisect = alpha_crit(model, sae, 0, acts, 0, method="bisect", rule="salve")
    assert torch.isinf(linear).all() and torch.isfinite(exact).all()
    _assert_same(exact, bisect)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_median_flip_threshold_equals_alpha_50_of_the_sweep(family):
    """Exact when a flipped sample stays flipped, which rule "project" guarantees (its margins are linear)."""
    model, sae, acts, _ = _setup(family, seed=2)
    head = model.get_classifier()
    predicted = head(acts.features).argmax(1)
    target = int(predicted.mode().values)
    mine = ActivationSet(acts.features[predicted == target], torch.full(((predicted == target).sum(),), target))
    assert len(mine) >= 5
    crit = alpha_crit(model, sae, 0, mine, target, criterion="flip", rule="project")
    finite = crit[torch.isfinite(crit)]
    # just below and just above every threshold, far enough apart for float32 logits
    grid = torch.cat([torch.zeros(1), finite * (1 - 1e-4), finite * (1 + 1e-4), finite.max()[None] * 2 + 1])
    sweep = alpha_sweep(model, sae, 0, mine, grid, rule="project")
    lower_median = crit.sort().values[(len(crit) - 1) // 2]
    assert alpha_50(sweep, target) == pytest.approx(lower_median.item(), rel=1e-4)


def test_under_the_papers_rule_a_flipped_sample_can_flip_back():
    """Why the median/α_50 identity needs permanent flips: clipping every column leaves only the bias."""
    model, sae, acts, _ = _setup("resnet", seed=2)
    head = model.get_classifier()
    target = int(head.bias.argmax())
    mine = acts.subset(head(acts.features).argmax(1) == target)
    crit = alpha_crit(model, sae, 0, mine, target, criterion="flip", rule="salve")
    flipped = torch.isfinite(crit)
    assert flipped.any()
    with edited(model, sae, 0, 1e9, rule="salve"):  # every column with c_j > 0 clipped to zero
        assert (model.get_classifier()(mine.features[flipped]).argmax(1) == target).all()


def test_bad_arguments():
    model, sae, acts, targets = _setup("resnet")
    with pytest.raises(ValueError, match="criterion must be one of"):
        alpha_crit(model, sae, 0, acts, targets, criterion="logit")
    with pytest.raises(ValueError, match="method must be one of"):
        alpha_crit(model, sae, 0, acts, targets, method="newton")
    with pytest.raises(ValueError, match="alpha_crit takes one feature"):
        alpha_crit(model, sae, [0, 1], acts, targets)
    with pytest.raises(ValueError, match=r"one per sample \(64\)"):
        alpha_crit(model, sae, 0, acts, targets[:3])
    with pytest.raises(ValueError, match=r"target must be an integer in \[0, 3\], got 7"):
        alpha_crit(model, sae, 0, acts, 7)
    for wrong in (2.5, True, "0"):
        with pytest.raises(ValueError, match=r"target must be an integer in \[0, 3\], got"):
            alpha_crit(model, sae, 0, acts, wrong)
    with pytest.raises(ValueError, match=r"target must be class indices in \[0, 3\], got values from 0 to 9"):
        alpha_crit(model, sae, 0, acts, torch.arange(64) % 10)
    with pytest.raises(ValueError, match="head-input activations of width 512"):
        alpha_crit(model, sae, 0, ActivationSet(acts.features, site="layer4"), targets)
    with pytest.raises(ValueError, match="inputs hold no samples"):
        alpha_crit(model, sae, 0, acts.subset(torch.zeros(len(acts), dtype=torch.bool)), 0)


def test_alpha_crit_refuses_an_sae_whose_width_is_not_the_heads(timm_resnet):
    narrow = SparseAutoencoder(32, 8, "linear")
    acts = ActivationSet(torch.rand(4, 512), torch.arange(4))
    with pytest.raises(ValueError, match="directions are 32-dimensional but the head takes 512"):
        alpha_crit(timm_resnet, narrow, 0, acts, 1)
