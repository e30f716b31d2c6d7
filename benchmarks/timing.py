"""Side-by-side timing: several callables run in alternation, summarised by medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["Timings", "time_interleaved"]


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds per call of each timed callable, one entry per round.

    Attributes:
        samples: For each callable's name, its call times in round order.
    """

    samples: dict[str, list[float]]

    @property
    def rounds(self) -> int:
        """How many timed rounds were run."""
        return len(next(iter(self.samples.values())))

    def median(self, name: str) -> float:
        """Median seconds per call of one callable."""
        return statistics.median(self.samples[name])

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median over rounds of ``numerator / denominator`` measured in the same round.

        Pairing the two calls of each round cancels drift in the machine's speed
        (other processes, clock changes) that would bias a ratio of two medians.
        """
        pairs = zip(self.samples[numerator], self.samples[denominator], strict=True)
        return statistics.median(top / bottom for top, bottom in pairs)


def time_interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    device: torch.device,
    warmup: int = 1,
    setup: Mapping[str, Callable[[], object]] | None = None,
) -> Timings:
    """Time several callables in alternation and keep every call's duration.

    Each round calls every candidate once; the order rotates from round to round
    so that no candidate always runs first (or right after a given other one).
    On CUDA the device is synchronised before the clock starts and before it
    stops, so queued kernels are counted in the call that launched them.

    Args:
        candidates: Name to zero-argument callable; all are timed in every round.
        repeats: Timed rounds (at least 1).
        device: Where the callables run; CUDA devices are synchronised.
        warmup: Untimed rounds first (allocator, kernel selection, caches).
        setup: Name to a zero-argument callable run, untimed, right before every
            call (warm-up ones included) of the candidate of that name, e.g. to
            drop a file from the page cache so that each call reads it cold.

    Returns:
        The call times of every candidate, in round order.

    Raises:
        ValueError: No candidates, or fewer than one timed round.

    Example:
        >>> t = time_interleaved({"a": f, "b": g}, repeats=5, device=torch.device("cpu"))
        >>> t.ratio("a", "b")  # how many times slower f is than g
    """
    if not candidates:
        raise ValueError("give at least one callable to time")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    setup = dict(setup or {})
    if unknown := setup.keys() - candidates.keys():
        raise ValueError(f"setup names callables that are not candidates: {sorted(unknown)}")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            if name in setup:
                setup[name]()
            candidates[name]()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if name in setup:
                setup[name]()
            sync()
            start = time.perf_counter()
            candidates[name]()
            sync()
            samples[name].append(time.perf_counter() - start)
    return Timings(samples)
