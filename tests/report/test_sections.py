"""Each stage's renderer on a hand-built result: every section there, every number formatted as expected, no gaps."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from captum_salve.pipeline import CrossClassResult, PlantedCue, ShortcutsResult
from captum_salve.report.html import ModelPage
from captum_salve.report.sections import (
    render_alpha_crit,
    render_control,
    render_cross_class,
    render_discover,
    render_faithfulness,
    render_model,
    render_seeds,
    render_shortcuts,
    render_validate,
)
from tests.pipeline.examples import hand_built_summary

# renderer, the summary field it reads, and what its HTML must contain
EXPECTED = {
    "discover": (
        render_discover,
        [
            "1. Discover",
            "relu (64 latents)",
            "<td>0.877</td>",
            "<td>12.5</td>",
            "<td>6.3%</td>",
            "<td>91.2%</td>",
            "<td>90.1%</td>",
            "<td>5, 4, 3, 2, 1</td>",
            "feature 7 → classes cat, dog (87.5% of its class-mean mass)",
            "0.33 = all alike",
        ],
        2,
    ),
    "validate": (
        render_validate,
        [
            "2. Validate",
            "512 steps",
            "<b>2 of 3</b> with the Fourier",
            "<b>0 of 3</b> with plain pixels",
            "<td>1.5</td>",
        ],
        2 + 3 + 2,  # two maximisation figures, three galleries, two overlays (class dog has none)
    ),
    "faithfulness": (
        render_faithfulness,
        [
            "3. Validate",
            "On 30 test images drawn at random with the classes as equal as the data allows (10 per class)",
            "whose peak cell, taken at the map's own resolution before any upsampling, overlaps the object's mask",
            "<td>blocks.1 (4×4)</td>",
            "<td>87.5%</td>",
            "<td>no masks</td>",
            "<td>0.21</td>",
        ],
        0,
    ),
    "control": (
        render_control,
        [
            "4. Control",
            "the class below 5% accuracy while no other class loses more than 3 points",
            '<span class="ok">2 of 2 classes</span>',
            "the paper's rule (salve): 0 of 2",
            "already below 5.0% before any edit: eel.",
            "aiming below 2.0% with no other class losing more than 3 points there",
            "<td>4, 9</td>",
            "<td>95.0% → 4.0%</td>",
            "<td>0.0% → 0.0%</td>",
            "<td>-1.5 / -2.5</td>",
            "<td>4 @ 12</td>",
            "<td>31.0%</td>",
            "<td>-20.0 / -45.0</td>",
            "<td>2.75</td>",
            "<td>45.0%</td>",
            "<td>+1.4</td>",
            "<td>inf</td>",
            "salve acc. at α=100",
        ],
        2 * 3,
    ),
    "cross_class": (
        render_cross_class,
        [
            "5. Cross-class",
            "Feature 7 is large for classes cat, dog",
            "On the test images of the classes that carry the cue planted in the data (dog, eel: other classes), "
            "its mean code is 2.5 on those carrying the cue and 0.25 on the others.",
            "10 points",
            "(α=5)",
        ],
        2,
    ),
    "alpha_crit": (
        render_alpha_crit,
        [
            "6. α<sub>crit</sub>",
            "criterion zero logit",
            "<td>1.23</td>",
            "<td>1.2e-09</td>",
            "<td>yes</td>",
            "<td>2.25</td>",
        ],
        1,
    ),
    "seeds": (
        render_seeds,
        ["7. Robustness over 3 SAE", "<td>2.5 ± 0.5</td>", "<td>– ± –</td>", "0.813", "66.7%"],
        1,
    ),
    "shortcuts": (
        render_shortcuts,
        [
            "8. Suspected shortcuts: a watermark",
            "On 40 pairs",
            "<td>7</td><td>2.5</td><td>0.75</td><td>90.0%</td><td>cat, dog</td><td>1</td><td>81.2%</td>",
            "<td>3</td><td>-0.5</td><td>-0.125</td><td>0.0%</td><td>eel, cat</td><td>12</td><td>5.0%</td>",
            "a uniform map puts 6.2% there at blocks.1",
        ],
        0,
    ),
}


@pytest.fixture
def summary_and_page(tmp_path):
    summary = hand_built_summary(tmp_path)
    return summary, ModelPage(tmp_path, summary.class_names, summary.config)


def _assert_complete(html: str) -> None:
    html = re.sub(r'src="data:image/png;base64,[^"]*"', "", html)
    assert "<td></td>" not in html and "<th></th>" not in html
    assert not re.search(r"\b(None|nan|NaN)\b|[{}]", html), re.search(r".{40}\b(None|nan|NaN)\b.{40}|[{}]", html)


@pytest.mark.parametrize("stage", list(EXPECTED))
def test_each_renderer_shows_its_numbers_formatted(stage, summary_and_page):
    summary, page = summary_and_page
    render, phrases, images = EXPECTED[stage]
    html = render(getattr(summary, stage), page)
    missing = [p for p in phrases if p not in html]
    assert not missing, missing
    assert html.count("data:image/png;base64,") == images
    _assert_complete(html)


def test_a_skipped_cross_class_stage_says_why(summary_and_page):
    _, page = summary_and_page
    html = render_cross_class(CrossClassResult(skipped="needs at least 3 classes; this data has 2"), page)
    assert "needs at least 3 classes; this data has 2." in html and "<img" not in html


def test_without_masks_the_faithfulness_section_says_the_pointing_game_was_not_played(summary_and_page):
    summary, page = summary_and_page
    layers = {name: replace(scores, pointing_game=None) for name, scores in summary.faithfulness.layers.items()}
    html = render_faithfulness(replace(summary.faithfulness, layers=layers, images_per_class=[9, 11, 10]), page)
    assert "No object masks were given, so the pointing game was not played." in html
    assert "(9 to 11 per class)" in html
    assert "pointing game</th>" not in html and "mask pixel" not in html and "box" not in html
    _assert_complete(html)


def test_the_planted_cue_sentence_names_the_classes_it_is_computed_on(summary_and_page):
    summary, page = summary_and_page
    cue = PlantedCue(["cat", "dog"], 0.5, None)  # the feature's own classes, every image cued
    html = render_cross_class(replace(summary.cross_class, planted_cue=cue), page)
    assert "the cue planted in the data (cat, dog: the feature's classes), all of which carry it" in html
    assert "its mean code is 0.5." in html
    _assert_complete(html)


def test_a_model_section_has_every_stage_in_order(summary_and_page):
    summary, page = summary_and_page
    html = render_model(summary, page)
    headings = re.findall(r"<h3>(\d)\.", html)
    assert headings == ["1", "2", "3", "4", "5", "6", "7", "8"]
    assert 'id="hand"' in html and "model: hand-built" in html and "discover 1.0, validate 2.0" in html
    _assert_complete(html)


def test_a_missing_figure_is_named(summary_and_page, tmp_path):
    summary, page = summary_and_page
    (tmp_path / "figures" / "f.png").unlink()
    with pytest.raises(FileNotFoundError, match="figures/f.png"):
        render_seeds(summary.seeds, page)


def test_without_a_probe_there_is_no_shortcuts_section_and_without_masks_it_says_so(summary_and_page):
    summary, page = summary_and_page
    assert render_shortcuts(ShortcutsResult(skipped="no probe"), page) == ""
    features = [replace(f, mask_mass=None) for f in summary.shortcuts.features]
    html = render_shortcuts(replace(summary.shortcuts, mask_area=None, features=features), page)
    assert "No cue masks were given, so where the features look was not checked." in html
    assert "map mass" not in html
    _assert_complete(html)
