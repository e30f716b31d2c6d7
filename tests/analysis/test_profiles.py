"""Class profiles, feature selection and top-activating examples, against hand-worked cases and full sorts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from captum_salve import (
    ActivationSet,
    ClassProfile,
    class_profile,
    cross_class_features,
    select_feature,
    top_activating,
)
from captum_salve.analysis import CrossClassFeature
from tests.helpers import identity_sae, random_sae


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
    with pytest.raises(ValueError, match="class_names must have 3 entries, one per class, got 2"):
        class_profile(sae, acts, class_names=["a", "b"])
    with pytest.raises(ValueError, match="carry no labels"):
        class_profile(sae, ActivationSet(torch.randn(6, 3)))
    with pytest.raises(ValueError, match=r"acts must be \(N, 4\) activations for this SAE"):
        class_profile(identity_sae(4), acts)


def test_class_profile_refuses_what_it_cannot_profile():
    sae = identity_sae(3)
    features = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="class_names must be a list of strings, one per class, got 'abc'"):
        class_profile(sae, ActivationSet(features, labels), class_names="abc")
    nan = features.clone()
    nan[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"acts holds 1 non-finite value \(NaN or Inf\); the first at index \(4, 1\)"):
        class_profile(sae, ActivationSet(nan, labels))
    with pytest.raises(ValueError, match="labels must be integer class indices, got torch.float32"):
        ActivationSet(features, labels.float())  # refused before any profile is computed from them
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, \.\.\.\), got values from -1 to 2"):
        ActivationSet(features, labels - (labels == 0).long())
    with pytest.raises(ValueError, match="acts must hold at least 2 rows to profile .* got 1"):
        class_profile(sae, ActivationSet(features[:1], labels[:1]))
    with pytest.raises(
        TypeError,
        match=r"acts must be an ActivationSet or an ActivationStore, got Tensor; wrap the rows in ActivationSet",
    ):
        class_profile(sae, features)


def test_a_class_without_samples_has_no_features_to_pick():
    features = torch.tensor([[4.0, 1.0, 1.0], [5.0, 0.0, 1.0], [0.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    profile = class_profile(identity_sae(3), ActivationSet(features, torch.tensor([0, 0, 2, 2])))
    assert profile.counts.tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match=r"class 1 \('1'\) has no samples in the profile \(count 0\)"):
        select_feature(profile, 1)
    with pytest.raises(ValueError, match=r"class 1 \('1'\) has no samples in the profile \(count 0\)"):
        profile.dominant(1)
    # the empty class is not one of "the other classes": class 0's contrast is against class 2 alone
    torch.testing.assert_close(
        profile.contrast()[0], (profile.mean_codes[0] - profile.mean_codes[2]) / profile.code_std
    )
    specificity = profile.specificity()
    assert specificity[1].isnan() and not specificity[[0, 2]].isnan().any()


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
    with pytest.raises(ValueError, match=r"class_index must be an integer in \[0, 1\], got 2"):
        profile.dominant(2)
    with pytest.raises(ValueError, match="by must be 'magnitude' or 'contrast'"):
        profile.dominant(0, by="size")
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        profile.dominant(0, 0)
    with pytest.raises(ValueError, match=r"feature must be SAE feature indices in \[0, 1\], got \[-1\]"):
        profile.selectivity(-1)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: select_feature(p, 1.5), r"class_index must be an integer in \[0, 2\], got 1.5"),
        (lambda p: select_feature(p, True), r"class_index must be an integer in \[0, 2\], got True"),
        (lambda p: select_feature(p, 0, n=2.5), "n must be an integer >= 1, got 2.5"),
        (lambda p: cross_class_features(p, top=0), "top must be an integer >= 1, got 0"),
        (lambda p: cross_class_features(p, top=-1), "top must be an integer >= 1, got -1"),
        (lambda p: cross_class_features(p, n_classes=2.0), r"n_classes must be an integer in \[2, 2\], got 2.0"),
    ],
)
def test_class_and_count_arguments_must_be_integers(call, message):
    with pytest.raises(ValueError, match=message):
        call(_profile([[3.0, -5.0, 1.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]]))


def test_numpy_and_tensor_integers_are_classes_and_counts():
    profile = _profile([[3.0, -5.0, 1.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert select_feature(profile, np.int64(0), n=np.int32(2), by="magnitude") == [1, 0]
    assert select_feature(profile, torch.tensor(0)) == select_feature(profile, 0)


def test_cross_class_features_find_a_feature_planted_in_two_classes():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    features = torch.randn(200, 5, generator=generator) * 0.3
    features[labels == 1, 3] += 4.0  # coordinate 3 is shared by classes 1 and 2
    features[labels == 2, 3] += 3.0
    features[labels == 0, 0] += 4.0  # coordinate 0 belongs to class 0 alone
    profile = class_profile(identity_sae(5), ActivationSet(features, labels))
    magnitude = profile.mean_codes[:, 3].abs().sort(descending=True).values
    found = cross_class_features(profile, n_classes=2, top=2, score="gap")
    assert found[0].feature == 3 and found[0].classes == (1, 2)
    assert found[0].score == pytest.approx(float((magnitude[1] - magnitude[2]) / profile.code_std[3]), rel=1e-5)
    assert found[0].score > found[1].score and len(found) == 2
    found = cross_class_features(profile, n_classes=2, top=2)  # by share, the default
    assert found[0].feature == 3 and found[0].classes == (1, 2)
    assert found[0].score == pytest.approx(float(magnitude[:2].sum() / magnitude.sum()), rel=1e-5)
    assert found[0].score > found[1].score
    with pytest.raises(ValueError, match=r"score must be one of \('share', 'gap'\), got 'ratio'"):
        cross_class_features(profile, score="ratio")
    with pytest.raises(ValueError, match=r"n_classes must be an integer in \[2, 3\], got 4"):
        cross_class_features(profile, n_classes=4)


def test_cross_class_features_leave_classes_without_samples_out():
    # feature 0 is large for classes 0 and 1; class 3 has no samples, so its zero mean is no "other class"
    mu = torch.tensor([[4.0, 1.0], [3.0, 1.0], [1.0, 2.0], [0.0, 0.0]])
    profile = ClassProfile(mu, torch.tensor([5, 5, 5, 0]), torch.ones(2), list("abcd"))
    assert cross_class_features(profile, top=1, score="gap") == [CrossClassFeature(0, (0, 1), 2.0)]
    assert cross_class_features(profile, top=1) == [CrossClassFeature(0, (0, 1), 7 / 8)]
    with pytest.raises(ValueError, match=r"n_classes must be an integer in \[2, 2\] \(1 of the 4 classes have no"):
        cross_class_features(profile, n_classes=3)


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
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\], got 6"):
        top_activating(sae, acts, 0, k=6)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\], got 0"):
        top_activating(sae, acts, 0, k=0)
    with pytest.raises(ValueError, match=r"feature must be SAE feature indices in \[0, 2\], got \[3\]"):
        top_activating(sae, acts, 3)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\], got 2.5"):
        top_activating(sae, acts, 0, k=2.5)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\], got True"):
        top_activating(sae, acts, 0, k=True)
    assert (
        top_activating(sae, acts, np.int64(0), k=np.int64(2))[0].tolist()
        == top_activating(sae, acts, 0, k=2)[0].tolist()
    )
    nan = acts.features.clone()
    nan[2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"acts holds 1 non-finite value \(NaN or Inf\); the first at index \(2, 0\)"):
        top_activating(sae, ActivationSet(nan), 0, k=2)


def test_the_share_score_ranks_a_feature_silent_elsewhere_above_a_larger_but_broader_one():
    """Feature 0: large for classes 0 and 1, and large for class 2 too; feature 1: smaller, but on 0 and 1 only."""
    mu = torch.tensor([[9.0, 1.0], [8.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    profile = ClassProfile(mu, torch.tensor([5, 5, 5, 5]), torch.ones(2), list("abcd"))
    assert [f.feature for f in cross_class_features(profile, top=2, score="gap")] == [0, 1]
    by_share = cross_class_features(profile, top=2)
    assert [f.feature for f in by_share] == [1, 0] and by_share[0].score == 1.0
    assert by_share[1].score == pytest.approx(17 / 20)
