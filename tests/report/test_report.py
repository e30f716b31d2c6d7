"""The whole report from hand-built summaries: one page, every model and stage, summary.json that reads back."""

from __future__ import annotations

import re

import pytest

from captum_salve.report import read_summaries, write_report
from tests.pipeline.examples import hand_built_summary


def test_report_holds_every_model_and_summary_json_reads_back(tmp_path):
    summaries = [hand_built_summary(tmp_path / name, name=name) for name in ("first", "second model")]
    report = write_report(summaries, tmp_path, title="two models")
    html = report.read_text()
    assert html.startswith("<!doctype html>") and "<title>two models</title>" in html
    assert '<a href="#first">first</a><a href="#second-model">second model</a>' in html
    assert re.findall(r'<h2 id="([^"]+)"', html) == ["first", "second-model"]
    assert len(re.findall(r"<h3>\d\.", html)) == 2 * 8
    assert 'src="figures/' not in html  # every figure embedded: the page is one file
    back = read_summaries(tmp_path / "summary.json")
    assert [s.to_json() for s in back] == [s.to_json() for s in summaries]


def test_report_refuses_summaries_with_one_name(tmp_path):
    summary = hand_built_summary(tmp_path / "same", name="same")
    with pytest.raises(ValueError, match="distinct names"):
        write_report([summary, summary], tmp_path)
    assert not (tmp_path / "report.html").exists()
