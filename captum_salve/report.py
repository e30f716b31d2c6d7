"""A self-contained ``report.html`` (figures embedded) and ``summary.json`` from pipeline summaries."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from captum_salve.files import atomic_path, ensure_directory

__all__ = ["write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1180px; color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #c0392b; padding-bottom: 0.2rem; margin-top: 2.5rem; }
h3 { margin-top: 1.8rem; } .muted { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.86rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.55rem; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.3rem 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 0.6rem; }
.ok { color: #1e8449; font-weight: 600; } .bad { color: #c0392b; font-weight: 600; }
details { margin: 0.5rem 0; } summary { cursor: pointer; font-weight: 600; }
nav a { margin-right: 1rem; }
"""


def write_report(summaries: Sequence[dict], out: str | Path, *, title: str = "captum_salve report") -> Path:
    """Write ``report.html`` and ``summary.json`` into ``out`` (each atomically).

    Args:
        summaries: One :func:`~captum_salve.pipeline.run_pipeline` summary per model;
            figure paths in them are relative to ``out / summary["name"]``.
        out: The report folder.
        title: Page title.

    Returns:
        The path of ``report.html``.
    """
    out = ensure_directory(out)
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({s["name"]: s for s in summaries}, indent=2))
    nav = "".join(f'<a href="#{_id(s["name"])}">{html.escape(s["name"])}</a>' for s in summaries)
    body = "".join(_model_section(s, out / s["name"]) for s in summaries)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="muted">SALVE (Sparse Autoencoder-Latent Vector Editing; V. Flovik, arXiv 2512.15938) as measured by
captum_salve on Captum and timm: discover features with a sparse autoencoder, validate them (Grad-FAM, activation
maximisation, top-activating images), control the classifier with permanent weight edits. Every number below was
computed in this run; none is taken from the paper.</p>
<nav>{nav}</nav>{body}</body></html>"""
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page)
    return out / "report.html"


def _id(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def _img(folder: Path, relative: str, alt: str) -> str:
    data = base64.b64encode((folder / relative).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, digits) for v in value)
    return html.escape(str(value))


def _pct(value) -> str:
    return "–" if value is None or isinstance(value, str) else f"{100 * value:.1f}%"


def _points(value) -> str:
    return "–" if value is None or isinstance(value, str) else f"{100 * value:+.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _model_section(summary: dict, folder: Path) -> str:
    name = summary["name"]
    discover, validate, faith = summary["discover"], summary["validate"], summary["faithfulness"]
    control, crit, cross, seeds = summary["control"], summary["alpha_crit"], summary["cross_class"], summary["seeds"]
    names = [c["class"] for c in discover["classes"]]
    parts = [f'<h2 id="{_id(name)}">{html.escape(name)}</h2>']
    facts = "; ".join(
        f"{html.escape(str(k))}: {_fmt(v)}"
        for k, v in summary.get("description", {}).items()
        if not isinstance(v, list) or len(v) < 12
    )
    parts.append(
        f"<p>Test accuracy <b>{_pct(discover['accuracy'])}</b> on {discover['test_images']} test images; SAE trained on "
        f"{discover['train_images']} head-input vectors of width {discover['head_input_width']}. {facts}</p>"
    )

    parts.append("<h3>1. Discover: the sparse autoencoders</h3>")
    rows = [
        [
            f"{activation} ({summary['config']['sae_latents']} latents)",
            _fmt(m["explained_variance"]),
            _fmt(m["mse"]),
            _fmt(m["l0"]),
            _pct(m["dead_fraction"]),
            _pct(m["accuracy"]),
            _pct(m["spliced_accuracy"]),
            _fmt(m["specificity_by_magnitude"]),
            _fmt(m["specificity_by_contrast"]),
        ]
        for activation, m in discover["sae"].items()
    ]
    parts.append(
        _table(
            [
                "SAE",
                "explained variance",
                "MSE",
                "L0",
                "dead",
                "accuracy",
                "spliced accuracy",
                "specificity |μ|",
                "specificity contrast",
            ],
            rows,
        )
    )
    parts.append(
        "<p class=\"muted\">Specificity: the share of a class's top feature's mean |code| that falls on that class "
        f"(1 = only that class, {1 / len(names):.2f} = all alike). L0 of a linear SAE counts |z| &gt; 0.01.</p>"
    )
    parts.append('<div class="grid">' + "".join(_img(folder, p, k) for k, p in discover["figures"].items()) + "</div>")
    parts.append(
        _table(
            ["class", "top features by |μ|", "top features by contrast", "selectivity of top"],
            [
                [
                    c["class"],
                    _fmt(c["dominant_by_magnitude"]),
                    _fmt(c["dominant_by_contrast"]),
                    _fmt(c["selectivity_of_top"]),
                ]
                for c in discover["classes"]
            ],
        )
    )
    if discover["cross_class"]:
        parts.append(
            "<p>Cross-class features (large for two classes, small for the rest): "
            + "; ".join(
                f"feature {c['feature']} → classes {', '.join(c['classes'])} (gap {c['score']:.2f} σ)"
                for c in discover["cross_class"]
            )
            + "</p>"
        )

    parts.append("<h3>2. Validate: Grad-FAM, activation maximisation, top-activating images</h3>")
    faith_rows = []
    for layer, entry in faith["layers"].items():
        for method in ("grad_fam", "class_grad_cam", "other_feature", "random"):
            pointing = entry.get("pointing_game", {}).get(method)
            faith_rows.append(
                [
                    f"{html.escape(layer)} ({entry['map_size'][0]}×{entry['map_size'][1]})",
                    method.replace("_", " "),
                    _pct(pointing),
                    _fmt(entry["deletion_auc"][method]),
                ]
            )
    parts.append(
        f"<p>Faithfulness on {faith['images']} test images, each scored for its class's feature. Pointing game: share of maps whose "
        "peak falls inside the digit's box. Deletion AUC: the feature's code as the map's top cells are removed first, normalised "
        "from 1 (intact) to 0 (all removed); lower is more faithful.</p>"
    )
    parts.append(_table(["layer", "map", "pointing game", "deletion AUC"], faith_rows))
    am = validate["maximization"]
    parts.append(
        f"<p>Activation maximisation ({summary['config']['maximization_steps']} steps, jitter / scale / rotation, the last quarter without them): optimised images that drive "
        f"their feature above the 99th percentile of its activation over the real test images: <b>{am['fourier']['above_q99']} of "
        f"{len(names)}</b> with the Fourier parameterisation, <b>{am['pixel']['above_q99']} of {len(names)}</b> with plain pixels.</p>"
    )
    parts.append(
        _table(
            ["class", "feature", "Fourier image's code", "pixel image's code", "test 99th percentile"],
            [
                [
                    names[k],
                    str(validate["features"][k]),
                    _fmt(am["fourier"]["activation"][k]),
                    _fmt(am["pixel"]["activation"][k]),
                    _fmt(am["test_q99"][k]),
                ]
                for k in range(len(names))
            ],
        )
    )
    parts.append(
        '<div class="grid">'
        + _img(folder, validate["figures"]["maximization_fourier"], "Fourier")
        + _img(folder, validate["figures"]["maximization_pixel"], "pixel")
        + "</div>"
    )
    parts.append(
        '<details><summary>Top-activating images and Grad-FAM overlays, per class</summary><div class="grid">'
        + "".join(
            _img(folder, g, "gallery") + (_img(folder, o, "overlay") if o else "")
            for g, o in zip(validate["figures"]["galleries"], validate["figures"]["overlays"], strict=True)
        )
        + "</div></details>"
    )

    parts.append("<h3>3. Control: suppressing each class</h3>")
    goal = control["goal_met"]
    verdict = "ok" if goal["chosen"] == len(names) else "bad"
    parts.append(
        f"<p>Goal: the edit brings the class below 10% test accuracy while the other classes' mean accuracy moves by at most 2 points. "
        f'Rule <b>{control["rule"]}</b>: <span class="{verdict}">{goal["chosen"]} of {len(names)} classes</span>; the paper\'s rule '
        f"(salve): {goal['paper_rule']} of {len(names)}. Edits are picked on training activations (class below 2%), measured on test.</p>"
    )
    rows = []
    for r in control["classes"]:
        chosen, paper, dom = r["chosen"], r["paper_rule"], r["dominant_feature"]
        rows.append(
            [
                r["class"],
                _fmt(chosen["features"]),
                _fmt(chosen["alpha"]),
                f"{_pct(chosen['baseline_accuracy'])} → {_pct(chosen['test_accuracy'])}",
                _points(chosen["off_target_change"]),
                f"{_fmt(paper['features'])} @ {_fmt(paper['alpha'])}",
                _pct(paper["test_accuracy"]),
                _points(paper["off_target_change"]),
            ]
        )
    parts.append(
        _table(
            [
                "class",
                f"{control['rule']}: features",
                "α",
                "class accuracy",
                "others (points)",
                "salve: features @ α",
                "class accuracy",
                "others (points)",
            ],
            rows,
        )
    )
    rows = []
    for r in control["classes"]:
        dom = r["dominant_feature"]
        cells = [r["class"], str(r["feature"]), _fmt(dom["alpha_50"])]
        for name in ("sae_feature", "random direction", "principal direction"):
            entry = dom["at_alpha_50"][name]
            cells += [_pct(entry["target_accuracy"]), _points(entry["off_target_change"])]
        cells += [_fmt(dom["paper_rule_alpha_50"]), _pct(dom["paper_rule_accuracy_at_max_alpha"])]
        rows.append(cells)
    parts.append(
        f"<p>Each class's single dominant feature under rule {control['rule']}: α<sub>50</sub>, and at that α the class's accuracy and "
        "the others' mean change, against a random unit direction and the top principal direction at equal strength.</p>"
    )
    parts.append(
        _table(
            [
                "class",
                "feature",
                "α50",
                "class acc.",
                "others",
                "random: class",
                "others",
                "principal: class",
                "others",
                "salve α50",
                f"salve acc. at α={_fmt(summary['config']['sweep_alphas'][-1])}",
            ],
            rows,
        )
    )
    parts.append(
        '<details><summary>Accuracy vs α (Fig. 4a) and where predictions go (Fig. 4b), per class</summary><div class="grid">'
        + "".join(
            _img(folder, a, "accuracy") + _img(folder, p, "predictions")
            for a, p in zip(control["figures"]["accuracy"], control["figures"]["predictions"], strict=True)
        )
        + "</div></details>"
    )

    parts.append("<h3>Cross-class feature</h3>")
    parts.append(
        f"<p>{html.escape(cross['skipped'])}.</p>" if "skipped" in cross else _cross_class_section(cross, folder)
    )

    parts.append("<h3>α<sub>crit</sub> per sample (paper's rule, zero-logit criterion)</h3>")
    rows = [
        [
            r["class"],
            str(r["feature"]),
            str(r["samples"]),
            _fmt(r["median_linear"]),
            _fmt(r["median_exact"]),
            str(r["never_zero"]),
            str(r["linear_above_exact"]),
            _fmt(r["exact_equals_bisect"]),
            _fmt(r["max_relative_difference"]),
            _fmt(r["median_flip"]),
            _fmt(r["alpha_50"]),
        ]
        for r in crit["classes"]
    ]
    parts.append(
        "<p>Over each class's correctly classified test images: the analytical α<sub>lin</sub> = z<sub>t</sub>/R<sub>t</sub>, the exact "
        "piecewise-linear root, bisection on the edited model (the check), and the flip threshold, whose median matches α<sub>50</sub> "
        "when flips are permanent.</p>"
    )
    parts.append(
        _table(
            [
                "class",
                "feature",
                "samples",
                "median α_lin",
                "median exact",
                "never",
                "α_lin > exact",
                "exact = bisect",
                "max rel. diff",
                "median flip",
                "α50",
            ],
            rows,
        )
    )
    parts.append(_img(folder, crit["figure"], "alpha crit"))

    parts.append(f"<h3>Robustness over {seeds['seeds']} SAE initialisations</h3>")
    parts.append(
        f"<p>Features matched to seed 0's by decoder cosine similarity (Hungarian assignment): mean |cos| of the matched class features "
        f"{_fmt(seeds['match_similarity_mean'])}; the matched feature is also the seed's own pick in {_pct(seeds['matched_is_own_choice'])} of cases.</p>"
    )
    parts.append(
        _table(
            ["class", "α50 mean ± std", "seeds whose sweep crossed 50%"],
            [
                [
                    names[k],
                    f"{_fmt(seeds['alpha_50_mean'][k])} ± {_fmt(seeds['alpha_50_std'][k])}",
                    str(seeds["alpha_50_seeds_crossed"][k]),
                ]
                for k in range(len(names))
            ],
        )
    )
    parts.append(_img(folder, seeds["figure"], "seed bands"))
    seconds = summary.get("seconds", {})
    parts.append(f'<p class="muted">Stage seconds this run: {html.escape(json.dumps(seconds))}</p>')
    return "".join(parts)


def _cross_class_section(cross: dict, folder: Path) -> str:
    cue = cross.get("planted_cue")
    cue_text = ""
    if cue:
        cue_text = (
            f" The planted shared cue marks classes {_fmt(cue['classes'])}; on those classes' test images the feature's mean code is "
            f"{_fmt(cue['mean_code_with_cue'])} with the cue and {_fmt(cue['mean_code_without_cue'])} without it."
        )
    return (
        f"<p>Feature {cross['feature']} is large for classes {', '.join(cross['classes'])}.{cue_text} Each bar chart is taken at the first "
        "swept α at which some class moves by 10 points (or the strongest α). Suppressed (α="
        f"{_fmt(cross['suppress']['alpha'])}), the classes that change most: {', '.join(cross['suppress']['most_changed'])}; enhanced "
        f"(α={_fmt(cross['enhance']['alpha'])}): {', '.join(cross['enhance']['most_changed'])}.</p>"
        + '<div class="grid">'
        + "".join(_img(folder, p, m) for m, p in cross["figures"].items())
        + "</div>"
    )
