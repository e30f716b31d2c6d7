"""What a benchmark run is configured with, and what one row of the results holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from benchmarks.timing import Timings

__all__ = ["Measurement", "Row", "Settings", "Target", "markdown_table"]


def markdown_table(header: Sequence[str], alignment: str, rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table: the header, one ``l`` (left) or ``r`` (right) per column, and rows of cell strings.

    Example:
        >>> print(markdown_table(["name", "value"], "lr", [["a", "1.0"]]))
        | name | value |
        |---|---:|
        | a | 1.0 |
    """
    rule = "".join("---:|" if side == "r" else "---|" for side in alignment)
    return "\n".join([f"| {' | '.join(header)} |", f"|{rule}", *(f"| {' | '.join(row)} |" for row in rows)])


@dataclass(frozen=True)
class Settings:
    """How a run is done.

    Attributes:
        device: Where models and tensors live.
        quick: Fewer repeats, for a smoke test; the ratios are noisier.
    """

    device: torch.device
    quick: bool = False

    def repeats(self, full: int, quick: int) -> int:
        """The number of timed rounds for this run: ``quick`` in a quick run, else ``full``."""
        return quick if self.quick else full


@dataclass(frozen=True)
class Target:
    """A bound a ratio (or a :class:`Measurement`'s value) should meet.

    Attributes:
        kind: ``"at_most"`` (ratio ≤ value), ``"above"`` (ratio > value) or
            ``"near"`` (``|ratio − value| ≤ tolerance · value``).
        value: The bound.
        tolerance: Relative slack: added to an ``"at_most"`` bound, the half-width of a ``"near"`` band.
    """

    kind: str
    value: float
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("at_most", "above", "near"):
            raise ValueError(f"kind must be 'at_most', 'above' or 'near', got {self.kind!r}")

    def met(self, ratio: float) -> bool:
        """Whether ``ratio`` meets the target."""
        if self.kind == "at_most":
            return ratio <= self.value * (1 + self.tolerance)
        if self.kind == "above":
            return ratio > self.value
        return abs(ratio - self.value) <= self.tolerance * self.value

    def __str__(self) -> str:
        slack = f" ±{self.tolerance:.0%}" if self.tolerance else ""
        if self.kind == "at_most":
            return f"≤ {self.value:.2f}{slack}"
        if self.kind == "above":
            return f"> {self.value:.2f}"
        return f"{self.value:.2f}{slack}"


@dataclass(frozen=True)
class Row:
    """One ratio of the results table: ``subject`` time over ``reference`` time.

    Attributes:
        name: What is compared, as shown in the table.
        subject: Name of the timed callable in the numerator.
        reference: Name of the timed callable in the denominator.
        timings: The interleaved timings both were taken from.
        target: The bound the ratio should meet; None for rows shown for information.
        note: What the reader needs to interpret the row (shapes, choices made).
    """

    name: str
    subject: str
    reference: str
    timings: Timings = field(repr=False)
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        """Median over rounds of subject time / reference time."""
        return self.timings.ratio(self.subject, self.reference)

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None for information rows."""
        return None if self.target is None else self.target.met(self.ratio)

    def to_dict(self) -> dict:
        """The row as JSON-able data, with every call time."""
        return {
            "name": self.name,
            "subject": self.subject,
            "reference": self.reference,
            "subject_median_s": self.timings.median(self.subject),
            "reference_median_s": self.timings.median(self.reference),
            "ratio": self.ratio,
            "target": None if self.target is None else str(self.target),
            "met": self.met,
            "rounds": self.timings.rounds,
            "subject_samples_s": self.timings.samples[self.subject],
            "reference_samples_s": self.timings.samples[self.reference],
            "note": self.note,
        }


@dataclass(frozen=True)
class Measurement:
    """One row of the results table that is not a time ratio: a single measured value, such as a memory rise.

    It is shown in the table's ratio column with its unit; the timing columns are left empty.

    Attributes:
        name: What is measured, as shown in the table.
        value: The measured value, in ``unit``.
        unit: The unit of ``value`` and of the target's bound, e.g. ``"MB"``.
        target: The bound the value should meet; None for rows shown for information.
        note: What the reader needs to interpret the row.
        details: Further figures of the measurement, written to the JSON output.
    """

    name: str
    value: float
    unit: str
    target: Target | None = None
    note: str = ""
    details: dict = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None for information rows."""
        return None if self.target is None else self.target.met(self.value)

    def to_dict(self) -> dict:
        """The row as JSON-able data."""
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": None if self.target is None else f"{self.target} {self.unit}",
            "met": self.met,
            "details": self.details,
            "note": self.note,
        }
