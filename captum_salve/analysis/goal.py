"""What a suppression edit has to achieve: one definition for the pipeline, :func:`select_edit` and the report."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from captum_salve.checks import check_fraction

__all__ = ["ControlGoal"]

# Accuracies are ratios of counts: 49/50 - 50/50 is -0.020000000000000018, a drop of exactly 2 points.
_ROUNDING = 1e-12


@dataclass(frozen=True)
class ControlGoal:
    """The goal of suppressing one class with an edit.

    An edit meets it when, on held-out data, the class's accuracy falls below
    ``class_accuracy`` while no other class loses more than ``off_target`` of its
    accuracy (a fraction: 0.02 is 2 points). The other classes are judged one by one,
    on the worst of them: a mean over them would hide one class that falls far while
    the rest do not move. A class already below ``class_accuracy`` before the edit
    (one the model never got right) cannot be suppressed by it: the goal does not
    apply to it (:meth:`applies_to`), :meth:`met` is False for it, and goal counts
    leave it out and list it. :func:`select_edit` picks edits on training data aiming
    below the stricter ``selection_accuracy``, which leaves a margin for the held-out
    check, under the same off-target limit.

    Attributes:
        class_accuracy: Held-out accuracy the suppressed class must fall below.
        off_target: Largest accuracy drop allowed for any single other class.
        selection_accuracy: Accuracy :func:`select_edit` aims below on its selection data.

    Example:
        >>> goal = ControlGoal()
        >>> goal.met(baseline_accuracy=0.95, class_accuracy=0.04, worst_off_target_change=-0.01)
        True
        >>> goal.met(baseline_accuracy=0.95, class_accuracy=0.04, worst_off_target_change=-0.15)
        False
        >>> goal.met(baseline_accuracy=0.0, class_accuracy=0.0, worst_off_target_change=0.0)    # never right
        False
        >>> goal.describe()
        'the class below 10% accuracy while no other class loses more than 2 points'
    """

    class_accuracy: float = 0.10
    off_target: float = 0.02
    selection_accuracy: float = 0.02

    def __post_init__(self) -> None:
        for name, above_zero in (("class_accuracy", True), ("selection_accuracy", True), ("off_target", False)):
            value = check_fraction(getattr(self, name), f"ControlGoal {name}", above_zero=above_zero)
            object.__setattr__(self, name, value)

    def applies_to(self, baseline_accuracy: float) -> bool:
        """Whether a class with this accuracy before the edit can be suppressed to the goal: it is not below already."""
        return baseline_accuracy >= self.class_accuracy

    def spares_others(self, worst_off_target_change: float | Tensor) -> bool | Tensor:
        """Whether no other class loses more than ``off_target`` (element-wise for a tensor of changes)."""
        return worst_off_target_change >= -self.off_target - _ROUNDING

    def met(self, baseline_accuracy: float, class_accuracy: float, worst_off_target_change: float) -> bool:
        """Whether an edit with these held-out results meets the goal.

        Args:
            baseline_accuracy: The class's accuracy before the edit.
            class_accuracy: Its accuracy after the edit.
            worst_off_target_change: The most negative accuracy change of the other classes
                (:meth:`SweepResult.worst_off_target_change`).
        """
        return (
            self.applies_to(baseline_accuracy)
            and class_accuracy < self.class_accuracy
            and self.spares_others(worst_off_target_change)
        )

    def describe(self) -> str:
        """The goal in one phrase, as the report states it."""
        return (
            f"the class below {100 * self.class_accuracy:g}% accuracy while no other class loses more than "
            f"{100 * self.off_target:g} points"
        )
