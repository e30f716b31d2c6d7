"""Seed robustness: feature matching against exhaustive search, and the seed study against its parts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from captum_salve import (
    ActivationSet,
    SeedStudy,
    SparseAutoencoder,
    alpha_sweep,
    class_profile,
    match_features,
    seed_study,
    select_feature,
    train_sae,
)
from tests.helpers import classified_clusters, random_sae


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


def test_match_features_compares_directions_whatever_the_decoder_column_norms():
    reference = random_sae(8, d_latent=6, seed=1)
    other = SparseAutoencoder(8, 6, "relu")  # as loaded from another library: columns of norms 0.1 to 5
    with torch.no_grad():
        other.decoder.weight.copy_(reference.decoder_weight * torch.tensor([0.1, 5.0, 1.0, 2.0, 0.5, 3.0]))
    index, similarity = match_features(reference, other)
    assert torch.equal(index, torch.arange(6))
    torch.testing.assert_close(similarity, torch.ones(6, dtype=torch.float64))


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


def test_seed_study_takes_any_iterable_of_saes():
    model, acts = classified_clusters()
    saes = [random_sae(6, d_latent=5, seed=s) for s in range(2)]
    from_list = seed_study(model, saes, acts, acts, [0.0, 2.0])
    from_generator = seed_study(model, (sae for sae in saes), acts, acts, [0.0, 2.0])
    assert torch.equal(from_generator.accuracy, from_list.accuracy)
    assert torch.equal(from_generator.features, from_list.features)
    with pytest.raises(TypeError, match=r"saes must hold SparseAutoencoders, got \['str'\]"):
        seed_study(model, [saes[0], "seed 1"], acts, acts, [1.0])


def test_seed_study_refuses_data_that_lacks_a_class_or_is_not_finite():
    model, acts = classified_clusters()
    saes = [random_sae(6, d_latent=5, seed=s) for s in range(2)]
    without_last = acts.subset(acts.labels != 2)
    with pytest.raises(ValueError, match=r"test_acts has no samples of classes \[2\] of the model's 3"):
        seed_study(model, saes, acts, without_last, [1.0])
    with pytest.raises(ValueError, match=r"train_acts has no samples of classes \[2\] of the model's 3"):
        seed_study(model, saes, without_last, acts, [1.0])
    features = acts.features.clone()
    features[5, 2] = float("nan")
    with pytest.raises(ValueError, match=r"test_acts holds 1 non-finite value .* at index \(5, 2\)"):
        seed_study(model, saes, acts, ActivationSet(features, acts.labels), [1.0])
    with pytest.raises(ValueError, match=r"train_acts holds 1 non-finite value"):
        seed_study(model, saes, ActivationSet(features, acts.labels), acts, [1.0])
    with pytest.raises(TypeError, match="test_acts must be an ActivationSet or an ActivationStore, got Tensor"):
        seed_study(model, saes, acts, acts.features, [1.0])
