"""Stage 7, seeds: do the class features and their α₅₀ survive retraining the SAE from other seeds?"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captum_salve import plots
from captum_salve.analysis import crossing_50, seed_study
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run

__all__ = ["SeedsResult", "seeds"]


@dataclass(frozen=True)
class SeedsResult(Record):
    """The seed study: SAEs trained from several seeds, features matched to seed 0's.

    Attributes:
        seeds: SAE initialisations.
        alpha_50_seeds_crossed: Per class, the seeds whose sweep crossed 50% accuracy.
        alpha_50_mean: Per class, mean α₅₀ over those seeds (None: none crossed).
        alpha_50_std: Per class, its standard deviation (None: fewer than two crossed).
        match_similarity_mean: Mean |cos| between seed 0's class features and their matches.
        matched_is_own_choice: Share of matches that are also the seed's own pick for the class.
        explained_variance: Each seed's SAE's explained variance on the test activations.
        figure: Accuracy bands over seeds, per class.

    Example:
        >>> result = run.stage("seeds", SeedsResult, seeds)
        >>> result.alpha_50_mean[3], result.alpha_50_std[3]
    """

    seeds: int
    alpha_50_seeds_crossed: list[int]
    alpha_50_mean: list[float | None]
    alpha_50_std: list[float | None]
    match_similarity_mean: float
    matched_is_own_choice: float
    explained_variance: list[float]
    figure: str


def seeds(run: Run) -> SeedsResult:
    """Train ``config.seeds`` SAEs of the run's variant and compare their class features and α₅₀.

    Example:
        >>> seeds(run).match_similarity_mean
    """
    names, config = run.class_names, run.config
    saes = run.saes_of([(config.sae_activation, seed) for seed in range(config.seeds)])  # one data pass
    study = seed_study(run.model, saes, run.train_acts, run.test_acts, config.sweep_alphas, rule=config.rule)
    classes = range(len(names))
    a50 = torch.tensor(
        [[crossing_50(study.alphas, study.accuracy[s, k, :, k]) for k in classes] for s in range(config.seeds)]
    )
    crossed = [a50[:, k][torch.isfinite(a50[:, k])] for k in classes]
    return SeedsResult(
        seeds=config.seeds,
        alpha_50_seeds_crossed=[len(c) for c in crossed],
        alpha_50_mean=[float(c.mean()) if len(c) else None for c in crossed],
        alpha_50_std=[float(c.std()) if len(c) > 1 else None for c in crossed],
        match_similarity_mean=float(study.match_similarity[1:].mean()),
        matched_is_own_choice=float(study.own_choice[1:].float().mean()),
        explained_variance=[m["explained_variance"] for m in study.metrics],
        figure=run.figure(plots.seed_bands(study, names), "seed_bands"),
    )
