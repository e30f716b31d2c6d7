"""α sweeps under ``rule="project"``: the rank-1 logit curve against rebuilding the edited head at every α.

Under ``"project"`` the edited logits are ``L(α) = L₀ ∓ α z_l(a) (W d_l)ᵀ``, so
``ProjectOut.logit_curve`` computes ``L₀``, the codes and ``W d_l`` once and each
strength costs O(N·K); the generic route of :class:`EditRule` builds the edited
head ``W'(α)`` and multiplies, O(N·K·M) per strength. ``select_edit`` runs many
such sweeps on the training set, so this is its dominant cost at ImageNet scale.
"""

from __future__ import annotations

import torch

from benchmarks.results import Row, Settings, Target
from benchmarks.timing import time_interleaved
from captum_salve.edit import EditRule, FeatureDirections, ProjectOut

__all__ = ["ALPHAS", "CLASSES", "ROWS", "WIDTH", "run"]

ROWS = 4096
WIDTH = 512
CLASSES = 1000
ALPHAS = 16


def run(settings: Settings) -> list[Row]:
    """Time a sweep of 16 strengths both ways on the same data, after checking that they agree.

    Args:
        settings: Device and repeat counts.

    Returns:
        One row: rank-1 curve / edited head per α (target ≤ 0.2).

    Raises:
        RuntimeError: The two routes give logits that differ beyond float64 rounding.
    """
    generator = torch.Generator().manual_seed(0)
    device = settings.device
    a = torch.randn(ROWS, WIDTH, generator=generator, dtype=torch.float64).relu().to(device)
    weight = torch.randn(CLASSES, WIDTH, generator=generator, dtype=torch.float64).to(device) / WIDTH**0.5
    bias = torch.randn(CLASSES, generator=generator, dtype=torch.float64).to(device)
    direction = torch.randn(WIDTH, 1, generator=generator, dtype=torch.float64)
    directions = FeatureDirections(
        direction / direction.norm(), direction.T.clone(), torch.tensor([0.1], dtype=torch.float64)
    )
    strengths = [
        torch.full((1,), float(alpha), dtype=torch.float64, device=device) for alpha in torch.linspace(0, 20, ALPHAS)
    ]
    rule = ProjectOut()

    def sweep(curve_of) -> list[torch.Tensor]:
        curve = curve_of(rule, weight, bias, directions, a, -1.0)
        return [curve(alpha).argmax(dim=1) for alpha in strengths]

    def rank1() -> list[torch.Tensor]:
        return sweep(ProjectOut.logit_curve)

    def per_alpha_head() -> list[torch.Tensor]:
        return sweep(EditRule.logit_curve)

    fast, slow = (
        rule.logit_curve(weight, bias, directions, a, -1.0),
        EditRule.logit_curve(rule, weight, bias, directions, a, -1.0),
    )
    for alpha in strengths:
        if not torch.allclose(fast(alpha), slow(alpha), rtol=1e-10, atol=1e-10):
            raise RuntimeError("the rank-1 curve and the edited head give different logits")
    timings = time_interleaved(
        {"rank-1 curve": rank1, "edited head per α": per_alpha_head},
        repeats=settings.repeats(full=7, quick=2),
        device=device,
    )
    return [
        Row(
            "alpha_sweep, rule project: rank-1 logit curve / edited head rebuilt per α",
            "rank-1 curve",
            "edited head per α",
            timings,
            Target("at_most", 0.2),
            f"{ROWS} head inputs of width {WIDTH}, {CLASSES} classes, {ALPHAS} strengths, float64; "
            "logits agree to 1e-10 before timing",
        )
    ]
