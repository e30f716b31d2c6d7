"""Controls for an edit: directions that are not SAE features, removed as strongly."""

from __future__ import annotations

import torch
from torch import Tensor

from captum_salve.activations import ActivationSet
from captum_salve.checks import check_int
from captum_salve.edit.rules import FeatureDirections
from captum_salve.sae.model import SparseAutoencoder, check_finite
from captum_salve.store import CHUNK_ROWS, ActivationStore, Rows, check_rows

__all__ = ["control_directions"]


def control_directions(
    sae: SparseAutoencoder,
    feature: int,
    acts: ActivationSet | ActivationStore,
    *,
    seed: int = 0,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, FeatureDirections]:
    """The controls for an edit: a random unit direction and the top principal direction of ``acts``.

    Their codes are scaled so that their root-mean-square over ``acts`` equals the
    SAE feature's, so the same α removes as much under ``rule="project"``; under
    ``rule="salve"`` only the unit direction matters. Everything follows from the
    mean and the covariance of ``acts``, summed chunk by chunk in float64: the
    principal direction is the covariance's top eigenvector, with its largest
    coordinate made positive (its sign is otherwise arbitrary).

    Args:
        sae: The SAE.
        feature: The SAE feature the controls stand beside.
        acts: An ActivationSet or an ActivationStore, finite.
        seed: Seed of the random direction.
        chunk_rows: Rows read at a time.

    Example:
        >>> controls = control_directions(sae, 12, train_acts)
        >>> sorted(controls)
        ['principal direction', 'random direction']
        >>> sweep = alpha_sweep(model, controls["random direction"], None, test_acts, [0, 1, 5], rule="project")
    """
    rows = check_rows(acts, "acts")
    if rows.dim != sae.d_in:
        raise ValueError(f"the SAE reads {sae.d_in}-dimensional activations, acts have {rows.dim}")
    if len(rows) == 0:
        raise ValueError("acts hold no rows; the controls are scaled to the feature's code over them")
    chunk_rows = check_int(chunk_rows, "chunk_rows", 1)
    check_finite(rows, "acts", chunk_rows=chunk_rows)
    mean, covariance = _mean_and_covariance(rows, chunk_rows)
    reference = FeatureDirections.from_sae(sae, feature)
    encoder, offset = reference.encoder[0].double().cpu(), reference.offset[0].double().cpu()
    # the feature's code a·e + β has mean ā·e + β and variance eᵀΣe
    code_rms = ((mean @ encoder + offset).pow(2) + encoder @ covariance @ encoder).sqrt()
    generator = torch.Generator().manual_seed(check_int(seed, "seed"))
    random = torch.randn(rows.dim, generator=generator, dtype=torch.float64)
    principal = torch.linalg.eigh(covariance).eigenvectors[:, -1]
    principal = principal * principal[principal.abs().argmax()].sign()
    controls = {}
    for name, vector in (("random direction", random), ("principal direction", principal)):
        unit = vector / vector.norm()
        rms = (unit @ covariance @ unit).clamp_min(0.0).sqrt().clamp_min(1e-12)
        controls[name] = FeatureDirections.from_vectors(unit, mean=mean, code_scale=code_rms / rms)
    return controls


def _mean_and_covariance(rows: Rows, chunk_rows: int) -> tuple[Tensor, Tensor]:
    """The (M,) mean and (M, M) population covariance of the rows, in float64.

    The rows are summed relative to the first chunk's mean, so that a mean far from
    zero does not cancel the covariance's digits in ``Σ aaᵀ/N − āāᵀ``.
    """
    shift = total = scatter = None
    for chunk in rows.chunks(chunk_rows):
        a = chunk.features.to("cpu", torch.float64)
        if shift is None:
            shift = a.mean(dim=0)
            total, scatter = torch.zeros_like(shift), torch.zeros(len(shift), len(shift), dtype=torch.float64)
        a = a - shift
        total += a.sum(dim=0)
        scatter += a.T @ a
    offset = total / len(rows)
    return shift + offset, scatter / len(rows) - torch.outer(offset, offset)
