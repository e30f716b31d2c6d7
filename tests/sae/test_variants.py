"""SAE variants: what each code activation computes, and a new variant as one class."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from hypothesis import given, settings, strategies as st

from captum_salve import SparseAutoencoder, sae_metrics, train_sae
from captum_salve.sae import VARIANTS, ActivationName, CodeActivation, code_activation
from captum_salve.sae.variants import Archetypal, BatchTopK, Matryoshka, TopK, TrainingBatch, _onto_simplex
from captum_salve.store import RowStatistics
from tests.helpers import labelled_clusters

TOPK_FAMILY = ("topk", "batchtopk", "matryoshka", "archetypal")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    d_in=st.integers(1, 12),
    d_latent=st.integers(1, 20),
    activation=st.sampled_from(list(VARIANTS)),
    data=st.data(),
)
def test_codes_obey_their_activation(n, d_in, d_latent, activation, data):
    k = data.draw(st.integers(1, d_latent)) if activation in TOPK_FAMILY else None
    sae = SparseAutoencoder(d_in, d_latent, activation, k=k)
    threshold = data.draw(st.floats(0.0, 1.0))
    if activation in ("batchtopk", "matryoshka", "jumprelu"):
        sae.code_activation.threshold.data.fill_(threshold)
    a = torch.randn(n, d_in)
    a_hat, z = sae(a)
    assert a_hat.shape == (n, d_in) and z.shape == (n, d_latent)
    pre = sae.pre_activation(a)
    if activation == "linear":
        torch.testing.assert_close(z, pre)
    elif activation == "relu":
        torch.testing.assert_close(z, pre.clamp_min(0))
    elif activation == "jumprelu":
        torch.testing.assert_close(z, pre * (pre > threshold))
    elif activation in ("batchtopk", "matryoshka"):
        torch.testing.assert_close(z, pre.clamp_min(0) * (pre > threshold))
    else:
        assert ((z != 0).sum(dim=1) <= k).all() and (z >= 0).all()
        kept = pre.topk(k, dim=1).values.clamp_min(0).sum(dim=1)
        torch.testing.assert_close(z.sum(dim=1), kept)
    torch.testing.assert_close(sae.decoder_weight.norm(dim=0), torch.ones(d_latent))


class Shrink(CodeActivation):
    """A variant written for this test: soft thresholding at 0.5 (a JumpReLU cousin)."""

    name = "shrink"

    def forward(self, pre):
        return torch.sign(pre) * (pre.abs() - 0.5).clamp_min(0)


def test_a_new_variant_is_one_class_that_the_model_and_training_use():
    sae = SparseAutoencoder(6, 9, Shrink())
    a = torch.randn(5, 6)
    pre = sae.pre_activation(a)
    assert torch.equal(sae.encode(a), torch.sign(pre) * (pre.abs() - 0.5).clamp_min(0))
    trained, history = train_sae(
        labelled_clusters(64, 6, 4, scale=3.0, spread=0.3, offset=5.0)[1],
        9,
        activation=Shrink(),
        epochs=2,
        progress=False,
    )
    assert (
        trained.activation == "shrink"
        and trained.code_activation.relative_active_threshold == 0.0
        and len(history) == 2
    )


def test_every_named_variant_is_registered_once():
    assert set(VARIANTS) == set(get_args(ActivationName))
    assert [code_activation(name, **VARIANTS[name].default_settings(64)).name for name in VARIANTS] == list(VARIANTS)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), d_latent=st.integers(1, 12), data=st.data())
def test_batchtopk_keeps_k_codes_per_row_on_average_over_the_batch(n, d_latent, data):
    k = data.draw(st.integers(1, d_latent))
    variant = BatchTopK(k)
    pre = torch.randn(n, d_latent)
    z = variant.training_codes(pre)
    positive = torch.relu(pre).flatten()
    kept = positive.topk(min(k * n, positive.numel())).values
    assert (z != 0).sum() == (kept > 0).sum() and (z >= 0).all()
    torch.testing.assert_close(z.sum(), kept.sum())
    assert torch.equal(z[z != 0], pre[z != 0])  # a kept code is its pre-activation


def test_batchtopk_infers_with_the_running_threshold_of_its_smallest_kept_code():
    variant = BatchTopK(1)
    assert torch.equal(variant(torch.tensor([[-1.0, 0.5]])), torch.tensor([[0.0, 0.5]]))  # untrained: a ReLU
    variant.training_codes(torch.tensor([[3.0, 2.5], [1.0, 0.5]]))  # keeps 3.0 and 2.5
    assert variant.threshold == 2.5  # the first batch sets it
    variant.training_codes(torch.tensor([[4.0, 1.5], [0.0, 0.0]]))  # keeps 4.0 and 1.5
    assert variant.threshold == 2.5 + 0.01 * (1.5 - 2.5)  # then a running mean
    torch.testing.assert_close(variant(torch.tensor([[2.495, 2.5]])), torch.tensor([[2.495, 2.5]]))
    torch.testing.assert_close(variant(torch.tensor([[2.485, 1.0]])), torch.tensor([[0.0, 0.0]]))


def test_jumprelu_gradients_are_the_papers_straight_through_estimators():
    jump = SparseAutoencoder(3, 4, "jumprelu").code_activation
    jump.bandwidth = 0.2
    with torch.no_grad():
        jump.threshold.copy_(torch.tensor([0.5, 0.5, 1.0, 1.0]))
    pre = torch.tensor([[0.45, 0.7, 1.05, 0.2], [0.58, 0.3, 0.95, 2.0]], requires_grad=True)
    z = jump.training_codes(pre)
    assert torch.equal(z.detach(), pre.detach() * (pre.detach() > jump.threshold.detach()))
    z.sum().backward()
    # x: 1 where the code is open; θ: −θ/ε for every pre-activation within ε/2 of it
    assert torch.equal(pre.grad, (pre.detach() > jump.threshold.detach()).float())
    window = ((pre.detach() - jump.threshold.detach()).abs() < 0.1).float().sum(0)
    torch.testing.assert_close(jump.threshold.grad, -window * jump.threshold.detach() / 0.2)
    jump.threshold.grad = None
    batch = TrainingBatch(None, None, pre, None, None, None, None, 1.0, None)
    l0 = jump.sparsity(batch)
    assert l0 == (pre.detach() > jump.threshold.detach()).sum()  # the penalty counts open codes
    l0.backward()
    torch.testing.assert_close(jump.threshold.grad, -window / 0.2)


def test_jumprelu_thresholds_and_bandwidth_scale_with_the_data():
    sae = SparseAutoencoder(3, 4, "jumprelu")
    statistics = RowStatistics.of(torch.randn(50, 3) * 7.0)
    sae.code_activation.prepare(sae, statistics)
    torch.testing.assert_close(sae.code_activation.threshold.detach(), torch.full((4,), 1e-3 * statistics.spread))
    assert sae.code_activation.bandwidth == 0.1 * statistics.spread
    with torch.no_grad():
        sae.code_activation.threshold[0] = -1.0
    sae.code_activation.after_step()
    assert sae.code_activation.threshold[0] == 0.05 * statistics.spread  # never below ε/2


def test_auxk_loss_is_the_dead_latents_reconstruction_of_the_residual():
    torch.manual_seed(0)
    sae = SparseAutoencoder(5, 6, TopK(1, aux_k=2))
    a = torch.randn(4, 5)
    pre = sae.pre_activation(a)
    z = sae.code_activation.training_codes(pre)
    a_hat = sae.decode(z)
    squared_error = (a - a_hat).pow(2).sum()
    dead = torch.tensor([False, True, True, True, False, False])
    batch = TrainingBatch(sae, a, pre, z, a_hat, squared_error, torch.tensor(2.0), 0.0, dead)
    residual = (a - a_hat).detach()
    expected = squared_error / 2.0
    aux = torch.zeros(4, 5)
    for row in range(4):  # by hand: the two largest dead pre-activations of each row, then ReLU
        for latent in pre[row, 1:4].topk(2).indices + 1:
            aux[row] += torch.relu(pre[row, latent]) * sae.decoder_weight[:, latent]
    spread = (residual - residual.mean(0)).pow(2).sum()
    expected = expected + (1 / 32) * 4 * (residual - aux).pow(2).sum() / spread
    torch.testing.assert_close(sae.code_activation.loss(batch), expected)
    nothing_dead = TrainingBatch(sae, a, pre, z, a_hat, squared_error, torch.tensor(2.0), 0.0, dead & False)
    torch.testing.assert_close(sae.code_activation.loss(nothing_dead), squared_error / 2.0)


def test_topk_resampling_starts_latents_strong_enough_to_enter_the_top_k(monkeypatch):
    acts = labelled_clusters(600, 16, 4, scale=3.0, spread=0.5, offset=2.0, seed=3)[1]
    settings = dict(activation="topk", k=8, epochs=12, batch_size=64, progress=False)
    _, history = train_sae(acts, 96, **settings)
    monkeypatch.setattr(TopK, "resample_encoder_scale", 0.2)  # the ReLU recipe's gentle start
    _, gentle = train_sae(acts, 96, **settings)
    assert history[-1]["dead_fraction"] < 0.1 and gentle[-1]["dead_fraction"] > 0.2
    assert gentle[-2]["resampled"] > 0.2 * 96  # resampled every epoch, and still dead


@pytest.mark.parametrize("variant", ["relu", "topk", "batchtopk", "jumprelu", "matryoshka", "archetypal"])
def test_every_variant_trains_to_a_sparse_reconstruction(variant):
    acts = labelled_clusters(400, 16, 8, scale=3.0, spread=0.3, offset=5.0, seed=1)[1]
    k = 4 if variant in TOPK_FAMILY else None
    sae, history = train_sae(acts, 32, activation=variant, k=k, epochs=15, batch_size=64, progress=False)
    metrics = sae_metrics(sae, acts)  # as the trained SAE encodes: BatchTopK with its threshold
    assert metrics["explained_variance"] > 0.7 and metrics["l0"] < 20, metrics  # a linear SAE's L0 is 31.7 here


def test_matryoshka_loss_is_the_mean_of_every_prefixs_own_reconstruction_error():
    torch.manual_seed(0)
    sae = SparseAutoencoder(5, 8, Matryoshka(2, prefixes=[1, 3, 8]))
    with torch.no_grad():
        sae.decoder.bias.normal_()
    a = torch.randn(6, 5)
    pre = sae.pre_activation(a)
    z = sae.code_activation.training_codes(pre)
    a_hat = sae.decode(z)
    squared_error = (a - a_hat).pow(2).sum()
    batch = TrainingBatch(sae, a, pre, z, a_hat, squared_error, torch.tensor(2.0), 0.0, torch.zeros(8, dtype=bool))
    errors = []
    for m in (1, 3, 8):  # by hand: the first m latents alone, row by row
        error = 0.0
        for row in range(6):
            a_hat_m = sae.decoder.bias.detach() + sum(z[row, j] * sae.decoder_weight[:, j] for j in range(m))
            error += (a[row] - a_hat_m).pow(2).sum()
        errors.append(error)
    torch.testing.assert_close(sae.code_activation.loss(batch), sum(errors) / 3 / 2.0)
    # one prefix, the whole dictionary: BatchTopK's loss
    assert torch.equal(Matryoshka(2, prefixes=[8]).loss(batch), BatchTopK(2).loss(batch))


def test_matryoshka_prefixes_halve_down_to_a_sixteenth_and_must_end_with_the_dictionary():
    assert SparseAutoencoder(4, 256, "matryoshka", k=8).code_activation.prefixes == (16, 32, 64, 128, 256)
    assert SparseAutoencoder(4, 12, "matryoshka", k=2).code_activation.prefixes == (1, 3, 6, 12)
    assert SparseAutoencoder(4, 12, "matryoshka", k=2).config()["prefixes"] == [1, 3, 6, 12]  # JSON in cfg.json
    with pytest.raises(ValueError, match=r"must end with d_latent=12 \(the whole dictionary\), got \[4, 8\]"):
        SparseAutoencoder(4, 12, Matryoshka(2, prefixes=[4, 8]))
    with pytest.raises(ValueError, match=r"prefixes \(of activation 'matryoshka'\) must increase, got \[4, 4, 12\]"):
        Matryoshka(2, prefixes=[4, 4, 12])
    with pytest.raises(ValueError, match=r"must be a list of sizes, got 12"):
        Matryoshka(2, prefixes=12)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 5), width=st.integers(1, 8), data=st.data())
def test_simplex_projection_is_the_nearest_point_of_the_simplex(rows, width, data):
    values = torch.tensor(
        data.draw(st.lists(st.lists(st.floats(-3, 3), min_size=width, max_size=width), min_size=rows, max_size=rows)),
        dtype=torch.float64,
    )
    projected = _onto_simplex(values)
    assert (projected >= 0).all()
    torch.testing.assert_close(projected.sum(1), torch.ones(rows, dtype=torch.float64))
    others = torch.distributions.Dirichlet(torch.full((width,), 0.3, dtype=torch.float64)).sample((64,))
    for value, point in zip(values, projected, strict=True):  # no point of the simplex is nearer
        assert ((value - point).norm() <= (value - others).norm(dim=1) + 1e-9).all()


def test_simplex_projection_of_known_rows():
    rows = torch.tensor([[0.25, 0.75, 0.0], [2.0, 0.0, 0.0], [1.0, 1.0, -1.0], [0.0, 0.0, 0.0]])
    expected = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(_onto_simplex(rows), expected)


@settings(max_examples=25, deadline=None)
@given(
    d_in=st.integers(1, 8),
    d_latent=st.integers(1, 10),
    extra_anchors=st.integers(0, 5),
    delta=st.sampled_from([0.0, 0.05, 0.5, 2.0]),
    data=st.data(),
)
def test_archetypal_atoms_are_unit_and_lie_in_the_relaxed_hull_after_a_step(d_in, d_latent, extra_anchors, delta, data):
    torch.manual_seed(data.draw(st.integers(0, 100)))
    sae = SparseAutoencoder(d_in, d_latent, Archetypal(1, anchors=d_latent + extra_anchors, delta=delta))
    weight = sae.decoder.parametrizations.weight
    with torch.no_grad():  # what a large optimiser step might do
        weight.original0.add_(torch.randn_like(weight.original0))
        weight.original1.add_(torch.randn_like(weight.original1) * 3)
    sae.normalize_decoder_()
    mixture, relaxation, anchors = weight.original0.detach(), weight.original1.detach(), weight[0].anchors
    assert (mixture >= 0).all()
    torch.testing.assert_close(mixture.sum(1), torch.ones(d_latent))
    bound = delta * anchors.norm(dim=1).pow(2).mean().sqrt()
    assert (relaxation.norm(dim=1) <= bound * (1 + 1e-5)).all()
    atoms = mixture @ anchors + relaxation  # (d, M): the paper's W C + Λ, by an independent route
    torch.testing.assert_close(sae.decoder_weight.detach(), (atoms / atoms.norm(dim=1, keepdim=True)).T)
    torch.testing.assert_close(sae.decoder_weight.norm(dim=0), torch.ones(d_latent))


def test_archetypal_prepare_starts_each_atom_on_a_kmeans_centroid_of_the_centred_sample():
    points = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])
    offsets = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    sample = torch.cat([points, (points[:, None] + offsets).flatten(0, 1)])  # the first rows start the clusters
    sae = SparseAutoencoder(2, 3, Archetypal(1, anchors=3))
    mean = torch.tensor([4.0, 4.0])
    statistics = RowStatistics.of(torch.stack([mean - 1, mean + 1]))
    with torch.no_grad():
        sae.code_activation.prepare(sae, statistics, sample)
    centroids = points - mean  # the clusters' means, centred by the data mean, at unit root-mean-square norm
    anchors = centroids / centroids.pow(2).sum(1).mean().sqrt()
    torch.testing.assert_close(sae.decoder.parametrizations.weight[0].anchors, anchors)
    atoms = torch.nn.functional.normalize(anchors, dim=1)
    torch.testing.assert_close(sae.decoder_weight.T, atoms)  # atom l on anchor l
    # the encoder: the atoms, scaled to reconstruct the centred sample best (top-1 codes, by hand)
    centred = sample - mean
    a_hat = torch.stack([row @ atoms[(row @ atoms.T).argmax()] * atoms[(row @ atoms.T).argmax()] for row in centred])
    scale = (centred * a_hat).sum() / a_hat.pow(2).sum()
    torch.testing.assert_close(sae.encoder.weight.detach(), atoms * scale)
    with pytest.raises(ValueError, match="an archetypal SAE with 3 anchors needs as many training rows, got 2"):
        sae.code_activation.prepare(sae, statistics, sample[:2])


def test_archetypal_atoms_start_at_distinct_anchors_best_aligned_with_their_directions():
    sae = SparseAutoencoder(3, 3, Archetypal(1, anchors=4))
    anchors = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 4.0], [1.0, 1.0, 0.0]])
    sae.decoder.parametrizations.weight[0].anchors.copy_(anchors)
    directions = torch.tensor([[0.1, 1.0, 0.0], [0.0, 1.0, 0.1], [1.0, 0.9, 0.0]])
    with torch.no_grad():
        atoms = sae.code_activation.set_atoms_(sae, torch.arange(3), directions)
    # the first takes anchor 1; the second, also nearest anchor 1, the best free one, 3; the third, 0
    expected = torch.nn.functional.normalize(anchors[[1, 3, 0]], dim=1)
    torch.testing.assert_close(atoms, expected)
    torch.testing.assert_close(sae.decoder_weight.T, expected)
    assert torch.equal(sae.decoder.parametrizations.weight.original0, torch.eye(4)[[1, 3, 0]])
    with pytest.raises(ValueError, match="must be at least d_latent=3, so that every atom starts at an anchor"):
        SparseAutoencoder(3, 3, Archetypal(1, anchors=2))
