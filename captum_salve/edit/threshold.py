r"""The critical suppression threshold α_crit, one per sample.

Under ``rule="salve"`` with suppression, every logit is piecewise linear in α with
breakpoints ``1/c_j`` (``c = |D[:, l]|``): on the piece where the set J of
unclipped columns is fixed, ``logit_k(α) = b_k + Σ_{j∈J} W_kj a_j − α Σ_{j∈J} W_kj a_j c_j``.
Enhancement and ``rule="project"`` are linear in α on one piece. So every
criterion is solved exactly, piece by piece, with no iteration:

- ``criterion="zero_logit"`` (the paper's): the first α at which the target logit
  reaches 0 (falls to it when suppressing, rises to it when enhancing).
- ``criterion="flip"`` (ours): the first α at which the prediction stops being the
  target (suppress) or becomes it (enhance); a tie counts as reached.

The pieces come from the rule itself (:meth:`~captum_salve.edit.rules.EditRule.pieces`),
so a new rule gets α_crit with no change here. ``method="linear"`` is the paper's analytical
estimate: the first piece extended to all α (no clipping), so for the zero-logit criterion ``α_lin = z_t / R_t`` with
``R_t = Σ_j W_tj c_j a_j``. ``method="exact"`` walks the pieces; ``method="bisect"``
searches on the edited head's real outputs, the independent check. Samples that
never cross get ``inf``; samples already past the criterion at α = 0 get 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from captum_salve.activations import ActivationSet, ImageData, collect_activations
from captum_salve.checks import check_int, check_labels
from captum_salve.edit.head_edit import HeadEdit, head_of, head_tensors64
from captum_salve.edit.rules import DEFAULT_RULE, EditMode, EditRule, EditRuleName, FeatureDirections, LogitPieces
from captum_salve.sae.model import SparseAutoencoder, check_finite
from captum_salve.sites import HEAD_INPUT
from captum_salve.store import CHUNK_ROWS, ActivationStore, Rows, as_rows

__all__ = ["CRITERIA", "METHODS", "Criterion", "Method", "alpha_crit"]

Criterion = Literal["zero_logit", "flip"]
Method = Literal["exact", "linear", "bisect"]
CRITERIA: tuple[Criterion, ...] = get_args(Criterion)
METHODS: tuple[Method, ...] = get_args(Method)
_BISECT_STEPS = 64
_GRID_PER_OCTAVE = 16
_GRID_OCTAVES = 50  # up to 2^50 ~ 1e15: stronger edits count as never
_CHUNK_ELEMENTS = 1 << 24


def alpha_crit(
    model: nn.Module,
    sae: SparseAutoencoder | FeatureDirections,
    feature: int | None,
    inputs: ImageData | ActivationSet | ActivationStore,
    target: int | Sequence[int] | Tensor,
    *,
    criterion: Criterion = "zero_logit",
    method: Method = "exact",
    rule: EditRuleName | EditRule = DEFAULT_RULE,
    mode: EditMode = "suppress",
    chunk_rows: int = CHUNK_ROWS,
) -> Tensor:
    """Per-sample critical edit strength for one feature.

    Args:
        model: The classifier (its head is edited), or its head (``nn.Linear``)
            when ``inputs`` are head-input activations.
        sae: The SAE trained on the head input, or :class:`FeatureDirections` of one feature.
        feature: The SAE feature (None with FeatureDirections).
        inputs: Images (tensor, Dataset, DataLoader) or head-input activations (an
            ActivationSet or an ActivationStore, read chunk by chunk).
        target: The class whose logit or prediction is watched: one int for all
            samples, or one per sample.
        criterion: ``"zero_logit"`` or ``"flip"``.
        method: ``"exact"``, ``"linear"`` or ``"bisect"``.
        rule: ``"salve"``, ``"project"`` or an EditRule.
        mode: ``"suppress"`` or ``"enhance"``.
        chunk_rows: Rows solved at a time (fewer when that many rows' logit pieces would
            not fit in a block of 2^24 float64 numbers). Each sample's threshold depends
            on its own row alone.

    Returns:
        (N,) float64 thresholds in row order, ``inf`` where the criterion is never met.

    Example:
        >>> acts = collect_activations(model, test_images)
        >>> a = alpha_crit(model, sae, 12, acts, target=3, criterion="flip")
        >>> a.isinf().float().mean()  # share of samples no strength flips
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    edit = HeadEdit.of(sae, feature, 0.0, mode=mode, rule=rule)
    if edit.directions.count != 1:
        raise ValueError(f"alpha_crit takes one feature, got {edit.directions.count}")
    head = head_of(model)
    edit.check_head(head)
    if isinstance(inputs, (ActivationSet, Rows)):
        rows = as_rows(inputs, "inputs")
    elif not isinstance(inputs, (Tensor, Dataset, DataLoader)):
        raise TypeError(
            "inputs must be images (a tensor, Dataset or DataLoader) or head-input activations "
            f"(an ActivationSet or an ActivationStore), got {type(inputs).__name__}"
        )
    elif isinstance(model, nn.Linear):
        raise ValueError(
            "with the head alone, inputs must be head-input activations (an ActivationSet or an ActivationStore), "
            "not images"
        )
    else:
        rows = as_rows(collect_activations(model, inputs, progress=False), "inputs")
    if rows.dim != head.in_features or rows.site != HEAD_INPUT:
        raise ValueError(
            f"inputs must be images or head-input activations of width {head.in_features}, "
            f"got activations of width {rows.dim} read at {rows.site!r}"
        )
    if len(rows) == 0:
        raise ValueError("inputs hold no samples; alpha_crit needs at least one")
    chunk_rows = check_int(chunk_rows, "chunk_rows", 1)
    check_finite(rows, "inputs' head-input activations", chunk_rows=chunk_rows)
    weight, bias = head_tensors64(head)
    targets = _per_sample_targets(target, len(rows), head.out_features).to(weight.device)
    chunk_rows = min(chunk_rows, max(1, _CHUNK_ELEMENTS // (head.out_features * (head.in_features + 1) * 4)))
    results, start = [], 0
    for chunk in rows.chunks(chunk_rows):
        a, chunk_targets = chunk.features.to(weight.device, torch.float64), targets[start : start + len(chunk)]
        if method == "bisect":
            results.append(_bisect(edit, weight, bias, a, chunk_targets, criterion))
        else:
            pieces = edit.rule.pieces(weight, bias, edit.directions, a, edit.sign, exact=method == "exact")
            results.append(_first_crossing(pieces, chunk_targets, criterion, mode).cpu())
        start += len(chunk)
    return torch.cat(results)


def _per_sample_targets(target: int | Sequence[int] | Tensor, n: int, classes: int) -> Tensor:
    if isinstance(target, str) or np.ndim(target) == 0:  # one class for every sample
        return torch.full((n,), check_int(target, "target", 0, classes - 1), dtype=torch.long)
    targets = check_labels(target, "target", classes)
    if targets.shape != (n,):
        raise ValueError(
            f"target must be one class for all samples or one per sample ({n}), got shape {tuple(targets.shape)}"
        )
    return targets


def _first_crossing(pieces: LogitPieces, targets: Tensor, criterion: Criterion, mode: EditMode) -> Tensor:
    """The first α at which the criterion holds, given piecewise-linear logits."""
    p, q, lo, hi = pieces.p, pieces.q, pieces.lo, pieces.hi
    rows = torch.arange(len(targets), device=p.device)
    p_t, q_t = p[rows, :, targets][:, :, None], q[rows, :, targets][:, :, None]  # (N, P, 1)
    if criterion == "zero_logit":
        sign = -1.0 if mode == "suppress" else 1.0  # the event is sign · logit_t >= 0
        first, _ = _feasible(sign * p_t, sign * q_t, lo, hi)
        return first.amin(dim=(1, 2))
    others = torch.ones(p.shape[0], p.shape[2], dtype=torch.bool, device=p.device)
    others[rows, targets] = False
    others = others[:, None, :]
    if mode == "suppress":  # some other class reaches the target: any logit_k − logit_t >= 0
        first, _ = _feasible(p - p_t, q - q_t, lo, hi)
        return first.masked_fill(~others, torch.inf).amin(dim=(1, 2))
    # enhance: the target reaches every other class: all logit_t − logit_k >= 0 at once
    first, last = _feasible(p_t - p, q_t - q, lo, hi)
    start = first.masked_fill(~others, -torch.inf).amax(dim=2)
    end = last.masked_fill(~others, torch.inf).amin(dim=2)
    return torch.where(start <= end, start, torch.inf).amin(dim=1)


def _feasible(p: Tensor, q: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Where ``p + α q >= 0`` on each piece ``[lo, hi]``: the interval's ends, (inf, -inf) when empty."""
    lo, hi = lo[None, :, None], hi[None, :, None]
    root = -p / q
    first = torch.where(q > 0, torch.maximum(lo, root), lo.expand_as(p))
    last = torch.where(q < 0, torch.minimum(hi, root), hi.expand_as(p))
    flat_ok = (q != 0) | (p >= 0)
    empty = (first > last) | ~flat_ok | torch.isinf(lo).expand_as(p)
    return first.masked_fill(empty, torch.inf), last.masked_fill(empty, -torch.inf)


def _event(logits: Tensor, targets: Tensor, criterion: Criterion, mode: EditMode) -> Tensor:
    rows = torch.arange(len(targets), device=logits.device)
    target_logit = logits[rows, targets]
    if criterion == "zero_logit":
        return target_logit <= 0 if mode == "suppress" else target_logit >= 0
    rival = logits.clone()
    rival[rows, targets] = -torch.inf
    best_rival = rival.max(dim=1).values
    return best_rival >= target_logit if mode == "suppress" else target_logit >= best_rival


def _bisect(edit: HeadEdit, weight: Tensor, bias: Tensor, a: Tensor, targets: Tensor, criterion: Criterion) -> Tensor:
    """Bracket on a grid, then bisect on the edited head's real outputs.

    The grid holds 0, every clipping breakpoint ``1/c_j`` and 16 points per octave
    from 2^-20 to about 1e15, so a window in which the criterion holds (possible
    when enhancing towards a flip) is found unless it is narrower than 4% of α.
    """
    c = edit.directions.decoder[:, 0].abs().double().to(a.device)
    breaks = 1.0 / c[c > 0]
    octaves = torch.arange(-20 * _GRID_PER_OCTAVE, _GRID_OCTAVES * _GRID_PER_OCTAVE + 1, device=a.device, dtype=a.dtype)
    grid = torch.cat(
        [torch.zeros(1, dtype=a.dtype, device=a.device), breaks, 2.0 ** (octaves / _GRID_PER_OCTAVE)]
    ).unique()

    def event_at(alpha: Tensor, index: Tensor) -> Tensor:
        w, b = edit.rule.weights(weight, bias, edit.directions, alpha, edit.sign)
        logits = torch.einsum("nkm,nm->nk", w, a[index]) + b
        return _event(logits, targets[index], criterion, edit.mode)

    n = len(a)
    result = torch.full((n,), torch.inf, dtype=a.dtype, device=a.device)
    lower = torch.zeros(n, dtype=a.dtype, device=a.device)
    pending = torch.arange(n, device=a.device)
    for value in grid:
        if len(pending) == 0:
            break
        hit = event_at(value.expand(len(pending), 1), pending)
        result[pending[hit]] = value
        lower[pending[~hit]] = value
        pending = pending[~hit]
    found = torch.isfinite(result) & (result > 0)
    index = found.nonzero().squeeze(1)
    low, high = lower[index], result[index]
    for _ in range(_BISECT_STEPS):
        middle = (low + high) / 2
        hit = event_at(middle[:, None], index)
        high = torch.where(hit, middle, high)
        low = torch.where(hit, low, middle)
    result[index] = high
    return result.cpu()
