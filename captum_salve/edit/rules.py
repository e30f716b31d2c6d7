r"""Edit rules: what editing a feature at strength α does to the head, written once per rule.

A rule holds every form of its edit, so they cannot drift apart:

- :meth:`EditRule.weights`: the edited head's weight and bias (what is saved);
- :meth:`EditRule.activations`: the same edit on the head input, ``head(a')`` = edited head ``(a)``;
- :meth:`EditRule.logit_curve`: the edited logits as a function of α, prepared once for a sweep;
- :meth:`EditRule.pieces`: the logits as piecewise-linear functions of α, which
  :func:`~captum_salve.alpha_crit` solves exactly.

With ``s = −1`` to suppress and ``s = +1`` to enhance, and features l with unit
decoder directions ``d_l``, code affine parts ``z_l(a) = e_l · a + β_l`` (scaled by the
decoder column's norm where it is not 1, see :meth:`FeatureDirections.from_sae`) and strengths α_l:

- ``"salve"`` (:class:`ScaleColumns`, the paper's Eq. 1): ``W'[:, j] = W[:, j] · Π_l f_lj``
  with ``f_lj = 1 + s α_l |d_lj|``, clipped at 0 when suppressing; ``b`` unchanged.
- ``"project"`` (:class:`ProjectOut`, ours): ``a' = a + s Σ_l α_l z_l(a) d_l``, folded into
  ``W' = W + s Σ_l α_l (W d_l) e_lᵀ``, ``b' = b + s Σ_l α_l β_l (W d_l)``.

A new rule is one subclass added to :data:`RULES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor
from typing_extensions import override

from captum_salve.sae.model import SparseAutoencoder

__all__ = [
    "DEFAULT_RULE",
    "MODES",
    "RULES",
    "EditMode",
    "EditRule",
    "EditRuleName",
    "FeatureDirections",
    "LogitPieces",
    "ProjectOut",
    "ScaleColumns",
    "edit_rule",
    "mode_sign",
]

EditMode = Literal["suppress", "enhance"]
EditRuleName = Literal["salve", "project"]
MODES: tuple[EditMode, ...] = get_args(EditMode)


def mode_sign(mode: EditMode) -> float:
    """−1 to suppress, +1 to enhance.

    Raises:
        ValueError: Any other mode.

    Example:
        >>> mode_sign("suppress"), mode_sign("enhance")
        (-1.0, 1.0)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return -1.0 if mode == "suppress" else 1.0


@dataclass(frozen=True)
class FeatureDirections:
    """What an edit needs to know about the features it edits.

    Attributes:
        decoder: (M, F) unit-norm directions, one column per feature.
        encoder: (F, M) rows e_l of the codes' affine part.
        offset: (F,) offsets β_l, so that the code's affine part is ``a @ e_l + β_l``.

    Example:
        >>> directions = FeatureDirections.from_sae(sae, [12, 40])    # two SAE features
        >>> control = FeatureDirections.from_vectors(torch.tensor([3.0, 4.0]), mean=torch.zeros(2))
        >>> control.decoder.T, control.count, control.width
        (tensor([[0.6000, 0.8000]], dtype=torch.float64), 1, 2)
    """

    decoder: Tensor
    encoder: Tensor
    offset: Tensor

    def __post_init__(self) -> None:
        if self.decoder.dim() != 2:
            raise ValueError(f"decoder must be (M, F), got {tuple(self.decoder.shape)}")
        m, f = self.decoder.shape
        if self.encoder.shape != (f, m) or self.offset.shape != (f,):
            raise ValueError(
                f"decoder (M, F) = {tuple(self.decoder.shape)} needs encoder (F, M) and offset (F,), "
                f"got {tuple(self.encoder.shape)} and {tuple(self.offset.shape)}"
            )

    @property
    def count(self) -> int:
        """F, the number of features."""
        return self.decoder.shape[1]

    @property
    def width(self) -> int:
        """M, the width of the activations they live in."""
        return self.decoder.shape[0]

    @classmethod
    def from_sae(cls, sae: SparseAutoencoder, features: int | Sequence[int] | Tensor) -> FeatureDirections:
        """The unit decoder directions ``d_l / ‖d_l‖`` of some SAE features, and their encoder rows times ``‖d_l‖``.

        A column of norm other than 1 (an SAE from another library) moves its norm
        into the code, so ``z_l d_l`` (what the "project" rule adds) is unchanged and
        the "salve" rule reads ``|d_lj|`` of a unit direction. A zero column stays zero.

        Raises:
            ValueError: A feature index is out of range or not an integer, or none is given.

        Example:
            >>> directions = FeatureDirections.from_sae(sae, [12, 40])
            >>> directions.decoder.norm(dim=0)
            tensor([1.0000, 1.0000])
        """
        index = sae.feature_index(features)
        with torch.no_grad():
            rows, offset = sae.affine_code(index)
            columns = sae.decoder_weight[:, index].detach()
            norms = columns.norm(dim=0)
            norms = torch.where(norms > 0, norms, torch.ones_like(norms))
            return cls(columns / norms, rows.detach() * norms[:, None], offset.detach() * norms)

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

    def cast(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(decoder, encoder, offset) on the device and in the dtype of ``like``."""
        return tuple(t.detach().to(like.device, like.dtype) for t in (self.decoder, self.encoder, self.offset))


@dataclass(frozen=True)
class LogitPieces:
    """Every logit as ``p + α q`` on consecutive pieces ``[lo, hi]`` of α.

    Attributes:
        p: (N, P, K) logits at α = 0 of each piece's line.
        q: (N, P, K) slopes.
        lo: (P,) start of each piece (the first is 0).
        hi: (P,) end of each piece (the last is ``inf``).

    Example:
        >>> pieces = LogitPieces.single(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 1.0]]))
        >>> pieces.at(2.0)
        tensor([[-1.,  2.]])
    """

    p: Tensor
    q: Tensor
    lo: Tensor
    hi: Tensor

    @classmethod
    def single(cls, p: Tensor, q: Tensor) -> LogitPieces:
        """One line over all α ≥ 0, from (N, K) ``p`` and ``q``."""
        lo = torch.zeros(1, dtype=p.dtype, device=p.device)
        return cls(p[:, None], q[:, None], lo, torch.full_like(lo, torch.inf))

    def at(self, alpha: float) -> Tensor:
        """(N, K) logits at one α ≥ 0, from the piece that holds it."""
        piece = int(torch.searchsorted(self.hi, torch.tensor([alpha], dtype=self.hi.dtype, device=self.hi.device)))
        return self.p[:, piece] + alpha * self.q[:, piece]


class EditRule(ABC):
    """How a rule changes the head ``logits = W a + b``, in the dtype of the tensors it is given.

    The package calls the weight, curve and piece forms in float64, so that they
    agree to float64 rounding with one another.

    Arguments shared by the methods: ``weight`` (K, M) and ``bias`` (K,) of the
    head; ``directions`` the F edited features; ``alphas`` their strengths,
    ``(F,)`` or with leading batch dimensions ``(..., F)``; ``sign`` −1 to
    suppress, +1 to enhance (see :func:`mode_sign`).

    Example:
        >>> rule = edit_rule("project")    # or a subclass of EditRule of your own
        >>> weight, bias = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        >>> first_axis = FeatureDirections.from_vectors(torch.tensor([1.0, 0.0]), mean=torch.zeros(2))
        >>> rule.weights(weight, bias, first_axis, torch.tensor([0.5], dtype=torch.float64), mode_sign("suppress"))[0]
        tensor([[0.5000, 0.0000],
                [0.0000, 1.0000]], dtype=torch.float64)
    """

    name: ClassVar[str]

    @abstractmethod
    def weights(
        self, weight: Tensor, bias: Tensor, directions: FeatureDirections, alphas: Tensor, sign: float
    ) -> tuple[Tensor, Tensor]:
        """The edited head: weight ``(..., K, M)`` and bias ``(..., K)``, one head per leading index of ``alphas``."""

    @abstractmethod
    def activations(self, a: Tensor, directions: FeatureDirections, alphas: Tensor, sign: float) -> Tensor:
        """The edit on head inputs (N, M): the unedited head on the result gives the edited head's logits."""

    def logit_curve(
        self, weight: Tensor, bias: Tensor, directions: FeatureDirections, a: Tensor, sign: float
    ) -> Callable[[Tensor], Tensor]:
        """A function from strengths (F,) to the edited logits (N, K) on head inputs ``a``.

        What can be computed once for all strengths is; the default builds the
        edited head at each call, O(N·K·M).
        """

        def logits(alphas: Tensor) -> Tensor:
            new_weight, new_bias = self.weights(weight, bias, directions, alphas, sign)
            return torch.addmm(new_bias, a, new_weight.T)

        return logits

    @abstractmethod
    def pieces(
        self, weight: Tensor, bias: Tensor, directions: FeatureDirections, a: Tensor, sign: float, *, exact: bool = True
    ) -> LogitPieces:
        """The logits of a one-feature edit as piecewise-linear functions of α.

        ``exact=False`` gives the first piece extended to every α: the paper's
        analytical estimate (for a rule without breakpoints, the same as exact).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ScaleColumns(EditRule):
    """The paper's rule ("salve"): each column of W scaled by ``1 ∓ α |d_j|`` (clipped at 0 when suppressing).

    Example:
        >>> d = FeatureDirections.from_vectors(torch.tensor([0.6, 0.8]), mean=torch.zeros(2))
        >>> ScaleColumns().activations(torch.ones(1, 2), d, torch.tensor([0.5]), -1.0)    # 1 − 0.5·0.6, 1 − 0.5·0.8
        tensor([[0.7000, 0.6000]])
        >>> ScaleColumns().activations(torch.ones(1, 2), d, torch.tensor([1.5]), -1.0)    # 1 − 1.2 clipped at 0
        tensor([[0.1000, 0.0000]])
    """

    name = "salve"

    def _factors(self, directions: FeatureDirections, alphas: Tensor, sign: float) -> Tensor:
        c = directions.cast(alphas)[0].abs()  # (M, F)
        factors = 1 + sign * alphas[..., None, :] * c  # (..., M, F)
        if sign < 0:
            factors = factors.clamp_min(0)
        return factors.prod(dim=-1)  # (..., M)

    @override
    def weights(self, weight, bias, directions, alphas, sign):
        factors = self._factors(directions, alphas, sign)
        return weight * factors[..., None, :], bias.expand(*alphas.shape[:-1], -1)

    @override
    def activations(self, a, directions, alphas, sign):
        return a * self._factors(directions, alphas, sign)

    @override
    def pieces(self, weight, bias, directions, a, sign, *, exact=True):
        c = directions.cast(a)[0][:, 0].abs()
        contributions = a[:, None, :] * weight[None]  # (N, K, M): W_kj a_j
        if sign > 0 or not exact:
            return LogitPieces.single(contributions.sum(-1) + bias, sign * (contributions * c).sum(-1))
        # Column j is clipped to 0 from α = 1/c_j on: between consecutive breakpoints
        # the unclipped columns are a suffix of the sorted order.
        breaks, order = torch.where(c > 0, 1.0 / c, torch.full_like(c, torch.inf)).sort()
        contributions = contributions[..., order]
        unclipped = contributions.flip(-1).cumsum(-1).flip(-1)
        unclipped_c = (contributions * c[order]).flip(-1).cumsum(-1).flip(-1)
        zeros = torch.zeros(*unclipped.shape[:-1], 1, dtype=a.dtype, device=a.device)
        p = torch.cat([unclipped, zeros], dim=-1).transpose(1, 2) + bias  # (N, M+1, K)
        q = -torch.cat([unclipped_c, zeros], dim=-1).transpose(1, 2)
        lo = torch.cat([torch.zeros(1, dtype=a.dtype, device=a.device), breaks])
        hi = torch.cat([breaks, torch.full((1,), torch.inf, dtype=a.dtype, device=a.device)])
        return LogitPieces(p, q, lo, hi)


class ProjectOut(EditRule):
    """Our rule ("project"): the head sees ``a + s Σ α_l z_l(a) d_l``; logits move along ``W d_l``, linearly in α.

    Example:
        >>> d = FeatureDirections.from_vectors(torch.tensor([1.0, 0.0]), mean=torch.zeros(2))    # code z(a) = a_0
        >>> ProjectOut().activations(torch.tensor([[2.0, 3.0]]), d, torch.tensor([0.5]), -1.0)    # a − 0.5·z(a)·d
        tensor([[1., 3.]])
    """

    name = "project"

    @override
    def weights(self, weight, bias, directions, alphas, sign):
        d, e, beta = directions.cast(weight)
        scaled = (weight @ d) * alphas[..., None, :]  # (..., K, F): each feature's push on each logit
        return weight + sign * scaled @ e, bias + sign * scaled @ beta

    @override
    def activations(self, a, directions, alphas, sign):
        d, e, beta = directions.cast(a)
        codes = a @ e.T + beta  # (N, F)
        return a + sign * (codes * alphas) @ d.T

    @override
    def logit_curve(self, weight, bias, directions, a, sign):
        # A rank-F update of the unedited logits: O(N·K·F) per strength instead of O(N·K·M).
        d, e, beta = directions.cast(a)
        logits0, codes, pushes = a @ weight.T + bias, a @ e.T + beta, weight @ d  # (N, K), (N, F), (K, F)

        def logits(alphas: Tensor) -> Tensor:
            return torch.addmm(logits0, codes * (sign * alphas), pushes.T)

        return logits

    @override
    def pieces(self, weight, bias, directions, a, sign, *, exact=True):
        d, e, beta = directions.cast(a)
        codes = a @ e[0] + beta[0]
        return LogitPieces.single(a @ weight.T + bias, sign * codes[:, None] * (weight @ d[:, 0])[None, :])


RULES: dict[str, EditRule] = {rule.name: rule for rule in (ScaleColumns(), ProjectOut())}

# The rule every function and command uses when none is named: the one whose edit equals steering the head input.
DEFAULT_RULE: EditRuleName = "project"


def edit_rule(rule: EditRuleName | EditRule) -> EditRule:
    """The rule of that name (see :data:`RULES`), or ``rule`` itself when it is an :class:`EditRule`.

    Example:
        >>> edit_rule("project")
        ProjectOut()
    """
    if isinstance(rule, EditRule):
        return rule
    if rule not in RULES:
        raise ValueError(f"rule must be one of {tuple(RULES)} or an EditRule, got {rule!r}")
    return RULES[rule]
