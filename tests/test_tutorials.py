"""The tutorials: stored without outputs, and each one runs top to bottom in a fresh kernel."""

from __future__ import annotations

import json
import os
import sys

import nbformat
import pytest

from tests.helpers import REPO

TUTORIALS = REPO / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
EXPECTED = {
    "01_resnet18_discover_validate_control.ipynb",
    "02_vit_grad_fam_tokens.ipynb",
    "03_editing_and_alpha_crit.ipynb",
}
CELL_TIMEOUT_S = 600
# Run first in the kernel: what it sees of the test's environment.
PROBE = (
    "import json, os, sys\nprint(json.dumps({'cache': os.environ.get('CAPTUM_SALVE_CACHE'), 'python': sys.executable}))"
)


def test_every_tutorial_is_stored_without_outputs_or_execution_counts():
    assert EXPECTED <= {path.name for path in NOTEBOOKS}
    dirty = []
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
                dirty.append(f"{path.name} cell {index}")
    assert not dirty, f"clear the outputs and execution counts of: {', '.join(dirty)}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_tutorial_runs_top_to_bottom(path):
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    seen = json.loads(notebook.cells[0].outputs[0]["text"])
    # The kernel must reuse the digits models cached for this checkout (tests/conftest.py sets the variable).
    assert seen == {"cache": os.environ["CAPTUM_SALVE_CACHE"], "python": sys.executable}
