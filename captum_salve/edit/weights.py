r"""Permanent edits of a classifier's head through SAE features.

Both rules change only the head ``logits = W a + b``; the edited model has the
original architecture and no hooks, so inference costs exactly what it did.

- ``rule="salve"`` (the paper's Eq. 1), with ``c = |D[:, l]|``: suppress
  ``W'[:, j] = W[:, j] · max(0, 1 − α c_j)``, enhance ``W'[:, j] = W[:, j] · (1 + α c_j)``;
  the bias is unchanged.
- ``rule="project"`` (ours): the head sees ``a' = a ∓ α z_l(a) D[:, l]`` with the code's
  affine part ``z_l(a) = e_l · a + β_l``; this folds into the head exactly as
  ``W' = W ∓ α (W D[:, l]) e_lᵀ`` and ``b' = b ∓ α β_l (W D[:, l])``.

Several features edited together combine as follows: under ``"salve"`` their
column factors multiply, under ``"project"`` their removals (or additions) add up.
Each feature may have its own α.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from captum_salve.models import find_head
from captum_salve.sae.model import SparseAutoencoder

__all__ = ["MODES", "RULES", "FeatureDirections", "edit_model", "edited", "edited_weights"]

RULES = ("salve", "project")
MODES = ("suppress", "enhance")


@dataclass(frozen=True)
class FeatureDirections:
    """What an edit needs to know about the features it edits.

    Attributes:
        decoder: (M, F) unit-norm directions, one column per feature.
        encoder: (F, M) rows e_l of the codes' affine part.
        offset: (F,) offsets β_l, so that the code's affine part is ``a @ e_l + β_l``.
    """

    decoder: Tensor
    encoder: Tensor
    offset: Tensor

    def __post_init__(self) -> None:
        m, f = self.decoder.shape
        if self.encoder.shape != (f, m) or self.offset.shape != (f,):
            raise ValueError(
                f"decoder (M, F) = {tuple(self.decoder.shape)} needs encoder (F, M) and offset (F,), "
                f"got {tuple(self.encoder.shape)} and {tuple(self.offset.shape)}"
            )

    @property
    def count(self) -> int:
        return self.decoder.shape[1]

    @classmethod
    def from_sae(cls, sae: SparseAutoencoder, features: int | Sequence[int]) -> FeatureDirections:
        """The decoder columns and encoder rows of some SAE features.

        Raises:
            ValueError: A feature index is out of range, or none is given.
        """
        index = _feature_index(features, sae.d_latent)
        with torch.no_grad():
            rows, offset = sae.affine_code(index)
            return cls(sae.decoder_weight[:, index].detach().clone(), rows.detach().clone(), offset.detach().clone())

    @classmethod
    def from_vectors(cls, vectors: Tensor, *, mean: Tensor, code_scale: Tensor | float = 1.0) -> FeatureDirections:
        """Arbitrary directions (the controls), with codes ``code_scale · u·(a − mean)``.

        Args:
            vectors: (M,) or (M, F) directions; normalised to unit length here.
            mean: (M,) centre of the activations.
            code_scale: (F,) or scalar factor on the codes, e.g. to match an SAE feature's code size.
        """
        vectors = vectors.reshape(vectors.shape[0], -1).to(torch.float64)
        units = vectors / vectors.norm(dim=0, keepdim=True)
        scale = torch.as_tensor(code_scale, dtype=torch.float64).expand(units.shape[1])
        rows = units.T * scale[:, None]
        return cls(units, rows, -(rows @ mean.to(torch.float64)))


def _feature_index(features: int | Sequence[int] | Tensor, d_latent: int) -> Tensor:
    index = torch.as_tensor(features, dtype=torch.long).reshape(-1)
    if index.numel() == 0:
        raise ValueError("feature must name at least one SAE feature")
    if index.min() < 0 or index.max() >= d_latent:
        raise ValueError(f"feature indices must be in [0, {d_latent - 1}] for this SAE, got {index.tolist()}")
    return index


def _check_rule_and_mode(rule: str, mode: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _alpha_vector(alpha: float | Sequence[float] | Tensor, count: int) -> Tensor:
    alphas = torch.as_tensor(alpha, dtype=torch.float64)
    if alphas.dim() == 0:
        alphas = alphas.expand(count)
    if alphas.shape[-1] != count:
        raise ValueError(f"alpha must be one number or one per feature ({count}), got shape {tuple(alphas.shape)}")
    if not torch.isfinite(alphas).all() or (alphas < 0).any():
        raise ValueError(f"alpha must be finite and >= 0, got {alphas.tolist()}")
    return alphas


def edited_weights(
    weight: Tensor,
    bias: Tensor | None,
    directions: FeatureDirections,
    alpha: float | Sequence[float] | Tensor,
    *,
    mode: str = "suppress",
    rule: str = "salve",
) -> tuple[Tensor, Tensor | None]:
    """The head's weight and bias after the edit (computed in float64, returned in the head's dtype).

    ``alpha`` is one number, one per feature ``(F,)``, or carries leading batch
    dimensions ``(..., F)``: the result then has them too, ``(..., K, M)`` and
    ``(..., K)``, one edited head per row (used by the bisection in :func:`alpha_crit`).

    Example:
        >>> w, b = edited_weights(head.weight, head.bias, FeatureDirections.from_sae(sae, 7), 2.0)
    """
    _check_rule_and_mode(rule, mode)
    alphas = _alpha_vector(alpha, directions.count).to(weight.device)
    w = weight.detach().to(torch.float64)
    d = directions.decoder.to(weight.device, torch.float64)
    if rule == "salve":
        c = d.abs()  # (M, F)
        steps = alphas[..., None, :] * c  # (..., M, F)
        factors = (1 - steps).clamp_min(0) if mode == "suppress" else 1 + steps
        new_w = w * factors.prod(dim=-1)[..., None, :]
        new_b = None if bias is None else bias.detach().expand(*alphas.shape[:-1], -1)
    else:
        sign = -1.0 if mode == "suppress" else 1.0
        e = directions.encoder.to(weight.device, torch.float64)
        beta = directions.offset.to(weight.device, torch.float64)
        logit_dirs = w @ d  # (K, F): what each feature's direction does to each logit
        scaled = logit_dirs * alphas[..., None, :]  # (..., K, F)
        new_w = w + sign * scaled @ e
        new_b = None if bias is None else bias.detach().to(torch.float64) + sign * scaled @ beta
    return new_w.to(weight.dtype), None if new_b is None else new_b.to(bias.dtype)


def _directions(sae: SparseAutoencoder | FeatureDirections, feature: int | Sequence[int] | None) -> FeatureDirections:
    if isinstance(sae, FeatureDirections):
        if feature is not None:
            raise ValueError("feature must be None when FeatureDirections are passed: they name their features")
        return sae
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae must be a SparseAutoencoder or FeatureDirections, got {type(sae).__name__}")
    return FeatureDirections.from_sae(sae, feature)


def _new_head(model: nn.Module, directions: FeatureDirections, alpha, mode: str, rule: str) -> tuple[nn.Linear, Tensor, Tensor | None]:
    _, head = find_head(model)
    if directions.decoder.shape[0] != head.in_features:
        raise ValueError(
            f"the SAE reads {directions.decoder.shape[0]}-dimensional activations but the head "
            f"{type(model).__name__} takes {head.in_features}: the SAE was trained on another site or model"
        )
    alphas = torch.as_tensor(alpha, dtype=torch.float64)
    if alphas.dim() > 1:
        raise ValueError(f"alpha must be one number or one per feature, got shape {tuple(alphas.shape)}")
    weight, bias = edited_weights(head.weight, head.bias, directions, alphas, mode=mode, rule=rule)
    return head, weight, bias


def edit_model(
    model: nn.Module,
    sae: SparseAutoencoder | FeatureDirections,
    feature: int | Sequence[int] | None,
    alpha: float | Sequence[float],
    *,
    mode: str = "suppress",
    rule: str = "salve",
    inplace: bool = False,
) -> nn.Module:
    """A model of the same architecture whose head weights carry the edit.

    No hooks and no wrapper: the result's ``state_dict`` loads into a freshly
    built model of the same architecture, and inference costs what it did.

    Args:
        model: A classifier with a linear head (timm / torchvision ResNet or ViT).
        sae: The SAE trained on the head input, or :class:`FeatureDirections`
            (then ``feature`` is None).
        feature: A feature index or a list of them (edited together; see the module doc).
        alpha: Edit strength ≥ 0, one number or one per feature; 0 is the identity.
        mode: ``"suppress"`` or ``"enhance"``.
        rule: ``"salve"`` (the paper's column scaling) or ``"project"`` (ours).
        inplace: Edit ``model`` itself instead of a deep copy.

    Raises:
        ValueError: Negative or non-finite α, a feature out of range, an SAE whose
            input width differs from the head's, an unknown mode or rule.

    Example:
        >>> edited_model = edit_model(model, sae, feature=12, alpha=5.0, rule="project")
        >>> torch.save(edited_model.state_dict(), "edited.pt")
    """
    directions = _directions(sae, feature)
    _, weight, bias = _new_head(model, directions, alpha, mode, rule)
    target = model if inplace else copy.deepcopy(model)
    _, head = find_head(target)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    return target


@contextmanager
def edited(
    model: nn.Module,
    sae: SparseAutoencoder | FeatureDirections,
    feature: int | Sequence[int] | None,
    alpha: float | Sequence[float],
    *,
    mode: str = "suppress",
    rule: str = "salve",
) -> Iterator[nn.Module]:
    """:func:`edit_model` in place for the length of a ``with`` block.

    The original head weights come back bit-exactly on exit, also when the block raises.

    Example:
        >>> with edited(model, sae, 12, alpha=5.0, rule="project") as m:
        ...     logits = m(images)
    """
    directions = _directions(sae, feature)
    head, weight, bias = _new_head(model, directions, alpha, mode, rule)
    saved_weight = head.weight.detach().clone()
    saved_bias = None if head.bias is None else head.bias.detach().clone()
    try:
        with torch.no_grad():
            head.weight.copy_(weight)
            if bias is not None:
                head.bias.copy_(bias)
        yield model
    finally:
        with torch.no_grad():
            head.weight.copy_(saved_weight)
            if saved_bias is not None:
                head.bias.copy_(saved_bias)

