"""Accuracy as an edit grows: α sweeps, α_50, and the choice of a class's suppression edit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
from torch import Tensor, nn

from captum_salve.activations import ActivationSet
from captum_salve.analysis.goal import ControlGoal
from captum_salve.analysis.profiles import ClassProfile, RankBy, select_feature
from captum_salve.edit.head_edit import HeadEdit, head_of, head_tensors64
from captum_salve.edit.rules import EditMode, EditRule, EditRuleName, FeatureDirections, edit_rule
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sites import HEAD_INPUT

__all__ = ["DEFAULT_EDIT_ALPHAS", "EditChoice", "SweepResult", "alpha_50", "alpha_sweep", "crossing_50", "select_edit"]


@dataclass
class SweepResult:
    """Predictions of the edited model at every α.

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
    def per_class_accuracy(self) -> Tensor:
        """(A, K) accuracy of each class at each α."""
        return _accuracy(self.confusion)

    @property
    def baseline_accuracy(self) -> Tensor:
        """(K,) accuracy of each class before the edit."""
        return _accuracy(self.baseline)

    def _check_class(self, class_index: int) -> None:
        k = self.confusion.shape[1]
        if not 0 <= class_index < k:
            raise ValueError(f"class_index must be in [0, {k - 1}], got {class_index}")

    def prediction_distribution(self, class_index: int) -> Tensor:
        """(A, K) where the images of one class go: share predicted as each class, per α."""
        self._check_class(class_index)
        rows = self.confusion[:, class_index].double()
        return rows / rows.sum(dim=1, keepdim=True).clamp_min(1)

    def off_target_change(self, class_index: int | Sequence[int]) -> Tensor:
        """(A,) mean accuracy change of the classes not in ``class_index``, against the unedited model."""
        targets = torch.as_tensor(class_index).reshape(-1)
        for target in targets.tolist():
            self._check_class(target)
        keep = torch.ones(self.confusion.shape[1], dtype=torch.bool)
        keep[targets] = False
        return (self.per_class_accuracy[:, keep] - self.baseline_accuracy[keep]).mean(dim=1)


def _accuracy(confusion: Tensor) -> Tensor:
    counts = confusion.sum(dim=-1).double()
    return confusion.diagonal(dim1=-2, dim2=-1).double() / counts.clamp_min(1)


@torch.no_grad()
def alpha_sweep(
    model: nn.Module,
    sae: SparseAutoencoder | FeatureDirections,
    feature: int | Sequence[int] | None,
    data: ActivationSet,
    alphas: Sequence[float] | Tensor,
    *,
    mode: EditMode = "suppress",
    rule: EditRuleName | EditRule = "salve",
    class_names: Sequence[str] | None = None,
) -> SweepResult:
    """Per-class accuracy and prediction distribution of the edited model at every α.

    The edit changes only the head, so the sweep runs the edited head on the
    head-input activations: the same logits as the edited model on the images,
    computed in float64 by the rule's :meth:`~captum_salve.edit.rules.EditRule.logit_curve`
    (under ``"project"`` a rank-1 update of the unedited logits per feature,
    O(N·K) per strength). Several features are edited together, each at the swept α.

    Args:
        model: The classifier, or its head (``nn.Linear``).
        sae: The SAE (or FeatureDirections, then ``feature`` is None).
        feature: One feature or several edited together.
        data: Labelled head-input activations (see :func:`collect_activations`).
        alphas: Strengths ≥ 0.
        mode: ``"suppress"`` or ``"enhance"``.
        rule: ``"salve"``, ``"project"`` or an EditRule.
        class_names: Names for figures.

    Example:
        >>> sweep = alpha_sweep(model, sae, 12, test_acts, [0, 1, 2, 5, 10], rule="project")
        >>> sweep.per_class_accuracy[:, 3], sweep.off_target_change(3)
    """
    if data.site != HEAD_INPUT:
        raise ValueError(f"data must be head-input activations, got activations read at {data.site!r}")
    labels = data.require_labels()
    edit = HeadEdit.of(sae, feature, 0.0, mode=mode, rule=rule)
    head = head_of(model)
    edit.check_head(head)
    alphas = torch.as_tensor(alphas, dtype=torch.float64).sort().values
    if alphas.dim() != 1 or len(alphas) == 0:
        raise ValueError("alphas must be a non-empty 1-D sequence of strengths")
    if not torch.isfinite(alphas).all() or (alphas < 0).any():
        raise ValueError(f"alphas must be finite and >= 0, got {alphas.tolist()}")
    k = head.out_features
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(
            f"data labels must be classes of the head, in [0, {k - 1}], got {int(labels.min())} to {int(labels.max())}"
        )
    weight, bias = head_tensors64(head)
    device = weight.device
    strengths = [
        torch.full((edit.directions.count,), float(alpha), dtype=torch.float64, device=device) for alpha in alphas
    ]
    confusion = torch.zeros(len(alphas) + 1, k, k, dtype=torch.long)
    rows = max(1, _CHUNK_ELEMENTS // (k + edit.directions.width))
    for start in range(0, len(data), rows):
        a = data.features[start : start + rows].to(device, torch.float64)
        truth = labels[start : start + rows]
        logits_at = edit.rule.logit_curve(weight, bias, edit.directions, a, edit.sign)
        for i, strength in enumerate([torch.zeros_like(strengths[0]), *strengths]):
            predicted = logits_at(strength).argmax(dim=1).cpu()
            confusion[i] += torch.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    label = f"{mode} {'feature ' + str(feature) if feature is not None else 'direction'} ({edit.rule.name})"
    return SweepResult(alphas, confusion[1:], confusion[0], label, names)


def alpha_50(sweep: SweepResult, class_index: int) -> float:
    """The α at which a class's accuracy first falls to 50%, interpolated linearly between swept strengths.

    Returns ``inf`` if it never does, and the first α if it already is at or below 50% there.
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
    sweep._check_class(class_index)
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
        reached: Whether the target accuracy was reached.

    Example:
        >>> choice = select_edit(model, sae, profile, 3, train_acts)
        >>> choice.reached, choice.features, choice.alpha, choice.off_target_change
        >>> held_out = alpha_sweep(model, sae, list(choice.features), test_acts, [choice.alpha], rule=choice.rule)
    """

    class_index: int
    features: tuple[int, ...]
    alpha: float
    rule: EditRuleName
    target_accuracy: float
    off_target_change: float
    reached: bool


def select_edit(
    model: nn.Module,
    sae: SparseAutoencoder,
    profile: ClassProfile,
    class_index: int,
    acts: ActivationSet,
    *,
    rule: EditRuleName | EditRule = "project",
    mode: EditMode = "suppress",
    candidates: int = 6,
    max_features: int = 2,
    goal: ControlGoal = ControlGoal(),
    alphas: Sequence[float] = DEFAULT_EDIT_ALPHAS,
    by: RankBy = "contrast",
) -> EditChoice:
    """Pick the suppression edit of a class from its profile: which of its top features, and how strong.

    Every single feature and every group of up to ``max_features`` among the class's
    top ``candidates`` (by ``by``) is swept over ``alphas`` on ``acts``; a group's
    strength is the smallest α that brings the class below ``goal.selection_accuracy``. Of
    the groups that get there, the one that moves the other classes least wins
    (fewer features on a tie). If none gets there, the one that brings the class
    lowest is returned with ``reached=False``. Pick on training activations and
    measure the choice on held-out ones (the default goal aims for 2% here, a
    margin for its held-out 10%).

    Example:
        >>> choice = select_edit(model, sae, profile, 3, train_acts)
        >>> edited_model = edit_model(model, sae, list(choice.features), choice.alpha, rule=choice.rule)
    """
    if candidates < 1 or max_features < 1:
        raise ValueError(f"candidates and max_features must be at least 1, got {candidates} and {max_features}")
    pool = select_feature(profile, class_index, n=candidates, by=by)
    rule_name = edit_rule(rule).name
    best: tuple | None = None
    for size in range(1, max_features + 1):
        for group in combinations(pool, size):
            sweep = alpha_sweep(model, sae, list(group), acts, alphas, mode=mode, rule=rule)
            accuracy = sweep.per_class_accuracy[:, class_index]
            off = sweep.off_target_change(class_index)
            below = (accuracy < goal.selection_accuracy).nonzero()
            i = int(below[0]) if len(below) else int(accuracy.argmin())
            reached = len(below) > 0
            key = (not reached, abs(float(off[i])) if reached else float(accuracy[i]), size)
            if best is None or key < best[0]:
                choice = EditChoice(
                    class_index, group, float(sweep.alphas[i]), rule_name, float(accuracy[i]), float(off[i]), reached
                )
                best = (key, choice)
    return best[1]
