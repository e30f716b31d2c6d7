"""α_crit solved exactly (piece by piece) against bisection on the edited head's outputs."""

from __future__ import annotations

from functools import partial

import timm
import torch
from torch import Tensor

from benchmarks.results import Row, Settings, Target
from benchmarks.timing import time_interleaved
from captum_salve import ActivationSet, SparseAutoencoder, alpha_crit
from captum_salve.edit.threshold import CRITERIA
from captum_salve.models import find_head

__all__ = ["FEATURE", "SAMPLES", "run"]

SAMPLES = 1000
FEATURE = 0
CLASSES = 10


def _solve(outputs: dict[str, Tensor], method: str, problem: dict) -> None:
    """Solve α_crit with one method and keep the thresholds under the method's name."""
    outputs[method] = alpha_crit(method=method, **problem)


def _agreement(exact: Tensor, bisect: Tensor) -> str:
    """How far the two methods' thresholds agree, as a short text."""
    same = torch.isclose(exact, bisect, rtol=1e-6, atol=1e-9)
    finite = exact.isfinite().float().mean().item()
    return f"methods agree on {int(same.sum())}/{len(same)} samples; {finite:.0%} have a finite α_crit"


def run(settings: Settings) -> list[Row]:
    """Time ``alpha_crit`` with ``method="exact"`` and ``method="bisect"``, for both criteria.

    The activations are 1,000 synthetic non-negative head inputs (ReLU of
    Gaussian noise) of a 10-class ResNet-18 head, 512 wide; each sample's target
    is the class the unedited head predicts for it. The rule is the paper's
    ``"salve"`` suppression, whose exact solution walks the clipping pieces.

    Args:
        settings: Device and repeat counts.

    Returns:
        One row per criterion, bisect / exact (target > 1: exact is faster).
    """
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=CLASSES).eval().to(settings.device)
    sae = SparseAutoencoder(model.num_features, 2048, "linear").eval().to(settings.device)
    features = torch.relu(torch.randn(SAMPLES, model.num_features, device=settings.device))
    with torch.no_grad():
        targets = find_head(model)[1](features).argmax(dim=1)
    acts = ActivationSet(features)
    rows = []
    for criterion in CRITERIA:
        problem = {
            "model": model,
            "sae": sae,
            "feature": FEATURE,
            "inputs": acts,
            "target": targets,
            "criterion": criterion,
            "rule": "salve",
        }
        outputs: dict[str, Tensor] = {}
        timings = time_interleaved(
            {method: partial(_solve, outputs, method, problem) for method in ("bisect", "exact")},
            repeats=settings.repeats(full=5, quick=1),
            device=settings.device,
        )
        rows.append(
            Row(
                f"α_crit bisect / exact, {SAMPLES} samples, criterion={criterion!r}",
                "bisect",
                "exact",
                timings,
                Target("above", 1.0),
                "rule='salve', suppress, 512-wide head, SAE 512 → 2048; "
                + _agreement(outputs["exact"], outputs["bisect"]),
            )
        )
    return rows
