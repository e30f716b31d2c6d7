"""The paper's figures, as matplotlib ``Figure`` objects.

Figures are built without pyplot, so nothing opens a window and no global figure
state is touched; save one with ``fig.savefig(path)``, or show it as the last
expression of a notebook cell. Numbers refer to the SALVE paper's figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Sized

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from captum_salve.analysis import ClassProfile, SeedStudy, SweepResult
from captum_salve.attr.activation_max import MaximizationResult
from captum_salve.attr.grad_cam import render_maps
from captum_salve.checks import check_class_names, check_int, shape_of
from captum_salve.sae.model import check_feature_index

__all__ = [
    "accuracy_change_bars",
    "accuracy_vs_alpha",
    "alpha_crit_boxplots",
    "class_heatmap",
    "gallery",
    "grad_fam_overlays",
    "maximization_evolution",
    "prediction_distribution",
    "seed_bands",
]

TARGET_COLOR, OFF_COLOR = "#c0392b", "#7f8c8d"


def _subplots(rows: int = 1, columns: int = 1, *, figsize: tuple[float, float], squeeze: bool = True):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, columns, squeeze=squeeze)


def _image(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def _check_length(name: str, values: Sized | None, n: int, per: str) -> None:
    if values is not None and len(values) != n:
        raise ValueError(f"{name} must have {n} entries, one per {per}, got {len(values)}")


def _sweep_class_names(sweep: SweepResult) -> list[str]:
    return check_class_names(sweep.class_names, "sweep.class_names", sweep.confusion.shape[1])


def class_heatmap(profile: ClassProfile, *, features: Sequence[int] | None = None, title: str | None = None) -> Figure:
    """Figure 1a: the class × feature mean-code matrix μ (the most class-dominant features by default).

    Example:
        >>> class_heatmap(class_profile(sae, train_acts)).savefig("fig1a.png")
    """
    mu = profile.mean_codes
    names = check_class_names(profile.class_names, "profile.class_names", profile.num_classes)
    if features is None:
        picked = []
        for k in range(profile.num_classes):
            if profile.counts[k] > 0:  # a class without samples has no features of its own
                picked += [int(f) for f in profile.dominant(k, 3, by="contrast") if int(f) not in picked]
        features = picked
    features = check_feature_index(features, mu.shape[1], "features").tolist()
    data = mu[:, features].numpy()
    fig, ax = _subplots(figsize=(max(6, 0.32 * len(features) + 2), 0.4 * profile.num_classes + 1.6))
    limit = np.abs(data).max() or 1.0
    image = ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(features)), [str(f) for f in features], rotation=90, fontsize=7)
    ax.set_yticks(range(profile.num_classes), names)
    ax.set_xlabel("SAE feature")
    ax.set_ylabel("class")
    ax.set_title(title or "Class-conditional mean code μ (Fig. 1a)")
    fig.colorbar(image, ax=ax, label="mean code")
    fig.tight_layout()
    return fig


def gallery(
    images: Tensor,
    values: Tensor | None = None,
    *,
    title: str = "",
    columns: int = 8,
    labels: Sequence[str] | None = None,
) -> Figure:
    """Figure 3a: a grid of (top-activating) images, each titled with its activation.

    Example:
        >>> indices, values = top_activating(sae, train_acts, 12)    # train_acts = collect_activations(model, train)
        >>> fig = gallery(train.images[indices], values, title="feature 12", columns=3)
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ValueError(f"images must be an (N, 3, H, W) tensor with N >= 1, got {shape_of(images)}")
    n = len(images)
    _check_length("values", values, n, "image")
    _check_length("labels", labels, n, "image")
    columns = check_int(columns, "columns", least=1)
    rows = -(-n // columns)
    fig, axes = _subplots(rows, columns, figsize=(1.5 * columns, 1.6 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_image(images[i]))
            caption = [] if labels is None else [labels[i]]
            if values is not None:
                caption.append(f"{float(values[i]):.2f}")
            ax.set_title(" ".join(caption), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def grad_fam_overlays(
    image: Tensor, maps: Tensor, features: Sequence[int], values: Sequence[float] | Tensor | None = None
) -> Figure:
    """Figure 1c: Grad-FAM maps of several features over one image, rendered by :func:`~captum_salve.attr.render_maps`.

    Args:
        image: (3, H, W) in [0, 1].
        maps: (F, h, w) or (F, 1, h, w) Grad-FAM maps at layer resolution.
        features: The F features.
        values: Their codes on this image, for the titles.

    Example:
        >>> maps = GradFAM(model, None, sae).attribute_features(image[None], [3, 12])[0]    # (2, h, w)
        >>> codes = FeatureCodes(model, sae)(image[None])[0, [3, 12]].detach()
        >>> fig = grad_fam_overlays(image, maps, [3, 12], codes)
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    if (
        len(features) == 0
        or maps.dim() not in (3, 4)
        or len(maps) != len(features)
        or (maps.dim() == 4 and maps.shape[1] != 1)
    ):
        raise ValueError(
            f"maps must be (F, h, w) or (F, 1, h, w) with F = {len(features)} features, got {tuple(maps.shape)}"
        )
    _check_length("values", values, len(features), "feature")
    maps = maps.reshape(len(features), 1, *maps.shape[-2:]).float()
    up = render_maps(maps, image.shape[-2:])[:, 0]
    fig, axes = _subplots(1, len(features) + 1, figsize=(2.2 * (len(features) + 1), 2.6))
    axes[0].imshow(_image(image))
    axes[0].set_title("image", fontsize=9)
    for ax, heat, feature, i in zip(axes[1:], up, features, range(len(features)), strict=True):
        ax.imshow(_image(image))
        ax.imshow(heat.cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        title = f"feature {feature}" + (f"\nz={float(values[i]):.2f}" if values is not None else "")
        if heat.isnan().any():
            title += "\n(map holds NaN)"
        elif not heat.any():
            title += "\n(no positive evidence)"
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def maximization_evolution(result: MaximizationResult, *, names: Sequence[str] | None = None) -> Figure:
    """Figure 1b: each feature's image from noise to the final optimum, one row per feature.

    Example:
        >>> fig = maximization_evolution(maximize_feature(model, sae, [3, 12]), names=["stroke", "cue"])
    """
    steps = sorted(result.snapshots)
    rows = len(result.features)
    _check_length("names", names, rows, "feature")
    fig, axes = _subplots(rows, len(steps), figsize=(1.7 * len(steps), 1.7 * rows + 0.3), squeeze=False)
    for r in range(rows):
        for c, step in enumerate(steps):
            ax = axes[r, c]
            ax.imshow(_image(result.snapshots[step][r]))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {step}", fontsize=9)
            if c == 0:
                ax.set_ylabel(names[r] if names else f"feature {result.features[r]}", fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_vs_alpha(
    sweep: SweepResult,
    class_index: int,
    *,
    controls: Mapping[str, SweepResult] | None = None,
    title: str | None = None,
) -> Figure:
    """Figure 4a: target-class and every other class's accuracy as α grows (controls dashed).

    Example:
        >>> alphas = [0, 0.5, 1, 2, 5, 10, 20]
        >>> sweep = alpha_sweep(model, sae, 12, test_acts, alphas, rule="project")
        >>> controls = {
        ...     name: alpha_sweep(model, directions, None, test_acts, alphas, rule="project")
        ...     for name, directions in control_directions(sae, 12, train_acts).items()
        ... }
        >>> fig = accuracy_vs_alpha(sweep, 3, controls=controls)
    """
    class_index = sweep.check_class(class_index)
    names = _sweep_class_names(sweep)
    if controls is not None and len(controls) > 3:
        raise ValueError(f"at most 3 controls can be drawn (one line style each), got {len(controls)}")
    alphas = sweep.alphas.numpy()
    accuracy = sweep.per_class_accuracy.numpy()
    others = (sweep.counts > 0).numpy()  # classes without samples have no accuracy to draw
    others[class_index] = False
    fig, ax = _subplots(figsize=(6, 4))
    for k in others.nonzero()[0]:
        ax.plot(alphas, accuracy[:, k], color=OFF_COLOR, alpha=0.35, lw=1)
    if others.any():
        ax.plot(alphas, accuracy[:, others].mean(axis=1), color="black", lw=2, label="other classes (mean)")
    ax.plot(alphas, accuracy[:, class_index], color=TARGET_COLOR, lw=2.5, label=f"class {names[class_index]}")
    for (name, control), style in zip((controls or {}).items(), ("--", ":", "-."), strict=False):
        ax.plot(
            control.alphas.numpy(),
            control.per_class_accuracy[:, class_index].numpy(),
            style,
            color=TARGET_COLOR,
            lw=1.5,
            label=f"{name} (class {names[class_index]})",
        )
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("α")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or f"{sweep.label}: accuracy vs α (Fig. 4a)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def prediction_distribution(sweep: SweepResult, class_index: int, *, title: str | None = None) -> Figure:
    """Figure 4b: where the class's images are predicted as α grows (stacked shares).

    Example:
        >>> fig = prediction_distribution(alpha_sweep(model, sae, 12, test_acts, [0, 1, 2, 5, 10]), 3)
    """
    class_index = sweep.check_class(class_index)
    names = _sweep_class_names(sweep)
    shares = sweep.prediction_distribution(class_index).numpy()
    positions = np.arange(len(sweep.alphas))
    fig, ax = _subplots(figsize=(6, 4))
    bottom = np.zeros(len(positions))
    colors = matplotlib.colormaps["tab10"]
    for k in range(shares.shape[1]):
        ax.bar(positions, shares[:, k], bottom=bottom, color=colors(k % 10), label=names[k], width=0.85)
        bottom += shares[:, k]
    ax.set_xticks(positions, [f"{a:g}" for a in sweep.alphas.tolist()], rotation=45, fontsize=7)
    ax.set_xlabel("α")
    ax.set_ylabel(f"share of class {names[class_index]} images")
    ax.set_title(title or f"Where class {names[class_index]}'s predictions go (Fig. 4b)")
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def accuracy_change_bars(sweep: SweepResult, alpha_index: int, *, title: str | None = None) -> Figure:
    """Figure 3b: per-class accuracy change at one α (red: loss, green: gain; no bar for a class without samples).

    Example:
        >>> sweep = alpha_sweep(model, sae, 12, test_acts, [0, 1, 2, 5, 10])
        >>> fig = accuracy_change_bars(sweep, alpha_index=3)    # at α = 5
    """
    alpha_index = check_int(alpha_index, "alpha_index", 0, len(sweep.alphas) - 1)
    names = _sweep_class_names(sweep)
    change = (sweep.per_class_accuracy[alpha_index] - sweep.baseline_accuracy).numpy() * 100
    fig, ax = _subplots(figsize=(6, 3.5))
    ax.bar(range(len(change)), change, color=["#c0392b" if c < 0 else "#27ae60" for c in change])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(change)), names)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy change (points)")
    ax.set_title(title or f"{sweep.label} at α={float(sweep.alphas[alpha_index]):g} (Fig. 3b)")
    fig.tight_layout()
    return fig


def alpha_crit_boxplots(
    analytical: Mapping[str, Tensor],
    numerical: Mapping[str, Tensor],
    alpha_50: Mapping[str, float] | None = None,
    *,
    title: str = "Per-sample α_crit: analytical vs numerical, with α_50% (Fig. 5b)",
) -> Figure:
    """Figure 5b: per-class boxplots of analytical and numerical α_crit, α_50 marked.

    The axis is logarithmic, so only finite values above 0 are drawn; how many were
    left out (infinite: the criterion is never met; 0: met without an edit; NaN) is
    written under the axis, and a figure with none to draw says so instead of failing.

    Example:
        >>> class_3 = test_acts.subset(test_acts.labels == 3)
        >>> analytical = {"3": alpha_crit(model, sae, 12, class_3, 3, method="linear")}
        >>> numerical = {"3": alpha_crit(model, sae, 12, class_3, 3)}
        >>> fig = alpha_crit_boxplots(analytical, numerical, {"3": alpha_50(sweep, 3)})
    """
    names = list(analytical)
    if not names or set(numerical) != set(names):
        raise ValueError(
            f"analytical and numerical must name the same classes (at least one), got {names} and {list(numerical)}"
        )
    fig, ax = _subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    positions = np.arange(len(names))
    left_out = {"infinite": 0, "at 0 or below": 0, "NaN": 0}
    drawn = []
    for offset, data, color, label in (
        (-0.18, analytical, "#2980b9", "analytical (α_lin)"),
        (0.18, numerical, "#e67e22", "numerical"),
    ):
        values = []
        for name in names:
            x = torch.as_tensor(data[name], dtype=torch.float64).reshape(-1)
            left_out["infinite"] += int(x.isinf().sum())
            left_out["at 0 or below"] += int((x[~x.isinf()] <= 0).sum())
            left_out["NaN"] += int(x.isnan().sum())
            values.append(x[torch.isfinite(x) & (x > 0)].numpy())
        drawn += [v for v in values if len(v)]
        parts = ax.boxplot(values, positions=positions + offset, widths=0.32, patch_artist=True, showfliers=False)
        for box in parts["boxes"]:
            box.set_facecolor(color)
            box.set_alpha(0.6)
        ax.plot([], [], color=color, lw=6, alpha=0.6, label=label)
    marks = [alpha_50.get(n, np.nan) for n in names] if alpha_50 else []
    marks = [m if 0 < m < math.inf else np.nan for m in marks]
    if marks and not all(np.isnan(marks)):
        ax.scatter(positions, marks, marker="D", color="black", zorder=3, label="α_50%")
    if not drawn and (not marks or all(np.isnan(marks))):
        ax.set_ylim(0.1, 10)  # nothing to autoscale a log axis on
        ax.text(0.5, 0.5, "no finite α_crit above 0 to draw", transform=ax.transAxes, ha="center", va="center")
    ax.set_xticks(positions, names)
    ax.set_yscale("log")
    not_drawn = ", ".join(f"{count} {kind}" for kind, count in left_out.items() if count)
    ax.set_xlabel("class" + (f"  (not drawn: {not_drawn})" if not_drawn else ""))
    ax.set_ylabel("α_crit")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def seed_bands(study: SeedStudy, class_names: Sequence[str], *, columns: int = 5) -> Figure:
    """Figure 4's bands: each class's feature suppressed, with mean ± std over SAE seeds.

    One panel per class shows its own accuracy and the other classes' as α grows.

    Example:
        >>> study = seed_study(model, saes, train_acts, test_acts, [0, 1, 2, 5, 10])
        >>> fig = seed_bands(study, DigitsCanvas.classes)
    """
    alphas = study.alphas.numpy()
    k = study.accuracy.shape[1]
    class_names = check_class_names(class_names, count=k)
    columns = check_int(columns, "columns", least=1)
    rows = -(-k // columns)
    fig, axes = _subplots(rows, columns, figsize=(2.6 * columns, 2.2 * rows + 0.6), squeeze=False)
    for c, ax in enumerate(axes.flat):
        if c >= k:
            ax.axis("off")
            continue
        for (mean, std), color in ((study.target_band(c), TARGET_COLOR), (study.off_target_band(c), "black")):
            mean, std = mean.numpy(), std.numpy()
            ax.plot(alphas, mean, color=color, lw=1.5)
            ax.fill_between(alphas, mean - std, mean + std, color=color, alpha=0.2)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"class {class_names[c]}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(
        f"Suppressing each class's feature over {study.accuracy.shape[0]} SAE seeds: the class (red) and "
        "the others (black), mean ± std",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
