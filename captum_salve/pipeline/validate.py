"""Stage 2, validate: top-activating images, Grad-FAM overlays and activation maximisation of each class's feature."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from captum_salve import plots
from captum_salve.analysis import top_activating
from captum_salve.attr import GradFAM, maximize_feature
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run

__all__ = ["PARAMETERIZATIONS", "ClassFigures", "Maximization", "ValidateResult", "validate"]

PARAMETERIZATIONS = ("fourier", "pixel")


@dataclass(frozen=True)
class Maximization(Record):
    """Activation maximisation of every class's feature with one image parameterisation.

    Attributes:
        activation: Each feature's code on its optimised image, in class order.
        above_q99: How many of them exceed the feature's 99th percentile over the real test images.
        figure: The optimisation's evolution.

    Example:
        >>> result.maximization["fourier"].above_q99
    """

    activation: list[float]
    above_q99: int
    figure: str


@dataclass(frozen=True)
class ValidateResult(Record):
    """What the validate stage showed of each class's feature.

    Attributes:
        features: Each class's feature, in label order.
        test_q99: Each feature's 99th-percentile code over the test images.
        maximization: Activation maximisation by parameterisation (:data:`PARAMETERIZATIONS`).
        galleries: Figure of each feature's top-activating test images, in class order.
        overlays: Figure of Grad-FAM overlays of each class's first test image (None: no test image of the class).

    Example:
        >>> result = run.stage("validate", ValidateResult, validate)
        >>> result.maximization["pixel"].activation[3] > result.test_q99[3]
    """

    features: list[int]
    test_q99: list[float]
    maximization: dict[str, Maximization]
    galleries: list[str]
    overlays: list[str | None]


@dataclass(frozen=True)
class ClassFigures(Record):
    """The validate stage's figures of one class's feature (a piece of the stage kept by :meth:`Run.part`).

    Attributes:
        gallery: Its top-activating test images.
        overlay: Grad-FAM overlays of the class's first test image.

    Example:
        >>> run.part("validate", "class3", ClassFigures, lambda: ClassFigures("figures/g3.png", None))
    """

    gallery: str
    overlay: str | None


def validate(run: Run) -> ValidateResult:
    """Galleries, Grad-FAM overlays (first Grad-FAM layer) and activation maximisation of the run's features.

    Each class's figures and each parameterisation's maximisation are kept as they are
    finished (:meth:`Run.part`): an interrupted stage resumes after the last one.

    Example:
        >>> validate(run).galleries[0]
        'figures/gallery_class0.png'
    """
    sae, names, features = run.sae, run.class_names, run.features
    codes = sae.encode_all(run.test_acts)
    figures = [
        run.part("validate", f"class{k}", ClassFigures, lambda k=k: _class_figures(run, codes, k))
        for k in range(len(names))
    ]
    q99 = codes.quantile(0.99, dim=0)[features]
    maximization = {
        p: run.part("validate", f"maximization-{p}", Maximization, lambda p=p: _maximize(run, p, q99))
        for p in PARAMETERIZATIONS
    }
    return ValidateResult(
        features=features,
        test_q99=q99.tolist(),
        maximization=maximization,
        galleries=[f.gallery for f in figures],
        overlays=[f.overlay for f in figures],
    )


def _class_figures(run: Run, codes: Tensor, k: int) -> ClassFigures:
    """Class k's gallery of top-activating test images, and Grad-FAM overlays of its first test image."""
    test, names, feature = run.test_acts, run.class_names, run.features[k]
    index, values = top_activating(run.sae, test, feature, k=min(8, len(test)))
    shown = run.inputs.to_display(run.images(index))
    labels = [names[int(test.labels[i])] for i in index]
    title = f"Top-activating test images of feature {feature} (class {names[k]}; Fig. 3a)"
    gallery = run.figure(plots.gallery(shown, values, labels=labels, title=title), f"gallery_class{k}")
    mine = (test.labels == k).nonzero()
    if len(mine) == 0:
        return ClassFigures(gallery, None)
    first = int(mine[0])
    image = run.images([first]).to(run.device)
    top4 = codes[first].topk(4).indices.tolist()
    maps = GradFAM(run.model, run.cam_layers[0], run.sae).attribute_features(image, top4)[0]
    display = run.inputs.to_display(image)[0].cpu()
    fig = plots.grad_fam_overlays(display, maps.detach().cpu(), top4, codes[first, top4])
    return ClassFigures(gallery, run.figure(fig, f"grad_fam_class{k}"))


def _maximize(run: Run, parameterization: str, q99: Tensor) -> Maximization:
    """Activation maximisation of every class's feature with one parameterisation."""
    names, features = run.class_names, run.features
    result = maximize_feature(
        run.model,
        run.sae,
        features,
        steps=run.config.maximization_steps,
        parameterization=parameterization,
        image_size=run.image_size,
    )
    labels = [f"class {n}: f{f}" for n, f in zip(names, features, strict=True)]
    fig = plots.maximization_evolution(result, names=labels)
    return Maximization(
        activation=result.activations.tolist(),
        above_q99=int((result.activations > q99).sum()),
        figure=run.figure(fig, f"maximization_{parameterization}"),
    )
