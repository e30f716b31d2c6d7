"""The control stage's goal count: classes judged on their worst neighbour, classes never right left out and named."""

from __future__ import annotations

from dataclasses import replace

from captum_salve.analysis import ControlGoal
from captum_salve.pipeline import GoalCount
from tests.pipeline.examples import hand_built_summary


def test_a_class_at_zero_before_the_edit_is_left_out_and_named(tmp_path):
    control = hand_built_summary(tmp_path).control  # eel: 0% → 0%, nothing else moves
    goal = ControlGoal(class_accuracy=0.05, off_target=0.03)
    assert control.goal_left_out(goal) == ["eel"]
    assert control.goal_met(goal) == 2  # cat and dog; eel would meet the goal if it counted
    assert GoalCount.of(control, goal) == GoalCount(goal.describe(), 2, 0, 2, ["eel"])


def test_the_count_judges_the_worst_other_class(tmp_path):
    control = hand_built_summary(tmp_path).control  # cat and dog: mean -1.5, worst -2.5 points
    assert control.goal_met(ControlGoal(class_accuracy=0.05, off_target=0.025)) == 2
    assert control.goal_met(ControlGoal(class_accuracy=0.05, off_target=0.02)) == 0  # the mean alone would pass


def test_the_summary_records_the_count_under_its_goal(tmp_path):
    summary = hand_built_summary(tmp_path)
    assert summary.suppression_goal == GoalCount.of(summary.control, summary.config.goal)
    again = type(summary).from_json(summary.to_json())
    assert again.suppression_goal.left_out == ["eel"] and replace(again, seconds={}) == replace(summary, seconds={})
