"""The top-level package: importing it loads nothing heavy, and every public name still resolves."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

import captum_salve
from tests.helpers import REPO

HEAVY = ("torch", "captum", "matplotlib", "scipy", "timm", "torchvision", "sklearn")


def _modules_loaded_by(code: str) -> set[str]:
    """The heavy top-level packages a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}; import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    printed = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=REPO)
    return set(printed.stdout.split())


def test_importing_the_package_loads_none_of_its_heavy_dependencies():
    assert _modules_loaded_by("import captum_salve") == set()
    # a name loads only what its own module needs: training an SAE needs torch alone
    assert _modules_loaded_by("from captum_salve import train_sae") == {"torch"}


def test_every_public_name_and_submodule_resolves_to_its_module():
    from captum_salve import attr, sae

    assert captum_salve.GradFAM is attr.GradFAM and captum_salve.train_sae is sae.train_sae
    assert captum_salve.tokens_to_grid is attr.tokens_to_grid
    assert captum_salve.channels_last_to_first is attr.channels_last_to_first
    assert all(getattr(captum_salve, name).__module__.startswith("captum_salve.") for name in captum_salve.__all__)
    assert captum_salve.plots.__name__ == "captum_salve.plots"  # a submodule, by attribute
    assert set(captum_salve.__all__) <= set(dir(captum_salve))
    with pytest.raises(AttributeError, match="module 'captum_salve' has no attribute 'GradFam'"):
        captum_salve.GradFam  # noqa: B018


def test_what_type_checkers_see_is_what_loads_at_run_time():
    tree = ast.parse((REPO / "captum_salve" / "__init__.py").read_text())
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {(imp.module, alias.name) for imp in guarded.body for alias in imp.names if isinstance(imp, ast.ImportFrom)}
    lazy = {(module, name) for module, names in captum_salve._HOMES.items() for name in names}
    assert seen == lazy
