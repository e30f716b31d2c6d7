"""Class profiles μ (the paper's Figure 1a) and the features they point to."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor

from captum_salve.activations import ActivationSet
from captum_salve.checks import check_class_names, check_class_with_samples, check_int
from captum_salve.sae.model import SparseAutoencoder, check_feature_index, check_finite
from captum_salve.store import CHUNK_ROWS, ActivationStore, RowStatistics, check_rows

__all__ = [
    "ClassProfile",
    "CrossClassFeature",
    "CrossClassScore",
    "RankBy",
    "class_profile",
    "cross_class_features",
    "select_feature",
    "top_activating",
]

RankBy = Literal["magnitude", "contrast"]
CrossClassScore = Literal["share", "gap"]


@dataclass(frozen=True)
class CrossClassFeature:
    """A feature that is large for several classes.

    Attributes:
        feature: SAE feature index.
        classes: The classes it is large for, strongest first.
        score: How strongly the feature belongs to those classes alone (see
            :func:`cross_class_features`: a share in [0, 1], or a gap in standard deviations).

    Example:
        >>> for shared in cross_class_features(class_profile(sae, train_acts)):
        ...     print(shared.feature, shared.classes, f"{shared.score:.1f}")
    """

    feature: int
    classes: tuple[int, ...]
    score: float


@dataclass
class ClassProfile:
    """Class-conditional mean codes μ (the paper's Figure 1a) and what follows from them.

    A class with no samples (count 0) has no mean code: asking for its features is an
    error, its :meth:`specificity` is NaN, and it is left out of the other classes'
    mean in :meth:`contrast`.

    Attributes:
        mean_codes: μ, (K, d): mean code of each class (zero for a class without samples).
        counts: (K,) samples per class.
        code_std: (d,) standard deviation of each code over all samples.
        class_names: K names.

    Example:
        >>> mu = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]])    # 2 classes, 3 features
        >>> profile = ClassProfile(mu, counts=torch.tensor([5, 5]), code_std=torch.ones(3))
        >>> profile.dominant(1, n=1)
        tensor([1])
        >>> profile.selectivity(2)
        tensor([0.5000, 0.5000])
    """

    mean_codes: Tensor
    counts: Tensor
    code_std: Tensor
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """K, the number of classes profiled."""
        return self.mean_codes.shape[0]

    def _check_class(self, class_index: int) -> int:
        names = self.class_names if len(self.class_names) == self.num_classes else None
        why = "it has no mean code to pick features from"
        return check_class_with_samples(class_index, self.counts, "the profile", why, class_names=names)

    def contrast(self) -> Tensor:
        """(K, d): how much class k's mean code exceeds the mean of the other classes, in code standard deviations.

        Classes without samples are left out of the other classes' mean.
        """
        mu = self.mean_codes
        measured = (torch.as_tensor(self.counts) > 0).to(mu.dtype)[:, None]
        others = ((mu * measured).sum(0, keepdim=True) - mu * measured) / (measured.sum() - measured).clamp_min(1)
        return (mu - others) / self.code_std.clamp_min(1e-8)

    def dominant(self, class_index: int, n: int = 5, *, by: RankBy = "magnitude") -> Tensor:
        """A class's top features: by ``|μ_k|`` (``"magnitude"``, the paper's) or by :meth:`contrast`."""
        class_index = self._check_class(class_index)
        n = check_int(n, "n", least=1)
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

    def specificity(self, *, by: RankBy = "magnitude") -> Tensor:
        """(K,) selectivity of each class's top feature for that class: 1 = only that class, 1/K = all alike.

        NaN for a class without samples, which has no top feature.
        """
        return torch.stack(
            [
                self.selectivity(int(self.dominant(k, 1, by=by)[0]))[k]
                if self.counts[k] > 0
                else self.mean_codes.new_tensor(float("nan"))
                for k in range(self.num_classes)
            ]
        )


def class_profile(
    sae: SparseAutoencoder,
    acts: ActivationSet | ActivationStore,
    *,
    class_names: Sequence[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ClassProfile:
    """The class-conditional mean code μ_k of every class.

    The codes are summed chunk by chunk in float64 (per class, and their squares for
    ``code_std``), so an on-disk store of any length is profiled in memory bounded by
    ``chunk_rows``.

    Args:
        sae: The SAE whose codes are profiled.
        acts: An ActivationSet or an ActivationStore: at least 2 rows (``code_std`` is
            a standard deviation over them), finite ones, with integer labels; its
            classes are 0 to its largest label.
        class_names: One name per class; default the class indices.
        chunk_rows: Rows read and encoded at a time.

    Example:
        >>> profile = class_profile(sae, acts)
        >>> profile.dominant(3, n=5)       # class 3's features by |μ_3|
        >>> cross_class_features(profile)  # features shared by several classes
        >>> plots.class_heatmap(profile)   # the paper's Figure 1a
    """
    rows = check_rows(acts, "acts")
    if len(rows) < 2:
        raise ValueError(
            f"acts must hold at least 2 rows to profile (code_std is a standard deviation over rows), got {len(rows)}"
        )
    labels = rows.require_labels()  # integers >= 0, as ActivationSet and ActivationStore hold them
    check_finite(rows, "acts", chunk_rows=chunk_rows)
    k = int(labels.max()) + 1
    names = check_class_names(class_names, count=k) if class_names is not None else [str(i) for i in range(k)]
    sums = torch.zeros(k, sae.d_latent, dtype=torch.float64)

    def codes_summed_by_class() -> Iterator[Tensor]:
        for chunk, codes in sae.encode_chunks(rows, chunk_rows):
            sums.index_add_(0, chunk.labels, codes.double())
            yield codes

    spread = RowStatistics.accumulate(codes_summed_by_class())
    counts = torch.bincount(labels, minlength=k)
    mean = sums / counts.clamp_min(1)[:, None]
    code_std = (spread.variance * len(rows) / (len(rows) - 1)).sqrt()  # unbiased, as Tensor.std
    return ClassProfile(mean.float(), counts, code_std.float(), names)


def cross_class_features(
    profile: ClassProfile, *, n_classes: int = 2, top: int = 5, score: CrossClassScore = "share"
) -> list[CrossClassFeature]:
    """Features large for exactly ``n_classes`` classes and small for the rest, best first.

    Two scores, over the class means ``|μ_k|`` of the classes with samples:

    - ``"share"`` (default): the share of the feature's summed ``|μ_k|`` that falls on its
      ``n_classes`` largest classes; 1 when the feature is silent on every other class.
    - ``"gap"``: the gap between the ``n_classes``-th and ``(n_classes+1)``-th largest
      ``|μ_k|``, in units of the feature's standard deviation (0.1's score).

    The share was chosen on the tuning cue variants of the digits canvas
    (:data:`~captum_salve.data.CUE_VARIANTS`): with three SAE seeds each, the top feature lay
    on the cue's two classes for 7 of 9 SAEs (the gap: 5 of 9); on the held-out variants,
    looked at only afterwards, for 6 of 6 (the gap: 3 of 6). The gap favours features whose
    two classes are far apart from a third in absolute terms, which broad digit-shape
    features are more often than a cue is.

    Example:
        >>> mu = torch.tensor([[4.0, 1.0], [3.5, 1.0], [0.5, 1.0], [0.0, 1.0]])    # feature 0: classes 0 and 1
        >>> profile = ClassProfile(mu, counts=torch.ones(4), code_std=torch.tensor([2.0, 1.0]))
        >>> cross_class_features(profile, top=1)     # (4 + 3.5) / 8
        [CrossClassFeature(feature=0, classes=(0, 1), score=0.9375)]
        >>> cross_class_features(profile, top=1, score="gap")     # (3.5 − 0.5) / 2
        [CrossClassFeature(feature=0, classes=(0, 1), score=1.5)]
    """
    empty = torch.as_tensor(profile.counts) == 0
    why = f"{int(empty.sum())} of the {profile.num_classes} classes have no samples" if empty.any() else ""
    n_classes = check_int(n_classes, "n_classes", 2, profile.num_classes - int(empty.sum()) - 1, why=why)
    top = check_int(top, "top", least=1)
    if score not in get_args(CrossClassScore):
        raise ValueError(f"score must be one of {get_args(CrossClassScore)}, got {score!r}")
    magnitude = profile.mean_codes.abs().masked_fill(empty[:, None], -math.inf)  # (K, d); empty classes rank last
    ranked, classes = magnitude.sort(dim=0, descending=True)
    if score == "gap":
        values = (ranked[n_classes - 1] - ranked[n_classes]) / profile.code_std.clamp_min(1e-8)
    else:
        total = magnitude.masked_fill(empty[:, None], 0.0).sum(dim=0)
        values = torch.where(total > 0, ranked[:n_classes].sum(dim=0) / total.clamp_min(1e-30), 0.0)
    best = values.topk(min(top, values.numel())).indices
    return [CrossClassFeature(int(f), tuple(int(c) for c in classes[:n_classes, f]), float(values[f])) for f in best]


def select_feature(profile: ClassProfile, class_index: int, *, n: int = 1, by: RankBy = "contrast") -> list[int]:
    """The feature(s) to edit for a class: its top ``n`` by contrast (default) or by magnitude.

    A class without samples in the profile has no features to pick: that is an error.

    Example:
        >>> mu = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]])    # 2 classes, 3 features
        >>> profile = ClassProfile(mu, counts=torch.tensor([5, 5]), code_std=torch.ones(3))
        >>> select_feature(profile, 1, n=2), select_feature(profile, 0, n=2, by="magnitude")
        ([1, 2], [0, 2])
    """
    return [int(f) for f in profile.dominant(class_index, n, by=by)]


def top_activating(
    sae: SparseAutoencoder,
    acts: ActivationSet | ActivationStore,
    feature: int,
    k: int = 9,
    *,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[Tensor, Tensor]:
    """The ``k`` rows where a feature's code is largest: (indices, values), largest first.

    The best ``k`` are kept while the rows are encoded chunk by chunk; of equal codes
    the earlier row comes first, so the answer does not depend on ``chunk_rows``.

    Args:
        sae: The SAE.
        acts: An ActivationSet or an ActivationStore, finite.
        feature: One SAE feature.
        k: How many rows, at most the number of rows.
        chunk_rows: Rows read and encoded at a time.

    Returns:
        (k,) row indices and (k,) float32 codes.

    Example:
        >>> train_acts = collect_activations(model, train)    # train: a DigitsCanvas, say
        >>> indices, values = top_activating(sae, train_acts, 12)
        >>> fig = plots.gallery(train.images[indices], values, title="feature 12")
    """
    rows = check_rows(acts, "acts")
    index = sae.feature_index(feature)
    if index.numel() != 1:
        raise ValueError(f"feature must be one SAE feature, got {feature!r}")
    k = check_int(k, "k", 1, len(rows))
    check_finite(rows, "acts", chunk_rows=chunk_rows)
    values, indices, start = torch.zeros(0), torch.zeros(0, dtype=torch.long), 0
    for chunk, codes in sae.encode_chunks(rows, chunk_rows):
        values = torch.cat([values, codes[:, int(index[0])]])
        indices = torch.cat([indices, torch.arange(start, start + len(chunk))])
        # of equal codes the kept rows are in row order and precede the chunk's: a stable sort keeps the earlier row
        best = values.sort(descending=True, stable=True).indices[:k]
        values, indices, start = values[best], indices[best], start + len(chunk)
    return indices, values
