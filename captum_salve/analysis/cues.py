"""A suspected shortcut: the SAE features a cue moves on paired images, and their removal with chosen strengths."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from captum_salve.activations import ActivationSet, collect_activations
from captum_salve.analysis.sweeps import DEFAULT_EDIT_ALPHAS
from captum_salve.checks import check_fraction, check_int, check_strengths, shape_of
from captum_salve.edit.head_edit import HeadEdit, head_of, head_tensors64
from captum_salve.edit.rules import DEFAULT_RULE, EditRule, EditRuleName
from captum_salve.models import model_input
from captum_salve.sae.model import SparseAutoencoder, check_finite
from captum_salve.sites import Site
from captum_salve.store import RowStatistics

__all__ = [
    "CLASS_LIMIT",
    "CLEAN_TOLERANCE",
    "CueEdit",
    "CueReliance",
    "choose_cue_edit",
    "cue_reliance",
    "within_clean_limits",
]

# choose_cue_edit's limits on clean accuracy, overall and per class. The per-class limit was chosen on the
# shortcut benchmark's tuning canvases among none, 3, 5 and 8 points: the most cue-conflicting accuracy with
# no canvas's worst class falling further than under DFR (about 7 points; benchmarks/README.md).
CLEAN_TOLERANCE = 0.03
CLASS_LIMIT = 0.05


@dataclass(frozen=True)
class CueReliance:
    """SAE features ranked by how much a cue moves their codes, largest standardised effect first.

    Every tensor is in ranked order: row i describes feature ``features[i]``.

    Attributes:
        features: (d,) feature indices, by decreasing ``|effect|`` (ties: lower index first).
        effect: (d,) mean code change in units of the feature's code standard deviation over
            all 2N images, with and without the cue (0 for a feature constant over them).
        mean_change: (d,) mean over the pairs of code(with cue) − code(without).
        turns_on: (d,) share of the pairs in which the feature is inactive without the cue
            and active with it (``|z| > sae.active_threshold``, on the statistics of all 2N images' activations).
        pairs: N, the number of image pairs.

    Example:
        >>> reliance = cue_reliance(model, sae, with_cue.images, without_cue.images)
        >>> reliance.top(3)                      # the three features the cue moves most
        >>> reliance.rank_of(120)                # where feature 120 stands: 1 = first
        >>> print(reliance.table(3))
    """

    features: Tensor
    effect: Tensor
    mean_change: Tensor
    turns_on: Tensor
    pairs: int

    def top(self, n: int = 5) -> list[int]:
        """The ``n`` features the cue moves most."""
        return self.features[: check_int(n, "n", least=1)].tolist()

    def rank_of(self, feature: int) -> int:
        """Where a feature stands in the ranking: 1 for the feature the cue moves most."""
        d = len(self.features)
        feature = check_int(feature, "feature", 0, d - 1, why=f"one of the SAE's {d} features")
        return int((self.features == feature).nonzero()[0]) + 1

    def table(self, n: int = 10) -> str:
        """The top ``n`` features as a plain-text table."""
        lines = [f"{'rank':>4}  {'feature':>7}  {'effect':>7}  {'mean change':>11}  {'turns on':>8}"]
        for i in range(min(check_int(n, "n", least=1), len(self.features))):
            lines.append(
                f"{i + 1:>4}  {int(self.features[i]):>7}  {float(self.effect[i]):>7.2f}  "
                f"{float(self.mean_change[i]):>11.4f}  {float(self.turns_on[i]):>8.1%}"
            )
        return "\n".join(lines)


def cue_reliance(
    model: nn.Module,
    sae: SparseAutoencoder,
    with_cue: Tensor,
    without_cue: Tensor,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> CueReliance:
    """Rank SAE features by how much a suspected cue moves their codes on the same images with and without it.

    Image i of ``with_cue`` must be image i of ``without_cue`` with the cue added (for
    the digits canvas: ``DigitsCanvas(..., cue="all")`` and ``cue="none"``; for photos,
    the cue pasted on or painted out). Pairing removes everything but the cue: a
    feature's code change on a pair is what the cue does to it. The features are
    ranked by the mean change in units of the feature's code spread (a standardised
    effect), so features of large and small codes compare; ``turns_on`` says on how
    many pairs the cue switches the feature on.

    Args:
        model: The classifier the SAE was trained on.
        sae: The SAE; its codes are read at its own site (``sae.site``).
        with_cue: (N, C, H, W) images carrying the cue, N >= 2, as the model takes them.
        without_cue: The same N images without the cue, in the same order.
        batch_size: Images per forward pass.
        device: Where to run the model; default its own device.

    Returns:
        The features ranked by ``|effect|``, largest first.

    Raises:
        TypeError: ``sae`` is not a SparseAutoencoder, or the images are not tensors.
        ValueError: The two image sets differ in shape, hold fewer than 2 pairs, do not
            fit the model, or give activations the SAE cannot read.

    Example:
        >>> with_cue = DigitsCanvas("test", cue="all")     # every image carries the planted mark
        >>> without_cue = DigitsCanvas("test", cue="none")  # the same images without it
        >>> reliance = cue_reliance(model, sae, with_cue.images, without_cue.images)
        >>> reliance.top(1)     # the demo ResNet-18 and the pipeline's ReLU SAE (seed 0): its cross-class f120
        [120]
    """
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"sae must be a SparseAutoencoder, got {type(sae).__name__}")
    for name, images in (("with_cue", with_cue), ("without_cue", without_cue)):
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise TypeError(f"{name} must be a tensor of images (N, C, H, W), got {shape_of(images)}")
        model_input(model, images[:1], name)  # the images fit the model (channels, size, dtype)
    if with_cue.shape != without_cue.shape:
        raise ValueError(
            "with_cue and without_cue must be the same images with and without the cue, pair by pair, so of one "
            f"shape; got {tuple(with_cue.shape)} and {tuple(without_cue.shape)}"
        )
    if len(with_cue) < 2:
        raise ValueError(
            f"cue_reliance needs at least 2 image pairs (the effect is in standard deviations), got {len(with_cue)}"
        )
    batch_size = check_int(batch_size, "batch_size", 1)
    site = Site.from_key(sae.site)
    codes, features = [], []
    for name, images in (("with_cue", with_cue), ("without_cue", without_cue)):
        with warnings.catch_warnings():  # a non-finite row is refused below, naming the argument
            warnings.simplefilter("ignore")
            acts = collect_activations(model, images, site, batch_size=batch_size, device=device, progress=False)
        if acts.dim != sae.d_in:
            raise ValueError(
                f"the model gives {acts.dim}-dimensional activations at the SAE's site {sae.site!r}, but the SAE reads "
                f"{sae.d_in}: it was trained on another model"
            )
        check_finite(acts.features, f"the activations of {name}", "check those images")
        codes.append(sae.encode_all(acts).double())
        features.append(acts.features)
    on, off = codes
    change = on - off
    mean_change = change.mean(dim=0)
    spread = torch.cat([on, off]).std(dim=0)
    effect = torch.where(spread > 0, mean_change / spread.clamp_min(torch.finfo(spread.dtype).tiny), 0.0)
    threshold = sae.active_threshold(RowStatistics.of(torch.cat(features)))
    turns_on = ((on.abs() > threshold) & (off.abs() <= threshold)).double().mean(dim=0)
    order = effect.abs().sort(descending=True, stable=True).indices
    return CueReliance(
        features=order,
        effect=effect[order].float(),
        mean_change=mean_change[order].float(),
        turns_on=turns_on[order].float(),
        pairs=len(on),
    )


@dataclass(frozen=True)
class CueEdit:
    """The suppression of a cue's features that :func:`choose_cue_edit` chose, with what it did on its images.

    Attributes:
        features: The searched features, in the order given.
        edit: The head edit: each of ``features`` with its own strength (0: left as it is).
        conflicting_accuracy: Accuracy on the cue-conflicting images, before and after the edit.
        clean_accuracy: Accuracy on the clean images, before and after.
        worst_class_change: The most negative change of one class's clean accuracy.

    Example:
        >>> choose_cue_edit(model, sae, [120, 61, 35], clean, conflicting)    # feature: strength
        CueEdit(120: 2.61, 61: 2.61, 35: 0.1; cue-conflicting 85.5% → 89.2%, clean 97.8% → 98.0%, worst class -1.6%)
    """

    features: tuple[int, ...]
    edit: HeadEdit
    conflicting_accuracy: tuple[float, float]
    clean_accuracy: tuple[float, float]
    worst_class_change: float

    def __repr__(self) -> str:
        strengths = ", ".join(f"{f}: {a:.3g}" for f, a in zip(self.features, self.edit.alpha.tolist(), strict=True))
        (conflicting, conflicting_after), (clean, clean_after) = self.conflicting_accuracy, self.clean_accuracy
        return (
            f"CueEdit({strengths}; cue-conflicting {conflicting:.1%} → {conflicting_after:.1%}, "
            f"clean {clean:.1%} → {clean_after:.1%}, worst class {self.worst_class_change:+.1%})"
        )


class _CueScore:
    """Scores a head edit on clean and cue-conflicting head inputs: the objective and the limits."""

    def __init__(self, model: nn.Module, edit: HeadEdit, clean: ActivationSet, conflicting: ActivationSet) -> None:
        weight, bias = head_tensors64(head_of(model))
        self._curves, self._labels = [], []
        for rows in (clean, conflicting):
            a = rows.features.detach().to(weight.device, torch.float64)
            self._curves.append(edit.rule.logit_curve(weight, bias, edit.directions, a, edit.sign))
            self._labels.append(rows.labels.to(weight.device))
        self.classes = max(int(weight.shape[0]), int(clean.labels.max()) + 1)

    def __call__(self, alphas: Tensor) -> tuple[float, float, Tensor]:
        """(conflicting accuracy, clean accuracy, (K,) clean accuracy per class) at strengths ``alphas``."""
        right = [
            (curve(alphas).argmax(1) == labels).double()
            for curve, labels in zip(self._curves, self._labels, strict=True)
        ]
        counts = torch.bincount(self._labels[0], minlength=self.classes).double()
        per_class = torch.zeros_like(counts).index_add_(0, self._labels[0], right[0]) / counts.clamp_min(1)
        return float(right[1].mean()), float(right[0].mean()), per_class


def within_clean_limits(
    after: tuple[float, Tensor],
    before: tuple[float, Tensor],
    clean_tolerance: float = CLEAN_TOLERANCE,
    class_limit: float = CLASS_LIMIT,
) -> bool:
    """Whether an edit keeps clean accuracy: overall within ``clean_tolerance``, each class within ``class_limit``.

    ``after`` and ``before`` are (overall accuracy, (K,) accuracy per class) on the same
    clean images, with and without the edit. The rule :func:`choose_cue_edit` keeps.

    Example:
        >>> within_clean_limits((0.95, torch.tensor([0.9, 1.0])), (0.97, torch.tensor([0.96, 0.98])))
        False
    """
    (clean, per_class), (clean_before, class_before) = after, before
    within = clean >= clean_before - clean_tolerance - 1e-12
    return within and bool((per_class >= class_before - class_limit - 1e-12).all())


def choose_cue_edit(
    model: nn.Module,
    sae: SparseAutoencoder,
    features: Sequence[int],
    clean: ActivationSet,
    conflicting: ActivationSet,
    *,
    rule: EditRuleName | EditRule = DEFAULT_RULE,
    alphas: Sequence[float] = DEFAULT_EDIT_ALPHAS,
    clean_tolerance: float = CLEAN_TOLERANCE,
    class_limit: float = CLASS_LIMIT,
    rounds: int = 4,
) -> CueEdit:
    """Choose how strongly to suppress each of a cue's features, on validation images the cue conflicts with.

    The search maximises accuracy on ``conflicting`` (images where the cue points to a
    wrong class: the cue on images of other classes, and the cue's classes without it)
    while clean accuracy stays within ``clean_tolerance`` of the unedited model's overall
    and within ``class_limit`` on every single class. It starts from the best edit of a
    prefix of ``features`` (the first k, for every k) at one strength from ``alphas``,
    then moves one feature's strength at a time to any value of ``alphas`` (or 0) while
    that helps, at most ``rounds`` passes (0: one strength only). Ties keep the earlier
    candidate: fewer features, smaller strengths. No edit within the limits: all strengths 0.

    Use images the edit will not be scored on: the choice fits them.

    Args:
        model: The classifier; its head is edited.
        sae: An SAE of the head input.
        features: Candidate features, most suspected first (e.g. ``cue_reliance(...).top(8)``), each once.
        clean: Head inputs and labels of validation images without the cue.
        conflicting: Head inputs and labels of cue-conflicting validation images.
        rule: The edit rule (default: "project", whose edit equals steering the head input).
        alphas: The strengths searched, > 0 (0 is always a candidate).
        clean_tolerance: Largest loss of overall clean accuracy allowed, a fraction.
        class_limit: Largest loss of one class's clean accuracy allowed, a fraction.
        rounds: Passes of the one-feature-at-a-time search.

    Returns:
        The chosen edit and its validation figures.

    Raises:
        ValueError: A feature out of range or repeated, an SAE of another site, activations of
            another width, without labels or not finite, a strength below 0, a tolerance outside
            [0, 1], negative rounds.

    Example:
        >>> reliance = cue_reliance(model, sae, with_cue, without_cue)
        >>> clean = collect_activations(model, DigitsCanvas("train", seed=1001, cue="none"))    # (image, label)s
        >>> conflicting = collect_activations(model, DigitsCanvas("train", seed=1001, cue="conflicting"))
        >>> choice = choose_cue_edit(model, sae, reliance.top(8), clean, conflicting)
        >>> choice.conflicting_accuracy          # (before, after) on the validation images
        >>> unbiased = choice.edit.apply(model)  # a copy with the edited head
    """
    strengths = [float(a) for a in check_strengths(alphas) if a > 0]
    clean_tolerance = check_fraction(clean_tolerance, "clean_tolerance")
    class_limit = check_fraction(class_limit, "class_limit")
    rounds = check_int(rounds, "rounds", least=0)
    edit = HeadEdit.of(sae, features, 0.0, rule=rule)
    for name, rows in (("clean", clean), ("conflicting", conflicting)):
        if not isinstance(rows, ActivationSet) or rows.labels is None or len(rows) == 0:
            raise ValueError(f"{name} must be an ActivationSet of head inputs with labels, got {shape_of(rows)}")
        if rows.dim != edit.directions.width:
            raise ValueError(f"{name} has {rows.dim}-dimensional rows; the SAE's features are {edit.directions.width}")
        check_finite(rows.features, name, "check those images")
    score = _CueScore(model, edit, clean, conflicting)
    count = edit.directions.count
    zero = torch.zeros(count, dtype=torch.float64)
    before_conflicting, before_clean, before_class = score(zero)

    def value(alphas: Tensor) -> float | None:
        """Conflicting accuracy, or None where the clean limits are broken."""
        conflicting_acc, clean_acc, per_class = score(alphas)
        within = within_clean_limits((clean_acc, per_class), (before_clean, before_class), clean_tolerance, class_limit)
        return conflicting_acc if within else None

    best, best_value = zero, before_conflicting
    for k in range(1, count + 1):
        for alpha in strengths:
            trial = torch.cat([torch.full((k,), alpha, dtype=torch.float64), zero[k:]])
            found = value(trial)
            if found is not None and found > best_value:
                best, best_value = trial, found
    for _ in range(rounds):
        improved = False
        for feature in range(count):
            for alpha in [0.0, *strengths]:
                trial = best.clone()
                trial[feature] = alpha
                found = value(trial)
                if found is not None and found > best_value:
                    best, best_value, improved = trial, found, True
        if not improved:
            break
    after_conflicting, after_clean, after_class = score(best)
    return CueEdit(
        tuple(int(f) for f in sae.feature_index(features)),
        HeadEdit(edit.directions, best, edit.mode, edit.rule),
        (before_conflicting, after_conflicting),
        (before_clean, after_clean),
        float((after_class - before_class).min()),
    )
