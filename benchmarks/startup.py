"""Start-up cost of a fresh interpreter: what every torchrun worker and every ``captum-salve`` call pays first.

``import captum_salve`` imports none of its modules (PEP 562 ``__getattr__`` in the
package); a public name loads its own module on first use. Each call here starts a new
Python process, so nothing is cached from one call to the next.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import torch

from benchmarks.results import Row, Settings, Target
from benchmarks.timing import time_interleaved

__all__ = ["run"]


def _python(code: str) -> Callable[[], None]:
    """A zero-argument call that runs ``code`` in a new interpreter, for timing."""

    def call() -> None:
        subprocess.run([sys.executable, "-c", code], check=True)

    return call


def run(settings: Settings) -> list[Row]:
    """Time three fresh interpreters: importing torch, captum_salve, and captum_salve with train_sae ready.

    Args:
        settings: Repeat counts (start-up runs on the CPU whatever the device).

    Returns:
        Rows: ``import captum_salve`` / ``import torch`` (target ≤ 0.2: nothing heavy is
        loaded) and ``captum_salve.train_sae`` ready / ``import torch`` (target ≤ 1.2: an
        SAE-training worker pays for torch and little else).
    """
    timings = time_interleaved(
        {
            "torch": _python("import torch"),
            "captum_salve": _python("import captum_salve"),
            "train_sae": _python("import captum_salve; captum_salve.train_sae"),
        },
        repeats=settings.repeats(full=7, quick=2),
        device=torch.device("cpu"),
    )
    note = "a new Python process per call; the reference imports torch alone"
    return [
        Row(
            "Start-up: import captum_salve / import torch",
            "captum_salve",
            "torch",
            timings,
            Target("at_most", 0.2),
            note,
        ),
        Row(
            "Start-up: captum_salve.train_sae ready / import torch",
            "train_sae",
            "torch",
            timings,
            Target("at_most", 1.2),
            note + "; train_sae loads torch and safetensors, not timm, torchvision, Captum or plotting",
        ),
    ]
