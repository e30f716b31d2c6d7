"""Stage 6, cross-class: the feature most shared by two classes, suppressed and enhanced."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captum_salve import plots
from captum_salve.analysis import alpha_sweep, cross_class_features
from captum_salve.edit import MODES
from captum_salve.pipeline.discover import MIN_CROSS_CLASSES
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run

__all__ = ["VISIBLE_CHANGE", "CrossClassEdit", "CrossClassResult", "PlantedCue", "cross_class"]

# The bar charts are taken at the first swept α at which some class's accuracy moves this much.
VISIBLE_CHANGE = 0.1


@dataclass(frozen=True)
class CrossClassEdit(Record):
    """The cross-class feature edited in one mode, at the first strength with a visible effect.

    Attributes:
        alpha: The first swept α at which some class's accuracy moves by 10 points (else the largest).
        accuracy_change: Each class's test accuracy change there.
        most_changed: The three classes that change most.
        prediction_share_change: Change of each class's share of all predictions.
        figure: Bar chart of the accuracy changes.

    Example:
        >>> result.suppress.most_changed
    """

    alpha: float
    accuracy_change: dict[str, float]
    most_changed: list[str]
    prediction_share_change: dict[str, float]
    figure: str


@dataclass(frozen=True)
class PlantedCue(Record):
    """The found feature's codes on the cue classes' test images, with and without the cue planted in the data.

    The cue classes are those with at least one test image that carries the cue; they
    need not be the classes the feature was found for.

    Attributes:
        cue_classes: The classes whose test images are compared.
        mean_code_with_cue: Mean code over those images that carry the cue.
        mean_code_without_cue: Mean code over those that do not (None: all carry it).

    Example:
        >>> result.planted_cue.mean_code_with_cue > result.planted_cue.mean_code_without_cue
    """

    cue_classes: list[str]
    mean_code_with_cue: float
    mean_code_without_cue: float | None


@dataclass(frozen=True)
class CrossClassResult(Record):
    """The top cross-class feature and what editing it does (or why the stage was skipped).

    Attributes:
        skipped: Why the stage did not run (then every other field is empty).
        feature: The feature.
        classes: The classes it is large for.
        score: Its cross-class score (see :func:`cross_class_features`).
        suppress: The feature suppressed.
        enhance: The feature enhanced.
        planted_cue: Its codes on the cue classes' images with and without the planted cue
            (None: the inputs mark no cue, or no test image carries it).

    Example:
        >>> result = run.stage("cross_class", CrossClassResult, cross_class)
        >>> result.skipped or result.classes
    """

    skipped: str | None = None
    feature: int | None = None
    classes: list[str] | None = None
    score: float | None = None
    suppress: CrossClassEdit | None = None
    enhance: CrossClassEdit | None = None
    planted_cue: PlantedCue | None = None


def cross_class(run: Run) -> CrossClassResult:
    """Find the top cross-class feature on the training profile; suppress and enhance it on the test data.

    Example:
        >>> cross_class(run).suppress.alpha
    """
    test, sae, names = run.test_acts, run.sae, run.class_names
    if len(names) < MIN_CROSS_CLASSES:
        return CrossClassResult(
            skipped=f"cross-class features need at least {MIN_CROSS_CLASSES} classes; this data has {len(names)}"
        )
    found = cross_class_features(run.profile, top=1)[0]
    edits = {}
    for mode in MODES:
        alphas, rule = run.config.sweep_alphas, run.config.rule
        sweep = alpha_sweep(run.model, sae, found.feature, test, alphas, mode=mode, rule=rule, class_names=names)
        changes = sweep.per_class_accuracy - sweep.baseline_accuracy
        visible = (changes.abs().amax(dim=1) >= VISIBLE_CHANGE).nonzero()
        i = int(visible[0]) if len(visible) else len(sweep.alphas) - 1
        change = changes[i]
        shares = sweep.confusion[i].sum(0).double() / len(test)
        base_shares = sweep.baseline.sum(0).double() / len(test)
        edits[mode] = CrossClassEdit(
            alpha=float(sweep.alphas[i]),
            accuracy_change={names[c]: float(change[c]) for c in range(len(names))},
            most_changed=[names[int(c)] for c in change.abs().argsort(descending=True)[:3]],
            prediction_share_change={names[c]: float(shares[c] - base_shares[c]) for c in range(len(names))},
            figure=run.figure(plots.accuracy_change_bars(sweep, i), f"cross_class_{mode}"),
        )
    cue = None
    marked = run.inputs.planted_cue
    if marked is not None and marked.any():
        cue_classes = test.labels[marked].unique()
        codes = sae.encode_all(test)[:, found.feature]
        within = torch.isin(test.labels, cue_classes)
        on, off = codes[within & marked], codes[within & ~marked]
        cue = PlantedCue(
            cue_classes=[names[int(c)] for c in cue_classes],
            mean_code_with_cue=float(on.mean()),
            mean_code_without_cue=float(off.mean()) if len(off) else None,
        )
    return CrossClassResult(
        feature=found.feature,
        classes=[names[c] for c in found.classes],
        score=found.score,
        suppress=edits["suppress"],
        enhance=edits["enhance"],
        planted_cue=cue,
    )
