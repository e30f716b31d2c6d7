"""One renderer per pipeline stage, each taking that stage's typed result, and one per model putting them together."""

from __future__ import annotations

import html

from captum_salve.pipeline import (
    AlphaCritResult,
    ClassAlphaCrit,
    ClassControl,
    ClassFeatures,
    ControlResult,
    CrossClassResult,
    DiscoverResult,
    EditOutcome,
    FaithfulnessResult,
    GoalCount,
    PipelineSummary,
    SAESummary,
    SeedsResult,
    ShortcutsResult,
    SuspectedFeature,
    ValidateResult,
)
from captum_salve.pipeline.cross_class import VISIBLE_CHANGE
from captum_salve.pipeline.discover import near_chance
from captum_salve.pipeline.faithfulness import MAP_KINDS
from captum_salve.report.html import Column, ModelPage, anchor, fmt, pct, points, table

__all__ = [
    "render_alpha_crit",
    "render_control",
    "render_cross_class",
    "render_discover",
    "render_faithfulness",
    "render_model",
    "render_seeds",
    "render_shortcuts",
    "render_validate",
]


def _chance_warning(accuracy: float, classes: int) -> str:
    """A warning above everything else when the model is near chance on the test images, else nothing."""
    if not near_chance(accuracy, classes):
        return ""
    return (
        f'<p class="warning"><b>Warning: the model is near chance on these images</b> ({pct(accuracy)}, chance '
        f"{pct(1 / classes)}). The usual cause is preprocessing: images resized, cropped or normalised otherwise "
        "than in training (see the data config above). What follows describes a model that does not work on this "
        "data.</p>"
    )


def render_model(summary: PipelineSummary, page: ModelPage) -> str:
    """One model's part of the report: its facts, then every stage's section in pipeline order.

    Example:
        >>> render_model(summary, ModelPage(out / summary.name, summary.class_names, summary.config))
    """
    discover = summary.discover
    facts = "; ".join(
        f"{html.escape(str(key))}: {fmt(value)}"
        for key, value in summary.description.items()
        if not isinstance(value, list) or len(value) < 12
    )
    seconds = ", ".join(f"{name} {value:.1f}" for name, value in summary.seconds.items())
    return "".join(
        [
            f'<h2 id="{anchor(summary.name)}">{html.escape(summary.name)}</h2>',
            f"<p>Test accuracy <b>{pct(discover.accuracy)}</b> on {discover.test_images} test images; SAE trained on "
            f"{discover.train_images} head-input vectors of width {discover.head_input_width}. {facts}</p>",
            _chance_warning(discover.accuracy, len(summary.class_names)),
            render_discover(discover, page),
            render_validate(summary.validate, page),
            render_faithfulness(summary.faithfulness, page),
            render_control(summary.control, page),
            render_cross_class(summary.cross_class, page),
            render_alpha_crit(summary.alpha_crit, page),
            render_seeds(summary.seeds, page),
            render_shortcuts(summary.shortcuts, page),
            f'<p class="muted">Seconds per stage in this call: {html.escape(seconds)}</p>',
        ]
    )


def render_discover(result: DiscoverResult, page: ModelPage) -> str:
    """Section 1: the SAEs' metrics, the class-profile heatmaps, each class's top features, cross-class features.

    Example:
        >>> render_discover(summary.discover, page)
    """
    latents = page.config.sae_latents
    sae_columns: list[Column[tuple[str, SAESummary]]] = [
        Column("SAE", lambda r: f"{fmt(r[0])} ({latents} latents)"),
        Column("explained variance", lambda r: fmt(r[1].explained_variance)),
        Column("MSE", lambda r: fmt(r[1].mse)),
        Column("L0", lambda r: fmt(r[1].l0)),
        Column("dead", lambda r: pct(r[1].dead_fraction)),
        Column("accuracy", lambda r: pct(r[1].accuracy)),
        Column("spliced accuracy", lambda r: pct(r[1].spliced_accuracy)),
        Column("specificity |μ|", lambda r: fmt(r[1].specificity_by_magnitude)),
        Column("specificity contrast", lambda r: fmt(r[1].specificity_by_contrast)),
    ]
    class_columns: list[Column[ClassFeatures]] = [
        Column("class", lambda c: fmt(c.class_name)),
        Column("top features by |μ|", lambda c: fmt(c.by_magnitude)),
        Column("top features by contrast", lambda c: fmt(c.by_contrast)),
        Column("selectivity of top", lambda c: fmt(c.selectivity_of_top)),
    ]
    parts = [
        "<h3>1. Discover: the sparse autoencoders</h3>",
        table(sae_columns, result.saes.items()),
        "<p class=\"muted\">Specificity: the share of a class's top feature's mean |code| that falls on that class "
        f"(1 = only that class, {1 / len(page.class_names):.2f} = all alike). L0 of a linear SAE counts codes "
        "above its activity threshold.</p>",
        page.grid((path, f"class profile of the {name} SAE") for name, path in result.heatmaps.items()),
        table(class_columns, result.classes),
    ]
    if result.cross_class:
        found = "; ".join(
            f"feature {c.feature} → classes {fmt(c.classes)} ({pct(c.score)} of its class-mean mass)"
            for c in result.cross_class
        )
        parts.append(f"<p>Cross-class features (large for two classes, small for the rest): {found}</p>")
    return "".join(parts)


def render_validate(result: ValidateResult, page: ModelPage) -> str:
    """Section 2: activation maximisation against the test images' 99th percentile, galleries and overlays.

    Example:
        >>> render_validate(summary.validate, page)
    """
    names = page.class_names
    fourier, pixel = result.maximization["fourier"], result.maximization["pixel"]
    columns: list[Column[int]] = [
        Column("class", lambda k: fmt(names[k])),
        Column("feature", lambda k: fmt(result.features[k])),
        Column("Fourier image's code", lambda k: fmt(fourier.activation[k])),
        Column("pixel image's code", lambda k: fmt(pixel.activation[k])),
        Column("test 99th percentile", lambda k: fmt(result.test_q99[k])),
    ]
    figures = [(g, "top-activating images") for g in result.galleries]
    figures += [(o, "Grad-FAM overlays") for o in result.overlays]
    return "".join(
        [
            "<h3>2. Validate: activation maximisation, top-activating images, Grad-FAM</h3>",
            f"<p>Activation maximisation ({page.config.maximization_steps} steps, jitter / scale / rotation, the last "
            "quarter without them): optimised images that drive their feature above the 99th percentile of its "
            f"activation over the real test images: <b>{fourier.above_q99} of {len(names)}</b> with the Fourier "
            f"parameterisation, <b>{pixel.above_q99} of {len(names)}</b> with plain pixels.</p>",
            table(columns, range(len(names))),
            page.grid([(fourier.figure, "Fourier"), (pixel.figure, "pixel")]),
            "<details><summary>Top-activating images and Grad-FAM overlays, per class</summary>",
            page.grid(figures),
            "</details>",
        ]
    )


def render_faithfulness(result: FaithfulnessResult, page: ModelPage) -> str:
    """Section 3: pointing game (when the inputs have masks) and deletion AUC of Grad-FAM and three reference maps.

    Example:
        >>> render_faithfulness(summary.faithfulness, page)
    """
    rows = [(layer, scores, kind) for layer, scores in result.layers.items() for kind in MAP_KINDS]
    masked = any(scores.pointing_game is not None for scores in result.layers.values())
    columns: list[Column] = [
        Column("layer", lambda r: f"{fmt(r[0])} ({r[1].map_size[0]}×{r[1].map_size[1]})"),
        Column("map", lambda r: r[2].replace("_", " ")),
    ]
    if masked:
        columns.append(
            Column("pointing game", lambda r: pct(r[1].pointing_game[r[2]]) if r[1].pointing_game else "no masks")
        )
    columns.append(Column("deletion AUC", lambda r: fmt(r[1].deletion_auc[r[2]])))
    per_class = result.images_per_class
    shares = f"{min(per_class)}" if min(per_class) == max(per_class) else f"{min(per_class)} to {max(per_class)}"
    pointing = (
        "Pointing game: the share of maps whose peak cell, taken at the map's own resolution before any upsampling, "
        "overlaps the object's mask (a hit when any mask pixel lies in that cell), so chance is the share of cells "
        "the mask touches, as the random maps show. "
        if masked
        else "No object masks were given, so the pointing game was not played. "
    )
    return "".join(
        [
            "<h3>3. Validate: are the maps faithful?</h3>",
            f"<p>On {result.images} test images drawn at random with the classes as equal as the data allows "
            f"({shares} per class), each scored for its class's feature. {pointing}Deletion AUC: the feature's code "
            "as the map's top cells are removed first, normalised from 1 (intact) to 0 (all removed); lower is more "
            "faithful. References: class Grad-CAM, another class's feature, random maps.</p>",
            table(columns, rows),
        ]
    )


def render_control(result: ControlResult, page: ModelPage) -> str:
    """Section 4: the chosen edit of each class under both rules, and its single feature against controls.

    Example:
        >>> render_control(summary.control, page)
    """
    goal = page.config.goal
    count = GoalCount.of(result, goal)
    verdict = "ok" if count.met == count.measured else "bad"
    chosen_columns: list[Column[ClassControl]] = [
        Column("class", lambda c: fmt(c.class_name)),
        Column(f"{result.rule}: features", lambda c: fmt(c.chosen.features)),
        Column("α", lambda c: fmt(c.chosen.alpha)),
        Column("class accuracy", lambda c: f"{pct(c.chosen.baseline_accuracy)} → {pct(c.chosen.test_accuracy)}"),
        Column("others: mean / worst (points)", lambda c: _mean_and_worst(c.chosen)),
        Column("salve: features @ α", lambda c: f"{fmt(c.paper_rule.features)} @ {fmt(c.paper_rule.alpha)}"),
        Column("class accuracy", lambda c: pct(c.paper_rule.test_accuracy)),
        Column("others: mean / worst (points)", lambda c: _mean_and_worst(c.paper_rule)),
    ]
    left_out = ""
    if count.left_out:
        left_out = (
            f" Left out of both counts, because their test accuracy was already below {pct(goal.class_accuracy)} "
            f"before any edit: {html.escape(', '.join(count.left_out))}."
        )
    strongest = fmt(page.config.sweep_alphas[-1])
    dominant_columns: list[Column[ClassControl]] = [
        Column("class", lambda c: fmt(c.class_name)),
        Column("feature", lambda c: fmt(c.feature)),
        Column("α50", lambda c: fmt(c.dominant.alpha_50)),
    ]
    compared = {
        "sae_feature": "class acc.",
        "random direction": "random: class",
        "principal direction": "principal: class",
    }
    for name, label in compared.items():
        dominant_columns += [
            Column(label, lambda c, n=name: pct(c.dominant.at_alpha_50[n].target_accuracy)),
            Column("others", lambda c, n=name: points(c.dominant.at_alpha_50[n].off_target_change)),
        ]
    dominant_columns += [
        Column("salve α50", lambda c: fmt(c.dominant.paper_rule_alpha_50)),
        Column(f"salve acc. at α={strongest}", lambda c: pct(c.dominant.paper_rule_accuracy_at_max_alpha)),
    ]
    figures = [(f, "accuracy vs α") for c in result.classes for f in (c.accuracy_figure, c.predictions_figure)]
    return "".join(
        [
            "<h3>4. Control: suppressing each class</h3>",
            f"<p>Goal: {html.escape(count.goal)}, on test data. Rule <b>{fmt(result.rule)}</b>: "
            f'<span class="{verdict}">{count.met} of {count.measured} classes</span>; the paper\'s rule (salve): '
            f"{count.paper_rule_met} of {count.measured}.{left_out} Edits are picked on training activations, "
            f"aiming below {pct(goal.selection_accuracy)} with no other class losing more than "
            f"{100 * goal.off_target:g} points there.</p>",
            table(chosen_columns, result.classes),
            f"<p>Each class's single dominant feature under rule {fmt(result.rule)}: α<sub>50</sub>, and at that α the "
            "class's accuracy and the others' mean change, against a random unit direction and the top principal "
            "direction at equal strength.</p>",
            table(dominant_columns, result.classes),
            "<details><summary>Accuracy vs α (Fig. 4a) and where predictions go (Fig. 4b), per class</summary>",
            page.grid(figures),
            "</details>",
        ]
    )


def _mean_and_worst(outcome: EditOutcome) -> str:
    """The other classes' mean and worst accuracy change under an edit, in points."""
    return f"{points(outcome.off_target_change)} / {points(outcome.worst_off_target_change)}"


def render_cross_class(result: CrossClassResult, page: ModelPage) -> str:
    """Section 5: the top cross-class feature suppressed and enhanced (or why the stage was skipped).

    Example:
        >>> render_cross_class(summary.cross_class, page)
    """
    title = "<h3>5. Cross-class feature</h3>"
    if result.skipped:
        return f"{title}<p>{html.escape(result.skipped)}.</p>"
    suppress, enhance, cue = result.suppress, result.enhance, result.planted_cue
    classes = fmt(result.classes)
    cue_text = ""
    if cue is not None:
        relation = "the feature's classes" if sorted(cue.cue_classes) == sorted(result.classes) else "other classes"
        where = f"the test images of the classes that carry the cue planted in the data ({fmt(cue.cue_classes)}: "
        where += relation + ")"
        if cue.mean_code_without_cue is None:
            cue_text = f" On {where}, all of which carry it, its mean code is {fmt(cue.mean_code_with_cue)}."
        else:
            cue_text = (
                f" On {where}, its mean code is {fmt(cue.mean_code_with_cue)} on those carrying the cue and "
                f"{fmt(cue.mean_code_without_cue)} on the others."
            )
    return (
        f"{title}<p>Feature {result.feature} is large for classes {classes}.{cue_text} Each bar chart is taken at "
        f"the first swept α at which some class moves by {100 * VISIBLE_CHANGE:g} points (or the strongest α). "
        f"Suppressed (α={fmt(suppress.alpha)}), the classes that change most: {fmt(suppress.most_changed)}; "
        f"enhanced (α={fmt(enhance.alpha)}): {fmt(enhance.most_changed)}.</p>"
        + page.grid([(suppress.figure, "suppressed"), (enhance.figure, "enhanced")])
    )


def render_alpha_crit(result: AlphaCritResult, page: ModelPage) -> str:
    """Section 6: α_crit per class, three ways, against the flip threshold and α₅₀.

    Example:
        >>> render_alpha_crit(summary.alpha_crit, page)
    """
    columns: list[Column[ClassAlphaCrit]] = [
        Column("class", lambda r: fmt(r.class_name)),
        Column("feature", lambda r: fmt(r.feature)),
        Column("samples", lambda r: fmt(r.samples)),
        Column("median α_lin", lambda r: fmt(r.median_linear)),
        Column("median exact", lambda r: fmt(r.median_exact)),
        Column("never", lambda r: fmt(r.never_zero)),
        Column("α_lin > exact", lambda r: fmt(r.linear_above_exact)),
        Column("exact = bisect", lambda r: fmt(r.exact_equals_bisect)),
        Column("max rel. diff", lambda r: fmt(r.max_relative_difference)),
        Column("median flip", lambda r: fmt(r.median_flip)),
        Column("α50", lambda r: fmt(r.alpha_50)),
    ]
    return "".join(
        [
            f"<h3>6. α<sub>crit</sub> per sample (rule {fmt(result.rule)}, criterion "
            f"{fmt(result.criterion.replace('_', ' '))})</h3>",
            "<p>Over each class's correctly classified test images: the analytical α<sub>lin</sub> = "
            "z<sub>t</sub>/R<sub>t</sub>, the exact piecewise-linear root, bisection on the edited model (the check), "
            "and the flip threshold, whose median matches α<sub>50</sub> when flips are permanent.</p>",
            table(columns, result.classes),
            page.image(result.figure, "alpha crit"),
        ]
    )


def render_shortcuts(result: ShortcutsResult, page: ModelPage) -> str:
    """Section 8: the features a suspected cue moves most, and whether their maps look at it (none without a probe).

    Example:
        >>> render_shortcuts(summary.shortcuts, page)
    """
    if result.skipped:
        return ""
    layers = list(result.mask_area or {})
    columns: list[Column[SuspectedFeature]] = [
        Column("feature", lambda f: fmt(f.feature)),
        Column("effect (code spreads)", lambda f: fmt(f.effect)),
        Column("mean code change", lambda f: fmt(f.mean_change)),
        Column("pairs where it turns on", lambda f: pct(f.turns_on)),
        Column("its two largest classes", lambda f: fmt(f.classes)),
        Column("cross-class rank", lambda f: fmt(f.cross_class_rank) if f.cross_class_rank else "–"),
        *(Column(f"map mass on the cue, {layer}", lambda f, layer=layer: pct(f.mask_mass[layer])) for layer in layers),
    ]
    masks = (
        "Map mass on the cue is the share of a feature's positive Grad-FAM mass inside the cue masks, on the "
        "images with the cue, each map cell weighted by how much of it the mask covers; a uniform map puts "
        + ", ".join(f"{pct(area)} there at {html.escape(layer)}" for layer, area in result.mask_area.items())
        + "."
        if result.mask_area
        else "No cue masks were given, so where the features look was not checked."
    )
    return "".join(
        [
            f"<h3>8. Suspected shortcuts: {html.escape(str(result.cue))}</h3>",
            f"<p>On {result.pairs} pairs of images with and without the cue, the features the cue moves most "
            "(effect: mean code change in units of the feature's code spread over the probe's images). A feature "
            "the cue turns on, which is large for classes the cue is not part of, is a shortcut those classes "
            f"may rely on. {masks}</p>",
            table(columns, result.features),
        ]
    )


def render_seeds(result: SeedsResult, page: ModelPage) -> str:
    """Section 7: how the class features and their α₅₀ vary over SAE seeds.

    Example:
        >>> render_seeds(summary.seeds, page)
    """
    names = page.class_names
    columns: list[Column[int]] = [
        Column("class", lambda k: fmt(names[k])),
        Column("α50 mean ± std", lambda k: f"{fmt(result.alpha_50_mean[k])} ± {fmt(result.alpha_50_std[k])}"),
        Column("seeds whose sweep crossed 50%", lambda k: fmt(result.alpha_50_seeds_crossed[k])),
    ]
    return "".join(
        [
            f"<h3>7. Robustness over {result.seeds} SAE initialisations</h3>",
            "<p>Features matched to seed 0's by decoder cosine similarity (Hungarian assignment): mean |cos| of the "
            f"matched class features {fmt(result.match_similarity_mean)}; the matched feature is also the seed's own "
            f"pick in {pct(result.matched_is_own_choice)} of cases.</p>",
            table(columns, range(len(names))),
            page.image(result.figure, "seed bands"),
        ]
    )
