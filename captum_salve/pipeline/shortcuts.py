"""Stage 8, shortcuts: with paired images of a cue the user suspects, the features the cue moves and where they look."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captum_salve.analysis import cross_class_features, cue_reliance
from captum_salve.attr import GradFAM, mask_mass
from captum_salve.pipeline.discover import MIN_CROSS_CLASSES
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run

__all__ = ["SHORTCUT_FEATURES", "ShortcutsResult", "SuspectedFeature", "shortcuts"]

# How many of the features the cue moves most the stage reports.
SHORTCUT_FEATURES = 5


@dataclass(frozen=True)
class SuspectedFeature(Record):
    """One feature the cue moves, what it is large for, and where its maps look.

    Attributes:
        feature: The SAE feature.
        effect: Mean code change when the cue is added, in units of the feature's code spread
            over the probe's images (:func:`~captum_salve.cue_reliance`).
        mean_change: The mean code change itself.
        turns_on: Share of pairs where the cue turns the feature on.
        classes: The two classes its training codes are largest for.
        cross_class_rank: Its place in the unsupervised cross-class ranking (1 = the top; None:
            fewer than three classes).
        mask_mass: Per Grad-FAM layer, the mean share of its positive map mass inside the cue masks
            on the images with the cue (None: no masks).

    Example:
        >>> result.features[0].mask_mass["layer3.1"] > result.mask_area
    """

    feature: int
    effect: float
    mean_change: float
    turns_on: float
    classes: list[str]
    cross_class_rank: int | None
    mask_mass: dict[str, float] | None


@dataclass(frozen=True)
class ShortcutsResult(Record):
    """The features a suspected cue moves most (or why the stage was skipped).

    Attributes:
        skipped: Why the stage did not run (no probe was given).
        cue: The cue's name.
        pairs: Number of image pairs.
        mask_area: Per Grad-FAM layer, what a uniform map puts inside the masks: the level
            ``mask_mass`` must beat (None: no masks).
        features: The :data:`SHORTCUT_FEATURES` features with the largest ``|effect|``, largest first.

    Example:
        >>> [f.feature for f in run.stage("shortcuts", ShortcutsResult, shortcuts).features]
    """

    skipped: str | None = None
    cue: str | None = None
    pairs: int = 0
    mask_area: dict[str, float] | None = None
    features: list[SuspectedFeature] | None = None


def shortcuts(run: Run) -> ShortcutsResult:
    """Rank the SAE's features by how much the probe's cue moves them; check where the top ones look.

    Example:
        >>> shortcuts(run).features[0].feature
    """
    probe = run.inputs.probe
    if probe is None:
        return ShortcutsResult(skipped="no probe of a suspected cue was given (paired images with and without it)")
    sae, names, batch = run.sae, run.class_names, run.config.batch_size
    reliance = cue_reliance(run.model, sae, probe.with_cue, probe.without_cue, batch_size=batch)
    top = reliance.top(SHORTCUT_FEATURES)
    ranking = None
    if len(names) >= MIN_CROSS_CLASSES:
        ranking = [entry.feature for entry in cross_class_features(run.profile, top=sae.d_latent)]
    largest = run.profile.mean_codes.abs().topk(2, dim=0).indices  # (2, d): each feature's two largest classes
    masks = probe.masks
    mass: dict[int, dict[str, float] | None] = dict.fromkeys(top)
    area = None
    if masks is not None:
        area, mass = {}, {feature: {} for feature in top}
        for layer in run.cam_layers:
            fam = GradFAM(run.model, layer, sae)
            maps = {feature: [] for feature in top}
            for start in range(0, len(masks), batch):
                images = probe.with_cue[start : start + batch].to(run.device)
                feature_maps = fam.attribute_features(images, top).detach().cpu()  # (n, F, h, w)
                for i, feature in enumerate(top):
                    maps[feature].append(feature_maps[:, i : i + 1])
            shape = maps[top[0]][0].shape[-2:]
            area[layer] = float(mask_mass(torch.ones(len(masks), 1, *shape), masks).mean())
            for feature in top:
                shares = mask_mass(torch.cat(maps[feature]), masks)
                mass[feature][layer] = float(shares.nanmean())
    features = [
        SuspectedFeature(
            feature=feature,
            effect=float(reliance.effect[row]),
            mean_change=float(reliance.mean_change[row]),
            turns_on=float(reliance.turns_on[row]),
            classes=[names[int(c)] for c in largest[:, feature]],
            cross_class_rank=ranking.index(feature) + 1 if ranking is not None else None,
            mask_mass=mass[feature],
        )
        for row, feature in enumerate(top)
    ]
    return ShortcutsResult(cue=probe.name, pairs=reliance.pairs, mask_area=area, features=features)
