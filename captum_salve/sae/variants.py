"""What makes one SAE variant differ from another: its codes, its training loss, and the state it keeps.

A variant is one small class: its name (as written to ``cfg.json``), the code
function, the threshold above which a code counts as active, its default sparsity
strength, the loss it trains with, any state of its own (a JumpReLU's thresholds),
and, when its dictionary is not a free matrix of unit columns, how the decoder is
built, started and kept valid (an archetypal SAE's atoms are mixtures of data points).
Adding a variant is one subclass registered in :data:`VARIANTS`; the model, training,
metrics and the command line read everything else from here.

The variants and what an edit means for them: every edit rule reads a feature's
*pre-activation* ``e_l · a + β_l`` (:meth:`~captum_salve.sae.SparseAutoencoder.affine_code`),
which is linear in the activations for every variant. The "project" edit removes
``α z_l(a) d_l`` with that linear code, so it equals steering the head input for
every variant; where a variant's code is zero (ReLU below 0, a JumpReLU below its
threshold, a latent outside the top k), the SAE itself would report no activity
while the edit still moves the activations along ``d_l`` by the (negative or
small) pre-activation. The edits read the decoder through
:attr:`~captum_salve.sae.SparseAutoencoder.decoder_weight`, which for an archetypal
SAE is its computed atoms, so they need nothing of their own for any variant.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from typing_extensions import override

from captum_salve.checks import check_int, check_real

if TYPE_CHECKING:
    from captum_salve.sae.model import SparseAutoencoder
    from captum_salve.store import RowStatistics

__all__ = [
    "VARIANTS",
    "ActivationName",
    "Archetypal",
    "BatchTopK",
    "CodeActivation",
    "JumpReLU",
    "Linear",
    "Matryoshka",
    "ReLU",
    "TopK",
    "TrainingBatch",
    "code_activation",
    "variant_from_config",
]

ActivationName = Literal["linear", "relu", "topk", "batchtopk", "jumprelu", "matryoshka", "archetypal"]


@dataclass
class TrainingBatch:
    """What a variant's training loss sees of one batch (or one micro-batch) of rows.

    Attributes:
        sae: The SAE being trained.
        a: (n, M) the rows.
        pre: (n, d) pre-activations ``E (a − b_d) + b_e``.
        z: (n, d) the codes of training (:meth:`CodeActivation.training_codes`).
        a_hat: (n, M) the reconstructions ``D z + b_d``.
        squared_error: ``Σ ‖a − â‖²`` over the rows, with its gradient.
        total_variance: The data's ``mean ‖a − ā‖²``, the scale of a squared error.
        l1: The sparsity strength.
        dead: (d,) bool, latents that have not fired for a while (see :class:`TopK`'s AuxK).

    Example:
        >>> class Quiet(ReLU):    # ReLU plus a penalty on the codes' squares
        ...     def loss(self, batch: TrainingBatch) -> Tensor:
        ...         return super().loss(batch) + batch.z.pow(2).sum() / batch.total_variance
    """

    sae: SparseAutoencoder
    a: Tensor
    pre: Tensor
    z: Tensor
    a_hat: Tensor
    squared_error: Tensor
    total_variance: Tensor
    l1: float
    dead: Tensor


class CodeActivation(nn.Module, ABC):
    """How an SAE turns pre-activations ``E (a − b_d) + b_e`` into codes z, and how it trains.

    A variant is an :class:`~torch.nn.Module` held by the SAE as ``sae.code_activation``:
    what it keeps (a JumpReLU's thresholds) is part of the SAE's weights, saved and
    loaded with them under ``code_activation.<name>``. Its settings (``k``) go to
    ``cfg.json``; ``type(v)(**v.settings())`` must rebuild it, because each SAE holds
    its own copy (:meth:`fresh`).

    Attributes:
        name: The variant's name in ``cfg.json`` and on the command line.
        relative_active_threshold: ``|z|`` above this multiple of the data's spread
            (:attr:`~captum_salve.store.RowStatistics.spread`) counts as active (L0, dead
            latents). 0 for variants whose inactive codes are exactly zero; a variant with codes
            that are never zero needs a threshold that scales with its codes, as they scale with the data.
        default_l1: Sparsity strength :func:`~captum_salve.sae.train_sae` uses when none is given.
        resample_encoder_scale: A resampled latent's encoder row, as a share of the live
            rows' mean norm. 0.2 (Anthropic's recipe for L1 SAEs) starts it gently.

    Example:
        >>> class Shrink(CodeActivation):
        ...     name = "shrink"
        ...
        ...     def forward(self, pre: Tensor) -> Tensor:
        ...         return torch.sign(pre) * (pre.abs() - 0.5).clamp_min(0)
        >>> Shrink()(torch.tensor([[0.25, -0.75]]))
        tensor([[ 0.0000, -0.2500]])
        >>> sae = SparseAutoencoder(512, 2048, Shrink())    # unregistered: works, but not loadable from cfg.json
    """

    name: ClassVar[str]
    relative_active_threshold: ClassVar[float] = 0.0
    default_l1: ClassVar[float] = 0.05
    resample_encoder_scale: ClassVar[float] = 0.2

    @abstractmethod
    def forward(self, pre: Tensor) -> Tensor:
        """Codes (N, d) from pre-activations (N, d), as the trained SAE computes them."""

    @property
    def resamples_dead(self) -> bool:
        """Whether training re-initialises latents that never fired in an epoch (at its end)."""
        return True

    def settings(self) -> dict:
        """The variant's own settings, written to ``cfg.json`` beside its name."""
        return {}

    @classmethod
    def default_settings(cls, d_latent: int) -> dict:
        """Settings that suit an SAE of ``d_latent`` features when the user gives none."""
        return {}

    def fresh(self) -> CodeActivation:
        """A new, untrained copy with the same settings (an SAE never shares its variant's state)."""
        return type(self)(**self.settings())

    def attach(self, sae: SparseAutoencoder) -> None:
        """Create the state this variant keeps for ``sae`` (called once, by the SAE's constructor)."""

    @property
    def sample_rows(self) -> int:
        """Training rows :meth:`prepare` reads, drawn at random with the run's generator; 0 (the default): none."""
        return 0

    def prepare(self, sae: SparseAutoencoder, statistics: RowStatistics, sample: Tensor | None = None) -> None:
        """Set what depends on the data before training starts (or resumes); called without gradients.

        Args:
            sae: The SAE at its start: atoms at random directions (:meth:`set_atoms_`), the
                decoder bias at the data mean, encoder rows equal to the atoms. A variant
                whose start depends on the data replaces it here.
            statistics: The training rows' statistics (their mean and scale).
            sample: (n, M) rows drawn with the run's seeded generator, on the SAE's
                device, when :attr:`sample_rows` asks for them (n is at most that many); else None.
        """

    def set_atoms_(self, sae: SparseAutoencoder, latents: Tensor, directions: Tensor) -> Tensor:
        """Point the decoder's atoms ``latents`` at ``directions`` ((n, M) rows), as near as the dictionary allows.

        Training starts every atom this way (at random directions) and resampling
        restarts dead ones (at badly reconstructed rows). By default the atoms are
        the directions scaled to unit length. Called without gradients.

        Returns:
            (n, M) the unit atoms set, which the encoder rows of these latents start from.
        """
        atoms = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sae.decoder.weight[:, latents] = atoms.T
        return atoms

    def atom_parameters(self, sae: SparseAutoencoder) -> list[tuple[Tensor, int]]:
        """The decoder's trained tensors, each with the dimension that indexes latents (what resampling restarts)."""
        return [(sae.decoder.weight, 1)]

    def constrain_decoder_(self, sae: SparseAutoencoder) -> None:
        """Bring the decoder back into the variant's dictionary after a step: by default, unit-norm columns."""
        weight = sae.decoder.weight
        # Σ w² then √ rather than vector_norm(dim=0): its strided reduction over columns is ~8× slower on the CPU.
        weight.div_(weight.square().sum(dim=0, keepdim=True).sqrt_().clamp_min_(1e-12))

    def training_codes(self, pre: Tensor) -> Tensor:
        """The codes during training, with the gradients training needs; by default :meth:`forward`'s."""
        return self(pre)

    def after_step(self) -> None:
        """Keep the variant's state valid after an optimiser step (a JumpReLU's thresholds above zero)."""

    def sparsity(self, batch: TrainingBatch) -> Tensor:
        """The penalty :attr:`TrainingBatch.l1` weighs, summed over rows: ``Σ |z|`` over the data's scale ``s``."""
        return batch.z.abs().sum() / batch.total_variance.sqrt()

    def loss(self, batch: TrainingBatch) -> Tensor:
        """The scale-free training loss summed over the batch's rows: ``Σ‖a − â‖² / s² + l1 · sparsity``.

        ``s² = mean ‖a − ā‖²``, so one ``l1`` suits activations of any magnitude.
        """
        loss = batch.squared_error / batch.total_variance
        return loss + batch.l1 * self.sparsity(batch) if batch.l1 else loss

    @override
    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.settings().items())


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

    @property
    @override
    def resamples_dead(self) -> bool:
        return False

    @override
    def forward(self, pre: Tensor) -> Tensor:
        return pre


class ReLU(CodeActivation):
    """The standard SAE: ``z = relu(pre)``, trained with an L1 penalty.

    Example:
        >>> ReLU()(torch.tensor([[-1.0, 2.0]]))
        tensor([[0., 2.]])
    """

    name = "relu"

    @override
    def forward(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)


class TopK(CodeActivation):
    r"""The ``k`` largest pre-activations of each input kept (then ReLU), the rest zero; needs no L1.

    Latents that stop winning get no gradient and die. Two remedies, both settings:

    - ``resample`` (the default): at the end of every epoch but the last, latents that
      never fired are pointed at the rows reconstructed worst, with encoder rows half as
      strong as the live ones' (the L1 recipe's fifth never reaches the top k).
    - AuxK (Gao et al. 2024): the ``aux_k`` largest pre-activations among the dead
      latents reconstruct the main reconstruction's residual ``e = a − â``, and the loss
      adds ``(1/32) · ‖e − D_dead z_aux‖² / ‖e − ē‖²`` (the residual's own scale), so dead
      latents are pulled towards what the others miss. A latent is dead once it has not
      fired for as many rows as the training data holds (one epoch, at most 10M rows).
      Gao et al. use ``aux_k = 512`` on models with millions of latents and billions of
      rows; on a few thousand rows it revives fewer latents than resampling
      (``benchmarks/sae_frontier.py``).

    Args:
        k: Codes kept per input, at least 1.
        aux_k: Dead latents in the AuxK reconstruction; 0 (the default) turns AuxK off.
        resample: Resample latents that did not fire in an epoch.

    Example:
        >>> TopK(2)(torch.tensor([[3.0, -1.0, 2.0, 0.5]]))
        tensor([[3., 0., 2., 0.]])
    """

    name = "topk"
    default_l1 = 0.0
    # A new latent must compete with the k winners to fire at all: 0.2 leaves it dead, the live rows'
    # full strength lets a BatchTopK latent take a batch's codes and diverge; half is neither (demo head input).
    resample_encoder_scale = 0.5
    aux_coefficient: ClassVar[float] = 1 / 32

    def __init__(self, k: int, aux_k: int = 0, resample: bool = True) -> None:
        super().__init__()
        self.k = check_int(k, f"k (of activation {self.name!r})", 1)
        self.aux_k = check_int(aux_k, f"aux_k (of activation {self.name!r})", 0)
        if not isinstance(resample, bool):
            raise ValueError(f"resample (of activation {self.name!r}) must be True or False, got {resample!r}")
        self.resample = resample

    @property
    @override
    def resamples_dead(self) -> bool:
        return self.resample

    @override
    def forward(self, pre: Tensor) -> Tensor:
        values, index = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, torch.relu(values))

    @override
    def attach(self, sae: SparseAutoencoder) -> None:
        if self.k > sae.d_latent:
            raise ValueError(f"k must be at most d_latent={sae.d_latent}, got k={self.k}")

    @override
    def loss(self, batch: TrainingBatch) -> Tensor:
        loss = super().loss(batch)
        if not self.aux_k or not batch.dead.any() or len(batch.a) < 2:
            return loss
        residual = (batch.a - batch.a_hat).detach()
        dead = batch.dead.nonzero().squeeze(1)
        values, index = batch.pre[:, dead].topk(min(self.aux_k, len(dead)), dim=-1)
        # Dense codes and a matmul, not a gather of decoder rows: its gradient is deterministic.
        aux_codes = torch.zeros_like(batch.pre).scatter(-1, dead[index], torch.relu(values))
        aux_hat = aux_codes @ batch.sae.decoder_weight.T
        scale = (residual - residual.mean(0)).pow(2).sum().clamp_min(torch.finfo(residual.dtype).tiny)
        return loss + self.aux_coefficient * len(batch.a) * (residual - aux_hat).pow(2).sum() / scale

    @override
    def settings(self) -> dict:
        return {"k": self.k, "aux_k": self.aux_k, "resample": self.resample}

    @override
    @classmethod
    def default_settings(cls, d_latent: int) -> dict:
        return {"k": max(1, d_latent // 8)}


class BatchTopK(TopK):
    r"""TopK over the whole batch (Bussmann et al. 2024): ``k × n`` codes kept among a batch's n rows.

    Rows get as many codes as they need, k on average. A trained SAE cannot depend on
    the batch it is shown, so outside training a code is kept when its pre-activation
    exceeds ``threshold`` (``z = relu(pre) · [pre > θ]``), a running mean of the smallest
    code each training batch kept (a buffer, saved with the weights; 0, a plain ReLU,
    until training sets it). In training, "the batch" is what one process sees of one
    micro-batch: ``micro_batches`` and the number of ``torchrun`` processes change it.

    Example:
        >>> BatchTopK(1).training_codes(torch.tensor([[3.0, 2.5], [1.0, 0.5]]))    # 2 codes for 2 rows, both in row 0
        tensor([[3.0000, 2.5000],
                [0.0000, 0.0000]])
    """

    name = "batchtopk"
    threshold_momentum: ClassVar[float] = 0.01

    def __init__(self, k: int, aux_k: int = 0, resample: bool = True) -> None:
        super().__init__(k, aux_k, resample)
        self.register_buffer("threshold", torch.zeros(()))

    @override
    def forward(self, pre: Tensor) -> Tensor:
        return torch.relu(pre) * (pre > self.threshold)

    @override
    def training_codes(self, pre: Tensor) -> Tensor:
        flat = torch.relu(pre).flatten()
        values, index = flat.topk(min(self.k * len(pre), flat.numel()))
        z = torch.zeros_like(flat).scatter(0, index, values).view_as(pre)
        kept = values[values > 0]
        if len(kept):
            with torch.no_grad():
                smallest = kept[-1].detach().to(self.threshold)
                if self.threshold == 0:  # the first batch sets it
                    self.threshold.copy_(smallest)
                else:
                    self.threshold.lerp_(smallest, self.threshold_momentum)
        return z


class _StepWithThresholdGradient(torch.autograd.Function):
    """``H(x − θ)`` with the pseudo-derivative ``−K((x − θ)/ε)/ε`` in θ and none in x (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        x, threshold = ctx.saved_tensors
        window = ((x - threshold).abs() < ctx.bandwidth / 2).to(grad.dtype)
        return None, -(grad * window).sum(0) / ctx.bandwidth, None


class _JumpWithThresholdGradient(torch.autograd.Function):
    """``x · H(x − θ)``: the gradient in x where the code is open, the pseudo-derivative ``−θ K((x − θ)/ε)/ε`` in θ."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return x * (x > threshold)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, threshold = ctx.saved_tensors
        window = ((x - threshold).abs() < ctx.bandwidth / 2).to(grad.dtype)
        return grad * (x > threshold), -(grad * window).sum(0) * threshold / ctx.bandwidth, None


class JumpReLU(CodeActivation):
    r"""A learnt threshold per latent (Rajamanoharan et al. 2024): ``z = pre · [pre > θ_l]``, with an L0 penalty.

    The thresholds ``θ`` (state ``code_activation.threshold``, shape (d,)) get their
    gradient through straight-through estimators with a rectangle kernel of width
    ``ε``; the sparsity penalty is the number of open codes, ``l1 · Σ [pre > θ]``.
    Before training, ``θ`` is set to ``0.001 ×`` the data's spread (the paper's 0.001
    on unit-scale data) and ``ε`` to ``0.1 ×`` it, so both scale with the activations.
    The paper's ``ε = 0.001`` needs its hundreds of thousands of steps: on a few
    thousand rows almost no pre-activation falls that close to a threshold, and L0
    stays where it started. ``θ`` stays above ``ε / 2``, so a latent cannot open below zero.

    Example:
        >>> jump = JumpReLU()
        >>> jump.threshold = torch.nn.Parameter(torch.tensor([0.5, 0.5]))
        >>> jump(torch.tensor([[0.25, 0.75]]))
        tensor([[0.0000, 0.7500]])
    """

    name = "jumprelu"
    default_l1 = 0.01
    relative_initial_threshold: ClassVar[float] = 1e-3
    relative_bandwidth: ClassVar[float] = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.bandwidth = 0.0

    @override
    def attach(self, sae: SparseAutoencoder) -> None:
        self.threshold = nn.Parameter(torch.zeros(sae.d_latent))

    @override
    def prepare(self, sae: SparseAutoencoder, statistics: RowStatistics, sample: Tensor | None = None) -> None:
        self.bandwidth = self.relative_bandwidth * statistics.spread
        with torch.no_grad():
            self.threshold.fill_(self.relative_initial_threshold * statistics.spread)

    @override
    def forward(self, pre: Tensor) -> Tensor:
        return pre * (pre > self.threshold)

    @override
    def training_codes(self, pre: Tensor) -> Tensor:
        return _JumpWithThresholdGradient.apply(pre, self.threshold, self._training_bandwidth())

    @override
    def sparsity(self, batch: TrainingBatch) -> Tensor:
        return _StepWithThresholdGradient.apply(batch.pre, self.threshold, self._training_bandwidth()).sum()

    def _training_bandwidth(self) -> float:
        if self.bandwidth <= 0:
            raise ValueError("a JumpReLU trains after prepare() has set its bandwidth from the data's scale")
        return self.bandwidth

    @override
    @torch.no_grad()
    def after_step(self) -> None:
        self.threshold.clamp_(min=self.bandwidth / 2)


class Matryoshka(BatchTopK):
    r"""Nested dictionaries (Bussmann et al. 2025): every prefix of the latents reconstructs the input on its own.

    For each prefix size m in ``prefixes`` the first m latents are a dictionary of
    their own, ``â_m = D_{:m} z_{:m} + b_d``, and the loss is the mean over the prefixes
    of their scale-free errors ``‖a − â_m‖² / s²`` (the last prefix is the whole
    dictionary), plus AuxK when ``aux_k`` is set. Early latents must reconstruct
    without the later ones, so they learn the broad directions and later ones refine
    them, and a latent's index says how coarse it is. The codes are BatchTopK's, chosen
    over the whole dictionary and inferred with its threshold; the reported MSE and
    explained variance are the whole dictionary's.

    The mean rather than the paper's sum: with one prefix it is BatchTopK's loss, and
    the AuxK term keeps its 1/32 weight against reconstruction whatever the number of
    prefixes (Adam's steps do not depend on the loss's overall scale, so that weight
    is all the choice changes).

    The default prefixes halve from the whole dictionary down to a sixteenth,
    ``d/16, d/8, d/4, d/2, d`` (at least 1): each level doubles the one before, as the
    nesting sizes of Matryoshka representation learning (Kusupati et al. 2022, 8, 16, …,
    2048) that the paper builds on do; the coarsest of a 256-latent SAE has 16 latents,
    about one per class of the demo heads.

    Args:
        k: Codes kept per row, on average over a batch.
        aux_k: Dead latents in the AuxK reconstruction; 0 turns AuxK off.
        resample: Resample latents that did not fire in an epoch.
        prefixes: Increasing prefix sizes, the last the SAE's ``d_latent``; None (the
            default): the halving sizes above, fixed when the SAE is built.

    Example:
        >>> sae = SparseAutoencoder(512, 256, "matryoshka", k=16)
        >>> sae.code_activation.prefixes
        (16, 32, 64, 128, 256)
    """

    name = "matryoshka"

    def __init__(
        self, k: int, aux_k: int = 0, resample: bool = True, prefixes: list[int] | tuple[int, ...] | None = None
    ) -> None:
        super().__init__(k, aux_k, resample)
        self.prefixes = None if prefixes is None else _check_prefixes(prefixes)

    @override
    def attach(self, sae: SparseAutoencoder) -> None:
        super().attach(sae)
        if self.prefixes is None:
            self.prefixes = tuple(sorted({max(1, sae.d_latent >> shift) for shift in range(5)}))
        if self.prefixes[-1] != sae.d_latent:
            raise ValueError(
                f"prefixes (of activation 'matryoshka') must end with d_latent={sae.d_latent} "
                f"(the whole dictionary), got {list(self.prefixes)}"
            )

    @override
    def loss(self, batch: TrainingBatch) -> Tensor:
        decoder = batch.sae.decoder_weight
        residual, start, errors = batch.a - batch.sae.decoder.bias, 0, []
        for stop in self.prefixes[:-1]:
            residual = residual - batch.z[:, start:stop] @ decoder[:, start:stop].T
            errors.append(residual.pow(2).sum())
            start = stop
        errors.append(batch.squared_error)
        return super().loss(replace(batch, squared_error=torch.stack(errors).mean()))

    @override
    def settings(self) -> dict:
        prefixes = None if self.prefixes is None else list(self.prefixes)
        return {**super().settings(), "prefixes": prefixes}


def _check_prefixes(prefixes: Any) -> tuple[int, ...]:
    if not isinstance(prefixes, (list, tuple)) or not prefixes:
        raise ValueError(f"prefixes (of activation 'matryoshka') must be a list of sizes, got {prefixes!r}")
    sizes = tuple(check_int(size, "prefixes (of activation 'matryoshka')", 1) for size in prefixes)
    if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
        raise ValueError(f"prefixes (of activation 'matryoshka') must increase, got {list(sizes)}")
    return sizes


class Archetypal(TopK):
    r"""The relaxed archetypal SAE (RA-SAE, Fel et al. 2025): atoms near the convex hull of data points, TopK codes.

    Atom l is ``(W_l C + Λ_l) / ‖W_l C + Λ_l‖``. The anchors C are k-means centroids of
    :attr:`sample_rows` training rows drawn with the run's generator, centred by the data
    mean (the SAE subtracts its decoder bias, which starts at that mean, before
    encoding, so its atoms describe centred rows); W, (d, anchors), is row-stochastic,
    so ``W_l C`` is a point of their convex hull; the relaxation Λ_l lets the atom leave
    the hull by at most ``δ`` times the anchors' root-mean-square norm. Dividing by the
    norm keeps the unit-length decoder columns every SAE here has; it makes
    overcomplete's learnt scale of the dictionary redundant (the codes carry every
    scale), so an atom's direction lies in the cone of the relaxed hull. A dictionary
    tied to the data is what makes the features of different seeds agree.

    The decoder weight is a :mod:`torch.nn.utils.parametrize` parametrisation, so
    :attr:`~captum_salve.sae.SparseAutoencoder.decoder_weight` is the computed atoms for
    every reader (edits, profiles, seed matching). The trained tensors are W and Λ
    (``decoder.parametrizations.weight.original0`` and ``original1``) and the anchors a
    buffer (``decoder.parametrizations.weight.0.anchors``), all saved with the weights.
    After every step W's rows are projected onto the simplex (the Euclidean projection,
    Duchi et al. 2008, where overcomplete's ``RelaxedArchetypalDictionary`` rescales the
    rows of ``relu(W)``, which can leave a row of zeros) and Λ's rows are shortened to
    the bound. Before training the anchors are random points.

    Training starts atom l at anchor l (W the identity, Λ = 0, as in overcomplete) and
    the encoder at the atoms times the one scale that reconstructs the sample best:
    TopK codes grow with the encoder's scale, and k codes along atoms aligned with a row
    (as data points are) overshoot it many times over, which otherwise costs half of a
    40-epoch run on the demo (explained variance −217 after the first epoch, 0.82 with
    the scale). A resampled atom goes to the anchor best aligned with the row it is
    pointed at, a different anchor for each atom resampled together, with Λ = 0.

    Args:
        k: Codes kept per input.
        aux_k: Dead latents in the AuxK reconstruction; 0 turns AuxK off.
        resample: Resample latents that did not fire in an epoch (each to an anchor).
        anchors: Number of anchors; None (the default): ``d_latent``, fixed when the SAE is built.
        delta: The bound on ``‖Λ_l‖``, as a multiple of the anchors' root-mean-square norm (0: atoms in the hull).

    Example:
        >>> sae, _ = train_sae(acts, 256, activation="archetypal", k=16)
        >>> mixture = sae.decoder.parametrizations.weight.original0
        >>> bool((mixture >= 0).all()), mixture.sum(1)    # every atom mixes the anchors
        (True, tensor([1.0000, 1.0000, ...]))
    """

    name = "archetypal"
    rows_per_anchor: ClassVar[int] = 16
    kmeans_iterations: ClassVar[int] = 50

    def __init__(
        self, k: int, aux_k: int = 0, resample: bool = True, anchors: int | None = None, delta: float = 0.1
    ) -> None:
        super().__init__(k, aux_k, resample)
        self.anchors = None if anchors is None else check_int(anchors, "anchors (of activation 'archetypal')", 1)
        self.delta = check_real(delta, "delta (of activation 'archetypal')", 0.0)

    @override
    def attach(self, sae: SparseAutoencoder) -> None:
        super().attach(sae)
        if self.anchors is None:
            self.anchors = sae.d_latent
        if self.anchors < sae.d_latent:
            raise ValueError(
                f"anchors (of activation 'archetypal') must be at least d_latent={sae.d_latent}, "
                f"so that every atom starts at an anchor of its own, got {self.anchors}"
            )
        parametrize.register_parametrization(sae.decoder, "weight", _RelaxedHull(torch.randn(self.anchors, sae.d_in)))

    @property
    @override
    def sample_rows(self) -> int:
        return self.rows_per_anchor * self.anchors

    @override
    def prepare(self, sae: SparseAutoencoder, statistics: RowStatistics, sample: Tensor | None = None) -> None:
        if sample is None or len(sample) < self.anchors:
            rows = 0 if sample is None else len(sample)
            raise ValueError(f"an archetypal SAE with {self.anchors} anchors needs as many training rows, got {rows}")
        centred = sample - statistics.mean.to(sample)
        centroids = _kmeans(centred, self.anchors, self.kmeans_iterations)
        hull, mixture, relaxation = _hull(sae)
        # An atom's direction does not depend on the anchors' overall scale: at unit root-mean-square norm, Λ
        # and δ are relative to them, and Λ trains at the pace of a free unit decoder column at any data scale.
        hull.anchors.copy_(centroids / centroids.pow(2).sum(1).mean().sqrt().clamp_min(1e-12))
        mixture.copy_(torch.eye(*mixture.shape))
        relaxation.zero_()
        atoms = sae.decoder_weight.T
        # k codes along atoms aligned with the row overshoot it many times over; TopK codes scale with the encoder,
        # so the encoder starts at the one scale that reconstructs the sample best.
        a_hat = self(centred @ atoms.T) @ atoms
        scale = (centred * a_hat).sum() / a_hat.pow(2).sum() if a_hat.any() else 1.0
        sae.encoder.weight.copy_(atoms * scale)

    @override
    def set_atoms_(self, sae: SparseAutoencoder, latents: Tensor, directions: Tensor) -> Tensor:
        hull, mixture, relaxation = _hull(sae)
        mixture[latents] = hull.vertices(directions).to(mixture)
        relaxation[latents] = 0.0
        return sae.decoder_weight[:, latents].T

    @override
    def atom_parameters(self, sae: SparseAutoencoder) -> list[tuple[Tensor, int]]:
        _, mixture, relaxation = _hull(sae)
        return [(mixture, 0), (relaxation, 0)]

    @override
    def constrain_decoder_(self, sae: SparseAutoencoder) -> None:
        hull, mixture, relaxation = _hull(sae)
        mixture.copy_(_onto_simplex(mixture))
        bound = self.delta * hull.anchors.pow(2).sum(1).mean().sqrt()  # δ after prepare: the anchors' scale is 1
        relaxation.mul_((bound / relaxation.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0))

    @override
    def settings(self) -> dict:
        return {**super().settings(), "anchors": self.anchors, "delta": self.delta}


class _RelaxedHull(nn.Module):
    """An archetypal SAE's ``decoder.weight`` (M, d): unit atoms ``W_l C + Λ_l`` as columns, from (W, Λ)."""

    def __init__(self, anchors: Tensor) -> None:
        super().__init__()
        self.register_buffer("anchors", anchors)

    def forward(self, mixture: Tensor, relaxation: Tensor) -> Tensor:
        atoms = mixture @ self.anchors + relaxation
        return (atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)).T

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(W, Λ) of the atoms nearest ``weight``'s columns among the hull's vertices (distinct anchors, Λ = 0)."""
        # Λ contiguous: Adam's fused step and its restored state assume a tensor's plain row-major layout.
        return self.vertices(weight.T).to(weight), torch.zeros(weight.T.shape, dtype=weight.dtype, device=weight.device)

    def vertices(self, directions: Tensor) -> Tensor:
        """One-hot rows of W, (n, anchors): the anchor best aligned with each direction, a different one for each.

        Greedy in order: each direction takes the best aligned anchor no earlier one took (n ≤ anchors).
        """
        anchors = self.anchors
        cosine = nn.functional.normalize(directions.to(anchors), dim=1) @ nn.functional.normalize(anchors, dim=1).T
        free = torch.ones(len(anchors), dtype=torch.bool, device=anchors.device)
        chosen = []
        for row in cosine:
            best = row.masked_fill(~free, -torch.inf).argmax()
            free[best] = False
            chosen.append(best)
        index = torch.stack(chosen) if chosen else torch.zeros(0, dtype=torch.long, device=anchors.device)
        return nn.functional.one_hot(index, len(anchors)).to(anchors.dtype)


def _hull(sae: SparseAutoencoder) -> tuple[_RelaxedHull, Tensor, Tensor]:
    """(the parametrisation, W, Λ) of an archetypal SAE's decoder."""
    weight = sae.decoder.parametrizations.weight
    return weight[0], weight.original0, weight.original1


def _onto_simplex(rows: Tensor) -> Tensor:
    """The Euclidean projection of each row onto the probability simplex (Duchi et al. 2008)."""
    ordered = rows.sort(dim=1, descending=True).values
    excess = ordered.cumsum(dim=1) - 1
    count = torch.arange(1, rows.shape[1] + 1, device=rows.device, dtype=rows.dtype)
    support = (ordered - excess / count > 0).sum(dim=1, keepdim=True)
    shift = excess.gather(1, support - 1) / support
    return (rows - shift).clamp_min(0)


@torch.no_grad()
def _kmeans(rows: Tensor, clusters: int, iterations: int, chunk_rows: int = 4096) -> Tensor:
    """Lloyd's k-means, (clusters, M) centroids, started at the first ``clusters`` rows (Forgy's start).

    ``rows`` come in random order, so the start is a random choice of them. A
    cluster left empty restarts at the row farthest from its centroid. Sums are
    one-hot products, not scatter-adds, so they are deterministic on a GPU too.
    """
    centroids = rows[:clusters].clone()
    for _ in range(iterations):
        assignment, distance = [], []
        for chunk in rows.split(chunk_rows):
            squared = centroids.pow(2).sum(1) - 2 * chunk @ centroids.T
            best = squared.min(dim=1)
            assignment.append(best.indices)
            distance.append(best.values + chunk.pow(2).sum(1))
        assignment, distance = torch.cat(assignment), torch.cat(distance)
        sums, counts = torch.zeros_like(centroids), torch.zeros(clusters, dtype=rows.dtype, device=rows.device)
        for chunk, owner in zip(rows.split(chunk_rows), assignment.split(chunk_rows), strict=True):
            one_hot = nn.functional.one_hot(owner, clusters).to(rows.dtype)
            sums += one_hot.T @ chunk
            counts += one_hot.sum(0)
        empty = (counts == 0).nonzero().squeeze(1)
        updated = sums / counts.clamp_min(1)[:, None]
        updated[empty] = rows[distance.topk(len(empty)).indices]
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


VARIANTS: dict[str, type[CodeActivation]] = {
    variant.name: variant for variant in (Linear, ReLU, TopK, BatchTopK, JumpReLU, Matryoshka, Archetypal)
}


def code_activation(activation: ActivationName | CodeActivation, **settings: Any) -> CodeActivation:
    """The variant named ``activation`` built with its settings (``k`` for TopK), or ``activation`` itself.

    Settings that are None are left out, so ``code_activation("relu", k=None)`` works.

    Raises:
        ValueError: An unknown name, a setting the variant does not take, a missing
            one it needs, or a bad value.

    Example:
        >>> code_activation("topk", k=16)
        TopK(k=16, aux_k=0, resample=True)
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
    parameters = _settings_of(variant)
    required = [name for name, parameter in parameters.items() if parameter.default is inspect.Parameter.empty]
    unknown, missing = sorted(set(given) - set(parameters)), sorted(set(required) - set(given))
    if unknown or missing:
        wanted = f"the settings {list(parameters)}" if parameters else "no settings"
        needed = f" ({required} required)" if required else ""
        raise ValueError(f"activation {activation!r} takes {wanted}{needed}, got {sorted(given) or 'none'}")
    return variant(**given)


def variant_from_config(cfg: dict) -> CodeActivation:
    """The variant a ``cfg.json`` describes: its ``activation`` name and the settings it stores beside it.

    Example:
        >>> variant_from_config({"activation": "topk", "k": 8, "d_in": 512})
        TopK(k=8, aux_k=0, resample=True)
    """
    name = cfg["activation"]
    if name not in VARIANTS:
        raise ValueError(f"activation must be one of {tuple(VARIANTS)}, got {name!r}")
    accepted = _settings_of(VARIANTS[name])
    return code_activation(name, **{key: cfg[key] for key in accepted if key in cfg})


def _settings_of(variant: type[CodeActivation]) -> dict[str, inspect.Parameter]:
    """The named arguments of a variant's constructor: its settings (``*args``, ``**kwargs`` are not)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in inspect.signature(variant).parameters.items() if p.kind in named}
