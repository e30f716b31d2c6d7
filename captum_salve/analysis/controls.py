"""Controls for an edit: directions that are not SAE features, removed as strongly."""

from __future__ import annotations

import torch

from captum_salve.activations import ActivationSet, check_activation_set
from captum_salve.checks import check_int
from captum_salve.edit.rules import FeatureDirections
from captum_salve.sae.model import SparseAutoencoder, check_finite

__all__ = ["control_directions"]


def control_directions(
    sae: SparseAutoencoder, feature: int, acts: ActivationSet, *, seed: int = 0
) -> dict[str, FeatureDirections]:
    """The controls for an edit: a random unit direction and the top principal direction of ``acts``.

    Their codes are scaled so that their root-mean-square over ``acts`` equals the
    SAE feature's, so the same α removes as much under ``rule="project"``; under
    ``rule="salve"`` only the unit direction matters. ``acts`` must be finite.

    Example:
        >>> controls = control_directions(sae, 12, train_acts)
        >>> sorted(controls)
        ['principal direction', 'random direction']
        >>> sweep = alpha_sweep(model, controls["random direction"], None, test_acts, [0, 1, 5], rule="project")
    """
    check_activation_set(acts, "acts")
    if acts.dim != sae.d_in:
        raise ValueError(f"the SAE reads {sae.d_in}-dimensional activations, acts have {acts.dim}")
    check_finite(acts.features, "acts")
    features = acts.features.double()
    mean = features.mean(dim=0)
    centred = features - mean
    reference = FeatureDirections.from_sae(sae, feature)
    code_rms = (
        (features @ reference.encoder[0].double().cpu() + reference.offset[0].double().cpu()).pow(2).mean().sqrt()
    )
    generator = torch.Generator().manual_seed(check_int(seed, "seed"))
    random = torch.randn(features.shape[1], generator=generator, dtype=torch.float64)
    principal = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    controls = {}
    for name, vector in (("random direction", random), ("principal direction", principal)):
        unit = vector / vector.norm()
        rms = (centred @ unit).pow(2).mean().sqrt().clamp_min(1e-12)
        controls[name] = FeatureDirections.from_vectors(unit, mean=mean, code_scale=code_rms / rms)
    return controls
