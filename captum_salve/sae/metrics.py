"""The numbers every SAE reports."""

from __future__ import annotations

import torch
from torch import nn

from captum_salve.activations import ActivationSet
from captum_salve.models import find_head
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sites import HEAD_INPUT

__all__ = ["sae_metrics"]


@torch.no_grad()
def sae_metrics(
    sae: SparseAutoencoder,
    acts: ActivationSet,
    head: nn.Module | None = None,
    *,
    batch_size: int = 4096,
) -> dict[str, float]:
    r"""Reconstruction, sparsity and downstream metrics of an SAE on a set of activations.

    Args:
        sae: The autoencoder.
        acts: Activations it should reconstruct.
        head: The classifier's linear head, or the whole classifier (its head is
            found). With labelled head-input activations this adds ``accuracy``
            and ``spliced_accuracy``.
        batch_size: Rows per pass.

    Returns:
        ``mse`` (mean over rows of ``‖a − â‖²``), ``explained_variance``
        (``1 − Σ‖a − â‖² / Σ‖a − ā‖²``, centred on the data mean), ``l0`` (mean count of
        active codes; a "linear" SAE counts ``|z| > sae.active_threshold``),
        ``dead_fraction`` (features never active on ``acts``), and with a head,
        ``accuracy`` and ``spliced_accuracy`` (the head applied to ``â`` instead of ``a``).

    Example:
        >>> metrics = sae_metrics(sae, acts, head=model)
        >>> metrics["spliced_accuracy"] - metrics["accuracy"]
    """
    if acts.dim != sae.d_in:
        raise ValueError(f"the SAE reads {sae.d_in}-dimensional activations, acts have {acts.dim}")
    linear = None
    if head is not None:
        if acts.site != HEAD_INPUT:
            raise ValueError(f"spliced accuracy needs head-input activations, but acts were read at {acts.site!r}")
        linear = head if isinstance(head, nn.Linear) else find_head(head)[1]
        acts.require_labels()
    device = sae.decoder.weight.device
    mean = acts.features.double().mean(dim=0).to(device)
    squared_error = total = active = 0.0
    fired = torch.zeros(sae.d_latent, dtype=torch.bool, device=device)
    correct = spliced = 0
    for start in range(0, len(acts), batch_size):
        a = acts.features[start : start + batch_size].to(device, torch.float32)
        a_hat, z = sae(a)
        squared_error += (a - a_hat).double().pow(2).sum().item()
        total += (a.double() - mean).pow(2).sum().item()
        is_active = z.abs() > sae.active_threshold
        active += is_active.sum().item()
        fired |= is_active.any(dim=0)
        if linear is not None:
            labels = acts.labels[start : start + batch_size].to(linear.weight.device)
            correct += (linear(a.to(linear.weight)).argmax(1) == labels).sum().item()
            spliced += (linear(a_hat.to(linear.weight)).argmax(1) == labels).sum().item()
    n = len(acts)
    metrics = {
        "mse": squared_error / n,
        "explained_variance": 1.0 - squared_error / total,
        "l0": active / n,
        "dead_fraction": float((~fired).double().mean()),
    }
    if linear is not None:
        metrics.update(accuracy=correct / n, spliced_accuracy=spliced / n)
    return metrics
