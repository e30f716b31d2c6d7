"""CONTRIBUTING's promise: every class and function in an ``__all__`` is typed and its docstring shows an example.

Only the docstrings and signatures are read (nothing is run), so the examples may use
context objects such as ``model`` or ``sae``; they must still be valid Python.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable

import pytest

import captum_salve

_SECTION = re.compile(r"(\s*)Examples?:\s*")
_PROMPTS = (">>>", "...")


def _public_objects() -> dict[str, Callable]:
    """Every class and function named in an ``__all__`` of the package, once, by the name of its definition."""
    walked = pkgutil.walk_packages(captum_salve.__path__, "captum_salve.")
    modules = [captum_salve, *(importlib.import_module(info.name) for info in walked)]
    found = {}
    for module in modules:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            # Constants and typing aliases (tuples, dicts, strings, Literal and union aliases)
            # cannot carry a docstring of their own, so only classes and functions are held to it.
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found[obj] = f"{obj.__module__}.{obj.__qualname__}"
    return {qualified: obj for obj, qualified in sorted(found.items(), key=lambda item: item[1])}


PUBLIC = _public_objects()


def _example_section(obj: Callable) -> list[str] | None:
    """The lines of the docstring's ``Example:`` section, or None when it has none."""
    lines = inspect.cleandoc(obj.__doc__ or "").splitlines()
    for start, line in enumerate(lines):
        header = _SECTION.fullmatch(line)
        if header:
            indent = len(header.group(1))
            section = []
            for body in lines[start + 1 :]:
                if body.strip() and len(body) - len(body.lstrip()) <= indent:
                    break
                section.append(body)
            return section
    return None


def _example_code(section: list[str]) -> list[str]:
    """The example's code: its ``>>>`` and ``...`` lines with the prompts taken off."""
    code = []
    for line in section:
        text = line.lstrip()
        if text.startswith(_PROMPTS) and text[3:4] in ("", " "):
            code.append(text[4:])
    return code


def _parameters(obj: Callable) -> list[inspect.Parameter]:
    """The parameters a caller passes: a function's, or its class's ``__init__``'s without ``self``.

    A dataclass's generated ``__init__`` takes its fields with their annotations, so
    the fields are checked through it.
    """
    if inspect.isclass(obj):
        if not inspect.isfunction(obj.__init__):
            return []  # an __init__ inherited from a builtin (object, an exception) is not ours to annotate
        obj = obj.__init__
    return [p for p in inspect.signature(obj).parameters.values() if p.name not in ("self", "cls")]


@pytest.mark.parametrize("obj", PUBLIC.values(), ids=PUBLIC.keys())
def test_docstring_has_an_example(obj):
    section = _example_section(obj)
    assert section is not None, "the docstring has no 'Example:' section"
    assert _example_code(section), "the 'Example:' section has no '>>>' line"


@pytest.mark.parametrize("obj", PUBLIC.values(), ids=PUBLIC.keys())
def test_example_is_valid_python(obj):
    code = "\n".join(_example_code(_example_section(obj) or []))
    ast.parse(code)


@pytest.mark.parametrize("obj", PUBLIC.values(), ids=PUBLIC.keys())
def test_signature_is_annotated(obj):
    missing = [p.name for p in _parameters(obj) if p.annotation is inspect.Parameter.empty]
    assert not missing, f"parameters without a type annotation: {missing}"
    if inspect.isfunction(obj):
        assert inspect.signature(obj).return_annotation is not inspect.Signature.empty, "no return annotation"


def test_the_walk_reaches_subpackages_and_leaves_constants_out():
    assert PUBLIC["captum_salve.analysis.sweeps.select_edit"] is captum_salve.select_edit
    assert "captum_salve.sae.model.SparseAutoencoder" in PUBLIC
    assert not any(name.rsplit(".", 1)[-1] in ("MODES", "RULES", "ImageData") for name in PUBLIC)
