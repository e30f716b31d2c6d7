"""Stage 1, discover: train the SAEs, measure them, and read each class's features off the class profile."""

from __future__ import annotations

from dataclasses import dataclass

from captum_salve import plots
from captum_salve.analysis import class_profile, cross_class_features
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run
from captum_salve.sae import sae_metrics

__all__ = [
    "MIN_CROSS_CLASSES",
    "ClassFeatures",
    "CrossClassEntry",
    "DiscoverResult",
    "SAESummary",
    "discover",
    "near_chance",
]

# A feature shared by two classes is only "cross-class" when some class does not share it.
MIN_CROSS_CLASSES = 3
# Accuracy within this share of the way from chance (1/K) to perfect counts as near chance.
NEAR_CHANCE_SHARE = 0.15


def near_chance(accuracy: float, classes: int) -> bool:
    """Whether a K-class accuracy is within 15% of the way from chance (1/K) to 100%: a model that does not work here.

    The usual cause on a user's own model is preprocessing: images resized, cropped or
    normalised otherwise than in training.

    Example:
        >>> near_chance(0.19, 10), near_chance(0.94, 10)    # a 64×64 model fed 224×224 images, and fed 64×64
        (True, False)
    """
    chance = 1 / classes
    return accuracy < chance + NEAR_CHANCE_SHARE * (1 - chance)


@dataclass(frozen=True)
class SAESummary(Record):
    """How well one SAE reconstructs the test activations, and how class-specific its features are.

    Attributes:
        explained_variance: 1 − MSE / variance of the test activations.
        mse: Mean squared reconstruction error.
        l0: Mean number of active codes per input.
        dead_fraction: Share of latents never active on the test activations.
        accuracy: The classifier's test accuracy.
        spliced_accuracy: Its accuracy with the head reading the reconstruction.
        specificity_by_magnitude: Mean over classes of the share of the class's top feature's
            mean |code| that falls on that class (ranked by |μ|).
        specificity_by_contrast: The same with features ranked by contrast.

    Example:
        >>> result.saes["relu"].explained_variance
        0.93
    """

    explained_variance: float
    mse: float
    l0: float
    dead_fraction: float
    accuracy: float
    spliced_accuracy: float
    specificity_by_magnitude: float
    specificity_by_contrast: float


@dataclass(frozen=True)
class ClassFeatures(Record):
    """One class's strongest features in the class profile.

    Attributes:
        class_name: The class.
        by_magnitude: Its top 5 features by mean |code|.
        by_contrast: Its top 5 features by contrast to the other classes.
        selectivity_of_top: Share of the top-by-contrast feature's mean magnitude on this class.

    Example:
        >>> result.classes[3].by_contrast[0]      # the feature the later stages use for class 3
    """

    class_name: str
    by_magnitude: list[int]
    by_contrast: list[int]
    selectivity_of_top: float


@dataclass(frozen=True)
class CrossClassEntry(Record):
    """A feature large for two classes and small for the rest.

    Attributes:
        feature: SAE feature index.
        classes: The two classes, strongest first.
        score: Share of its class-mean magnitude on those classes (:func:`~captum_salve.cross_class_features`).

    Example:
        >>> [(c.feature, c.classes) for c in result.cross_class]
    """

    feature: int
    classes: list[str]
    score: float


@dataclass(frozen=True)
class DiscoverResult(Record):
    """What the discover stage found.

    Attributes:
        train_images: Training images (rows the SAE was trained on).
        test_images: Test images.
        head_input_width: Width of the head's input, the SAE's d_in.
        accuracy: The classifier's test accuracy.
        saes: Metrics of each trained SAE by variant name (the analysis SAE and the paper's linear one).
        classes: Each class's strongest features, in label order.
        cross_class: The top cross-class features (empty with fewer than :data:`MIN_CROSS_CLASSES` classes).
        heatmaps: Figure of each SAE's class profile, by variant name.

    Example:
        >>> result = run.stage("discover", DiscoverResult, discover)
        >>> result.saes["linear"].l0
    """

    train_images: int
    test_images: int
    head_input_width: int
    accuracy: float
    saes: dict[str, SAESummary]
    classes: list[ClassFeatures]
    cross_class: list[CrossClassEntry]
    heatmaps: dict[str, str]


def discover(run: Run) -> DiscoverResult:
    """Train the analysis SAE and the paper's linear SAE; measure both; profile the classes.

    Example:
        >>> discover(run).accuracy
    """
    names = run.class_names
    saes, heatmaps = {}, {}
    activations = list(dict.fromkeys([run.config.sae_activation, "linear"]))
    for activation, sae in zip(activations, run.saes_of([(a, 0) for a in activations]), strict=True):
        if activation == run.config.sae_activation:
            profile = run.profile
        else:
            profile = class_profile(sae, run.train_acts, class_names=names)
        metrics = sae_metrics(sae, run.test_acts, head=run.model)
        saes[activation] = SAESummary(
            explained_variance=metrics["explained_variance"],
            mse=metrics["mse"],
            l0=metrics["l0"],
            dead_fraction=metrics["dead_fraction"],
            accuracy=metrics["accuracy"],
            spliced_accuracy=metrics["spliced_accuracy"],
            specificity_by_magnitude=float(profile.specificity(by="magnitude").mean()),
            specificity_by_contrast=float(profile.specificity(by="contrast").mean()),
        )
        title = f"μ of the {activation} SAE (Fig. 1a)"
        heatmaps[activation] = run.figure(plots.class_heatmap(profile, title=title), f"heatmap_{activation}")
    profile = run.profile
    classes = [
        ClassFeatures(
            class_name=names[k],
            by_magnitude=profile.dominant(k, 5).tolist(),
            by_contrast=profile.dominant(k, 5, by="contrast").tolist(),
            selectivity_of_top=float(profile.selectivity(int(profile.dominant(k, 1, by="contrast")[0]))[k]),
        )
        for k in range(len(names))
    ]
    found = cross_class_features(profile, top=3) if len(names) >= MIN_CROSS_CLASSES else []
    return DiscoverResult(
        train_images=len(run.train_acts),
        test_images=len(run.test_acts),
        head_input_width=run.train_acts.dim,
        accuracy=saes[run.config.sae_activation].accuracy,
        saes=saes,
        classes=classes,
        cross_class=[CrossClassEntry(c.feature, [names[i] for i in c.classes], c.score) for c in found],
        heatmaps=heatmaps,
    )
