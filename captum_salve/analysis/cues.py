"""A suspected shortcut, confirmed with labels: the SAE features a cue moves on paired images."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from captum_salve.activations import collect_activations
from captum_salve.checks import check_int, shape_of
from captum_salve.models import model_input
from captum_salve.sae.model import SparseAutoencoder, check_finite
from captum_salve.sites import Site
from captum_salve.store import RowStatistics

__all__ = ["CueReliance", "cue_reliance"]


@dataclass(frozen=True)
class CueReliance:
    """SAE features ranked by how much a cue moves their codes, largest standardised effect first.

    Every tensor is in ranked order: row i describes feature ``features[i]``.

    Attributes:
        features: (d,) feature indices, by decreasing ``|effect|`` (ties: lower index first).
        effect: (d,) mean code change in units of the feature's code standard deviation over
            all 2N images, with and without the cue (0 for a feature constant over them).
        mean_change: (d,) mean over the pairs of code(with cue) − code(without).
        turns_on: (d,) share of the pairs in which the feature is inactive without the cue
            and active with it (``|z| > sae.active_threshold``, on the statistics of all 2N images' activations).
        pairs: N, the number of image pairs.

    Example:
        >>> reliance = cue_reliance(model, sae, with_cue.images, without_cue.images)
        >>> reliance.top(3)                      # the three features the cue moves most
        >>> reliance.rank_of(120)                # where feature 120 stands: 1 = first
        >>> print(reliance.table(3))
    """

    features: Tensor
    effect: Tensor
    mean_change: Tensor
    turns_on: Tensor
    pairs: int

    def top(self, n: int = 5) -> list[int]:
        """The ``n`` features the cue moves most."""
        return self.features[: check_int(n, "n", least=1)].tolist()

    def rank_of(self, feature: int) -> int:
        """Where a feature stands in the ranking: 1 for the feature the cue moves most."""
        d = len(self.features)
        feature = check_int(feature, "feature", 0, d - 1, why=f"one of the SAE's {d} features")
        return int((self.features == feature).nonzero()[0]) + 1

    def table(self, n: int = 10) -> str:
        """The top ``n`` features as a plain-text table."""
        lines = [f"{'rank':>4}  {'feature':>7}  {'effect':>7}  {'mean change':>11}  {'turns on':>8}"]
        for i in range(min(check_int(n, "n", least=1), len(self.features))):
            lines.append(
                f"{i + 1:>4}  {int(self.features[i]):>7}  {float(self.effect[i]):>7.2f}  "
                f"{float(self.mean_change[i]):>11.4f}  {float(self.turns_on[i]):>8.1%}"
            )
        return "\n".join(lines)


def cue_reliance(
    model: nn.Module,
    sae: SparseAutoencoder,
    with_cue: Tensor,
    without_cue: Tensor,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> CueReliance:
    """Rank SAE features by how much a suspected cue moves their codes on the same images with and without it.

    Image i of ``with_cue`` must be image i of ``without_cue`` with the cue added (for
    the digits canvas: ``DigitsCanvas(..., cue="all")`` and ``cue="none"``; for photos,
    the cue pasted on or painted out). Pairing removes everything but the cue: a
    feature's code change on a pair is what the cue does to it. The features are
    ranked by the mean change in units of the feature's code spread (a standardised
    effect), so features of large and small codes compare; ``turns_on`` says on how
    many pairs the cue switches the feature on.

    Args:
        model: The classifier the SAE was trained on.
        sae: The SAE; its codes are read at its own site (``sae.site``).
        with_cue: (N, C, H, W) images carrying the cue, N >= 2, as the model takes them.
        without_cue: The same N images without the cue, in the same order.
        batch_size: Images per forward pass.
        device: Where to run the model; default its own device.

    Returns:
        The features ranked by ``|effect|``, largest first.

    Raises:
        TypeError: ``sae`` is not a SparseAutoencoder, or the images are not tensors.
        ValueError: The two image sets differ in shape, hold fewer than 2 pairs, do not
            fit the model, or give activations the SAE cannot read.

    Example:
        >>> with_cue = DigitsCanvas("test", cue="all")     # every image carries the planted mark
        >>> without_cue = DigitsCanvas("test", cue="none")  # the same images without it
        >>> reliance = cue_reliance(model, sae, with_cue.images, without_cue.images)
        >>> reliance.top(1)     # the demo ResNet-18 and the pipeline's ReLU SAE (seed 0): its cross-class f120
        [120]
    """
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae must be a SparseAutoencoder, got {type(sae).__name__}")
    for name, images in (("with_cue", with_cue), ("without_cue", without_cue)):
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise TypeError(f"{name} must be a tensor of images (N, C, H, W), got {shape_of(images)}")
        model_input(model, images[:1], name)  # the images fit the model (channels, size, dtype)
    if with_cue.shape != without_cue.shape:
        raise ValueError(
            "with_cue and without_cue must be the same images with and without the cue, pair by pair, so of one "
            f"shape; got {tuple(with_cue.shape)} and {tuple(without_cue.shape)}"
        )
    if len(with_cue) < 2:
        raise ValueError(
            f"cue_reliance needs at least 2 image pairs (the effect is in standard deviations), got {len(with_cue)}"
        )
    batch_size = check_int(batch_size, "batch_size", 1)
    site = Site.from_key(sae.site)
    codes, features = [], []
    for name, images in (("with_cue", with_cue), ("without_cue", without_cue)):
        with warnings.catch_warnings():  # a non-finite row is refused below, naming the argument
            warnings.simplefilter("ignore")
            acts = collect_activations(model, images, site, batch_size=batch_size, device=device, progress=False)
        if acts.dim != sae.d_in:
            raise ValueError(
                f"the model gives {acts.dim}-dimensional activations at the SAE's site {sae.site!r}, but the SAE reads "
                f"{sae.d_in}: it was trained on another model"
            )
        check_finite(acts.features, f"the activations of {name}", "check those images")
        codes.append(sae.encode_all(acts).double())
        features.append(acts.features)
    on, off = codes
    change = on - off
    mean_change = change.mean(dim=0)
    spread = torch.cat([on, off]).std(dim=0)
    effect = torch.where(spread > 0, mean_change / spread.clamp_min(torch.finfo(spread.dtype).tiny), 0.0)
    threshold = sae.active_threshold(RowStatistics.of(torch.cat(features)))
    turns_on = ((on.abs() > threshold) & (off.abs() <= threshold)).double().mean(dim=0)
    order = effect.abs().sort(descending=True, stable=True).indices
    return CueReliance(
        features=order,
        effect=effect[order].float(),
        mean_change=mean_change[order].float(),
        turns_on=turns_on[order].float(),
        pairs=len(on),
    )
