"""What makes one SAE variant differ from another: how codes come out of the encoder's affine part.

A variant is one small class: its name (as written to ``cfg.json``), the code
function, the threshold above which a code counts as active, its default sparsity
strength, and whether training resamples its dead latents. Adding a variant
(JumpReLU, say) is one subclass registered in :data:`VARIANTS`; the model,
training, metrics and the command line read everything else from here.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
from torch import Tensor
from typing_extensions import override

from captum_salve.checks import check_int

__all__ = ["VARIANTS", "ActivationName", "CodeActivation", "Linear", "ReLU", "TopK", "code_activation"]

ActivationName = Literal["linear", "relu", "topk"]


class CodeActivation(ABC):
    """How an SAE turns pre-activations ``E (a − b_d) + b_e`` into codes z.

    Attributes:
        name: The variant's name in ``cfg.json`` and on the command line.
        relative_active_threshold: ``|z|`` above this multiple of the data's spread
            (:attr:`~captum_salve.store.RowStatistics.spread`) counts as active (L0, dead
            latents). 0 for variants whose inactive codes are exactly zero; a variant with codes
            that are never zero needs a threshold that scales with its codes, as they scale with the data.
        default_l1: Sparsity strength :func:`~captum_salve.sae.train_sae` uses when none is given.
        resamples_dead: Whether training re-initialises latents that never fire.

    Example:
        >>> class JumpReLU(CodeActivation):
        ...     name = "jumprelu"
        ...
        ...     def __init__(self, threshold: float) -> None:
        ...         self.threshold = threshold
        ...
        ...     def __call__(self, pre: Tensor) -> Tensor:
        ...         return pre * (pre > self.threshold)
        ...
        ...     def settings(self) -> dict:
        ...         return {"threshold": self.threshold}
        >>> JumpReLU(0.5)(torch.tensor([[0.25, 0.75]]))
        tensor([[0.0000, 0.7500]])
        >>> sae = SparseAutoencoder(512, 2048, JumpReLU(0.5))    # unregistered: works, but not loadable from cfg.json
    """

    name: ClassVar[str]
    relative_active_threshold: ClassVar[float] = 0.0
    default_l1: ClassVar[float] = 0.05
    resamples_dead: ClassVar[bool] = True

    @abstractmethod
    def __call__(self, pre: Tensor) -> Tensor:
        """Codes (N, d) from pre-activations (N, d)."""

    def settings(self) -> dict:
        """The variant's own settings, written to ``cfg.json`` beside its name."""
        return {}

    @classmethod
    def default_settings(cls, d_latent: int) -> dict:
        """Settings that suit an SAE of ``d_latent`` features when the user gives none."""
        return {}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.settings().items()))))

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.settings().items())
        return f"{type(self).__name__}({settings})"


class Linear(CodeActivation):
    """No activation: signed codes, the paper's SAE. Never exactly zero, so activity is ``|z| > 0.01 × spread``.

    The codes of unit-norm decoder columns scale with the data, so the threshold does
    too: the same activations times 1000 give the same L0 and dead fraction.

    Example:
        >>> Linear()(torch.tensor([[-1.0, 2.0]])), Linear.relative_active_threshold
        (tensor([[-1.,  2.]]), 0.01)
    """

    name = "linear"
    relative_active_threshold = 1e-2
    resamples_dead = False

    @override
    def __call__(self, pre: Tensor) -> Tensor:
        return pre


class ReLU(CodeActivation):
    """The standard SAE: ``z = relu(pre)``.

    Example:
        >>> ReLU()(torch.tensor([[-1.0, 2.0]]))
        tensor([[0., 2.]])
    """

    name = "relu"

    @override
    def __call__(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)


class TopK(CodeActivation):
    """The ``k`` largest pre-activations of each input kept (then ReLU), the rest zero; needs no L1.

    Args:
        k: Codes kept per input, at least 1.

    Example:
        >>> TopK(2)(torch.tensor([[3.0, -1.0, 2.0, 0.5]]))
        tensor([[3., 0., 2., 0.]])
    """

    name = "topk"
    default_l1 = 0.0

    def __init__(self, k: int) -> None:
        self.k = check_int(k, "k (of activation 'topk')", 1)

    @override
    def __call__(self, pre: Tensor) -> Tensor:
        values, index = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, torch.relu(values))

    @override
    def settings(self) -> dict:
        return {"k": self.k}

    @override
    @classmethod
    def default_settings(cls, d_latent: int) -> dict:
        return {"k": max(1, d_latent // 8)}


VARIANTS: dict[str, type[CodeActivation]] = {variant.name: variant for variant in (Linear, ReLU, TopK)}


def code_activation(activation: ActivationName | CodeActivation, **settings: int | None) -> CodeActivation:
    """The variant named ``activation`` built with its settings (``k`` for TopK), or ``activation`` itself.

    Settings that are None are left out, so ``code_activation("relu", k=None)`` works.

    Raises:
        ValueError: An unknown name, a setting the variant does not take, or a bad value.

    Example:
        >>> code_activation("topk", k=16)
        TopK(k=16)
    """
    given = {key: value for key, value in settings.items() if value is not None}
    if isinstance(activation, CodeActivation):
        if given:
            raise ValueError(
                f"settings {sorted(given)} go with an activation name, not with the instance {activation!r}"
            )
        return activation
    if activation not in VARIANTS:
        raise ValueError(f"activation must be one of {tuple(VARIANTS)} or a CodeActivation, got {activation!r}")
    variant = VARIANTS[activation]
    accepted = [name for name in inspect.signature(variant).parameters]
    if sorted(given) != sorted(accepted):
        wanted = f"the settings {accepted}" if accepted else "no settings"
        raise ValueError(f"activation {activation!r} takes {wanted}, got {sorted(given) or 'none'}")
    return variant(**given)
