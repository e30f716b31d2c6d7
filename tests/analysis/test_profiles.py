"""Analysis: class profiles, feature selection, α sweeps, controls and seed matching.

Checked against hand-worked cases and independent routes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_salve import (
    ActivationSet,
    ClassProfile,
    SeedStudy,
    SparseAutoencoder,
    SweepResult,
    alpha_50,
    alpha_sweep,
    class_profile,
    control_directions,
    cross_class_features,
    edit_model,
    match_features,
    seed_study,
    select_edit,
    select_feature,
    top_activating,
    train_sae,
)
from tests.helpers import HeadOnly, classified_clusters, identity_sae, random_sae


def _profile(mean_codes: list[list[float]], code_std: list[float] | None = None) -> ClassProfile:
    mu = torch.tensor(mean_codes)
    std = torch.ones(mu.shape[1]) if code_std is None else torch.tensor(code_std)
    return ClassProfile(mu, torch.full((mu.shape[0],), 10), std, [str(k) for k in range(mu.shape[0])])


# ---- class profile -------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 30),
    k=st.integers(1, 4),
    activation=st.sampled_from(["linear", "relu", "topk"]),
    seed=st.integers(0, 2**16),
)
def test_mean_codes_are_the_per_class_means_of_the_codes(n, k, activation, seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 5, generator=generator)
    labels = torch.randint(0, k, (n,), generator=generator)
    sae = random_sae(5, activation, d_latent=7, k=2 if activation == "topk" else None, seed=seed)
    profile = class_profile(sae, ActivationSet(features, labels))
    codes = sae.encode(features).detach()
    assert profile.num_classes == int(labels.max()) + 1
    for c in range(profile.num_classes):
        mine = codes[labels == c]
        assert profile.counts[c] == len(mine)
        expected = mine.mean(0) if len(mine) else torch.zeros(7)  # a class with no samples has a zero profile
        torch.testing.assert_close(profile.mean_codes[c], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(profile.code_std, codes.std(dim=0), rtol=1e-5, atol=1e-6)


def test_class_names_default_to_indices_and_must_match_the_class_count():
    acts = ActivationSet(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    sae = identity_sae(3)
    assert class_profile(sae, acts).class_names == ["0", "1", "2"]
    assert class_profile(sae, acts, class_names=["a", "b", "c"]).class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="class_names must have 3 entries, got 2"):
        class_profile(sae, acts, class_names=["a", "b"])
    with pytest.raises(ValueError, match="carry no labels"):
        class_profile(sae, ActivationSet(torch.randn(6, 3)))
    with pytest.raises(ValueError, match=r"acts must be \(N, 4\) activations for this SAE"):
        class_profile(identity_sae(4), acts)


def test_dominant_by_magnitude_counts_negative_codes_and_by_contrast_ignores_shared_ones():
    # feature 0 is equally large for every class, feature 1 is strongly negative for class 0
    profile = _profile([[3.0, -5.0, 1.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert profile.dominant(0, 3, by="magnitude").tolist() == [1, 0, 2]
    torch.testing.assert_close(profile.contrast()[0], torch.tensor([0.0, -5.0, 1.0]))
    assert profile.dominant(0, 3, by="contrast").tolist() == [2, 0, 1]
    assert profile.dominant(0, 10).tolist() == [1, 0, 2]  # n larger than d: all of them


def test_contrast_is_the_gap_to_the_mean_of_the_other_classes_in_code_stds():
    generator = torch.Generator().manual_seed(3)
    mu = torch.randn(4, 6, generator=generator)
    std = torch.rand(6, generator=generator) + 0.5
    profile = ClassProfile(mu, torch.ones(4), std, list("abcd"))
    expected = torch.empty(4, 6)
    for k in range(4):
        others = torch.stack([mu[j] for j in range(4) if j != k]).mean(0)
        expected[k] = (mu[k] - others) / std
    torch.testing.assert_close(profile.contrast(), expected)


def test_selectivity_and_specificity_by_hand():
    profile = _profile([[2.0, 0.0, 1.0], [-1.0, 4.0, 1.0], [1.0, 0.0, 1.0]])
    torch.testing.assert_close(profile.selectivity(0), torch.tensor([0.5, 0.25, 0.25]))
    torch.testing.assert_close(profile.selectivity(1), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(profile.selectivity(2), torch.full((3,), 1 / 3))
    # top feature by magnitude: class 0 -> 0 (share 0.5), class 1 -> 1 (1.0), class 2 -> 0 or 2 tie at 1.0
    specificity = profile.specificity()
    assert specificity[0] == pytest.approx(0.5) and specificity[1] == pytest.approx(1.0)
    assert specificity[2].item() in (pytest.approx(0.25), pytest.approx(1 / 3))


def test_profile_arguments_are_checked():
    profile = _profile([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 1\], got 2"):
        profile.dominant(2)
    with pytest.raises(ValueError, match="by must be 'magnitude' or 'contrast'"):
        profile.dominant(0, by="size")
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        profile.dominant(0, 0)
    with pytest.raises(ValueError, match=r"feature must be SAE feature indices in \[0, 1\], got \[-1\]"):
        profile.selectivity(-1)


def test_cross_class_features_find_a_feature_planted_in_two_classes():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    features = torch.randn(200, 5, generator=generator) * 0.3
    features[labels == 1, 3] += 4.0  # coordinate 3 is shared by classes 1 and 2
    features[labels == 2, 3] += 3.0
    features[labels == 0, 0] += 4.0  # coordinate 0 belongs to class 0 alone
    profile = class_profile(identity_sae(5), ActivationSet(features, labels))
    found = cross_class_features(profile, n_classes=2, top=2)
    assert found[0].feature == 3 and found[0].classes == (1, 2)
    magnitude = profile.mean_codes[:, 3].abs().sort(descending=True).values
    assert found[0].score == pytest.approx(float((magnitude[1] - magnitude[2]) / profile.code_std[3]), rel=1e-5)
    assert found[0].score > found[1].score and len(found) == 2
    with pytest.raises(ValueError, match=r"n_classes must be in \[2, 3\], got 4"):
        cross_class_features(profile, n_classes=4)


def test_select_feature_is_the_top_of_the_chosen_ranking():
    profile = _profile([[3.0, -5.0, 1.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert select_feature(profile, 0) == [2]  # contrast by default
    assert select_feature(profile, 0, by="magnitude") == [1]
    assert select_feature(profile, 0, n=2, by="magnitude") == [1, 0]
    assert all(isinstance(f, int) for f in select_feature(profile, 1, n=3))


# ---- top-activating examples ---------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_top_activating_equals_a_full_sort(n, k, seed):
    k = min(k, n)
    generator = torch.Generator().manual_seed(seed)
    # a few distinct rows repeated: many exact ties in the codes
    rows = torch.randint(-2, 3, (4, 3), generator=generator).float()
    acts = ActivationSet(rows[torch.randint(0, 4, (n,), generator=generator)])
    sae = identity_sae(3)
    index, values = top_activating(sae, acts, 1, k=k)
    codes = acts.features[:, 1]
    expected = sorted(codes.tolist(), reverse=True)[:k]
    assert values.tolist() == expected
    assert len(set(index.tolist())) == k and torch.equal(codes[index], values)


def test_top_activating_without_ties_gives_the_argsort():
    acts = ActivationSet(torch.tensor([[0.3], [2.0], [-1.0], [1.5], [0.9]]))
    index, values = top_activating(identity_sae(1), acts, 0, k=3)
    assert index.tolist() == [1, 3, 4] and values.tolist() == pytest.approx([2.0, 1.5, 0.9])


def test_top_activating_refuses_bad_k_and_feature():
    acts = ActivationSet(torch.randn(5, 3))
    sae = identity_sae(3)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\], got 6"):
        top_activating(sae, acts, 0, k=6)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\], got 0"):
        top_activating(sae, acts, 0, k=0)
    with pytest.raises(ValueError, match=r"feature must be SAE feature indices in \[0, 2\], got \[3\]"):
        top_activating(sae, acts, 3)


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
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 2\], got 3"):
        sweep.off_target_change(3)
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 2\], got -1"):
        sweep.prediction_distribution(-1)


def test_sweep_refuses_bad_input():
    model, acts = classified_clusters()
    sae = random_sae(6, d_latent=5, seed=0)
    with pytest.raises(ValueError, match="data must be head-input activations"):
        alpha_sweep(model, sae, 0, ActivationSet(acts.features, acts.labels, site="layer4"), [1.0])
    with pytest.raises(ValueError, match="alphas must be a non-empty 1-D sequence"):
        alpha_sweep(model, sae, 0, acts, [])
    with pytest.raises(ValueError, match="alphas must be finite and >= 0"):
        alpha_sweep(model, sae, 0, acts, [1.0, -1.0])
    with pytest.raises(ValueError, match="rule must be one of"):
        alpha_sweep(model, sae, 0, acts, [1.0], rule="rome")
    with pytest.raises(ValueError, match="carry no labels"):
        alpha_sweep(model, sae, 0, ActivationSet(acts.features), [1.0])
    with pytest.raises(ValueError, match=r"data labels must be classes of the head, in \[0, 2\], got 0 to 3"):
        alpha_sweep(model, sae, 0, ActivationSet(acts.features, acts.labels.clamp(max=1) * 3), [1.0])


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
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 1\], got 2"):
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
    with pytest.raises(ValueError, match="candidates and max_features must be at least 1, got 2 and 0"):
        select_edit(model, sae, profile, 0, acts, candidates=2, max_features=0)


# ---- controls ------------------------------------------------------------------------------


def _control_data(seed: int = 0) -> tuple[SparseAutoencoder, ActivationSet]:
    generator = torch.Generator().manual_seed(seed)
    # anisotropic: one direction carries most of the variance
    features = torch.randn(200, 6, generator=generator) * torch.tensor([0.5, 3.0, 0.2, 0.7, 0.1, 0.4]) + 1.0
    return random_sae(6, d_latent=4, seed=seed), ActivationSet(features)


def test_control_directions_are_unit_and_the_principal_one_is_the_top_singular_vector():
    sae, acts = _control_data()
    controls = control_directions(sae, 2, acts)
    assert set(controls) == {"random direction", "principal direction"}
    for directions in controls.values():
        assert directions.count == 1
        assert directions.decoder[:, 0].norm().item() == pytest.approx(1.0)
    x = acts.features.double().numpy()
    top = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)[2][0]
    principal = controls["principal direction"].decoder[:, 0].numpy()
    assert abs(float(principal @ top)) == pytest.approx(1.0, abs=1e-9)


def test_the_random_control_is_a_seeded_gaussian_direction():
    sae, acts = _control_data()
    expected = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    found = control_directions(sae, 0, acts, seed=5)["random direction"].decoder[:, 0]
    torch.testing.assert_close(found, expected / expected.norm())
    assert not torch.allclose(found, control_directions(sae, 0, acts, seed=6)["random direction"].decoder[:, 0])
    with pytest.raises(ValueError, match="the SAE reads 6-dimensional activations, acts have 5"):
        control_directions(sae, 0, ActivationSet(acts.features[:, :5]))


def test_control_codes_are_centred_and_as_large_as_the_features_code():
    sae, acts = _control_data()
    feature_code = sae.encode_all(acts)[:, 1].double()
    rms = feature_code.pow(2).mean().sqrt()
    for directions in control_directions(sae, 1, acts).values():
        code = acts.features.double() @ directions.encoder[0] + directions.offset[0]
        assert code.mean().item() == pytest.approx(0.0, abs=1e-9)
        assert code.pow(2).mean().sqrt().item() == pytest.approx(rms.item(), rel=1e-6)


# ---- seed matching -------------------------------------------------------------------------


def test_match_features_recovers_a_permutation_with_sign_flips():
    reference = random_sae(8, d_latent=6, seed=1)
    permutation = torch.tensor([4, 0, 5, 2, 1, 3])  # other's feature j is reference's permutation[j]
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    other = SparseAutoencoder(8, 6, "linear")
    with torch.no_grad():
        other.decoder.weight.copy_(reference.decoder_weight[:, permutation] * signs)
    index, similarity = match_features(reference, other)
    assert torch.equal(permutation[index], torch.arange(6))  # the inverse permutation
    torch.testing.assert_close(similarity, torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(4))
def test_match_features_maximises_total_similarity_like_exhaustive_search(seed):
    reference, other = random_sae(5, d_latent=5, seed=seed), random_sae(5, d_latent=5, seed=seed + 100)
    index, similarity = match_features(reference, other)
    cosine = (reference.decoder_weight.T @ other.decoder_weight).abs().detach().double()
    best = max(itertools.permutations(range(5)), key=lambda p: sum(cosine[i, p[i]].item() for i in range(5)))
    assert index.tolist() == list(best)
    torch.testing.assert_close(similarity, cosine[torch.arange(5), index])


def test_match_features_needs_the_same_shapes():
    with pytest.raises(ValueError, match="same d_in and d_latent"):
        match_features(random_sae(5, d_latent=4, seed=0), random_sae(5, d_latent=6, seed=0))


def test_seed_study_repeats_the_sweep_for_each_seed_and_matches_to_seed_zero():
    model, train = classified_clusters(n=120, seed=1)
    test = train.subset(torch.arange(60, 120))
    alphas = [0.0, 1.0, 4.0]
    saes = [train_sae(train, 6, seed=s, progress=False, epochs=2, batch_size=64)[0] for s in range(3)]
    study = seed_study(model, saes, train, test, alphas)
    assert study.accuracy.shape == (3, 3, 3, 3)
    assert study.features.shape == study.match_similarity.shape == study.own_choice.shape == (3, 3)
    assert len(study.metrics) == 3 and "explained_variance" in study.metrics[0]
    chosen = torch.tensor([select_feature(class_profile(saes[0], train), c)[0] for c in range(3)])
    assert torch.equal(study.features[0], chosen) and study.own_choice[0].all()
    assert torch.equal(study.match_similarity[0], torch.ones(3, dtype=torch.float64))
    for s in range(1, 3):
        index, similarity = match_features(saes[0], saes[s])
        assert torch.equal(study.features[s], index[chosen])
        torch.testing.assert_close(study.match_similarity[s], similarity[chosen])
    for s, c in itertools.product(range(3), range(3)):
        sweep = alpha_sweep(model, saes[s], int(study.features[s, c]), test, alphas, rule="project")
        torch.testing.assert_close(study.accuracy[s, c], sweep.per_class_accuracy)


def test_seed_bands_are_numpy_mean_and_sample_std_over_seeds():
    generator = torch.Generator().manual_seed(0)
    accuracy = torch.rand(4, 3, 5, 3, generator=generator, dtype=torch.float64)
    study = SeedStudy(
        torch.arange(5.0), accuracy, torch.zeros(4, 3), torch.ones(4, 3), torch.ones(4, 3, dtype=torch.bool), []
    )
    a = accuracy.numpy()
    mean, std = study.target_band(1)
    np.testing.assert_allclose(mean.numpy(), a[:, 1, :, 1].mean(axis=0))
    np.testing.assert_allclose(std.numpy(), a[:, 1, :, 1].std(axis=0, ddof=1))
    off = a[:, 1][:, :, [0, 2]].mean(axis=-1)
    mean, std = study.off_target_band(1)
    np.testing.assert_allclose(mean.numpy(), off.mean(axis=0))
    np.testing.assert_allclose(std.numpy(), off.std(axis=0, ddof=1))


def test_seed_study_needs_two_seeds():
    model, acts = classified_clusters()
    with pytest.raises(ValueError, match="saes must hold at least 2 SAEs"):
        seed_study(model, [random_sae(6, d_latent=5, seed=0)], acts, acts, [1.0])
