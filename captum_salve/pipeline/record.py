"""Typed results that go to JSON and come back with their types checked.

A stage's result is a dataclass; :meth:`Record.to_json` turns it into plain JSON
values (infinities as the strings ``"inf"``/``"-inf"``, NaN as ``null``) and
:meth:`Record.from_json` rebuilds it from its field annotations, refusing a file
with a missing, unknown or mistyped field, naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from torch import Tensor
from typing_extensions import Self

__all__ = ["Record", "RecordFormatError", "to_plain"]


class RecordFormatError(ValueError):
    """A JSON value does not fit the record type it should rebuild; the message names the field.

    Example:
        >>> try:
        ...     PipelineConfig.from_json({"seeds": "ten"})
        ... except RecordFormatError as error:
        ...     print(error)
        PipelineConfig.seeds: expected int, got 'ten'
    """


class Record:
    """Base of the pipeline's dataclasses: :meth:`to_json` and :meth:`from_json`.

    Example:
        >>> @dataclasses.dataclass
        ... class Point(Record):
        ...     x: float
        ...     tags: list[str]
        >>> Point.from_json({"x": "inf", "tags": ["a"]})
        Point(x=inf, tags=['a'])
        >>> Point(float("inf"), ["a"]).to_json()
        {'x': 'inf', 'tags': ['a']}
    """

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values (nested records become dicts)."""
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Rebuild the record from :meth:`to_json`'s output.

        Raises:
            RecordFormatError: A field is missing, unknown or of another type; the
                message names it (e.g. ``ControlResult.classes[2].alpha``).
        """
        return _build(cls, data, cls.__name__)


def to_plain(value: Any) -> Any:
    """JSON-ready values: tensors to lists, tuples to lists, infinities to "inf"/"-inf", NaN to None.

    Example:
        >>> to_plain({"a": (1.0, float("nan")), "b": float("-inf")})
        {'a': [1.0, None], 'b': '-inf'}
    """
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Tensor):
        return to_plain(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _build(kind: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(kind), get_args(kind)
    if dataclasses.is_dataclass(kind):
        return _build_dataclass(kind, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _build(option, value, where)
            except RecordFormatError as error:
                errors.append(str(error))
        raise RecordFormatError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {kind}")
    if origin is Literal:
        if value not in args:
            raise RecordFormatError(f"{where}: expected one of {args}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise RecordFormatError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordFormatError(f"{where}: expected an object, got {value!r}")
        item = args[1] if args else Any
        return {k: _build(item, v, f"{where}[{k!r}]") for k, v in value.items()}
    if kind is float:
        if value is None:
            return math.nan
        if value in ("inf", "-inf"):
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise RecordFormatError(f"{where}: expected a number, got {value!r}")
    if kind in (int, str, bool):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RecordFormatError(f"{where}: expected {kind.__name__}, got {value!r}")
        return value
    if kind is Any or kind is dict:
        return value
    raise TypeError(f"{where}: records cannot hold {kind!r}")  # a programming error, not a file's


def _build_dataclass(kind: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise RecordFormatError(f"{where}: expected an object, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise RecordFormatError(f"{where}: unknown field {unknown[0]!r}")
    hints = get_type_hints(kind)
    built = {}
    for name, field in fields.items():
        if name in value:
            built[name] = _build(hints[name], value[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecordFormatError(f"{where}: missing field {name!r}")
    return kind(**built)
