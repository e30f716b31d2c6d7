"""The suppression goal: the class below its target, no single other class losing more than the limit."""

from __future__ import annotations

import pytest
import torch

from captum_salve.analysis import ControlGoal


def test_the_goal_judges_the_worst_other_class_not_their_mean():
    goal = ControlGoal(class_accuracy=0.1, off_target=0.02)
    assert goal.met(0.9, 0.05, -0.02)  # a drop of exactly the limit is allowed
    assert goal.met(0.9, 0.05, 49 / 50 - 1.0)  # 2 points of 50 images: -0.020000000000000018 in floats
    assert not goal.met(0.9, 0.05, -0.021)
    assert not goal.met(0.9, 0.1, 0.0)  # the class must fall below its target, not to it
    assert goal.met(0.9, 0.05, 0.3)  # other classes gaining is no harm
    assert goal.spares_others(torch.tensor([0.0, -0.02, -0.03])).tolist() == [True, True, False]


@pytest.mark.parametrize("baseline", [0.0, 0.05, 0.0999])
def test_a_class_already_below_the_target_before_the_edit_is_never_met(baseline):
    goal = ControlGoal(class_accuracy=0.1)
    assert not goal.applies_to(baseline)
    assert not goal.met(baseline, 0.0, 0.0)  # 0% → 0% is not a suppression
    assert goal.applies_to(0.1) and goal.met(0.1, 0.0, 0.0)


def test_the_goal_says_what_it_judges():
    assert ControlGoal(class_accuracy=0.05, off_target=0.03).describe() == (
        "the class below 5% accuracy while no other class loses more than 3 points"
    )


@pytest.mark.parametrize(
    ("field", "value", "bounds"),
    [
        ("class_accuracy", 0.0, "(0, 1]"),
        ("selection_accuracy", 1.5, "(0, 1]"),
        ("off_target", -0.01, "[0, 1]"),
        ("off_target", float("nan"), "[0, 1]"),
        ("off_target", True, "[0, 1]"),
    ],
)
def test_the_goal_refuses_what_is_not_a_share(field, value, bounds):
    with pytest.raises(ValueError, match=rf"ControlGoal {field} must be a number in \{bounds[0]}0, 1\], got {value!r}"):
        ControlGoal(**{field: value})
