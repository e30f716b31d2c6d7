r"""Permanent edits of a classifier's head through SAE features, as a value object.

A :class:`HeadEdit` names what to edit (feature directions), how strongly (α),
which way (suppress or enhance) and by which rule (see
:mod:`captum_salve.edit.rules`). It changes only the head ``logits = W a + b``:
the edited model has the original architecture and no hooks, so inference
costs exactly what it did, and the edit is savable as an ordinary state_dict.

Several features edited together combine as their rule says: under ``"salve"``
their column factors multiply, under ``"project"`` their removals (or
additions) add up. Each feature may have its own α.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from captum_salve.checks import shape_of
from captum_salve.edit.rules import (
    DEFAULT_RULE,
    EditMode,
    EditRule,
    EditRuleName,
    FeatureDirections,
    edit_rule,
    mode_sign,
)
from captum_salve.models import find_head
from captum_salve.sae.model import SparseAutoencoder, check_finite
from captum_salve.sites import HEAD_INPUT

__all__ = ["HeadEdit", "edit_model", "edited", "head_of", "head_tensors64"]


def head_of(model: nn.Module) -> nn.Linear:
    """The linear head of a classifier, or ``model`` itself when it is an ``nn.Linear``.

    Example:
        >>> head_of(timm.create_model("resnet18", num_classes=3))
        Linear(in_features=512, out_features=3, bias=True)
    """
    return model if isinstance(model, nn.Linear) else find_head(model)[1]


@dataclass(frozen=True)
class HeadEdit:
    """An edit of a classifier head along feature directions, in the spirit of concept-erasure's ``LeaceEraser``.

    Build it with :meth:`of`; then :meth:`weights` gives the edited head's
    tensors, :meth:`apply` an edited model, :meth:`applied` a temporary in-place
    edit, and calling it on head inputs gives the same edit in activation space.

    Attributes:
        directions: The edited features (decoder columns and code affine parts).
        alpha: (F,) float64 strengths ≥ 0, one per feature; 0 is the identity.
        mode: ``"suppress"`` or ``"enhance"``.
        rule: The :class:`~captum_salve.edit.rules.EditRule` (a name is accepted and resolved).

    Example:
        >>> edit = HeadEdit.of(sae, [12, 40], alpha=5.0, rule="project")
        >>> edited_model = edit.apply(model)           # a copy with new head weights
        >>> with edit.applied(model):                  # in place, restored bit-exactly after
        ...     logits = model(images)
        >>> head = head_of(model)
        >>> head(edit(acts.features))                  # the same logits from head inputs (run-time steering)
    """

    directions: FeatureDirections
    alpha: Tensor
    mode: EditMode = "suppress"
    rule: EditRule = field(default_factory=lambda: edit_rule(DEFAULT_RULE))

    def __post_init__(self) -> None:
        if not isinstance(self.directions, FeatureDirections):
            raise TypeError(f"directions must be FeatureDirections, got {type(self.directions).__name__}")
        object.__setattr__(self, "rule", edit_rule(self.rule))
        object.__setattr__(self, "alpha", _alpha_vector(self.alpha, self.directions.count))
        mode_sign(self.mode)

    @classmethod
    def of(
        cls,
        source: SparseAutoencoder | FeatureDirections,
        features: int | Sequence[int] | Tensor | None,
        alpha: float | Sequence[float] | Tensor,
        *,
        mode: EditMode = "suppress",
        rule: EditRuleName | EditRule = DEFAULT_RULE,
    ) -> HeadEdit:
        """The edit of some features of an SAE trained on the head input (or of given directions).

        Args:
            source: An SAE trained on the head input, or :class:`FeatureDirections`
                (then ``features`` is None: they name their features).
            features: One feature index or several, each at most once.
            alpha: One strength for all, or one per feature.
            mode: ``"suppress"`` or ``"enhance"``.
            rule: ``"salve"`` (the paper's), ``"project"`` (ours) or an EditRule.

        Raises:
            ValueError: An SAE of another site, a feature out of range, not an
                integer or repeated, a bad α, mode or rule.
        """
        if isinstance(source, FeatureDirections):
            if features is not None:
                raise ValueError("features must be None when FeatureDirections are passed: they name their features")
            return cls(source, alpha, mode, rule)
        if not isinstance(source, SparseAutoencoder):
            raise TypeError(f"sae must be a SparseAutoencoder or FeatureDirections, got {type(source).__name__}")
        if source.site != HEAD_INPUT:
            raise ValueError(
                f"the SAE was trained on {source.site!r}, not on the head input: a head edit needs an SAE of the "
                "head input (collect_activations with the default site, then train_sae)"
            )
        index = source.feature_index(features)
        repeated = sorted({int(f) for f in index if int((index == f).sum()) > 1})
        if repeated:
            raise ValueError(
                f"features repeat {repeated}: editing a feature twice would compound its strength; "
                "name each feature once, with the strength you want"
            )
        return cls(FeatureDirections.from_sae(source, index), alpha, mode, rule)

    @property
    def sign(self) -> float:
        """−1 when suppressing, +1 when enhancing."""
        return mode_sign(self.mode)

    def weights(self, head: nn.Module) -> tuple[Tensor, Tensor | None]:
        """The edited head's weight and bias, computed in float64 and returned in the head's dtype.

        ``head`` is the ``nn.Linear`` head, or the classifier (its head is found).

        Raises:
            ValueError: The head's input width is not the directions'; the head
                has no bias but the edit needs one; or the edited weights are not
                finite in the head's dtype (an α too strong for it).
        """
        head = head_of(head)
        self.check_head(head)
        weight, bias = head_tensors64(head)
        new_weight, new_bias = self.rule.weights(weight, bias, self.directions, self.alpha.to(weight.device), self.sign)
        if head.bias is None and new_bias.any():
            raise ValueError(
                f"the head has no bias, but this edit ({self.rule.name}) moves the logits by a constant; "
                "give the head a zero bias first"
            )
        new_weight = new_weight.to(head.weight.dtype)
        new_bias = new_bias.to(head.bias.dtype) if head.bias is not None else None
        for name, tensor in (("weight", new_weight), ("bias", new_bias)):
            if tensor is not None:
                check_finite(
                    tensor,
                    f"the edited head's {name} ({tensor.dtype})",
                    f"; alpha {self.alpha.tolist()} is too strong for rule {self.rule.name!r} in this dtype",
                )
        return new_weight, new_bias

    def apply(self, model: nn.Module, *, inplace: bool = False) -> nn.Module:
        """A model of the same architecture whose head carries the edit (a deep copy unless ``inplace``).

        No hooks and no wrapper: the result's ``state_dict`` loads into a freshly
        built model of the same architecture.
        """
        weight, bias = self.weights(head_of(model))
        target = model if inplace else copy.deepcopy(model)
        _write(head_of(target), weight, bias)
        return target

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """The edit in place for a ``with`` block; the head's tensors come back bit-exactly, on error too."""
        head = head_of(model)
        weight, bias = self.weights(head)
        saved_weight = head.weight.detach().clone()
        saved_bias = None if head.bias is None else head.bias.detach().clone()
        try:
            _write(head, weight, bias)
            yield model
        finally:
            _write(head, saved_weight, saved_bias)

    def __call__(self, a: Tensor) -> Tensor:
        """The edit on head inputs (N, M), in ``a``'s dtype.

        The unedited head on the result gives the edited head's logits.

        This is run-time steering (a forward pre-hook on the head can call it);
        :meth:`apply` folds the same map into the weights once instead.
        """
        if not isinstance(a, Tensor) or a.dim() != 2 or a.shape[1] != self.directions.width:
            raise ValueError(f"a must be an (N, {self.directions.width}) tensor of head inputs, got {shape_of(a)}")
        return self.rule.activations(a, self.directions, self.alpha.to(a), self.sign)

    def check_head(self, head: nn.Linear) -> None:
        """Refuse a head whose input width is not the directions' (an SAE of another site or model)."""
        if self.directions.width != head.in_features:
            raise ValueError(
                f"the edit's directions are {self.directions.width}-dimensional but the head takes "
                f"{head.in_features}: the SAE was trained on another site or model"
            )


def _alpha_vector(alpha: float | Sequence[float] | Tensor, count: int) -> Tensor:
    try:
        alphas = alpha.detach() if isinstance(alpha, Tensor) else torch.as_tensor(np.asarray(alpha))  # float64 kept
    except (TypeError, ValueError, RuntimeError):
        alphas = None
    if alphas is None or alphas.dtype == torch.bool or alphas.dtype.is_complex:
        raise ValueError(f"alpha must be a number >= 0 or one per feature ({count}), got {alpha!r}")
    alphas = alphas.to(torch.float64)
    if alphas.dim() == 0:
        alphas = alphas.expand(count).clone()
    if alphas.shape != (count,):
        raise ValueError(f"alpha must be one number or one per feature ({count}), got shape {tuple(alphas.shape)}")
    if not torch.isfinite(alphas).all() or (alphas < 0).any():
        raise ValueError(f"alpha must be finite and >= 0, got {alphas.tolist()}")
    return alphas


def head_tensors64(head: nn.Linear) -> tuple[Tensor, Tensor]:
    """The head's weight (K, M) and bias (K,) in float64, detached; a head without bias gets zeros.

    What every rule computes on: edits, sweeps and α_crit alike.

    Example:
        >>> weight, bias = head_tensors64(nn.Linear(4, 2, bias=False))
        >>> weight.dtype, bias
        (torch.float64, tensor([0., 0.], dtype=torch.float64))
    """
    weight = head.weight.detach().to(torch.float64)
    if head.bias is None:
        return weight, torch.zeros(head.out_features, dtype=torch.float64, device=weight.device)
    return weight, head.bias.detach().to(torch.float64)


def _write(head: nn.Linear, weight: Tensor, bias: Tensor | None) -> None:
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)


def edit_model(
    model: nn.Module,
    sae: SparseAutoencoder | FeatureDirections,
    feature: int | Sequence[int] | None,
    alpha: float | Sequence[float],
    *,
    mode: EditMode = "suppress",
    rule: EditRuleName | EditRule = DEFAULT_RULE,
    inplace: bool = False,
) -> nn.Module:
    """A model of the same architecture whose head weights carry the edit: ``HeadEdit.of(...).apply(model)``.

    Args:
        model: A classifier with a linear head (timm / torchvision ResNet or ViT).
        sae: The SAE trained on the head input, or :class:`FeatureDirections`
            (then ``feature`` is None).
        feature: A feature index or a list of them (edited together; see the module doc).
        alpha: Edit strength ≥ 0, one number or one per feature; 0 is the identity.
        mode: ``"suppress"`` or ``"enhance"``.
        rule: ``"salve"`` (the paper's column scaling), ``"project"`` (ours) or an EditRule.
        inplace: Edit ``model`` itself instead of a deep copy.

    Raises:
        ValueError: Negative or non-finite α, a feature out of range or repeated,
            an SAE of another site or width than the head's input, an unknown mode or rule.

    Example:
        >>> edited_model = edit_model(model, sae, feature=12, alpha=5.0, rule="project")
        >>> torch.save(edited_model.state_dict(), "edited.pt")
    """
    return HeadEdit.of(sae, feature, alpha, mode=mode, rule=rule).apply(model, inplace=inplace)


@contextmanager
def edited(
    model: nn.Module,
    sae: SparseAutoencoder | FeatureDirections,
    feature: int | Sequence[int] | None,
    alpha: float | Sequence[float],
    *,
    mode: EditMode = "suppress",
    rule: EditRuleName | EditRule = DEFAULT_RULE,
) -> Iterator[nn.Module]:
    """:func:`edit_model` in place for the length of a ``with`` block: ``HeadEdit.of(...).applied(model)``.

    The original head weights come back bit-exactly on exit, also when the block raises.

    Example:
        >>> with edited(model, sae, 12, alpha=5.0, rule="project") as m:
        ...     logits = m(images)
    """
    with HeadEdit.of(sae, feature, alpha, mode=mode, rule=rule).applied(model) as m:
        yield m
