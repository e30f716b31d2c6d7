"""The analyses read an on-disk ActivationStore chunk by chunk and answer as they do on the rows in memory.

The store's shards (700 rows) and the chunks (333 rows) divide neither each other nor
the 2503 rows, so every chunk boundary falls somewhere new. Counts, confusions and
top-k indices must be equal; means, deviations and metrics equal to 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from captum_salve import (
    ActivationSet,
    ActivationStore,
    alpha_crit,
    alpha_sweep,
    class_profile,
    control_directions,
    sae_metrics,
    seed_study,
    top_activating,
)
from tests.helpers import HeadOnly, identity_sae, random_sae

N, M, CLASSES = 2503, 8, 5
CHUNK = 333
RTOL = 1e-6


@pytest.fixture(scope="module")
def acts() -> ActivationSet:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (N,), generator=generator)
    centres = torch.randn(CLASSES, M, generator=generator) * 2
    # anisotropic and far from zero: the principal direction is clear and centring matters
    scale = torch.tensor([0.5, 3.0, 0.2, 0.7, 0.1, 0.4, 1.0, 0.3])
    features = centres[labels] + torch.randn(N, M, generator=generator) * scale + 4.0
    return ActivationSet(features, labels)


@pytest.fixture(scope="module")
def store(acts, tmp_path_factory) -> ActivationStore:
    return ActivationStore.from_set(acts, tmp_path_factory.mktemp("acts") / "store", shard_rows=700)


@pytest.fixture(scope="module")
def sae():
    return random_sae(M, "relu", d_latent=16, seed=1)


@pytest.fixture(scope="module")
def model(acts) -> HeadOnly:
    centres = torch.stack([acts.features[acts.labels == c].mean(0) for c in range(CLASSES)])
    return HeadOnly.from_weights(centres - centres.mean(0), torch.zeros(CLASSES))


def test_the_store_holds_the_rows_in_shards_that_do_not_divide_them(acts, store):
    assert [len(chunk) for chunk in store.chunks(CHUNK)] == [CHUNK] * 7 + [N - 7 * CHUNK]
    assert len(store.shard_files) == 4
    assert torch.equal(store.block(0, N), acts.features) and torch.equal(store.labels, acts.labels)


def test_class_profile_of_a_store_equals_the_profile_in_memory(acts, store, sae):
    streamed = class_profile(sae, store, chunk_rows=CHUNK)
    in_memory = class_profile(sae, acts)
    assert torch.equal(streamed.counts, in_memory.counts)
    torch.testing.assert_close(streamed.mean_codes, in_memory.mean_codes, rtol=RTOL, atol=0)
    torch.testing.assert_close(streamed.code_std, in_memory.code_std, rtol=RTOL, atol=0)
    # and both equal the codes' own statistics, computed at once
    with torch.no_grad():
        codes = sae.encode(acts.features).double()
    expected = torch.stack([codes[acts.labels == c].mean(0) for c in range(CLASSES)])
    torch.testing.assert_close(streamed.mean_codes.double(), expected, rtol=RTOL, atol=1e-7)
    torch.testing.assert_close(streamed.code_std.double(), codes.std(dim=0), rtol=RTOL, atol=1e-7)


def test_top_activating_rows_of_a_store_are_those_in_memory(acts, store, sae):
    for feature in (0, 5, 11):
        indices, values = top_activating(sae, store, feature, k=25, chunk_rows=CHUNK)
        expected_indices, expected_values = top_activating(sae, acts, feature, k=25)
        assert torch.equal(indices, expected_indices) and torch.equal(values, expected_values)
        assert torch.equal(values, sae.encode_all(acts)[indices, feature])


def test_of_equal_codes_the_earlier_row_comes_first_whatever_the_chunks():
    features = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    acts = ActivationSet(features)
    for chunk_rows in (1, 2, 4, 6):
        indices, values = top_activating(identity_sae(2, "relu"), acts, 0, k=5, chunk_rows=chunk_rows)
        assert indices.tolist() == [2, 0, 3, 5, 1] and values.tolist() == [2.0, 1.0, 1.0, 1.0, 0.0]


def test_alpha_sweep_of_a_store_counts_what_it_counts_in_memory(acts, store, model, sae):
    for rule in ("salve", "project"):
        streamed = alpha_sweep(model, sae, [3, 7], store, [0.0, 0.5, 2.0, 8.0], rule=rule, chunk_rows=CHUNK)
        in_memory = alpha_sweep(model, sae, [3, 7], acts, [0.0, 0.5, 2.0, 8.0], rule=rule)
        assert torch.equal(streamed.confusion, in_memory.confusion)
        assert torch.equal(streamed.baseline, in_memory.baseline)
        assert streamed.confusion.sum().item() == 4 * N and len(streamed.confusion.unique()) > 10


def test_control_directions_of_a_store_equal_those_in_memory_and_the_svd(acts, store, sae):
    streamed = control_directions(sae, 4, store, chunk_rows=CHUNK)
    in_memory = control_directions(sae, 4, acts)
    for name in ("random direction", "principal direction"):
        for field in ("decoder", "encoder", "offset"):
            found, expected = getattr(streamed[name], field), getattr(in_memory[name], field)
            torch.testing.assert_close(found, expected, rtol=RTOL, atol=1e-9)
    x = acts.features.double()
    top = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[0]
    principal = streamed["principal direction"].decoder[:, 0]
    assert abs(float(principal @ top)) == pytest.approx(1.0, abs=1e-9)
    assert principal[principal.abs().argmax()] > 0  # the sign is fixed: its largest coordinate is positive
    with torch.no_grad():  # the controls' codes are as large as the affine part of the feature's
        rms = sae.pre_activation(acts.features)[:, 4].double().pow(2).mean().sqrt()
    code = x @ streamed["principal direction"].encoder[0] + streamed["principal direction"].offset[0]
    assert code.pow(2).mean().sqrt().item() == pytest.approx(rms.item(), rel=RTOL)


def test_sae_metrics_of_a_store_equal_those_in_memory(acts, store, model, sae):
    streamed = sae_metrics(sae, store, head=model, batch_size=CHUNK)
    in_memory = sae_metrics(sae, acts, head=model)
    assert streamed.keys() == in_memory.keys()
    assert (
        streamed["accuracy"] == in_memory["accuracy"] and streamed["spliced_accuracy"] == in_memory["spliced_accuracy"]
    )
    assert streamed["dead_fraction"] == in_memory["dead_fraction"] and streamed["l0"] == in_memory["l0"]
    for name in ("mse", "explained_variance"):
        assert streamed[name] == pytest.approx(in_memory[name], rel=RTOL)


def test_alpha_crit_of_a_store_is_the_thresholds_in_memory_in_row_order(acts, store, model, sae):
    for criterion, method in (("zero_logit", "exact"), ("flip", "linear")):
        streamed = alpha_crit(model, sae, 3, store, acts.labels, criterion=criterion, method=method, chunk_rows=CHUNK)
        in_memory = alpha_crit(model, sae, 3, acts, acts.labels, criterion=criterion, method=method)
        assert streamed.shape == (N,) and torch.equal(streamed.isinf(), in_memory.isinf())
        torch.testing.assert_close(streamed, in_memory, rtol=RTOL, atol=0)
    # bisection walks a grid per chunk; under "salve" with a zero bias every target logit reaches 0, so it ends early
    first = acts.subset(torch.arange(40))
    few = ActivationStore.from_set(first, store.path.parent / "few", shard_rows=15)
    bisected = alpha_crit(model, sae, 3, few, first.labels, method="bisect", chunk_rows=10)
    exact = alpha_crit(model, sae, 3, first, first.labels)
    assert (exact > 0).sum() > 10
    torch.testing.assert_close(bisected, exact, rtol=1e-9, atol=0)


def test_codes_and_seed_studies_read_a_store_too(acts, store, model, sae):
    assert torch.equal(sae.encode_all(store, batch_size=CHUNK), sae.encode_all(acts))
    saes = [sae, random_sae(M, "relu", d_latent=16, seed=2)]
    streamed = seed_study(model, saes, store, store, [0.0, 4.0])
    in_memory = seed_study(model, saes, acts, acts, [0.0, 4.0])
    assert torch.equal(streamed.features, in_memory.features) and torch.equal(streamed.accuracy, in_memory.accuracy)


def test_a_store_whose_rows_hold_nan_is_refused_with_the_row_named(acts, model, sae, tmp_path):
    features = acts.features.clone()
    features[1234, 3] = float("nan")
    store = ActivationStore.from_set(ActivationSet(features, acts.labels), tmp_path / "nan", shard_rows=700)
    where = r"holds 1 non-finite value \(NaN or Inf\); the first at index \(1234, 3\)"
    for refuse in (
        lambda: class_profile(sae, store, chunk_rows=CHUNK),
        lambda: top_activating(sae, store, 0, chunk_rows=CHUNK),
        lambda: alpha_sweep(model, sae, 0, store, [1.0], chunk_rows=CHUNK),
        lambda: control_directions(sae, 0, store, chunk_rows=CHUNK),
        lambda: sae_metrics(sae, store, batch_size=CHUNK),
        lambda: alpha_crit(model, sae, 0, store, 0, chunk_rows=CHUNK),
    ):
        with pytest.raises(ValueError, match=where):
            refuse()
