"""Inference cost of a permanent weight edit, against the original model and against hook-based steering.

``edit_model(..., rule="project")`` folds ``a' = a − α z_l(a) D[:, l]`` into the
head's weight and bias, so the edited model is the original architecture with
other numbers in it. The same edit done at run time is a forward pre-hook on
the head that applies ``HeadEdit.__call__`` (the edit in activation space) on every call.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import timm
import torch
from torch import Tensor, nn

from benchmarks.results import Row, Settings, Target
from benchmarks.timing import time_interleaved
from captum_salve import HeadEdit, SparseAutoencoder
from captum_salve.models import find_head

__all__ = ["ALPHA", "BATCH", "FEATURE", "HEAD_BATCH", "SIDE", "run"]

BATCH = 32
SIDE = 224
HEAD_BATCH = 4096
FEATURE = 7
ALPHA = 5.0
CLASSES = 10


def _forward(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    """A zero-argument inference call of ``model`` on ``x``, for timing."""

    def call() -> Tensor:
        with torch.inference_mode():
            return model(x)

    return call


def run(settings: Settings) -> list[Row]:
    """Time the edited ResNet-18 against the original and against the hooked one.

    A linear SAE makes the hook and the weight edit the same map; this is
    checked on the benchmark batch before timing.

    Args:
        settings: Device and repeat counts.

    Returns:
        Rows: edited / original forward (target 1.00 ± 3%), edited / hooked
        forward (target ≤ 1.00 ± 3%), edited head / hooked head on head inputs
        alone (target ≤ 1.00).

    Raises:
        RuntimeError: The edited and the hooked model give different logits.
    """
    torch.manual_seed(0)
    device = settings.device
    model = timm.create_model("resnet18", num_classes=CLASSES).eval().to(device)
    sae = SparseAutoencoder(model.num_features, 2048, "linear").eval().to(device)
    edit = HeadEdit.of(sae, FEATURE, ALPHA, rule="project")
    edited = edit.apply(model)
    hooked = copy.deepcopy(model)
    find_head(hooked)[1].register_forward_pre_hook(lambda module, args: (edit(args[0]), *args[1:]))
    images = torch.randn(BATCH, 3, SIDE, SIDE, device=device)
    with torch.inference_mode():
        edited_logits, hooked_logits = edited(images), hooked(images)
    if not torch.allclose(edited_logits, hooked_logits, rtol=1e-4, atol=1e-4 * hooked_logits.abs().max().item()):
        raise RuntimeError("the weight edit and the steering hook give different logits: they are not the same edit")

    whole = time_interleaved(
        {"edited": _forward(edited, images), "original": _forward(model, images), "hooked": _forward(hooked, images)},
        repeats=settings.repeats(full=15, quick=4),
        device=device,
    )
    head_inputs = torch.relu(torch.randn(HEAD_BATCH, model.num_features, device=device))
    heads = time_interleaved(
        {
            "edited head": _forward(find_head(edited)[1], head_inputs),
            "hooked head": _forward(find_head(hooked)[1], head_inputs),
        },
        repeats=settings.repeats(full=50, quick=10),
        device=device,
    )
    shape = f"ResNet-18 forward, batch {BATCH} × 3 × {SIDE} × {SIDE}, inference_mode, rule='project'"
    return [
        Row("Edited model / original model, forward", "edited", "original", whole, Target("near", 1.0, 0.03), shape),
        Row(
            "Edited model / hook-steered model, forward",
            "edited",
            "hooked",
            whole,
            Target("at_most", 1.0, 0.03),
            shape + "; the hook's SAE encode is < 0.1% of the forward's arithmetic, so 1.00 within noise is expected",
        ),
        Row(
            "Edited head / hook-steered head, head stage only",
            "edited head",
            "hooked head",
            heads,
            Target("at_most", 1.0),
            f"{HEAD_BATCH} head inputs of width {model.num_features}, SAE 512 → 2048",
        ),
    ]
