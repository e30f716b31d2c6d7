"""The report's building blocks: number formats, tables from column specs, embedded figures, the page."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from captum_salve.pipeline import PipelineConfig

__all__ = ["Column", "ModelPage", "anchor", "fmt", "page", "pct", "points", "table"]

T = TypeVar("T")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1180px; color: #222; line-height: 1.45;
       padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #c0392b; padding-bottom: 0.2rem; margin-top: 2.5rem; }
h3 { margin-top: 1.8rem; } .muted { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.86rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.55rem; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.3rem 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 0.6rem; }
.ok { color: #1e8449; font-weight: 600; } .bad { color: #c0392b; font-weight: 600; }
.warning { background: #fdecea; border-left: 4px solid #c0392b; padding: 0.5rem 0.8rem; }
details { margin: 0.5rem 0; } summary { cursor: pointer; font-weight: 600; }
nav a { margin-right: 1rem; }
"""

MISSING = "–"


def fmt(value: Any, digits: int = 3) -> str:
    """A value as table text: floats to ``digits`` significant digits, lists joined, None as a dash; HTML-escaped.

    Example:
        >>> fmt(0.123456), fmt([3, 7]), fmt(None), fmt(True), fmt(float("inf"))
        ('0.123', '3, 7', '–', 'yes', 'inf')
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    return html.escape(str(value))


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal.

    Example:
        >>> pct(0.9123), pct(None)
        ('91.2%', '–')
    """
    return MISSING if value is None or value != value else f"{100 * value:.1f}%"


def points(value: float | None) -> str:
    """A change of a fraction in percentage points, signed.

    Example:
        >>> points(-0.015), points(-0.0001)
        ('-1.5', '+0.0')
    """
    if value is None or value != value:
        return MISSING
    return f"{round(100 * value, 1) + 0.0:+.1f}"  # + 0.0 turns a rounded -0.0 into 0.0


def anchor(name: str) -> str:
    """An HTML id for a name: every character that is not a letter or digit becomes a dash.

    Example:
        >>> anchor("digits/resnet 18")
        'digits-resnet-18'
    """
    return "".join(c if c.isalnum() else "-" for c in name)


@dataclass(frozen=True)
class Column(Generic[T]):
    """One column of a table: its header and how a row gives its cell (HTML, already formatted).

    Example:
        >>> columns = [Column("class", lambda r: fmt(r[0])), Column("accuracy", lambda r: pct(r[1]))]
        >>> table(columns, [("cat", 0.5)])
        '<table><tr><th>class</th><th>accuracy</th></tr><tr><td>cat</td><td>50.0%</td></tr></table>'
    """

    header: str
    cell: Callable[[T], str]


def table(columns: Sequence[Column[T]], rows: Iterable[T]) -> str:
    """An HTML table with one row per item of ``rows`` and the cells the columns give.

    Example:
        >>> table([Column("n", str)], [1, 2])
        '<table><tr><th>n</th></tr><tr><td>1</td></tr><tr><td>2</td></tr></table>'
    """
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{c.cell(row)}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@dataclass(frozen=True)
class ModelPage:
    """What each stage's section needs besides its result: the run's folder, its classes and settings.

    Attributes:
        folder: The run's folder; figure paths in the results are relative to it.
        class_names: The class names, in label order.
        config: The run's settings.

    Example:
        >>> page = ModelPage(Path("salve-report/digits-resnet18"), summary.class_names, summary.config)
        >>> render_seeds(summary.seeds, page)
    """

    folder: Path
    class_names: list[str]
    config: PipelineConfig

    def image(self, relative: str, alt: str) -> str:
        """The figure at ``relative`` embedded as a base64 PNG ``<img>`` (the report is one file)."""
        path = self.folder / relative
        if not path.is_file():
            raise FileNotFoundError(f"the report needs the figure {str(path)!r}, which is missing; rerun the pipeline")
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    def grid(self, figures: Iterable[tuple[str | None, str]]) -> str:
        """Figures ``(path, alt)`` side by side (a None path is left out)."""
        return '<div class="grid">' + "".join(self.image(p, alt) for p, alt in figures if p) + "</div>"


def page(title: str, intro: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole self-contained HTML page: a title, an introduction, a navigation bar and one section per model.

    Args:
        title: Page title (plain text).
        intro: Introduction (HTML).
        sections: ``(name, html)`` per model; the navigation links to each by its name.

    Example:
        >>> page("report", "<p>hello</p>", [("m", "<h2 id='m'>m</h2>")]).startswith("<!doctype html>")
        True
    """
    nav = "".join(f'<a href="#{anchor(name)}">{html.escape(name)}</a>' for name, _ in sections)
    body = "".join(section for _, section in sections)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{intro}<nav>{nav}</nav>{body}</body></html>"
    )
