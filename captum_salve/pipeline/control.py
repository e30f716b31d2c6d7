"""Stage 4, control: suppress each class with an edit chosen on training data and measured on test data."""

from __future__ import annotations

from dataclasses import dataclass

from captum_salve import plots
from captum_salve.analysis import ControlGoal, alpha_50, alpha_sweep, control_directions, select_edit
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run

__all__ = ["AtStrength", "ClassControl", "ControlResult", "DominantFeature", "EditOutcome", "GoalCount", "control"]


@dataclass(frozen=True)
class EditOutcome(Record):
    """The edit :func:`select_edit` chose for a class under one rule, and what it did on the test data.

    Attributes:
        rule: The edit rule.
        features: The features edited together.
        alpha: The strength.
        reached_on_train: Whether it reached the goal's selection accuracy on the training data.
        baseline_accuracy: The class's test accuracy before the edit.
        test_accuracy: The class's test accuracy after it.
        off_target_change: The other classes' mean test accuracy change.
        worst_off_target_change: The most negative test accuracy change of any other class.

    Example:
        >>> outcome = result.classes[3].chosen
        >>> config.goal.met(outcome.baseline_accuracy, outcome.test_accuracy, outcome.worst_off_target_change)
    """

    rule: str
    features: list[int]
    alpha: float
    reached_on_train: bool
    baseline_accuracy: float
    test_accuracy: float
    off_target_change: float
    worst_off_target_change: float


@dataclass(frozen=True)
class AtStrength(Record):
    """One direction's effect at a given strength.

    Attributes:
        target_accuracy: The class's test accuracy after the edit.
        target_drop: Its fall from before the edit.
        off_target_change: The other classes' mean test accuracy change.

    Example:
        >>> result.classes[0].dominant.at_alpha_50["random direction"].target_drop
    """

    target_accuracy: float
    target_drop: float
    off_target_change: float


@dataclass(frozen=True)
class DominantFeature(Record):
    """A class's single feature swept over the run's strengths, and two controls at its α₅₀.

    Attributes:
        rule: The run's edit rule.
        alpha_50: Strength at which the class's accuracy crosses 50% (inf: never in the sweep).
        at_alpha_50: The feature, a random unit direction and the top principal direction at
            α₅₀ (the largest swept α when α₅₀ is inf).
        paper_rule_alpha_50: α₅₀ under the paper's rule ("salve").
        paper_rule_accuracy_at_max_alpha: The class's accuracy at the largest α under the paper's rule.

    Example:
        >>> result.classes[0].dominant.alpha_50
    """

    rule: str
    alpha_50: float
    at_alpha_50: dict[str, AtStrength]
    paper_rule_alpha_50: float
    paper_rule_accuracy_at_max_alpha: float


@dataclass(frozen=True)
class ClassControl(Record):
    """Suppressing one class.

    Attributes:
        class_name: The class.
        feature: Its feature (the run's choice).
        chosen: The edit chosen under the run's rule.
        paper_rule: The edit chosen under the paper's rule.
        dominant: The single feature swept, with controls.
        accuracy_figure: Accuracy against α (Fig. 4a).
        predictions_figure: Where the class's predictions go (Fig. 4b).

    Example:
        >>> [c.chosen.alpha for c in result.classes]
    """

    class_name: str
    feature: int
    chosen: EditOutcome
    paper_rule: EditOutcome
    dominant: DominantFeature
    accuracy_figure: str
    predictions_figure: str


@dataclass(frozen=True)
class ControlResult(Record):
    """What the control stage did to each class.

    Attributes:
        rule: The run's edit rule.
        classes: One entry per class, in label order.

    Example:
        >>> result = run.stage("control", ControlResult, control)
        >>> result.goal_met(config.goal)
    """

    rule: str
    classes: list[ClassControl]

    def goal_met(self, goal: ControlGoal, *, paper_rule: bool = False) -> int:
        """How many classes' chosen edit (or the paper rule's) meets ``goal`` on the test data.

        Out of the classes the goal applies to: those in :meth:`goal_left_out` never count.
        """
        outcomes = [c.paper_rule if paper_rule else c.chosen for c in self.classes]
        return sum(goal.met(o.baseline_accuracy, o.test_accuracy, o.worst_off_target_change) for o in outcomes)

    def goal_left_out(self, goal: ControlGoal) -> list[str]:
        """The classes ``goal`` does not apply to: their test accuracy is below its target before any edit."""
        return [c.class_name for c in self.classes if not goal.applies_to(c.chosen.baseline_accuracy)]


@dataclass(frozen=True)
class GoalCount(Record):
    """How many classes reached the suppression goal, out of how many it applies to.

    Attributes:
        goal: The goal, in words (:meth:`ControlGoal.describe`).
        met: Classes whose chosen edit (the run's rule) meets it on the test data.
        paper_rule_met: The same under the paper's rule ("salve").
        measured: Classes the goal applies to.
        left_out: The others, by name: below the goal's target before any edit, so not counted.

    Example:
        >>> count = GoalCount.of(summary.control, summary.config.goal)
        >>> f"{count.met} of {count.measured}; left out: {count.left_out}"
    """

    goal: str
    met: int
    paper_rule_met: int
    measured: int
    left_out: list[str]

    @classmethod
    def of(cls, result: ControlResult, goal: ControlGoal) -> GoalCount:
        """The count of a control stage's result under ``goal``."""
        left_out = result.goal_left_out(goal)
        return cls(
            goal=goal.describe(),
            met=result.goal_met(goal),
            paper_rule_met=result.goal_met(goal, paper_rule=True),
            measured=len(result.classes) - len(left_out),
            left_out=left_out,
        )


def control(run: Run) -> ControlResult:
    """For each class: the edit :func:`select_edit` picks (run's rule and the paper's), and its feature's sweep.

    Example:
        >>> control(run).classes[0].chosen.features
    """
    train, test, sae, names, config = run.train_acts, run.test_acts, run.sae, run.class_names, run.config
    rows = []
    for k, feature in enumerate(run.features):
        outcomes = {}
        for rule in (config.rule, "salve"):
            choice = select_edit(run.model, sae, run.profile, k, train, rule=rule, goal=config.goal)
            sweep = alpha_sweep(run.model, sae, list(choice.features), test, [0.0, choice.alpha], rule=rule)
            outcomes[rule] = EditOutcome(
                rule=rule,
                features=list(choice.features),
                alpha=choice.alpha,
                reached_on_train=choice.reached,
                baseline_accuracy=float(sweep.baseline_accuracy[k]),
                test_accuracy=float(sweep.per_class_accuracy[1, k]),
                off_target_change=float(sweep.off_target_change(k)[1]),
                worst_off_target_change=float(sweep.worst_off_target_change(k)[1]),
            )
        single = alpha_sweep(run.model, sae, feature, test, config.sweep_alphas, rule=config.rule, class_names=names)
        a50 = alpha_50(single, k)
        controls = control_directions(sae, feature, train)
        control_sweeps = {
            name: alpha_sweep(run.model, d, None, test, config.sweep_alphas, rule=config.rule, class_names=names)
            for name, d in controls.items()
        }
        strength = a50 if a50 != float("inf") else float(config.sweep_alphas[-1])
        at_a50 = {}
        edits = {"sae_feature": (sae, feature), **{name: (d, None) for name, d in controls.items()}}
        for name, (directions, index) in edits.items():
            sweep = alpha_sweep(run.model, directions, index, test, [0.0, strength], rule=config.rule)
            at_a50[name] = AtStrength(
                target_accuracy=float(sweep.per_class_accuracy[1, k]),
                target_drop=float(sweep.baseline_accuracy[k] - sweep.per_class_accuracy[1, k]),
                off_target_change=float(sweep.off_target_change(k)[1]),
            )
        paper = alpha_sweep(run.model, sae, feature, test, config.sweep_alphas, rule="salve")
        accuracy_fig = plots.accuracy_vs_alpha(single, k, controls=control_sweeps)
        rows.append(
            ClassControl(
                class_name=names[k],
                feature=feature,
                chosen=outcomes[config.rule],
                paper_rule=outcomes["salve"],
                dominant=DominantFeature(
                    rule=config.rule,
                    alpha_50=a50,
                    at_alpha_50=at_a50,
                    paper_rule_alpha_50=alpha_50(paper, k),
                    paper_rule_accuracy_at_max_alpha=float(paper.per_class_accuracy[-1, k]),
                ),
                accuracy_figure=run.figure(accuracy_fig, f"accuracy_vs_alpha_class{k}"),
                predictions_figure=run.figure(plots.prediction_distribution(single, k), f"predictions_class{k}"),
            )
        )
    return ControlResult(rule=config.rule, classes=rows)
