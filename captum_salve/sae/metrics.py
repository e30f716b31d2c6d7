"""The numbers every SAE reports, computed in one place for training and for evaluation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_salve.activations import ActivationSet
from captum_salve.checks import check_int, check_labels
from captum_salve.models import find_head
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sites import HEAD_INPUT
from captum_salve.store import ActivationStore, check_rows

__all__ = ["ReconstructionStats", "sae_metrics"]


class ReconstructionStats:
    r"""Running sums over batches from which MSE, explained variance, L0 and the dead fraction follow.

    :func:`~captum_salve.sae.train_sae` keeps one per epoch and :func:`sae_metrics`
    one per evaluation, so the two report the same quantities the same way. The
    sums stay on the data's device (no synchronisation per batch) in float64.

    Args:
        mean: (M,) the data's mean, the centre of the explained variance
            ``1 − Σ‖a − â‖² / Σ‖a − ā‖²``.
        d_latent: Number of SAE features.
        active_threshold: ``|z|`` above which a code counts as active.
        total_variance: The data's ``mean ‖a − ā‖²`` when it is known already (from
            :class:`~captum_salve.store.RowStatistics`); the batches' own spread is then
            not summed again, which saves a float64 pass per batch (per SAE in training).

    Example:
        >>> a = acts.features                     # (N, M) activations
        >>> stats = ReconstructionStats(a.mean(0), sae.d_latent, sae.active_threshold(RowStatistics.of(a)))
        >>> a_hat, z = sae(a)
        >>> stats.update(a, a_hat, z)
        >>> stats.summary()["explained_variance"]
    """

    def __init__(
        self, mean: Tensor, d_latent: int, active_threshold: float, *, total_variance: float | None = None
    ) -> None:
        self.mean = mean.double()
        self.active_threshold = active_threshold
        self.total_variance = total_variance
        self.rows = 0
        # squared error, variance about the mean, active codes
        self.sums = torch.zeros(3, dtype=torch.float64, device=mean.device)
        self.fired = torch.zeros(d_latent, dtype=torch.bool, device=mean.device)
        self._zero = torch.zeros((), dtype=torch.float64, device=mean.device)

    @torch.no_grad()
    def update(self, a: Tensor, a_hat: Tensor, z: Tensor, squared_error: Tensor | None = None) -> Tensor:
        """Add one batch: activations, their reconstructions and codes.

        ``squared_error``, the batch's ``Σ‖a − â‖²`` when the caller has it already (training's
        loss does), saves computing it again.

        Returns:
            (d,) bool: the latents active in this batch (training counts rows since each fired).
        """
        if len(z) == 0:  # a rank's empty share of the last batch
            return torch.zeros_like(self.fired)
        magnitude = z.abs()
        # A latent fired if its largest |z| passed the threshold: a (d,) comparison, cheaper than any() over (N, d).
        fired = magnitude.amax(dim=0) > self.active_threshold
        self.fired |= fired
        if squared_error is None:
            squared_error = (a - a_hat).double().pow(2).sum()
        variance = self._zero if self.total_variance is not None else (a.double() - self.mean).pow(2).sum()
        active = (magnitude > self.active_threshold).sum()
        self.sums += torch.stack([squared_error.double(), variance, active.double()])
        self.rows += len(a)
        return fired

    def summary(self) -> dict[str, float]:
        """``mse`` (mean over rows of ``‖a − â‖²``), ``explained_variance``, ``l0`` and ``dead_fraction``."""
        if self.rows == 0:
            raise ValueError("no rows were added; update() with at least one batch first")
        squared_error, variance, active = self.sums.tolist()
        if self.total_variance is not None:
            variance = self.total_variance * self.rows
        if variance == 0:
            raise ValueError(f"the {self.rows} rows are all equal: explained variance is undefined for them")
        return {
            "mse": squared_error / self.rows,
            "explained_variance": 1.0 - squared_error / variance,
            "l0": active / self.rows,
            "dead_fraction": float((~self.fired).double().mean()),
        }


@torch.no_grad()
def sae_metrics(
    sae: SparseAutoencoder,
    acts: ActivationSet | ActivationStore,
    head: nn.Module | None = None,
    *,
    batch_size: int = 4096,
) -> dict[str, float]:
    r"""Reconstruction, sparsity and downstream metrics of an SAE on a set of activations.

    Args:
        sae: The autoencoder.
        acts: Activations it should reconstruct: an ActivationSet or an ActivationStore,
            read ``batch_size`` rows at a time (their mean is summed first, in float64).
        head: The classifier's linear head, or the whole classifier (its head is
            found). With labelled head-input activations this adds ``accuracy``
            and ``spliced_accuracy``.
        batch_size: Rows per pass.

    Returns:
        ``mse``, ``explained_variance`` (centred on the data mean), ``l0`` (mean
        count of active codes; a "linear" SAE counts ``|z| > 0.01 × spread`` of ``acts``),
        ``dead_fraction`` (features never active on ``acts``), and with a head,
        ``accuracy`` and ``spliced_accuracy`` (the head applied to ``â`` instead of ``a``).
        See :class:`ReconstructionStats`.

    Example:
        >>> metrics = sae_metrics(sae, acts, head=model)
        >>> metrics["spliced_accuracy"] - metrics["accuracy"]
    """
    rows = check_rows(acts, "acts")
    if rows.dim != sae.d_in:
        raise ValueError(f"the SAE reads {sae.d_in}-dimensional activations, acts have {rows.dim}")
    if len(rows) < 2:
        raise ValueError(f"acts hold {len(rows)} rows; explained variance needs at least 2")
    batch_size = check_int(batch_size, "batch_size", 1)
    statistics = rows.finite_statistics("acts", chunk_rows=batch_size)
    linear = None
    if head is not None:
        if rows.site != HEAD_INPUT:
            raise ValueError(f"spliced accuracy needs head-input activations, but acts were read at {rows.site!r}")
        linear = head if isinstance(head, nn.Linear) else find_head(head)[1]
        if linear.in_features != sae.d_in:
            raise ValueError(f"head takes {linear.in_features}-dimensional inputs but the SAE reads {sae.d_in}")
        check_labels(rows.require_labels(), "acts.labels", linear.out_features)
    device = sae.decoder_weight.device
    stats = ReconstructionStats(statistics.mean.to(device), sae.d_latent, sae.active_threshold(statistics))
    correct = spliced = 0
    for chunk in rows.chunks(batch_size):
        a = chunk.features.to(device, torch.float32)
        a_hat, z = sae(a)
        stats.update(a, a_hat, z)
        if linear is not None:
            labels = chunk.labels.to(linear.weight.device)
            correct += (linear(a.to(linear.weight)).argmax(1) == labels).sum().item()
            spliced += (linear(a_hat.to(linear.weight)).argmax(1) == labels).sum().item()
    metrics = stats.summary()
    if linear is not None:
        metrics.update(accuracy=correct / len(rows), spliced_accuracy=spliced / len(rows))
    return metrics
