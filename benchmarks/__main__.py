"""Command line: run every benchmark and print one table of speed ratios.

Example:
    $ python -m benchmarks --quick --json bench.json
    $ python -m benchmarks --quick --only store
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.results import Measurement, Row, Settings

# (module of benchmarks/ with a ``run(settings) -> rows`` function, title), in table order.
# A module is imported only when its topic runs, so ``--only`` loads no other topic's dependencies.
TOPICS: list[tuple[str, str]] = [
    ("grad_fam", "Grad-FAM"),
    ("edit", "weight edit"),
    ("sweep", "alpha sweep"),
    ("threshold", "alpha_crit"),
    ("startup", "start-up"),
    ("store", "scale-out"),
]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read and check the command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to run (default: cuda if available, else cpu)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a smoke test, with noisier ratios")
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the results, with every call time, to PATH"
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: torch's choice); 1 keeps CPU timings stable on a shared machine",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[name for name, _ in TOPICS],
        metavar="TOPIC",
        help=f"run only this topic (repeatable); one of: {', '.join(name for name, _ in TOPICS)}",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but torch sees no CUDA device")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def _environment(settings: Settings) -> dict:
    """What the figures depend on: device, core and thread counts, versions, run length."""
    return {
        "device": torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else "cpu",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": settings.quick,
    }


def format_table(rows: Sequence[Row | Measurement], environment: dict) -> str:
    """The results as a Markdown table, with the run's environment above and the notes below.

    Args:
        rows: The measured rows, in order.
        environment: What :func:`_environment` reports about the run.

    Returns:
        The text to print.
    """
    header = (
        f"torch {environment['torch']} · device: {environment['device']} · CPU cores: {environment['cpu_cores']} "
        f"· torch threads: {environment['torch_threads']} · {'quick' if environment['quick'] else 'full'} run"
    )
    lines = [
        header,
        "",
        "| # | Ratio (subject / reference) | subject ms | reference ms | rounds | ratio | target | met |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for number, row in enumerate(rows, start=1):
        met = "info" if row.met is None else ("yes" if row.met else "NO")
        if isinstance(row, Measurement):
            target = f"{row.target} {row.unit}" if row.target else "—"
            lines.append(f"| {number} | {row.name} | — | — | — | {row.value:.1f} {row.unit} | {target} | {met} |")
            continue
        lines.append(
            f"| {number} | {row.name} | {1e3 * row.timings.median(row.subject):.1f} "
            f"| {1e3 * row.timings.median(row.reference):.1f} | {row.timings.rounds} | {row.ratio:.3f} "
            f"| {row.target or '—'} | {met} |"
        )
    lines.append("")
    lines += [f"{number}. {row.note}" for number, row in enumerate(rows, start=1) if row.note]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the table and optionally write JSON.

    Args:
        argv: Command-line arguments; default ``sys.argv[1:]``.

    Returns:
        The exit status: 0 (unmet targets are reported in the table, not as failures).
    """
    args = _parse(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = Settings(torch.device(args.device), quick=args.quick)
    rows: list[Row | Measurement] = []
    for name, title in TOPICS:
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        print(f"running {title} benchmarks ...", file=sys.stderr, flush=True)
        rows += importlib.import_module(f"benchmarks.{name}").run(settings)
        print(f"  done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    environment = _environment(settings)
    print(format_table(rows, environment))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"environment": environment, "rows": [row.to_dict() for row in rows]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
