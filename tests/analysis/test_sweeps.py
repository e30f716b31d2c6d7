"""α sweeps, α_50 and the choice of an edit, against editing the model at every strength."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from captum_salve import (
    ActivationSet,
    SparseAutoencoder,
    SweepResult,
    alpha_50,
    alpha_crit,
    alpha_sweep,
    class_profile,
    edit_model,
    edited,
    select_edit,
)
from captum_salve.analysis import ControlGoal
from tests.helpers import HeadOnly, classified_clusters, identity_sae, random_sae

# ---- α sweeps ------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["salve", "project"])
@pytest.mark.parametrize("mode", ["suppress", "enhance"])
def test_sweep_equals_editing_the_model_at_every_alpha(rule, mode):
    model, acts = classified_clusters()
    sae = random_sae(6, "relu", d_latent=5, seed=0)
    alphas = [3.0, 0.0, 0.5, 1.0, 10.0]  # unsorted on purpose
    sweep = alpha_sweep(model, sae, 2, acts, alphas, mode=mode, rule=rule)
    assert sweep.alphas.tolist() == sorted(alphas)
    k = 3
    for i, alpha in enumerate(sorted(alphas)):
        with torch.no_grad():
            predicted = edit_model(model, sae, 2, alpha, mode=mode, rule=rule)(acts.features).argmax(1)
        confusion = torch.zeros(k, k, dtype=torch.long)
        for true, guess in zip(acts.labels.tolist(), predicted.tolist(), strict=True):
            confusion[true, guess] += 1
        assert torch.equal(sweep.confusion[i], confusion)
        for c in range(k):
            mine = acts.labels == c
            accuracy = (predicted[mine] == c).double().mean()
            assert sweep.per_class_accuracy[i, c].item() == pytest.approx(accuracy.item())
    assert torch.equal(sweep.baseline, sweep.confusion[0])  # α = 0 is the unedited model
    assert sweep.label == f"{mode} feature 2 ({rule})"


def test_prediction_distribution_rows_are_shares_of_the_class():
    model, acts = classified_clusters()
    sweep = alpha_sweep(model, random_sae(6, d_latent=5, seed=0), [0, 1], acts, [0.0, 2.0, 8.0], rule="project")
    counts = torch.bincount(acts.labels)
    for c in range(3):
        assert torch.equal(sweep.confusion[:, c].sum(dim=1), counts[c].expand(3))
        shares = sweep.prediction_distribution(c)
        torch.testing.assert_close(shares.sum(dim=1), torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(shares, sweep.confusion[:, c].double() / counts[c])
        torch.testing.assert_close(shares[:, c], sweep.per_class_accuracy[:, c])


def test_off_target_change_is_the_mean_change_of_the_other_classes():
    model, acts = classified_clusters()
    sweep = alpha_sweep(model, random_sae(6, d_latent=5, seed=0), 1, acts, [0.0, 2.0, 20.0], rule="project")
    change = sweep.per_class_accuracy - sweep.baseline_accuracy
    torch.testing.assert_close(sweep.off_target_change(1), (change[:, 0] + change[:, 2]) / 2)
    torch.testing.assert_close(sweep.off_target_change([0, 2]), change[:, 1])
    with pytest.raises(ValueError, match=r"class_index must be an integer in \[0, 2\], got 3"):
        sweep.off_target_change(3)
    with pytest.raises(ValueError, match=r"class_index must be an integer in \[0, 2\], got -1"):
        sweep.prediction_distribution(-1)
    with pytest.raises(ValueError, match=r"class_index \[0, 1, 2\] leaves no class .*: it names all 3 classes"):
        sweep.off_target_change([0, 1, 2])
    with pytest.raises(ValueError, match="class_index must name at least one class, got none"):
        sweep.off_target_change([])


def test_worst_off_target_change_is_the_largest_drop_of_a_single_other_class():
    confusion = torch.zeros(2, 4, 4, dtype=torch.long)
    confusion[:, range(4), range(4)] = 10  # every class 10 of 10 right at α = 0
    confusion[1, 0, 0], confusion[1, 0, 2] = 7, 3  # at α = 1, class 0 loses 30 points to class 2
    confusion[1, 1, 1], confusion[1, 1, 3] = 0, 10  # and class 1, the edited one, is gone
    sweep = SweepResult(torch.tensor([0.0, 1.0]), confusion, confusion[0], "test", list("abcd"))
    torch.testing.assert_close(sweep.worst_off_target_change(1), torch.tensor([0.0, -0.3], dtype=torch.float64))
    torch.testing.assert_close(sweep.off_target_change(1), torch.tensor([0.0, -0.1], dtype=torch.float64))
    torch.testing.assert_close(sweep.worst_off_target_change([0, 1]), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"class_index \[0, 1, 2, 3\] leaves no class"):
        sweep.worst_off_target_change([0, 1, 2, 3])


@pytest.mark.parametrize("bad", [1.5, True, "1", None])
def test_classes_of_a_sweep_are_integers(bad):
    model, acts = classified_clusters()
    sweep = alpha_sweep(model, random_sae(6, d_latent=5, seed=0), 1, acts, [0.0, 2.0, 20.0], rule="project")
    message = rf"class_index must be an integer in \[0, 2\], got {bad!r}"
    for call in (sweep.off_target_change, sweep.prediction_distribution, lambda c: alpha_50(sweep, c)):
        with pytest.raises(ValueError, match=message):
            call(bad)
    with pytest.raises(ValueError, match=message):
        sweep.off_target_change([0, bad])


def test_numpy_and_tensor_integers_are_classes_of_a_sweep():
    model, acts = classified_clusters()
    sweep = alpha_sweep(model, random_sae(6, d_latent=5, seed=0), 1, acts, [0.0, 2.0, 20.0], rule="project")
    torch.testing.assert_close(sweep.off_target_change(np.int64(1)), sweep.off_target_change(1))
    torch.testing.assert_close(sweep.off_target_change(np.array([0, 2])), sweep.off_target_change([0, 2]))
    torch.testing.assert_close(sweep.prediction_distribution(torch.tensor(2)), sweep.prediction_distribution(2))
    assert alpha_50(sweep, np.int32(1)) == alpha_50(sweep, 1)


def test_sweep_refuses_bad_input():
    model, acts = classified_clusters()
    sae = random_sae(6, d_latent=5, seed=0)
    with pytest.raises(ValueError, match="data must be head-input activations"):
        alpha_sweep(model, sae, 0, ActivationSet(acts.features, acts.labels, site="layer4"), [1.0])
    with pytest.raises(ValueError, match="alphas must be a non-empty 1-D sequence"):
        alpha_sweep(model, sae, 0, acts, [])
    with pytest.raises(ValueError, match=r"alphas\[1\] must be a finite number >= 0, got -1.0"):
        alpha_sweep(model, sae, 0, acts, [1.0, -1.0])
    with pytest.raises(ValueError, match="rule must be one of"):
        alpha_sweep(model, sae, 0, acts, [1.0], rule="rome")
    with pytest.raises(ValueError, match="carry no labels"):
        alpha_sweep(model, sae, 0, ActivationSet(acts.features), [1.0])
    with pytest.raises(ValueError, match=r"data labels must be class indices in \[0, 2\], got values from 0 to 3"):
        alpha_sweep(model, sae, 0, ActivationSet(acts.features, acts.labels.clamp(max=1) * 3), [1.0])


def test_sweep_refuses_data_it_would_count_wrongly():
    model, acts = classified_clusters()
    sae = random_sae(6, d_latent=5, seed=0)
    features = acts.features.clone()
    features[[3, 7], 0] = torch.tensor([float("nan"), float("inf")])
    with pytest.raises(ValueError, match=r"data holds 2 non-finite values \(NaN or Inf\); the first at index \(3, 0\)"):
        alpha_sweep(model, sae, 0, ActivationSet(features, acts.labels), [1.0])
    with pytest.raises(ValueError, match=r"data labels must be class indices in \[0, 2\], got values from 0 to 3"):
        alpha_sweep(model, sae, 0, ActivationSet(acts.features, acts.labels + (acts.labels == 2).long()), [1.0])
    with pytest.raises(ValueError, match=r"class_names must have 3 entries, one per class, got 1: \['a'\]"):
        alpha_sweep(model, sae, 0, acts, [1.0], class_names=["a"])
    with pytest.raises(ValueError, match="class_names must be a list of strings, one per class, got 'abc'"):
        alpha_sweep(model, sae, 0, acts, [1.0], class_names="abc")
    with pytest.raises(ValueError, match=r"alphas\[0\] must be a finite number >= 0, got '1'"):
        alpha_sweep(model, sae, 0, acts, ["1"])
    with pytest.raises(ValueError, match="alphas must be a non-empty 1-D sequence of strengths, got '1'"):
        alpha_sweep(model, sae, 0, acts, "1")
    with pytest.raises(
        TypeError,
        match=r"data must be an ActivationSet or an ActivationStore, got Tensor; wrap .* in ActivationSet\(features",
    ):
        alpha_sweep(model, sae, 0, acts.features, [1.0])


def test_alphas_may_be_any_sequence_of_real_numbers():
    model, acts = classified_clusters()
    sae = random_sae(6, d_latent=5, seed=0)
    expected = alpha_sweep(model, sae, 0, acts, [0.0, 2.0, 5.0])
    for alphas in ([0, 2, 5], np.array([5.0, 0.0, 2.0]), torch.tensor([2, 0, 5]), (np.float32(2), 0, 5)):
        sweep = alpha_sweep(model, sae, 0, acts, alphas)
        assert sweep.alphas.tolist() == [0.0, 2.0, 5.0] and torch.equal(sweep.confusion, expected.confusion)


def test_a_class_without_samples_has_no_accuracy_and_no_alpha_50():
    model, acts = classified_clusters()
    sae = random_sae(6, d_latent=5, seed=0)
    without_2 = acts.subset(acts.labels != 2)
    sweep = alpha_sweep(model, sae, 1, without_2, [0.0, 2.0, 20.0], rule="project")
    full = alpha_sweep(model, sae, 1, acts, [0.0, 2.0, 20.0], rule="project")
    assert sweep.counts.tolist() == [30, 30, 0]
    assert sweep.per_class_accuracy[:, 2].isnan().all() and sweep.baseline_accuracy[2].isnan()
    torch.testing.assert_close(sweep.per_class_accuracy[:, :2], full.per_class_accuracy[:, :2])
    # the off-target change is over the classes that have samples: class 1 alone here
    torch.testing.assert_close(sweep.off_target_change(0), sweep.per_class_accuracy[:, 1] - sweep.baseline_accuracy[1])
    message = r"class 2 \('2'\) has no samples in the swept data \(count 0\): its accuracy cannot be measured"
    with pytest.raises(ValueError, match=message):
        alpha_50(sweep, 2)
    with pytest.raises(ValueError, match=message):
        sweep.prediction_distribution(2)
    with pytest.raises(ValueError, match=r"leaves no class to measure the change on: the other classes \[2\] have no"):
        sweep.off_target_change([0, 1])


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


def _sweep_with_accuracy(alphas: list[float], correct: list[int], total: int = 10) -> SweepResult:
    """A 2-class sweep whose class 0 has ``correct[i]`` of ``total`` right at ``alphas[i]``."""
    confusion = torch.zeros(len(alphas), 2, 2, dtype=torch.long)
    confusion[:, 0, 0] = torch.tensor(correct)
    confusion[:, 0, 1] = total - torch.tensor(correct)
    confusion[:, 1, 1] = total
    return SweepResult(torch.tensor(alphas, dtype=torch.float64), confusion, confusion[0], "test", ["a", "b"])


def test_alpha_50_interpolates_linearly_between_the_straddling_strengths():
    sweep = _sweep_with_accuracy([0.0, 1.0, 2.0, 4.0], [10, 8, 4, 0])
    assert alpha_50(sweep, 0) == pytest.approx(1.0 + (0.8 - 0.5) / (0.8 - 0.4))  # 1.75
    assert alpha_50(_sweep_with_accuracy([0.0, 1.0, 3.0], [10, 9, 5]), 0) == pytest.approx(3.0)  # exactly 50%


def test_alpha_50_when_the_curve_never_or_already_crosses():
    assert alpha_50(_sweep_with_accuracy([0.0, 1.0, 2.0], [10, 9, 6]), 0) == math.inf
    assert alpha_50(_sweep_with_accuracy([0.5, 1.0, 2.0], [4, 2, 0]), 0) == 0.5
    assert alpha_50(_sweep_with_accuracy([0.0, 1.0], [10, 0]), 1) == math.inf  # class 1 is never touched
    with pytest.raises(ValueError, match=r"class_index must be an integer in \[0, 1\], got 2"):
        alpha_50(_sweep_with_accuracy([0.0], [10]), 2)


# ---- choosing an edit ----------------------------------------------------------------------


def _backed_up_evidence() -> tuple[nn.Module, SparseAutoencoder, ActivationSet]:
    """Class 0's logit is a0 + a3: its evidence sits on two features, each enough alone.

    Under rule "salve" one feature's column is at most zeroed, which leaves the other's
    evidence (about 2) far above the other logits (below 0.1): only the pair flips class 0.
    """
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.rand(60, 4, generator=generator) * 0.1
    features[labels == 0, 0] += 2.0
    features[labels == 0, 3] += 2.0
    features[labels == 1, 1] += 2.0
    features[labels == 2, 2] += 2.0
    weight = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    return HeadOnly.from_weights(weight, torch.zeros(3)), identity_sae(4), ActivationSet(features, labels)


def test_select_edit_picks_the_single_feature_and_the_smallest_alpha_that_suffices():
    model, sae, acts = _backed_up_evidence()
    profile = class_profile(sae, acts)
    # rule "project" turns a1 into (1 - α) a1: at α = 0.9 class 1 still wins (0.1 a1 >= 0.2 > a0 + a3),
    # at α = 1.1 its logit is negative; the other classes do not read a1
    choice = select_edit(model, sae, profile, 1, acts, alphas=[0.5, 0.9, 1.1, 3.0, 10.0], candidates=3)
    assert choice.features == (1,) and choice.alpha == 1.1 and choice.rule == "project"
    assert choice.reached and choice.target_accuracy == 0.0 and choice.off_target_change == 0.0


def test_select_edit_takes_the_pair_when_one_feature_cannot_do_it():
    model, sae, acts = _backed_up_evidence()
    profile = class_profile(sae, acts)
    alphas = [0.5, 0.9, 1.1, 3.0, 100.0]
    choice = select_edit(model, sae, profile, 0, acts, rule="salve", candidates=2, alphas=alphas)
    assert sorted(choice.features) == [0, 3] and choice.alpha == 1.1
    assert choice.reached and choice.target_accuracy == 0.0 and choice.off_target_change == 0.0
    alone = select_edit(model, sae, profile, 0, acts, rule="salve", candidates=2, max_features=1, alphas=alphas)
    assert not alone.reached and alone.target_accuracy == 1.0 and alone.features[0] in (0, 3)
    with pytest.raises(ValueError, match="max_features must be an integer >= 1, got 0"):
        select_edit(model, sae, profile, 0, acts, candidates=2, max_features=0)
    with pytest.raises(ValueError, match="candidates must be an integer >= 1, got 2.5"):
        select_edit(model, sae, profile, 0, acts, candidates=2.5)


def _a_neighbour_pays() -> tuple[nn.Module, SparseAutoencoder, ActivationSet]:
    """Four classes of 10; class 1's only feature a1 also carries 2 of class 0's images.

    Logits: ``a0 + a1``, ``2 a1 - a0``, ``a2``, ``a3`` (plus noise below 0.1 on every coordinate).
    Rule "project" turns a1 into (1 - α) a1. At α = 1 class 1's logit is -a0 <= 0 and it is
    gone; the two class-0 images (0.6, 0.5, 0.7, 0) keep 0.6 + noise for class 0 against
    0.7 + noise for class 2 and go to class 2: class 0 loses 20 points, the other classes
    none, so their mean loses 6.7 points. At α = 0.5 class 1 keeps every image.
    """
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(40) // 10
    features = torch.rand(40, 4, generator=generator) * 0.1
    features[labels == 0, 0] += 1.0
    features[:2] += torch.tensor([-0.4, 0.5, 0.7, 0.0])
    features[labels == 1, 1] += 1.0
    features[labels == 2, 2] += 1.0
    features[labels == 3, 3] += 1.0
    weight = torch.tensor([[1.0, 1.0, 0.0, 0.0], [-1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    return HeadOnly.from_weights(weight, torch.zeros(4)), identity_sae(4), ActivationSet(features, labels)


def test_select_edit_refuses_an_edit_whose_worst_other_class_breaks_the_limit_though_the_mean_passes():
    model, sae, acts = _a_neighbour_pays()
    profile = class_profile(sae, acts)
    goal = ControlGoal(off_target=0.1)
    arguments = dict(alphas=[0.5, 1.0, 2.0], candidates=1, max_features=1, goal=goal)
    sweep = alpha_sweep(model, sae, 1, acts, [1.0], rule="project")
    assert sweep.per_class_accuracy[0].tolist() == [0.8, 0.0, 1.0, 1.0]
    assert abs(float(sweep.off_target_change(1)[0])) < goal.off_target  # a mean limit would pass it
    refused = select_edit(model, sae, profile, 1, acts, **arguments)
    assert not refused.reached  # class 1 at 0%, but class 0 falls 20 points
    # the best the limit allows: α = 0.5, where class 1 keeps every image and nothing else moves
    assert refused.alpha == 0.5 and refused.target_accuracy == 1.0 and refused.worst_off_target_change == 0.0
    allowed = select_edit(model, sae, profile, 1, acts, off_target=0.25, **arguments)
    assert allowed.reached and allowed.alpha == 1.0 and allowed.target_accuracy == 0.0
    assert allowed.worst_off_target_change == pytest.approx(-0.2)
    assert allowed.off_target_change == pytest.approx(-0.2 / 3)
    with pytest.raises(ValueError, match=r"off_target must be a number in \[0, 1\], got -0.1"):
        select_edit(model, sae, profile, 1, acts, off_target=-0.1)


def test_select_edit_refuses_a_class_it_cannot_measure():
    model, sae, acts = _backed_up_evidence()
    profile = class_profile(sae, acts)
    with pytest.raises(ValueError, match=r"class 1 has no samples in acts \(count 0\): select_edit cannot measure"):
        select_edit(model, sae, profile, 1, acts.subset(acts.labels != 1))
    with pytest.raises(TypeError, match="goal must be a ControlGoal, got type"):
        select_edit(model, sae, profile, 1, acts, goal=dict)
    with pytest.raises(TypeError, match="goal must be a ControlGoal, got dict"):
        select_edit(model, sae, profile, 1, acts, goal={"class_accuracy": 0.1})
    assert select_edit(model, sae, profile, 1, acts, goal=ControlGoal(selection_accuracy=0.5)).reached
