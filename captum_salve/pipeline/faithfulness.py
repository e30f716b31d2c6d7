"""Stage 3, faithfulness: does a Grad-FAM map point at what drives its feature? Pointing game and deletion curves."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from captum_salve.attr import GradFAM, TokenGradCam, deletion_curve, deletion_score, pointing_game
from captum_salve.checks import check_int, check_labels
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run

__all__ = ["MAP_KINDS", "FaithfulnessResult", "LayerFaithfulness", "faithfulness", "stratified_indices"]

# The maps scored, each for the image's own class feature: Grad-FAM, and three references.
MAP_KINDS = ("grad_fam", "class_grad_cam", "other_feature", "random")


@dataclass(frozen=True)
class LayerFaithfulness(Record):
    """Scores of the maps of one layer.

    Attributes:
        map_size: (h, w) of the layer's maps.
        deletion_auc: Mean deletion AUC of each map kind (:data:`MAP_KINDS`); lower is more faithful.
        pointing_game: Share of maps whose peak cell overlaps the object mask, per map kind
            (None: the inputs have no masks, and the pointing game was not played); see
            :func:`~captum_salve.attr.pointing_game` for the rule.

    Example:
        >>> result.layers["layer4.1"].deletion_auc["grad_fam"]
    """

    map_size: list[int]
    deletion_auc: dict[str, float]
    pointing_game: dict[str, float] | None = None


@dataclass(frozen=True)
class FaithfulnessResult(Record):
    """Faithfulness of the Grad-FAM maps at each Grad-FAM layer.

    Attributes:
        images: Test images scored (each for its class's feature).
        images_per_class: How many of them each class gave, in label order (see :func:`stratified_indices`).
        layers: Scores by layer name.

    Example:
        >>> result = run.stage("faithfulness", FaithfulnessResult, faithfulness)
        >>> {layer: s.pointing_game["grad_fam"] for layer, s in result.layers.items()}
    """

    images: int
    images_per_class: list[int]
    layers: dict[str, LayerFaithfulness]


def stratified_indices(labels: Tensor, n: int, *, seed: int = 0) -> Tensor:
    """``n`` indices drawn at random (seeded) with the classes as equal as the data allows, in ascending order.

    Every class gets ``n // K`` or one more; a class with fewer samples gives them all and
    the others share what it leaves. Which classes get the one more, and which of a
    class's samples are drawn, is random, from ``seed`` alone. All indices when ``n`` is
    at least the number of samples. Unlike the first ``n`` samples, the draw does not
    depend on the data's order (a class-sorted folder would give its first classes only).

    Args:
        labels: (N,) class labels.
        n: How many to draw.
        seed: Seed of the draw.

    Example:
        >>> stratified_indices(torch.tensor([0, 0, 0, 0, 1, 1, 2]), 5)    # 2 of class 0, 2 of class 1, its 1 of class 2
        tensor([0, 2, 4, 5, 6])
    """
    labels = check_labels(labels, "labels")
    n = check_int(n, "n", 0)
    generator = torch.Generator().manual_seed(check_int(seed, "seed"))
    classes, counts = labels.unique(return_counts=True)
    # the smallest classes first, ties in random order: each takes its share of what is left, or all it has
    order = torch.randperm(len(classes), generator=generator)
    order = order[counts[order].argsort(stable=True)]
    left, drawn = min(n, len(labels)), []
    for place, k in enumerate(order.tolist()):
        take = min(int(counts[k]), -(-left // (len(classes) - place)))
        members = (labels == classes[k]).nonzero().flatten()
        drawn.append(members[torch.randperm(len(members), generator=generator)[:take]])
        left -= take
    return torch.cat(drawn).sort().values if drawn else torch.zeros(0, dtype=torch.long)


def faithfulness(run: Run) -> FaithfulnessResult:
    """Score Grad-FAM against class Grad-CAM, another class's feature and random maps, at every Grad-FAM layer.

    The ``config.faithfulness_images`` test images are drawn by :func:`stratified_indices`
    (seed 0), as equal per class as the test data allows. Each layer's scores are kept
    as they are finished (:meth:`Run.part`): an interrupted stage resumes at the next layer.

    Example:
        >>> faithfulness(run).images_per_class
        [20, 20, 20, 20, 20, 20, 20, 20, 20, 20]
    """
    labels = run.test_acts.labels
    chosen = stratified_indices(labels, run.config.faithfulness_images)
    images = functools.cache(lambda: run.images(chosen).to(run.device))  # read once, if a layer needs them
    layers = {}
    for layer in run.cam_layers:
        score = functools.partial(_score, run, layer, chosen, images)
        layers[layer] = run.part("faithfulness", f"layer-{layer}", LayerFaithfulness, score)
    per_class = torch.bincount(labels[chosen], minlength=len(run.class_names)).tolist()
    return FaithfulnessResult(images=len(chosen), images_per_class=per_class, layers=layers)


def _score(run: Run, layer: str, chosen: Tensor, test_images: Callable[[], Tensor]) -> LayerFaithfulness:
    """Pointing game and deletion AUC of the four kinds of map at one layer, on the chosen test images."""
    images = test_images()
    sae, features, n = run.sae, torch.tensor(run.features), len(images)
    labels = run.test_acts.labels[chosen]
    own, other = features[labels], features[(labels + 1) % len(features)]
    generator = torch.Generator().manual_seed(0)
    batch = run.config.batch_size
    fam = GradFAM(run.model, layer, sae)
    maps = _batched(fam, images, own, batch)
    class_cam = TokenGradCam(run.model, fam.layer, fam.reshape_transform)
    candidates = {
        "grad_fam": maps,
        "class_grad_cam": _batched(class_cam, images, labels, batch),
        "other_feature": _batched(fam, images, other, batch),
        "random": torch.rand(maps.shape, generator=generator),
    }
    pointing = None
    if run.inputs.masks is not None:
        masks = run.inputs.masks[chosen]
        pointing = {kind: float(pointing_game(m.cpu(), masks).float().mean()) for kind, m in candidates.items()}
    deletion = {}
    for kind, m in candidates.items():
        steps = min(16, m.shape[-2] * m.shape[-1])
        curves = [
            deletion_curve(run.model, sae, int(own[i]), images[i : i + 1], m[i : i + 1].to(run.device), steps=steps)
            for i in range(n)
        ]
        deletion[kind] = float(deletion_score(torch.cat(curves)).nanmean())
    return LayerFaithfulness(map_size=list(maps.shape[-2:]), deletion_auc=deletion, pointing_game=pointing)


def _batched(attribution: TokenGradCam, images: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """Maps of ``images`` for one target each, a batch at a time, on the CPU."""
    maps = []
    for s in range(0, len(images), batch_size):
        batch = slice(s, s + batch_size)
        maps.append(attribution.attribute(images[batch], target=targets[batch].tolist()).detach().cpu())
    return torch.cat(maps)
