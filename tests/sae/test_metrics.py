"""SAE metrics against a hand computation: explained variance, MSE, L0, dead latents, spliced accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from captum_salve import ActivationSet, SparseAutoencoder, sae_metrics
from captum_salve.sae.metrics import ReconstructionStats


def test_metrics_match_a_hand_computation():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(40, 5, generator=generator) + 3.0  # far from zero: centring matters
    sae = SparseAutoencoder(5, 6, "relu")
    with torch.no_grad():
        sae.encoder.bias[4:] = -1e6  # latents 4 and 5 can never fire
    acts = ActivationSet(a)
    metrics = sae_metrics(sae, acts, batch_size=7)

    x = a.double().numpy()
    with torch.no_grad():
        a_hat, z = sae(a)
    residual = x - a_hat.double().numpy()
    expected_ev = 1 - (residual**2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    assert metrics["explained_variance"] == pytest.approx(expected_ev, rel=1e-6)
    assert metrics["mse"] == pytest.approx((residual**2).sum(axis=1).mean(), rel=1e-6)
    assert metrics["l0"] == pytest.approx((z.numpy() > 0).sum(axis=1).mean())
    never_active = (z.numpy() > 0).sum(axis=0) == 0
    assert never_active[4:].all() and metrics["dead_fraction"] == pytest.approx(never_active.mean())


def test_spliced_accuracy_of_a_perfect_and_a_broken_reconstruction():
    head = nn.Linear(4, 3)
    a = torch.randn(30, 4)
    labels = head(a).argmax(1)
    labels[:5] = (labels[:5] + 1) % 3  # accuracy 25/30
    acts = ActivationSet(a, labels)
    identity = SparseAutoencoder(4, 4, "linear")
    with torch.no_grad():
        identity.encoder.weight.copy_(torch.eye(4))
        identity.decoder.weight.copy_(torch.eye(4))
    metrics = sae_metrics(identity, acts, head=head)
    assert metrics["accuracy"] == metrics["spliced_accuracy"] == pytest.approx(25 / 30)
    assert metrics["explained_variance"] == pytest.approx(1.0)
    with torch.no_grad():
        identity.decoder.weight.zero_()
    assert sae_metrics(identity, acts, head=head)["spliced_accuracy"] == pytest.approx(
        (head.bias.argmax() == labels).float().mean().item()
    )


def test_metrics_refuse_mismatched_inputs():
    sae = SparseAutoencoder(4, 8)
    with pytest.raises(ValueError, match="the SAE reads 4-dimensional activations, acts have 5"):
        sae_metrics(sae, ActivationSet(torch.randn(3, 5)))
    with pytest.raises(ValueError, match="spliced accuracy needs head-input activations"):
        sae_metrics(
            sae, ActivationSet(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), "layer3"), head=nn.Linear(4, 2)
        )
    with pytest.raises(ValueError, match="carry no labels"):
        sae_metrics(sae, ActivationSet(torch.randn(3, 4)), head=nn.Linear(4, 2))
    assert np.isfinite(sae_metrics(sae, ActivationSet(torch.randn(3, 4)))["mse"])


def test_a_linear_saes_activity_scales_with_the_data():
    """The same activations and SAE in other units (×1000, ×0.001) have the same L0 and dead fraction."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(300, 8, generator=generator) * torch.linspace(0.1, 1.0, 8) + 2.0
    sae = SparseAutoencoder(8, 12, "linear")
    with torch.no_grad():
        sae.encoder.bias[:3] = -sae.pre_activation(a)[:, :3].mean(0)  # codes near zero: some rows count inactive
    original = sae_metrics(sae, ActivationSet(a))
    spread = (a.double().var(0, unbiased=False).sum() / 8).sqrt()
    expected_l0 = (sae.encode(a).abs() > 0.01 * spread).sum(1).double().mean()
    assert original["l0"] == pytest.approx(float(expected_l0)) and original["l0"] < 12
    for scale in (1000.0, 0.001):
        scaled = SparseAutoencoder(8, 12, "linear")
        scaled.load_state_dict(sae.state_dict())
        with torch.no_grad():  # codes and reconstructions of a·scale are scale times the original's
            scaled.encoder.bias.mul_(scale)
            scaled.decoder.bias.mul_(scale)
        metrics = sae_metrics(scaled, ActivationSet(a * scale))
        assert metrics["l0"] == original["l0"] and metrics["dead_fraction"] == original["dead_fraction"]
        assert metrics["explained_variance"] == pytest.approx(original["explained_variance"], rel=1e-5)


def test_reconstruction_stats_count_codes_above_the_threshold_and_ignore_an_empty_batch():
    stats = ReconstructionStats(torch.zeros(2), 4, 0.5)
    a, a_hat = torch.tensor([[1.0, 1.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    stats.update(a, a_hat, torch.tensor([[0.6, -0.7, 0.5, 0.0], [0.1, -0.2, 0.0, 0.0]]))
    stats.update(a[:0], a_hat[:0], torch.zeros(0, 4))
    stats.update(a[:1], a[:1], torch.tensor([[0.0, 0.0, 0.0, -0.51]]))
    assert stats.fired.tolist() == [True, True, False, True]
    assert stats.rows == 3
    assert stats.sums.tolist() == [5.0, 8.0, 3.0]  # squared error, variance about 0, codes with |z| > 0.5
