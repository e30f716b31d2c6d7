"""What a suppression edit has to achieve: one definition for the pipeline, :func:`select_edit` and the report."""

from __future__ import annotations

import math
from dataclasses import dataclass

from captum_salve.checks import check_real

__all__ = ["ControlGoal"]


@dataclass(frozen=True)
class ControlGoal:
    """The goal of suppressing one class with an edit.

    An edit meets it when, on held-out data, the class's accuracy falls below
    ``class_accuracy`` while the other classes' mean accuracy moves by at most
    ``off_target`` (a fraction: 0.02 is 2 points). :func:`select_edit` picks edits
    on training data aiming below the stricter ``selection_accuracy``, which leaves
    a margin for the held-out check.

    Attributes:
        class_accuracy: Held-out accuracy the suppressed class must fall below.
        off_target: Largest allowed change of the other classes' mean accuracy.
        selection_accuracy: Accuracy :func:`select_edit` aims below on its selection data.

    Example:
        >>> goal = ControlGoal()
        >>> goal.met(class_accuracy=0.04, off_target_change=-0.01)
        True
        >>> goal.describe()
        'the class below 10% accuracy while the other classes move by at most 2 points on average'
    """

    class_accuracy: float = 0.10
    off_target: float = 0.02
    selection_accuracy: float = 0.02

    def __post_init__(self) -> None:
        for name, above in (("class_accuracy", True), ("selection_accuracy", True), ("off_target", False)):
            bounds = "(0, 1]" if above else "[0, 1]"
            try:
                value = check_real(getattr(self, name), name, 0.0, above=above)
            except ValueError:
                value = math.nan
            if not value <= 1:  # NaN: refused
                raise ValueError(f"ControlGoal {name} must be a number in {bounds}, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)

    def met(self, class_accuracy: float, off_target_change: float) -> bool:
        """Whether an edit with these held-out results meets the goal."""
        return class_accuracy < self.class_accuracy and abs(off_target_change) <= self.off_target

    def describe(self) -> str:
        """The goal in one phrase, as the report states it."""
        return (
            f"the class below {100 * self.class_accuracy:g}% accuracy while the other classes move by at most "
            f"{100 * self.off_target:g} points on average"
        )
