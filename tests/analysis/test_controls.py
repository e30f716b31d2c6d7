"""Control directions: a seeded random direction and the principal one, with codes as large as the feature's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_salve import (
    ActivationSet,
    SparseAutoencoder,
    control_directions,
)
from tests.helpers import random_sae


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


def test_control_directions_refuse_non_finite_activations():
    sae, acts = _control_data()
    features = acts.features.clone()
    features[7, 3] = float("nan")
    with pytest.raises(ValueError, match=r"acts holds 1 non-finite value \(NaN or Inf\); the first at index \(7, 3\)"):
        control_directions(sae, 0, ActivationSet(features))
    with pytest.raises(TypeError, match="acts must be an ActivationSet or an ActivationStore, got Tensor"):
        control_directions(sae, 0, features)
