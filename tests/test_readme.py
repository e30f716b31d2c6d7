"""The README's examples run as they are printed."""

from __future__ import annotations

import re

import pytest

from conftest import REPO


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


@pytest.mark.slow
def test_readme_examples_run_in_order(tmp_path, monkeypatch):
    blocks = python_blocks((REPO / "README.md").read_text())
    assert len(blocks) == 3  # discover, validate, control
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_vs_alpha.png", "gallery.png", "maximization.png", "mu.png"]
    assert namespace["maps"].shape == (8, 1, 4, 4) and namespace["four"].shape == (8, 4, 4, 4)
    assert namespace["choice"].reached
