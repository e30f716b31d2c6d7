"""Figures: built without pyplot, with the panels, images, lines and bars their inputs call for."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from captum_salve import ClassProfile, SeedStudy, SweepResult, plots
from captum_salve.attr import MaximizationResult, render_maps


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []  # nothing was registered with pyplot


def _profile() -> ClassProfile:
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 12, generator=generator)
    return ClassProfile(mu, torch.tensor([5, 6, 7]), torch.rand(12, generator=generator) + 0.5, ["a", "b", "c"])


_TOO_FEW_NAMES = r"sweep.class_names must have 3 entries, one per class, got 1: \['a'\]"


def _sweep(
    classes: int = 3,
    alphas: tuple[float, ...] = (0.0, 1.0, 5.0, 20.0),
    *,
    names: list[str] | None = None,
    empty: int | None = None,
) -> SweepResult:
    """A random sweep; ``empty`` names a class without samples."""
    generator = torch.Generator().manual_seed(1)
    confusion = torch.randint(0, 10, (len(alphas), classes, classes), generator=generator)
    confusion[0] += torch.eye(classes, dtype=torch.long) * 20
    if empty is not None:
        confusion[:, empty] = 0
    names = [f"class{k}" for k in range(classes)] if names is None else names
    return SweepResult(
        torch.tensor(alphas, dtype=torch.float64), confusion, confusion[0], "suppress feature 4 (salve)", names
    )


def _study(seeds: int = 4, classes: int = 3, alphas: int = 5) -> SeedStudy:
    generator = torch.Generator().manual_seed(2)
    accuracy = torch.rand(seeds, classes, alphas, classes, generator=generator, dtype=torch.float64)
    features = torch.zeros(seeds, classes, dtype=torch.long)
    return SeedStudy(
        torch.linspace(0, 10, alphas, dtype=torch.float64),
        accuracy,
        features,
        torch.ones(seeds, classes),
        torch.ones(seeds, classes, dtype=torch.bool),
        [],
    )


def _images(n: int, side: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(n))


def _images_per_axis(fig: Figure) -> list[int]:
    return [len(ax.images) for ax in fig.axes]


def test_class_heatmap_shows_mu_for_the_dominant_features_by_default():
    profile = _profile()
    fig = plots.class_heatmap(profile)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # the map and its colour bar
    expected: list[int] = []
    for k in range(3):
        expected += [int(f) for f in profile.dominant(k, 3, by="contrast") if int(f) not in expected]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(f) for f in expected]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    np.testing.assert_array_equal(ax.images[0].get_array(), profile.mean_codes[:, expected].numpy())
    limit = float(profile.mean_codes[:, expected].abs().max())
    assert ax.images[0].get_clim() == pytest.approx((-limit, limit))


def test_class_heatmap_with_chosen_features():
    profile = _profile()
    fig = plots.class_heatmap(profile, features=[7, 0], title="mine")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), profile.mean_codes[:, [7, 0]].numpy())
    assert ax.get_title() == "mine"


def test_gallery_fills_a_grid_and_titles_each_image():
    images = _images(5)
    fig = plots.gallery(images, torch.tensor([3.0, 2.5, 1.25, 1.0, 0.5]), columns=3, labels=list("vwxyz"))
    assert isinstance(fig, Figure) and _images_per_axis(fig) == [1, 1, 1, 1, 1, 0]
    assert [ax.get_title() for ax in fig.axes[:5]] == ["v 3.00", "w 2.50", "x 1.25", "y 1.00", "z 0.50"]
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), images[2].permute(1, 2, 0).numpy())


def test_grad_fam_overlays_one_panel_per_feature_over_the_image():
    image = _images(1)[0]
    maps = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    maps[2] = -maps[2].abs()  # feature 9 has no positive evidence
    fig = plots.grad_fam_overlays(image, maps, [4, 7, 9], values=torch.tensor([1.0, 2.0, 3.0]))
    assert isinstance(fig, Figure) and _images_per_axis(fig) == [1, 2, 2, 2]
    heat = render_maps(maps, (8, 8))[:, 0]
    np.testing.assert_allclose(fig.axes[1].images[1].get_array(), heat[0].numpy(), rtol=1e-6)
    assert fig.axes[1].images[1].get_clim() == (0, 1)
    assert fig.axes[1].get_title() == "feature 4\nz=1.00"
    assert fig.axes[3].get_title().endswith("(no positive evidence)")
    assert plots.grad_fam_overlays(image, maps[:, 0], [4, 7, 9]).axes[2].get_title() == "feature 7"  # (F, h, w) maps


def test_maximization_evolution_one_row_per_feature_one_column_per_snapshot():
    snapshots = {step: _images(2) * (step + 1) / 11 for step in (10, 0, 5)}
    result = MaximizationResult([3, 8], snapshots[10], snapshots, torch.ones(2), torch.zeros(10, 2))
    fig = plots.maximization_evolution(result)
    assert isinstance(fig, Figure) and _images_per_axis(fig) == [1] * 6
    assert [ax.get_title() for ax in fig.axes[:3]] == ["step 0", "step 5", "step 10"]
    assert [fig.axes[i].get_ylabel() for i in (0, 3)] == ["feature 3", "feature 8"]
    np.testing.assert_allclose(fig.axes[4].images[0].get_array(), snapshots[5][1].permute(1, 2, 0).numpy())
    named = plots.maximization_evolution(result, names=["first", "second"])
    assert named.axes[3].get_ylabel() == "second"


def test_accuracy_vs_alpha_draws_every_class_the_mean_and_the_controls():
    sweep = _sweep(classes=4)
    fig = plots.accuracy_vs_alpha(sweep, 2, controls={"random": _sweep(classes=4), "principal": _sweep(classes=4)})
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.lines) == 3 + 1 + 1 + 2  # other classes, their mean, target, controls
    accuracy = sweep.per_class_accuracy.numpy()
    by_label = {line.get_label(): line for line in ax.lines}
    np.testing.assert_allclose(by_label["class class2"].get_ydata(), accuracy[:, 2])
    np.testing.assert_allclose(by_label["other classes (mean)"].get_ydata(), accuracy[:, [0, 1, 3]].mean(axis=1))
    np.testing.assert_allclose(by_label["class class2"].get_xdata(), sweep.alphas.numpy())
    assert ax.get_xscale() == "symlog"
    assert len(plots.accuracy_vs_alpha(sweep, 0).axes[0].lines) == 5


def test_accuracy_vs_alpha_leaves_classes_without_samples_out_of_the_others():
    sweep = _sweep(classes=4, empty=3)
    ax = plots.accuracy_vs_alpha(sweep, np.int64(0)).axes[0]
    assert len(ax.lines) == 2 + 1 + 1  # classes 1 and 2, their mean, the target
    by_label = {line.get_label(): line for line in ax.lines}
    accuracy = sweep.per_class_accuracy.numpy()
    np.testing.assert_allclose(by_label["other classes (mean)"].get_ydata(), accuracy[:, [1, 2]].mean(axis=1))


def test_class_heatmap_picks_features_of_the_classes_with_samples():
    mu = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]])
    profile = ClassProfile(mu, torch.tensor([5, 0, 5]), torch.ones(4), ["a", "b", "c"])
    ax = plots.class_heatmap(profile).axes[0]
    shown = [int(t.get_text()) for t in ax.get_xticklabels()]
    assert shown[0] == 0 and 3 in shown and len(shown) == 4  # 3 per measured class, no repeats


def test_prediction_distribution_stacks_one_bar_series_per_class():
    sweep = _sweep(classes=3)
    fig = plots.prediction_distribution(sweep, 1)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.containers) == 3
    shares = sweep.prediction_distribution(1).numpy()
    heights = np.array([[bar.get_height() for bar in container] for container in ax.containers])  # (K, A)
    np.testing.assert_allclose(heights.T, shares)
    tops = np.array([[bar.get_y() + bar.get_height() for bar in container] for container in ax.containers])
    np.testing.assert_allclose(tops[-1], np.ones(4))  # stacked shares reach 1 at every α
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "5", "20"]


def test_accuracy_change_bars_are_the_change_in_points_coloured_by_sign():
    sweep = _sweep(classes=3)
    fig = plots.accuracy_change_bars(sweep, 2)
    ax = fig.axes[0]
    change = (sweep.per_class_accuracy[2] - sweep.baseline_accuracy).numpy() * 100
    assert isinstance(fig, Figure) and len(ax.patches) == 3
    np.testing.assert_allclose([bar.get_height() for bar in ax.patches], change)
    red = [bar.get_facecolor()[0] > 0.5 for bar in ax.patches]  # #c0392b loss, #27ae60 gain
    assert red == [c < 0 for c in change]
    assert "α=5" in ax.get_title()


def test_alpha_crit_boxplots_two_boxes_per_class_over_the_finite_values():
    analytical = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, float("inf")]), "b": torch.tensor([0.5, 1.5, 2.5])}
    numerical = {"a": torch.tensor([2.0, 4.0, 6.0, 8.0, 10.0]), "b": torch.tensor([1.0, float("inf"), 3.0, 5.0])}
    fig = plots.alpha_crit_boxplots(analytical, numerical, {"a": 3.0, "b": 1.0})
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.patches) == 4  # analytical a, b, then numerical a, b
    for box, values in zip(ax.patches, [analytical["a"], analytical["b"], numerical["a"], numerical["b"]], strict=True):
        finite = values[torch.isfinite(values)].numpy()
        y = box.get_path().vertices[:, 1]
        assert (y.min(), y.max()) == pytest.approx(tuple(np.percentile(finite, [25, 75])))
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[0.0, 3.0], [1.0, 1.0]])  # α_50 marks
    assert ax.get_yscale() == "log"
    assert len(plots.alpha_crit_boxplots(analytical, numerical).axes[0].collections) == 0


def test_seed_bands_one_panel_per_class_with_mean_and_std_bands():
    study = _study(classes=3)
    fig = plots.seed_bands(study, ["x", "y", "z"], columns=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert [ax.axison for ax in fig.axes] == [True, True, True, False]
    accuracy = study.accuracy.numpy()
    for c, ax in enumerate(fig.axes[:3]):
        assert len(ax.lines) == 2 and sum(isinstance(p, PolyCollection) for p in ax.collections) == 2
        np.testing.assert_allclose(ax.lines[0].get_ydata(), accuracy[:, c, :, c].mean(axis=0))
        assert ax.get_title() == f"class {'xyz'[c]}"
    assert "over 4 SAE seeds" in fig.get_suptitle()


@pytest.mark.parametrize(
    "draw, message",
    [
        (
            lambda: plots.class_heatmap(_profile(), features=[12]),
            r"features must be SAE feature indices in \[0, 11\], got \[12\]",
        ),
        (lambda: plots.class_heatmap(_profile(), features=[]), "features must name at least one"),
        (lambda: plots.gallery(_images(3)[:, :1]), r"images must be an \(N, 3, H, W\) tensor with N >= 1"),
        (lambda: plots.gallery(_images(3)[:0]), r"images must be an \(N, 3, H, W\) tensor with N >= 1"),
        (lambda: plots.gallery(_images(3), torch.ones(2)), "values must have 3 entries, one per image, got 2"),
        (lambda: plots.gallery(_images(3), labels=["a"]), "labels must have 3 entries, one per image, got 1"),
        (lambda: plots.gallery(_images(3), columns=0), "columns must be an integer >= 1, got 0"),
        (lambda: plots.grad_fam_overlays(_images(1), torch.rand(2, 4, 4), [1, 2]), r"image must be \(3, H, W\)"),
        (
            lambda: plots.grad_fam_overlays(_images(1)[0], torch.rand(3, 4, 4), [1, 2]),
            r"maps must be .* with F = 2 features",
        ),
        (
            lambda: plots.grad_fam_overlays(_images(1)[0], torch.rand(2, 2, 4, 4), [1, 2]),
            r"maps must be .* got \(2, 2, 4, 4\)",
        ),
        (
            lambda: plots.grad_fam_overlays(_images(1)[0], torch.rand(2, 4, 4), [1, 2], [1.0]),
            "values must have 2 entries",
        ),
        (
            lambda: plots.maximization_evolution(
                MaximizationResult([1, 2], _images(2), {0: _images(2)}, torch.ones(2), torch.zeros(1, 2)), names=["one"]
            ),
            "names must have 2 entries, one per feature, got 1",
        ),
        (lambda: plots.accuracy_vs_alpha(_sweep(), 3), r"class_index must be an integer in \[0, 2\], got 3"),
        (
            lambda: plots.accuracy_vs_alpha(_sweep(), 0, controls={str(i): _sweep() for i in range(4)}),
            "at most 3 controls",
        ),
        (lambda: plots.prediction_distribution(_sweep(), -1), r"class_index must be an integer in \[0, 2\], got -1"),
        (lambda: plots.accuracy_change_bars(_sweep(), 4), r"alpha_index must be an integer in \[0, 3\], got 4"),
        (
            lambda: plots.alpha_crit_boxplots({"a": torch.ones(2)}, {"b": torch.ones(2)}),
            "analytical and numerical must name the same classes",
        ),
        (lambda: plots.alpha_crit_boxplots({}, {}), "analytical and numerical must name the same classes"),
        (
            lambda: plots.seed_bands(_study(classes=3), ["x", "y"]),
            "class_names must have 3 entries, one per class, got 2",
        ),
        (
            lambda: plots.seed_bands(_study(classes=3), ["x", "y", "z"], columns=0),
            "columns must be an integer >= 1, got 0",
        ),
        (lambda: plots.seed_bands(_study(classes=3), "xyz"), "class_names must be a list of strings, one per class"),
        (lambda: plots.gallery(_images(3), columns=2.5), "columns must be an integer >= 1, got 2.5"),
        (lambda: plots.seed_bands(_study(classes=3), ["x", "y", "z"], columns=True), "columns must be an integer >= 1"),
        (lambda: plots.accuracy_change_bars(_sweep(), 1.5), r"alpha_index must be an integer in \[0, 3\], got 1.5"),
        (lambda: plots.accuracy_vs_alpha(_sweep(), True), r"class_index must be an integer in \[0, 2\], got True"),
        (lambda: plots.accuracy_vs_alpha(_sweep(), 1.0), r"class_index must be an integer in \[0, 2\], got 1.0"),
        (lambda: plots.prediction_distribution(_sweep(), 0.5), r"class_index must be an integer in \[0, 2\], got 0.5"),
        (lambda: plots.accuracy_vs_alpha(_sweep(names=["a"]), 0), _TOO_FEW_NAMES),
        (lambda: plots.prediction_distribution(_sweep(names=["a"]), 0), _TOO_FEW_NAMES),
        (lambda: plots.accuracy_change_bars(_sweep(names=["a"]), 0), _TOO_FEW_NAMES),
        (lambda: plots.accuracy_vs_alpha(_sweep(names="abc"), 0), "sweep.class_names must be a list of strings"),
        (
            lambda: plots.class_heatmap(ClassProfile(torch.ones(3, 2), torch.ones(3), torch.ones(2), ["a", "b"])),
            r"profile.class_names must have 3 entries, one per class, got 2: \['a', 'b'\]",
        ),
        (
            lambda: plots.accuracy_vs_alpha(_sweep(empty=2), 2),
            r"class 2 \('class2'\) has no samples in the swept data \(count 0\)",
        ),
    ],
)
def test_bad_input_is_refused(draw, message):
    with pytest.raises(ValueError, match=message):
        draw()
