"""Stage 5, α_crit: each sample's critical suppression strength, three ways, and how it relates to α₅₀."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captum_salve import plots
from captum_salve.analysis import alpha_50, alpha_sweep
from captum_salve.edit import alpha_crit
from captum_salve.models import find_head
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run

__all__ = ["AlphaCritResult", "ClassAlphaCrit", "alpha_crit_stage"]

# The stage measures the paper's Figure 5b, so it edits with the paper's rule whatever the run's --rule.
PAPER_RULE = "salve"


@dataclass(frozen=True)
class ClassAlphaCrit(Record):
    """α_crit over one class's correctly classified test images.

    Attributes:
        class_name: The class.
        feature: Its feature.
        samples: Correctly classified test images of the class.
        median_linear: Median of the paper's analytical α_lin = z_t / R_t.
        median_exact: Median of the exact piecewise-linear root.
        never_zero: Samples whose logit never reaches zero.
        linear_above_exact: Samples where α_lin overestimates the exact root.
        exact_equals_bisect: Whether the exact roots equal bisection on the edited model.
        max_relative_difference: Their largest relative difference.
        median_flip: Median strength at which the prediction leaves the class.
        alpha_50: Strength at which the class's accuracy on these samples crosses 50%.
        exact_seconds: Time of the exact method.
        bisect_seconds: Time of bisection.

    Example:
        >>> row = result.classes[0]; row.median_flip, row.alpha_50
    """

    class_name: str
    feature: int
    samples: int
    median_linear: float
    median_exact: float
    never_zero: int
    linear_above_exact: int
    exact_equals_bisect: bool
    max_relative_difference: float
    median_flip: float
    alpha_50: float
    exact_seconds: float
    bisect_seconds: float


@dataclass(frozen=True)
class AlphaCritResult(Record):
    """α_crit per class under the paper's rule and zero-logit criterion.

    Attributes:
        rule: The edit rule ("salve").
        criterion: The criterion ("zero_logit").
        classes: One entry per class with at least one correctly classified test image.
        figure: Boxplots of α_lin and bisection per class, α₅₀ marked.

    Example:
        >>> result = run.stage("alpha_crit", AlphaCritResult, alpha_crit_stage)
        >>> all(row.exact_equals_bisect for row in result.classes)
    """

    rule: str
    criterion: str
    classes: list[ClassAlphaCrit]
    figure: str


def alpha_crit_stage(run: Run) -> AlphaCritResult:
    """α_crit of each class's correctly classified test images: analytical, exact, bisection and flip.

    Example:
        >>> alpha_crit_stage(run).classes[0].median_exact
    """
    test, sae, names = run.test_acts, run.sae, run.class_names
    _, head = find_head(run.model)
    with torch.no_grad():
        predicted = head(test.features.to(head.weight.device)).argmax(1).cpu()
    analytical, numerical, a50s, rows = {}, {}, {}, []
    for k, feature in enumerate(run.features):
        mine = test.subset((test.labels == k) & (predicted == k))
        if len(mine) == 0:
            continue
        linear = alpha_crit(run.model, sae, feature, mine, k, method="linear", rule=PAPER_RULE)
        start = time.perf_counter()
        exact = alpha_crit(run.model, sae, feature, mine, k, method="exact", rule=PAPER_RULE)
        exact_seconds = time.perf_counter() - start
        start = time.perf_counter()
        bisect = alpha_crit(run.model, sae, feature, mine, k, method="bisect", rule=PAPER_RULE)
        bisect_seconds = time.perf_counter() - start
        flip = alpha_crit(run.model, sae, feature, mine, k, criterion="flip", rule=PAPER_RULE)
        grid = _with(torch.logspace(-1, 3, 81).tolist(), flip[torch.isfinite(flip)].tolist())
        sweep = alpha_sweep(run.model, sae, feature, mine, grid, rule=PAPER_RULE)
        finite = torch.isfinite(exact)
        agree = torch.equal(finite, torch.isfinite(bisect)) and bool(
            torch.allclose(exact[finite], bisect[finite], rtol=1e-6, atol=1e-9)
        )
        positive = finite & (exact > 0)
        relative = (exact - bisect).abs() / exact.clamp_min(1e-12)
        analytical[names[k]], numerical[names[k]] = linear, bisect
        a50s[names[k]] = alpha_50(sweep, k)
        rows.append(
            ClassAlphaCrit(
                class_name=names[k],
                feature=feature,
                samples=len(mine),
                median_linear=float(linear.median()),
                median_exact=float(exact.median()),
                never_zero=int((~finite).sum()),
                linear_above_exact=int((linear > exact * (1 + 1e-9)).sum()),
                exact_equals_bisect=agree,
                max_relative_difference=float(relative[positive].max()) if positive.any() else 0.0,
                median_flip=float(flip.median()),
                alpha_50=a50s[names[k]],
                exact_seconds=exact_seconds,
                bisect_seconds=bisect_seconds,
            )
        )
    figure = run.figure(plots.alpha_crit_boxplots(analytical, numerical, a50s), "alpha_crit")
    return AlphaCritResult(rule="salve", criterion="zero_logit", classes=rows, figure=figure)


def _with(grid: Sequence[float], extra: Sequence[float]) -> list[float]:
    """The sorted union of a grid and extra (finite) strengths."""
    return sorted({float(a) for a in grid} | {float(e) for e in extra})
