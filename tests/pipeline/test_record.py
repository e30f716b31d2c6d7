"""Records: JSON out and back, exactly, and a clear refusal naming the field of a file that does not fit."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from hypothesis import given, strategies as st

from captum_salve.pipeline import PipelineSummary, Record, RecordFormatError
from tests.pipeline.examples import hand_built_summary


@dataclass(frozen=True)
class Inner(Record):
    value: float
    label: str | None = None


@dataclass(frozen=True)
class Outer(Record):
    count: int
    inner: list[Inner]
    by_name: dict[str, Inner]
    sizes: tuple[int, ...] = ()


def test_a_hand_built_summary_goes_through_json_unchanged(tmp_path):
    summary = hand_built_summary(tmp_path)
    text = json.dumps(summary.to_json())
    assert PipelineSummary.from_json(json.loads(text)) == summary


@given(st.floats(allow_nan=True, allow_infinity=True), st.none() | st.text(max_size=5))
def test_floats_survive_json_including_infinities_and_nan(value, label):
    back = Inner.from_json(json.loads(json.dumps(Inner(value, label).to_json())))
    assert (math.isnan(back.value) and math.isnan(value)) or back.value == value
    assert back.label == label


def test_tuples_and_nested_records_come_back_typed():
    outer = Outer(2, [Inner(1.0)], {"a": Inner(float("-inf"), "x")}, (3, 4))
    back = Outer.from_json(json.loads(json.dumps(outer.to_json())))
    assert back == outer and isinstance(back.sizes, tuple) and isinstance(back.by_name["a"], Inner)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inner": [], "by_name": {}}, "Outer: missing field 'count'"),
        ({"count": 1, "inner": [], "by_name": {}, "colour": 2}, "Outer: unknown field 'colour'"),
        ({"count": "1", "inner": [], "by_name": {}}, "Outer.count: expected int, got '1'"),
        ({"count": True, "inner": [], "by_name": {}}, "Outer.count: expected int, got True"),
        ({"count": 1, "inner": [{"value": "high"}], "by_name": {}}, r"Outer.inner\[0\].value: expected a number"),
        ({"count": 1, "inner": [], "by_name": {"a": {}}}, r"Outer.by_name\['a'\]: missing field 'value'"),
        ({"count": 1, "inner": {}, "by_name": {}}, "Outer.inner: expected a list"),
        ([], "Outer: expected an object"),
    ],
)
def test_a_value_that_does_not_fit_is_refused_naming_the_field(data, message):
    with pytest.raises(RecordFormatError, match=message):
        Outer.from_json(data)
