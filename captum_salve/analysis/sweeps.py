"""Accuracy as an edit grows: α sweeps, α_50, and the choice of a class's suppression edit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np
import torch
from torch import Tensor, nn

from captum_salve.activations import ActivationSet
from captum_salve.analysis.goal import ControlGoal
from captum_salve.analysis.profiles import ClassProfile, RankBy, select_feature
from captum_salve.checks import (
    check_class_names,
    check_class_with_samples,
    check_fraction,
    check_int,
    check_labels,
    check_strengths,
)
from captum_salve.edit.head_edit import HeadEdit, head_of, head_tensors64
from captum_salve.edit.rules import DEFAULT_RULE, EditMode, EditRule, EditRuleName, FeatureDirections, edit_rule
from captum_salve.sae.model import SparseAutoencoder, check_finite
from captum_salve.sites import HEAD_INPUT
from captum_salve.store import CHUNK_ROWS, ActivationStore, check_rows

__all__ = ["DEFAULT_EDIT_ALPHAS", "EditChoice", "SweepResult", "alpha_50", "alpha_sweep", "crossing_50", "select_edit"]


@dataclass
class SweepResult:
    """Predictions of the edited model at every α.

    A class without samples in the swept data cannot be measured: its accuracy is
    NaN, it is left out of :meth:`off_target_change`, and asking for its
    :meth:`prediction_distribution` or :func:`alpha_50` is an error.

    Attributes:
        alphas: (A,) strengths, ascending.
        confusion: (A, K, K) counts: ``confusion[i, true, predicted]``.
        baseline: (K, K) confusion of the unedited model.
        label: What was edited (shown in figures).
        class_names: K names.

    Example:
        >>> confusion = torch.tensor([[[9, 1], [0, 10]], [[2, 8], [1, 9]]])    # at α = 0 and α = 5
        >>> sweep = SweepResult(torch.tensor([0.0, 5.0]), confusion, confusion[0], "feature 12", ["cat", "dog"])
        >>> sweep.per_class_accuracy
        tensor([[0.9000, 1.0000],
                [0.2000, 0.9000]], dtype=torch.float64)
        >>> sweep.off_target_change(0)
        tensor([ 0.0000, -0.1000], dtype=torch.float64)
    """

    alphas: Tensor
    confusion: Tensor
    baseline: Tensor
    label: str
    class_names: list[str]

    @property
    def counts(self) -> Tensor:
        """(K,) samples of each class in the swept data."""
        return self.baseline.sum(dim=1)

    @property
    def per_class_accuracy(self) -> Tensor:
        """(A, K) accuracy of each class at each α (NaN for a class without samples)."""
        return _accuracy(self.confusion)

    @property
    def baseline_accuracy(self) -> Tensor:
        """(K,) accuracy of each class before the edit (NaN for a class without samples)."""
        return _accuracy(self.baseline)

    def check_class(self, class_index: int, name: str = "class_index", *, measured: bool = True) -> int:
        """``class_index`` as an ``int`` class of this sweep; with ``measured``, one that has samples.

        Example:
            >>> sweep.check_class(np.int64(2))
            2
        """
        if not measured:
            return check_int(class_index, name, 0, self.confusion.shape[1] - 1)
        why = "its accuracy cannot be measured"
        return check_class_with_samples(
            class_index, self.counts, "the swept data", why, class_names=self.class_names, name=name
        )

    def prediction_distribution(self, class_index: int) -> Tensor:
        """(A, K) where the images of one class go: share predicted as each class, per α."""
        class_index = self.check_class(class_index)
        rows = self.confusion[:, class_index].double()
        return rows / rows.sum(dim=1, keepdim=True)

    def off_target_change(self, class_index: int | Sequence[int]) -> Tensor:
        """(A,) mean accuracy change of the other classes, against the unedited model.

        The other classes are those not in ``class_index`` that have samples; naming
        every class leaves none, which is an error.
        """
        return self._other_changes(class_index).mean(dim=1)

    def worst_off_target_change(self, class_index: int | Sequence[int]) -> Tensor:
        """(A,) the most negative accuracy change of any other class: what :class:`ControlGoal` judges.

        Example:
            >>> sweep.worst_off_target_change(0)
            tensor([ 0.0000, -0.1000], dtype=torch.float64)
        """
        return self._other_changes(class_index).amin(dim=1)

    def _other_changes(self, class_index: int | Sequence[int]) -> Tensor:
        """(A, K') accuracy changes of the classes not in ``class_index`` that have samples."""
        targets = [class_index] if np.ndim(class_index) == 0 else list(class_index)
        if not targets:
            raise ValueError("class_index must name at least one class, got none")
        targets = [self.check_class(target, measured=False) for target in targets]
        k = self.confusion.shape[1]
        keep = self.counts > 0
        keep[targets] = False
        if not keep.any():
            left = sorted(set(range(k)) - set(targets))
            why = f"the other classes {left} have no samples in the swept data" if left else f"it names all {k} classes"
            raise ValueError(f"class_index {sorted(set(targets))} leaves no class to measure the change on: {why}")
        return self.per_class_accuracy[:, keep] - self.baseline_accuracy[keep]


def _accuracy(confusion: Tensor) -> Tensor:
    # 0 / 0 is NaN: a class without samples has no accuracy
    return confusion.diagonal(dim1=-2, dim2=-1).double() / confusion.sum(dim=-1).double()


@torch.no_grad()
def alpha_sweep(
    model: nn.Module,
    sae: SparseAutoencoder | FeatureDirections,
    feature: int | Sequence[int] | None,
    data: ActivationSet | ActivationStore,
    alphas: Sequence[float] | Tensor,
    *,
    mode: EditMode = "suppress",
    rule: EditRuleName | EditRule = DEFAULT_RULE,
    class_names: Sequence[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> SweepResult:
    """Per-class accuracy and prediction distribution of the edited model at every α.

    The edit changes only the head, so the sweep runs the edited head on the
    head-input activations: the same logits as the edited model on the images,
    computed in float64 by the rule's :meth:`~captum_salve.edit.rules.EditRule.logit_curve`
    (under ``"project"`` a rank-1 update of the unedited logits per feature,
    O(N·K) per strength). Several features are edited together, each at the swept α.
    The rows are read chunk by chunk and only the confusion counts are kept, so an
    on-disk store of any length is swept in bounded memory.

    Args:
        model: The classifier, or its head (``nn.Linear``).
        sae: The SAE (or FeatureDirections, then ``feature`` is None).
        feature: One feature or several edited together.
        data: Labelled head-input activations (see :func:`collect_activations`), finite:
            an ActivationSet or an ActivationStore.
        alphas: Strengths ≥ 0.
        mode: ``"suppress"`` or ``"enhance"``.
        rule: ``"salve"``, ``"project"`` or an EditRule.
        class_names: Names for figures, one per class of the head.
        chunk_rows: Rows read at a time (fewer when the logits of that many would not
            fit in a block of 2^22 float64 numbers).

    Example:
        >>> sweep = alpha_sweep(model, sae, 12, test_acts, [0, 1, 2, 5, 10], rule="project")
        >>> sweep.per_class_accuracy[:, 3], sweep.off_target_change(3)
    """
    rows = check_rows(data, "data")
    if rows.site != HEAD_INPUT:
        raise ValueError(f"data must be head-input activations, got activations read at {rows.site!r}")
    edit = HeadEdit.of(sae, feature, 0.0, mode=mode, rule=rule)
    head = head_of(model)
    edit.check_head(head)
    alphas = check_strengths(alphas)
    k = head.out_features
    check_labels(rows.require_labels(), "data labels", classes=k)
    chunk_rows = check_int(chunk_rows, "chunk_rows", 1)
    check_finite(rows, "data", chunk_rows=chunk_rows)
    names = check_class_names(class_names, count=k) if class_names is not None else [str(i) for i in range(k)]
    weight, bias = head_tensors64(head)
    device = weight.device
    strengths = [
        torch.full((edit.directions.count,), float(alpha), dtype=torch.float64, device=device) for alpha in alphas
    ]
    confusion = torch.zeros(len(alphas) + 1, k, k, dtype=torch.long)
    for chunk in rows.chunks(min(chunk_rows, max(1, _CHUNK_ELEMENTS // (k + edit.directions.width)))):
        a = chunk.features.to(device, torch.float64)
        logits_at = edit.rule.logit_curve(weight, bias, edit.directions, a, edit.sign)
        for i, strength in enumerate([torch.zeros_like(strengths[0]), *strengths]):
            predicted = logits_at(strength).argmax(dim=1).cpu()
            confusion[i] += torch.bincount(chunk.labels * k + predicted, minlength=k * k).reshape(k, k)
    label = f"{mode} {'feature ' + str(feature) if feature is not None else 'direction'} ({edit.rule.name})"
    return SweepResult(alphas, confusion[1:], confusion[0], label, names)


def alpha_50(sweep: SweepResult, class_index: int) -> float:
    """The α at which a class's accuracy first falls to 50%, interpolated linearly between swept strengths.

    Returns ``inf`` if it never does, and the first α if it already is at or below 50% there.
    A class without samples in the swept data has no α_50: that is an error.
    On a sweep of the class's correctly classified samples it equals the (lower)
    median of their flip α_crit when a flipped sample stays flipped: always under
    ``rule="project"``; under ``"salve"`` a sample can flip back once clipping
    leaves mostly the bias.

    Example:
        >>> confusion = torch.tensor([[[3, 1], [0, 4]], [[1, 3], [0, 4]]])    # class 0: 3 of 4 right, then 1 of 4
        >>> sweep = SweepResult(torch.tensor([0.0, 2.0]), confusion, confusion[0], "feature 12", ["cat", "dog"])
        >>> alpha_50(sweep, 0), alpha_50(sweep, 1)
        (1.0, inf)
    """
    class_index = sweep.check_class(class_index)
    return crossing_50(sweep.alphas, sweep.per_class_accuracy[:, class_index])


def crossing_50(alphas: Tensor, accuracy: Tensor) -> float:
    """Where an accuracy curve over ascending ``alphas`` first reaches 50% (see :func:`alpha_50`).

    Example:
        >>> crossing_50(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 0.75, 0.25]))
        1.5
    """
    below = (accuracy <= 0.5).nonzero()
    if len(below) == 0:
        return float("inf")
    i = int(below[0])
    if i == 0:
        return float(alphas[0])
    a0, a1 = alphas[i - 1], alphas[i]
    y0, y1 = accuracy[i - 1], accuracy[i]
    return float(a0 + (y0 - 0.5) / (y0 - y1) * (a1 - a0))


DEFAULT_EDIT_ALPHAS = tuple(float(a) for a in torch.logspace(-1, 2, 37))
# Elements of one block of float64 logits; larger data is swept block by block.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class EditChoice:
    """The edit :func:`select_edit` picked for a class, with what it did on the selection data.

    Attributes:
        class_index: The class to suppress.
        features: The SAE features edited together.
        alpha: The strength.
        rule: The edit rule.
        target_accuracy: The class's accuracy after the edit.
        off_target_change: Mean accuracy change of the other classes.
        worst_off_target_change: The most negative accuracy change of any other class.
        reached: Whether the class fell below the goal's selection accuracy with no other
            class losing more than the off-target limit.

    Example:
        >>> choice = select_edit(model, sae, profile, 3, train_acts)
        >>> choice.reached, choice.features, choice.alpha, choice.worst_off_target_change
        >>> held_out = alpha_sweep(model, sae, list(choice.features), test_acts, [choice.alpha], rule=choice.rule)
    """

    class_index: int
    features: tuple[int, ...]
    alpha: float
    rule: EditRuleName
    target_accuracy: float
    off_target_change: float
    worst_off_target_change: float
    reached: bool


def select_edit(
    model: nn.Module,
    sae: SparseAutoencoder,
    profile: ClassProfile,
    class_index: int,
    acts: ActivationSet | ActivationStore,
    *,
    rule: EditRuleName | EditRule = DEFAULT_RULE,
    mode: EditMode = "suppress",
    candidates: int = 6,
    max_features: int = 2,
    goal: ControlGoal = ControlGoal(),
    off_target: float | None = None,
    alphas: Sequence[float] = DEFAULT_EDIT_ALPHAS,
    by: RankBy = "contrast",
) -> EditChoice:
    """Pick the suppression edit of a class from its profile: which of its top features, and how strong.

    Every single feature and every group of up to ``max_features`` among the class's
    top ``candidates`` (by ``by``) is swept over ``alphas`` on ``acts``. An edit
    reaches the goal when it brings the class below ``goal.selection_accuracy`` while
    no other class loses more than the off-target limit (``off_target``, default
    ``goal.off_target``), judged on the worst single other class, not on their mean;
    a group's strength is the smallest swept α that does. Of the groups that get
    there, the one whose worst other class loses least wins (then the smaller mean
    change, then fewer features). If none gets there, the result has ``reached=False``:
    the edit that brings the class lowest without breaking the limit, or, when every
    swept edit breaks it, the one that brings the class lowest. Pick on training
    activations and measure the choice on held-out ones (the default goal aims for 2%
    here, a margin for its held-out 10%). ``acts`` is an ActivationSet or an
    ActivationStore (each sweep reads it chunk by chunk); the class must have samples
    in it and rows in ``profile``.

    Example:
        >>> choice = select_edit(model, sae, profile, 3, train_acts, off_target=0.05)
        >>> edited_model = edit_model(model, sae, list(choice.features), choice.alpha, rule=choice.rule)
    """
    if not isinstance(goal, ControlGoal):
        raise TypeError(f"goal must be a ControlGoal, got {type(goal).__name__}: {goal!r}")
    if off_target is not None:
        goal = replace(goal, off_target=check_fraction(off_target, "off_target"))
    candidates = check_int(candidates, "candidates", least=1)
    max_features = check_int(max_features, "max_features", least=1)
    rows = check_rows(acts, "acts")
    pool = select_feature(profile, class_index, n=candidates, by=by)
    counts = torch.bincount(rows.require_labels(), minlength=profile.num_classes)
    class_index = check_class_with_samples(class_index, counts, "acts", "select_edit cannot measure its accuracy")
    rule_name = edit_rule(rule).name
    best: tuple | None = None
    for size in range(1, max_features + 1):
        for group in combinations(pool, size):
            sweep = alpha_sweep(model, sae, list(group), rows, alphas, mode=mode, rule=rule)
            accuracy = sweep.per_class_accuracy[:, class_index]
            mean, worst = sweep.off_target_change(class_index), sweep.worst_off_target_change(class_index)
            spared = goal.spares_others(worst)
            reached = ((accuracy < goal.selection_accuracy) & spared).nonzero()
            if len(reached):
                i = int(reached[0])
                key = (0, max(0.0, -float(worst[i])), abs(float(mean[i])), size)
            else:  # the lowest the class gets within the limit, else at all
                i = int(accuracy.where(spared, torch.inf).argmin() if spared.any() else accuracy.argmin())
                key = (1 if spared.any() else 2, float(accuracy[i]), max(0.0, -float(worst[i])), size)
            if best is None or key < best[0]:
                choice = EditChoice(
                    class_index,
                    group,
                    float(sweep.alphas[i]),
                    rule_name,
                    float(accuracy[i]),
                    float(mean[i]),
                    float(worst[i]),
                    key[0] == 0,
                )
                best = (key, choice)
    return best[1]
