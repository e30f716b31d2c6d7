"""The report's number formats and column-spec tables."""

from __future__ import annotations

import pytest

from captum_salve.report.html import Column, anchor, fmt, page, pct, points, table


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.123456, "0.123"), (123456.0, "1.23e+05"), ([3, 7], "3, 7"), (None, "–"), (True, "yes"), (float("inf"), "inf")],
)
def test_fmt(value, text):
    assert fmt(value) == text


def test_fmt_escapes_html():
    assert fmt("<b>&") == "&lt;b&gt;&amp;"


@pytest.mark.parametrize(
    ("value", "as_pct", "as_points"),
    [(0.9123, "91.2%", "+91.2"), (-0.015, "-1.5%", "-1.5"), (-0.0001, "-0.0%", "+0.0"), (None, "–", "–")],
)
def test_percentages_and_points(value, as_pct, as_points):
    assert pct(value) == as_pct and points(value) == as_points
    assert pct(float("nan")) == points(float("nan")) == "–"


def test_a_table_has_one_cell_per_column_and_row():
    columns = [Column("class", lambda r: fmt(r[0])), Column("accuracy", lambda r: pct(r[1]))]
    html = table(columns, [("cat", 0.5), ("dog", 1.0)])
    assert html == (
        "<table><tr><th>class</th><th>accuracy</th></tr>"
        "<tr><td>cat</td><td>50.0%</td></tr><tr><td>dog</td><td>100.0%</td></tr></table>"
    )


def test_the_page_links_each_section_by_its_anchor():
    html = page("A & B", "<p>intro</p>", [("digits/vit 2", "<h2>x</h2>")])
    assert "<title>A &amp; B</title>" in html and '<a href="#digits-vit-2">digits/vit 2</a>' in html
    assert anchor("digits/vit 2") == "digits-vit-2"
