"""Stage 2, validate: top-activating images, Grad-FAM overlays and activation maximisation of each class's feature."""

from __future__ import annotations

from dataclasses import dataclass

from captum_salve import plots
from captum_salve.analysis import top_activating
from captum_salve.attr import GradFAM, maximize_feature
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run

__all__ = ["PARAMETERIZATIONS", "Maximization", "ValidateResult", "validate"]

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


def validate(run: Run) -> ValidateResult:
    """Galleries, Grad-FAM overlays (first Grad-FAM layer) and activation maximisation of the run's features.

    Example:
        >>> validate(run).galleries[0]
        'figures/gallery_class0.png'
    """
    test, sae, names, features = run.test_acts, run.sae, run.class_names, run.features
    codes = sae.encode_all(test)
    fam = GradFAM(run.model, run.cam_layers[0], sae)
    galleries, overlays = [], []
    for k, feature in enumerate(features):
        index, values = top_activating(sae, test, feature, k=min(8, len(test)))
        shown = run.inputs.to_display(run.images(index))
        labels = [names[int(test.labels[i])] for i in index]
        title = f"Top-activating test images of feature {feature} (class {names[k]}; Fig. 3a)"
        galleries.append(run.figure(plots.gallery(shown, values, labels=labels, title=title), f"gallery_class{k}"))
        mine = (test.labels == k).nonzero()
        if len(mine) == 0:
            overlays.append(None)
            continue
        first = int(mine[0])
        image = run.images([first]).to(run.device)
        top4 = codes[first].topk(4).indices.tolist()
        maps = fam.attribute_features(image, top4)[0]
        display = run.inputs.to_display(image)[0].cpu()
        fig = plots.grad_fam_overlays(display, maps.detach().cpu(), top4, codes[first, top4])
        overlays.append(run.figure(fig, f"grad_fam_class{k}"))
    q99 = codes.quantile(0.99, dim=0)[features]
    maximization = {}
    for parameterization in PARAMETERIZATIONS:
        result = maximize_feature(
            run.model,
            sae,
            features,
            steps=run.config.maximization_steps,
            parameterization=parameterization,
            image_size=run.image_size,
        )
        labels = [f"class {n}: f{f}" for n, f in zip(names, features, strict=True)]
        fig = plots.maximization_evolution(result, names=labels)
        maximization[parameterization] = Maximization(
            activation=result.activations.tolist(),
            above_q99=int((result.activations > q99).sum()),
            figure=run.figure(fig, f"maximization_{parameterization}"),
        )
    return ValidateResult(
        features=features, test_q99=q99.tolist(), maximization=maximization, galleries=galleries, overlays=overlays
    )
