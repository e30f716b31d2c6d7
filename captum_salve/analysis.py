"""From codes to findings: class profiles, feature selection, α sweeps, controls and seed robustness."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_salve.activations import ActivationSet
from captum_salve.edit.weights import FeatureDirections, _check_rule_and_mode, _directions, edited_weights
from captum_salve.models import find_head
from captum_salve.sae.model import SparseAutoencoder, check_feature_index
from captum_salve.sae.train import train_sae
from captum_salve.sites import HEAD_INPUT

__all__ = [
    "ClassProfile",
    "CrossClassFeature",
    "SeedStudy",
    "EditChoice",
    "SweepResult",
    "alpha_50",
    "alpha_sweep",
    "class_profile",
    "control_directions",
    "cross_class_features",
    "match_features",
    "seed_study",
    "select_edit",
    "select_feature",
    "top_activating",
]


@dataclass(frozen=True)
class CrossClassFeature:
    """A feature that is large for several classes.

    Attributes:
        feature: SAE feature index.
        classes: The classes it is large for, strongest first.
        score: Gap between the weakest of those classes and the strongest other
            class, in units of the feature's standard deviation.
    """

    feature: int
    classes: tuple[int, ...]
    score: float


@dataclass
class ClassProfile:
    """Class-conditional mean codes μ (the paper's Figure 1a) and what follows from them.

    Attributes:
        mean_codes: μ, (K, d): mean code of each class.
        counts: (K,) samples per class.
        code_std: (d,) standard deviation of each code over all samples.
        class_names: K names.
    """

    mean_codes: Tensor
    counts: Tensor
    code_std: Tensor
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return self.mean_codes.shape[0]

    def _check_class(self, class_index: int) -> None:
        if not 0 <= class_index < self.num_classes:
            raise ValueError(f"class_index must be in [0, {self.num_classes - 1}], got {class_index}")

    def contrast(self) -> Tensor:
        """(K, d): how much class k's mean code exceeds the mean of the other classes, in code standard deviations."""
        mu = self.mean_codes
        others = (mu.sum(0, keepdim=True) - mu) / max(self.num_classes - 1, 1)
        return (mu - others) / self.code_std.clamp_min(1e-8)

    def dominant(self, class_index: int, n: int = 5, *, by: str = "magnitude") -> Tensor:
        """A class's top features: by ``|μ_k|`` (``"magnitude"``, the paper's) or by :meth:`contrast`."""
        self._check_class(class_index)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if by == "magnitude":
            scores = self.mean_codes[class_index].abs()
        elif by == "contrast":
            scores = self.contrast()[class_index]
        else:
            raise ValueError(f"by must be 'magnitude' or 'contrast', got {by!r}")
        return scores.topk(min(n, scores.numel())).indices

    def selectivity(self, feature: int) -> Tensor:
        """(K,) share of a feature's mean magnitude that falls on each class (1/K when even)."""
        if check_feature_index(feature, self.mean_codes.shape[1]).numel() != 1:
            raise ValueError(f"feature must be one SAE feature, got {feature!r}")
        magnitude = self.mean_codes[:, feature].abs()
        return magnitude / magnitude.sum().clamp_min(1e-12)

    def specificity(self, *, by: str = "magnitude") -> Tensor:
        """(K,) selectivity of each class's top feature for that class: 1 = only that class, 1/K = all alike."""
        return torch.stack(
            [self.selectivity(int(self.dominant(k, 1, by=by)[0]))[k] for k in range(self.num_classes)]
        )


def class_profile(sae: SparseAutoencoder, acts: ActivationSet, *, class_names: Sequence[str] | None = None) -> ClassProfile:
    """The class-conditional mean code μ_k of every class.

    Example:
        >>> profile = class_profile(sae, acts)
        >>> profile.dominant(3, n=5)       # class 3's features by |μ_3|
        >>> cross_class_features(profile)  # features shared by several classes
        >>> plots.class_heatmap(profile)   # the paper's Figure 1a
    """
    labels = acts.require_labels()
    codes = sae.encode_all(acts)
    k = acts.num_classes
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros(k, codes.shape[1]).index_add_(0, labels, codes)
    mean = sums / counts.clamp_min(1)[:, None]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names must have {k} entries, got {len(names)}")
    return ClassProfile(mean, counts, codes.std(dim=0), names)


def cross_class_features(profile: ClassProfile, *, n_classes: int = 2, top: int = 5) -> list[CrossClassFeature]:
    """Features large for exactly ``n_classes`` classes and small for the rest, best first.

    A feature's score is the gap between its ``n_classes``-th and ``(n_classes+1)``-th
    largest class mean ``|μ_k|``, in units of its standard deviation.
    """
    if not 2 <= n_classes < profile.num_classes:
        raise ValueError(f"n_classes must be in [2, {profile.num_classes - 1}], got {n_classes}")
    magnitude = profile.mean_codes.abs()  # (K, d)
    ranked, classes = magnitude.sort(dim=0, descending=True)
    gap = (ranked[n_classes - 1] - ranked[n_classes]) / profile.code_std.clamp_min(1e-8)
    best = gap.topk(min(top, gap.numel())).indices
    return [
        CrossClassFeature(int(f), tuple(int(c) for c in classes[:n_classes, f]), float(gap[f])) for f in best
    ]


def select_feature(profile: ClassProfile, class_index: int, *, n: int = 1, by: str = "contrast") -> list[int]:
    """The feature(s) to edit for a class: its top ``n`` by contrast (default) or by magnitude."""
    return [int(f) for f in profile.dominant(class_index, n, by=by)]


def top_activating(sae: SparseAutoencoder, acts: ActivationSet, feature: int, k: int = 9) -> tuple[Tensor, Tensor]:
    """The ``k`` rows where a feature's code is largest: (indices, values), largest first."""
    if sae.feature_index(feature).numel() != 1:
        raise ValueError(f"feature must be one SAE feature, got {feature!r}")
    if not 1 <= k <= len(acts):
        raise ValueError(f"k must be in [1, {len(acts)}], got {k}")
    values, indices = sae.encode_all(acts)[:, feature].topk(k)
    return indices, values


@dataclass
class SweepResult:
    """Predictions of the edited model at every α.

    Attributes:
        alphas: (A,) strengths, ascending.
        confusion: (A, K, K) counts: ``confusion[i, true, predicted]``.
        baseline: (K, K) confusion of the unedited model.
        label: What was edited (shown in figures).
        class_names: K names.
    """

    alphas: Tensor
    confusion: Tensor
    baseline: Tensor
    label: str
    class_names: list[str]

    @property
    def per_class_accuracy(self) -> Tensor:
        """(A, K) accuracy of each class at each α."""
        return _accuracy(self.confusion)

    @property
    def baseline_accuracy(self) -> Tensor:
        """(K,) accuracy of each class before the edit."""
        return _accuracy(self.baseline)

    def _check_class(self, class_index: int) -> None:
        k = self.confusion.shape[1]
        if not 0 <= class_index < k:
            raise ValueError(f"class_index must be in [0, {k - 1}], got {class_index}")

    def prediction_distribution(self, class_index: int) -> Tensor:
        """(A, K) where the images of one class go: share predicted as each class, per α."""
        self._check_class(class_index)
        rows = self.confusion[:, class_index].double()
        return rows / rows.sum(dim=1, keepdim=True).clamp_min(1)

    def off_target_change(self, class_index: int | Sequence[int]) -> Tensor:
        """(A,) mean accuracy change of the classes not in ``class_index``, against the unedited model."""
        targets = torch.as_tensor(class_index).reshape(-1)
        for target in targets.tolist():
            self._check_class(target)
        keep = torch.ones(self.confusion.shape[1], dtype=torch.bool)
        keep[targets] = False
        return (self.per_class_accuracy[:, keep] - self.baseline_accuracy[keep]).mean(dim=1)


def _accuracy(confusion: Tensor) -> Tensor:
    counts = confusion.sum(dim=-1).double()
    return confusion.diagonal(dim1=-2, dim2=-1).double() / counts.clamp_min(1)


@torch.no_grad()
def alpha_sweep(
    model: nn.Module,
    sae: SparseAutoencoder | FeatureDirections,
    feature: int | Sequence[int] | None,
    data: ActivationSet,
    alphas: Sequence[float] | Tensor,
    *,
    mode: str = "suppress",
    rule: str = "salve",
    class_names: Sequence[str] | None = None,
) -> SweepResult:
    """Per-class accuracy and prediction distribution of the edited model at every α.

    The edit changes only the head, so the sweep runs the edited head on the
    head-input activations: the same logits as the edited model on the images.

    Args:
        model: The classifier.
        sae: The SAE (or FeatureDirections, then ``feature`` is None).
        feature: One feature or several edited together.
        data: Labelled head-input activations (see :func:`collect_activations`).
        alphas: Strengths ≥ 0.
        mode: ``"suppress"`` or ``"enhance"``.
        rule: ``"salve"`` or ``"project"``.
        class_names: Names for figures.

    Example:
        >>> sweep = alpha_sweep(model, sae, 12, test_acts, [0, 1, 2, 5, 10], rule="project")
        >>> sweep.per_class_accuracy[:, 3], sweep.off_target_change(3)
    """
    _check_rule_and_mode(rule, mode)
    if data.site != HEAD_INPUT:
        raise ValueError(f"data must be head-input activations, got activations read at {data.site!r}")
    labels = data.require_labels()
    directions = _directions(sae, feature)
    _, head = find_head(model)
    alphas = torch.as_tensor(alphas, dtype=torch.float64).sort().values
    if alphas.dim() != 1 or len(alphas) == 0:
        raise ValueError("alphas must be a non-empty 1-D sequence of strengths")
    k = head.out_features
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"data labels must be classes of the head, in [0, {k - 1}], got {int(labels.min())} to {int(labels.max())}")
    a = data.features.to(head.weight.device, torch.float32)

    def confusion_of(weight: Tensor, bias: Tensor | None) -> Tensor:
        predicted = torch.nn.functional.linear(a, weight, bias).argmax(dim=1).cpu()
        return torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)

    baseline = confusion_of(head.weight, head.bias)
    confusion = torch.stack(
        [confusion_of(*edited_weights(head.weight, head.bias, directions, float(alpha), mode=mode, rule=rule)) for alpha in alphas]
    )
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    label = f"{mode} {'feature ' + str(feature) if feature is not None else 'direction'} ({rule})"
    return SweepResult(alphas, confusion, baseline, label, names)


def alpha_50(sweep: SweepResult, class_index: int) -> float:
    """The α at which a class's accuracy first falls to 50%, interpolated linearly between swept strengths.

    Returns ``inf`` if it never does, and the first α if it already is at or below 50% there.
    On a sweep of the class's correctly classified samples it equals the (lower)
    median of their flip α_crit when a flipped sample stays flipped: always under
    ``rule="project"``; under ``"salve"`` a sample can flip back once clipping
    leaves mostly the bias.
    """
    sweep._check_class(class_index)
    return crossing_50(sweep.alphas, sweep.per_class_accuracy[:, class_index])


def crossing_50(alphas: Tensor, accuracy: Tensor) -> float:
    """Where an accuracy curve over ascending ``alphas`` first reaches 50% (see :func:`alpha_50`)."""
    below = (accuracy <= 0.5).nonzero()
    if len(below) == 0:
        return float("inf")
    i = int(below[0])
    if i == 0:
        return float(alphas[0])
    a0, a1 = alphas[i - 1], alphas[i]
    y0, y1 = accuracy[i - 1], accuracy[i]
    return float(a0 + (y0 - 0.5) / (y0 - y1) * (a1 - a0))


DEFAULT_EDIT_ALPHAS = tuple(float(a) for a in torch.logspace(-1, 2, 37))


@dataclass(frozen=True)
class EditChoice:
    """The edit :func:`select_edit` picked for a class, with what it did on the selection data.

    Attributes:
        class_index: The class to suppress.
        features: The SAE features edited together.
        alpha: The strength.
        rule: The edit rule.
        target_accuracy: The class's accuracy after the edit.
        off_target_change: Mean accuracy change of the other classes.
        reached: Whether the target accuracy was reached.
    """

    class_index: int
    features: tuple[int, ...]
    alpha: float
    rule: str
    target_accuracy: float
    off_target_change: float
    reached: bool


def select_edit(
    model: nn.Module,
    sae: SparseAutoencoder,
    profile: ClassProfile,
    class_index: int,
    acts: ActivationSet,
    *,
    rule: str = "project",
    mode: str = "suppress",
    candidates: int = 6,
    max_features: int = 2,
    target_accuracy: float = 0.02,
    alphas: Sequence[float] = DEFAULT_EDIT_ALPHAS,
    by: str = "contrast",
) -> EditChoice:
    """Pick the suppression edit of a class from its profile: which of its top features, and how strong.

    Every single feature and every group of up to ``max_features`` among the class's
    top ``candidates`` (by ``by``) is swept over ``alphas`` on ``acts``; a group's
    strength is the smallest α that brings the class below ``target_accuracy``. Of
    the groups that get there, the one that moves the other classes least wins
    (fewer features on a tie). If none gets there, the one that brings the class
    lowest is returned with ``reached=False``. Pick on training activations and
    measure the choice on held-out ones; the default 2% leaves a margin for a
    held-out goal of 10%.

    Example:
        >>> choice = select_edit(model, sae, profile, 3, train_acts)
        >>> edited_model = edit_model(model, sae, list(choice.features), choice.alpha, rule=choice.rule)
    """
    from itertools import combinations

    if candidates < 1 or max_features < 1:
        raise ValueError(f"candidates and max_features must be at least 1, got {candidates} and {max_features}")
    pool = select_feature(profile, class_index, n=candidates, by=by)
    best: tuple | None = None
    for size in range(1, max_features + 1):
        for group in combinations(pool, size):
            sweep = alpha_sweep(model, sae, list(group), acts, alphas, mode=mode, rule=rule)
            accuracy = sweep.per_class_accuracy[:, class_index]
            off = sweep.off_target_change(class_index)
            below = (accuracy < target_accuracy).nonzero()
            i = int(below[0]) if len(below) else int(accuracy.argmin())
            reached = len(below) > 0
            key = (not reached, abs(float(off[i])) if reached else float(accuracy[i]), size)
            if best is None or key < best[0]:
                best = (key, EditChoice(class_index, group, float(sweep.alphas[i]), rule, float(accuracy[i]), float(off[i]), reached))
    return best[1]


def control_directions(
    sae: SparseAutoencoder, feature: int, acts: ActivationSet, *, seed: int = 0
) -> dict[str, FeatureDirections]:
    """The controls for an edit: a random unit direction and the top principal direction of ``acts``.

    Their codes are scaled so that their root-mean-square over ``acts`` equals the
    SAE feature's, so the same α removes as much under ``rule="project"``; under
    ``rule="salve"`` only the unit direction matters.
    """
    if acts.dim != sae.d_in:
        raise ValueError(f"the SAE reads {sae.d_in}-dimensional activations, acts have {acts.dim}")
    features = acts.features.double()
    mean = features.mean(dim=0)
    centred = features - mean
    reference = FeatureDirections.from_sae(sae, feature)
    code_rms = (features @ reference.encoder[0].double().cpu() + reference.offset[0].double().cpu()).pow(2).mean().sqrt()
    generator = torch.Generator().manual_seed(seed)
    random = torch.randn(features.shape[1], generator=generator, dtype=torch.float64)
    principal = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    controls = {}
    for name, vector in (("random direction", random), ("principal direction", principal)):
        unit = vector / vector.norm()
        rms = (centred @ unit).pow(2).mean().sqrt().clamp_min(1e-12)
        controls[name] = FeatureDirections.from_vectors(unit, mean=mean, code_scale=code_rms / rms)
    return controls


def match_features(reference: SparseAutoencoder, other: SparseAutoencoder) -> tuple[Tensor, Tensor]:
    """Match the features of two SAEs by decoder cosine similarity (Hungarian assignment).

    Returns:
        (index, similarity): ``other``'s feature matched to each of ``reference``'s,
        and the absolute cosine similarity of each pair.
    """
    if reference.d_in != other.d_in or reference.d_latent != other.d_latent:
        raise ValueError("the SAEs must have the same d_in and d_latent to be matched")
    with torch.no_grad():
        cosine = (reference.decoder_weight.T @ other.decoder_weight).abs().cpu().double()
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
    train_acts: ActivationSet,
    test_acts: ActivationSet,
    alphas: Sequence[float],
    *,
    n_seeds: int = 10,
    d_latent: int = 64,
    mode: str = "suppress",
    rule: str = "project",
    select_by: str = "contrast",
    progress: bool = True,
    **train_kwargs,
) -> SeedStudy:
    """Train ``n_seeds`` SAEs, match their features to seed 0's, and sweep each class's feature.

    Seed 0 picks each class's feature from its class profile; in every other seed,
    the feature matched to it by decoder cosine similarity (Hungarian assignment) is
    edited, so the bands show how reproducible one concept's edit is.

    Args:
        model: The classifier.
        train_acts: Head-input activations to train the SAEs on.
        test_acts: Labelled head-input activations the sweeps are measured on.
        alphas: Strengths.
        n_seeds: Number of initialisations (the paper uses 10).
        d_latent, train_kwargs: Passed to :func:`train_sae`.
        mode, rule: The edit.
        select_by: How seed 0 picks each class's feature (see :func:`select_feature`).
        progress: Show a progress bar over seeds.
    """
    from captum_salve.sae.metrics import sae_metrics

    if n_seeds < 2:
        raise ValueError(f"n_seeds must be at least 2, got {n_seeds}")
    k = test_acts.num_classes
    accuracy, features, similarity, own, metrics = [], [], [], [], []
    reference, chosen = None, None
    for seed in tqdm(range(n_seeds), desc="seeds", disable=not progress):
        sae, _ = train_sae(train_acts, d_latent, seed=seed, progress=False, **train_kwargs)
        metrics.append(sae_metrics(sae, test_acts, head=model))
        profile = class_profile(sae, train_acts)
        own_pick = torch.tensor([select_feature(profile, c, by=select_by)[0] for c in range(k)])
        if reference is None:
            reference, chosen = sae, own_pick
            picked, sim = own_pick, torch.ones(k, dtype=torch.float64)
        else:
            index, pair_similarity = match_features(reference, sae)
            picked, sim = index[chosen], pair_similarity[chosen]
        curves = [
            alpha_sweep(model, sae, int(picked[c]), test_acts, alphas, mode=mode, rule=rule).per_class_accuracy
            for c in range(k)
        ]
        accuracy.append(torch.stack(curves))
        features.append(picked)
        similarity.append(sim)
        own.append(picked == own_pick)
    return SeedStudy(
        torch.as_tensor(alphas, dtype=torch.float64).sort().values,
        torch.stack(accuracy),
        torch.stack(features),
        torch.stack(similarity),
        torch.stack(own),
        metrics,
    )
