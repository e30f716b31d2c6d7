"""Robustness over SAE initialisations: features matched across seeds, and the spread of their edits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.functional import normalize

from captum_salve.activations import ActivationSet
from captum_salve.analysis.profiles import RankBy, class_profile, select_feature
from captum_salve.analysis.sweeps import alpha_sweep
from captum_salve.checks import check_labels
from captum_salve.edit.head_edit import head_of
from captum_salve.edit.rules import DEFAULT_RULE, EditMode, EditRule, EditRuleName
from captum_salve.sae.metrics import sae_metrics
from captum_salve.sae.model import SparseAutoencoder, check_finite
from captum_salve.store import ActivationStore, check_rows

__all__ = ["SeedStudy", "match_features", "seed_study"]


def match_features(reference: SparseAutoencoder, other: SparseAutoencoder) -> tuple[Tensor, Tensor]:
    """Match the features of two SAEs by decoder cosine similarity (Hungarian assignment).

    The cosines are of the decoder columns divided by their norms, so SAEs whose
    columns are not unit norm (loaded from another library) are matched alike.

    Returns:
        (index, similarity): ``other``'s feature matched to each of ``reference``'s,
        and the absolute cosine similarity of each pair.

    Example:
        >>> index, similarity = match_features(saes[0], saes[1])
        >>> index[12], similarity[12]    # seed 1's counterpart of seed 0's feature 12, and their |cosine|
    """
    if reference.d_in != other.d_in or reference.d_latent != other.d_latent:
        raise ValueError("the SAEs must have the same d_in and d_latent to be matched")
    for name, sae in (("reference", reference), ("other", other)):
        check_finite(sae.decoder_weight.detach(), f"{name}'s decoder")
    with torch.no_grad():
        units = [normalize(sae.decoder_weight.detach().double(), dim=0) for sae in (reference, other)]
        cosine = (units[0].T @ units[1]).abs().cpu()
    rows, columns = linear_sum_assignment(cosine.numpy(), maximize=True)
    index = torch.as_tensor(columns)[torch.as_tensor(rows).argsort()]
    return index, cosine[torch.arange(len(index)), index]


@dataclass
class SeedStudy:
    """Per-class suppression curves over several SAE initialisations (the shaded bands of Figure 4).

    Attributes:
        alphas: (A,) strengths.
        accuracy: (S, K, A, K): seed, edited class, α, class measured.
        features: (S, K) feature edited for each class in each seed (matched to seed 0's choice).
        match_similarity: (S, K) |cosine| between that feature and seed 0's choice (1 for seed 0).
        own_choice: (S, K) whether the matched feature is also that seed's own pick.
        metrics: One dict of SAE metrics per seed.

    Example:
        >>> study = seed_study(model, saes, train_acts, test_acts, [0, 1, 2, 5, 10])
        >>> study.accuracy.shape    # (seeds, edited class, α, measured class)
        >>> mean, std = study.target_band(3)
    """

    alphas: Tensor
    accuracy: Tensor
    features: Tensor
    match_similarity: Tensor
    own_choice: Tensor
    metrics: list[dict]

    def target_band(self, class_index: int) -> tuple[Tensor, Tensor]:
        """(mean, std) over seeds of the edited class's own accuracy, (A,) each."""
        curve = self.accuracy[:, class_index, :, class_index]
        return curve.mean(0), curve.std(0)

    def off_target_band(self, class_index: int) -> tuple[Tensor, Tensor]:
        """(mean, std) over seeds of the mean accuracy of the other classes, (A,) each."""
        keep = torch.arange(self.accuracy.shape[-1]) != class_index
        curve = self.accuracy[:, class_index][:, :, keep].mean(-1)
        return curve.mean(0), curve.std(0)


def seed_study(
    model: nn.Module,
    saes: Iterable[SparseAutoencoder],
    train_acts: ActivationSet | ActivationStore,
    test_acts: ActivationSet | ActivationStore,
    alphas: Sequence[float],
    *,
    mode: EditMode = "suppress",
    rule: EditRuleName | EditRule = DEFAULT_RULE,
    select_by: RankBy = "contrast",
) -> SeedStudy:
    """Match the features of SAEs trained from several seeds to the first one's, and sweep each class's feature.

    The first SAE picks each class's feature from its class profile; in every other
    one, the feature matched to it by decoder cosine similarity (Hungarian
    assignment) is edited, so the bands show how reproducible one concept's edit is.
    Training the SAEs is the caller's (the pipeline trains ten, as the paper does).

    Args:
        model: The classifier.
        saes: Two or more SAEs of the same shape, trained from different seeds (any iterable).
        train_acts: Labelled head-input activations the class profiles are read from,
            with samples of every class of the model's head: an ActivationSet or an
            ActivationStore (read chunk by chunk).
        test_acts: Labelled head-input activations the sweeps are measured on, with
            samples of every class too: an ActivationSet or an ActivationStore.
        alphas: Strengths.
        mode: "suppress" or "enhance", as in :func:`alpha_sweep`.
        rule: Edit rule of every sweep (a name or an :class:`~captum_salve.edit.EditRule`).
        select_by: How the first SAE picks each class's feature (see :func:`select_feature`).

    Example:
        >>> saes = [train_sae(train_acts, 64, seed=s, progress=False)[0] for s in range(10)]
        >>> study = seed_study(model, saes, train_acts, test_acts, [0, 1, 2, 5, 10])
        >>> study.target_band(3)
    """
    saes = list(saes)
    if len(saes) < 2:
        raise ValueError(f"saes must hold at least 2 SAEs (one per seed), got {len(saes)}")
    strangers = [type(sae).__name__ for sae in saes if not isinstance(sae, SparseAutoencoder)]
    if strangers:
        raise TypeError(f"saes must hold SparseAutoencoders, got {strangers}")
    k = head_of(model).out_features
    train_acts, test_acts = check_rows(train_acts, "train_acts"), check_rows(test_acts, "test_acts")
    for acts, name in ((train_acts, "train_acts"), (test_acts, "test_acts")):
        check_finite(acts, name)
        counts = torch.bincount(check_labels(acts.require_labels(), f"{name} labels", classes=k), minlength=k)
        missing = (counts == 0).nonzero().reshape(-1).tolist()
        if missing:
            raise ValueError(
                f"{name} has no samples of classes {missing} of the model's {k}: every class's feature is "
                "picked and swept, so each class needs samples"
            )
    accuracy, features, similarity, own, metrics = [], [], [], [], []
    reference, chosen = saes[0], None
    for sae in saes:
        metrics.append(sae_metrics(sae, test_acts, head=model))
        profile = class_profile(sae, train_acts)
        own_pick = torch.tensor([select_feature(profile, c, by=select_by)[0] for c in range(k)])
        if chosen is None:
            chosen, picked, sim = own_pick, own_pick, torch.ones(k, dtype=torch.float64)
        else:
            index, pair_similarity = match_features(reference, sae)
            picked, sim = index[chosen], pair_similarity[chosen]
        sweeps = [alpha_sweep(model, sae, int(picked[c]), test_acts, alphas, mode=mode, rule=rule) for c in range(k)]
        accuracy.append(torch.stack([sweep.per_class_accuracy for sweep in sweeps]))
        features.append(picked)
        similarity.append(sim)
        own.append(picked == own_pick)
    return SeedStudy(
        sweeps[0].alphas,
        torch.stack(accuracy),
        torch.stack(features),
        torch.stack(similarity),
        torch.stack(own),
        metrics,
    )
