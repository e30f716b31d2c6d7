"""A self-contained ``report.html`` (figures embedded) and ``summary.json`` from pipeline summaries.

:mod:`~captum_salve.report.sections` has one renderer per pipeline stage, each
taking that stage's typed result; :mod:`~captum_salve.report.html` has the
formats, the column-spec tables and the page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from captum_salve.files import atomic_path, ensure_directory
from captum_salve.pipeline import PipelineSummary
from captum_salve.pipeline.record import RecordFormatError
from captum_salve.report.html import ModelPage, page
from captum_salve.report.sections import render_model

__all__ = ["read_summaries", "write_report"]

_INTRO = (
    '<p class="muted">SALVE (Sparse Autoencoder-Latent Vector Editing; V. Flovik, arXiv 2512.15938) as measured by '
    "captum_salve on Captum and timm: discover features with a sparse autoencoder, validate them (Grad-FAM, "
    "activation maximisation, top-activating images), control the classifier with permanent weight edits. Every "
    "number below was computed in this run; none is taken from the paper.</p>"
)


def write_report(summaries: Sequence[PipelineSummary], out: str | Path, *, title: str = "captum_salve report") -> Path:
    """Write ``report.html`` and ``summary.json`` into ``out`` (each atomically).

    Args:
        summaries: One :func:`~captum_salve.pipeline.run_pipeline` summary per model; figure
            paths in them are relative to ``out / summary.name``.
        out: The report folder.
        title: Page title.

    Returns:
        The path of ``report.html``.

    Example:
        >>> summary = run_pipeline(digits_inputs("resnet18"), "salve-report/digits-resnet18")
        >>> write_report([summary], "salve-report")
        PosixPath('salve-report/report.html')
    """
    names = [s.name for s in summaries]
    if not summaries or len(set(names)) != len(names):
        raise ValueError(f"write_report needs one or more summaries with distinct names, got {names}")
    out = ensure_directory(out)
    sections = [(s.name, render_model(s, ModelPage(out / s.name, s.class_names, s.config))) for s in summaries]
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({s.name: s.to_json() for s in summaries}, indent=2))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page(title, _INTRO, sections))
    return out / "report.html"


def read_summaries(path: str | Path) -> list[PipelineSummary]:
    """The summaries in a ``summary.json`` written by :func:`write_report`.

    Example:
        >>> [s.name for s in read_summaries("salve-report/summary.json")]
        ['digits-resnet18', 'digits-vit']
    """
    try:
        stored = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not a summary file: it is not JSON ({error})") from None
    if not isinstance(stored, dict):
        raise ValueError(f"{str(path)!r} is not a summary file: it holds a JSON {type(stored).__name__}, not an object")
    try:
        return [PipelineSummary.from_json(value) for value in stored.values()]
    except RecordFormatError as error:
        raise ValueError(f"{str(path)!r} was not written by this version of captum_salve: {error}") from None
