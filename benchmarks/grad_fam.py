"""Grad-FAM for 16 features at once against one Captum ``LayerGradCam`` call.

``GradFAM.attribute_features`` maps F features from one forward pass and one
batched backward pass, so its cost should stay close to that of one Grad-CAM
call, while a Python loop of single-feature calls costs about F times as much.
"""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
from captum.attr import LayerGradCam
from torch import Tensor, nn

from benchmarks.results import Row, Settings, Target
from benchmarks.timing import time_interleaved
from captum_salve import FeatureCodes, GradFAM, SparseAutoencoder

__all__ = ["BATCH", "FEATURES", "SIDE", "run"]

BATCH = 8
SIDE = 224
FEATURES = 16
CLASSES = 10


def _setup(
    name: str, layer_of: Callable[[nn.Module], nn.Module], d_latent: int, settings: Settings
) -> tuple[GradFAM, LayerGradCam, Tensor, list[int]]:
    """A randomly initialised timm model, an untrained linear SAE on its head input, and the two attributors."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=CLASSES).eval().to(settings.device)
    sae = SparseAutoencoder(model.num_features, d_latent, "linear").eval().to(settings.device)
    layer = layer_of(model)
    images = torch.randn(BATCH, 3, SIDE, SIDE, device=settings.device)
    features = torch.randperm(d_latent)[:FEATURES].tolist()
    return GradFAM(model, layer, sae), LayerGradCam(FeatureCodes(model, sae), layer), images, features


def _resnet(settings: Settings) -> list[Row]:
    """ResNet-18: 16 features at once, and a loop of 16 single-feature calls, each against one Grad-CAM call."""
    fam, grad_cam, images, features = _setup("resnet18", lambda m: m.layer4[-1], 2048, settings)
    shape = f"batch {BATCH} × 3 × {SIDE} × {SIDE}, layer4[-1], SAE 512 → 2048"
    together = time_interleaved(
        {
            "attribute_features": lambda: fam.attribute_features(images, features),
            "LayerGradCam": lambda: grad_cam.attribute(images, target=0),
        },
        repeats=settings.repeats(full=15, quick=3),
        device=settings.device,
    )

    def one_by_one() -> list[Tensor]:
        """What a user without attribute_features writes: one call per feature."""
        return [fam.attribute(images, target=feature) for feature in features]

    looped = time_interleaved(
        {"16 × attribute": one_by_one, "LayerGradCam": lambda: grad_cam.attribute(images, target=0)},
        repeats=settings.repeats(full=5, quick=1),
        device=settings.device,
    )
    return [
        Row(
            "Grad-FAM ResNet-18: attribute_features(16 features) / one LayerGradCam",
            "attribute_features",
            "LayerGradCam",
            together,
            Target("at_most", 1.3),
            shape,
        ),
        Row(
            "Grad-FAM ResNet-18: loop of 16 GradFAM.attribute / one LayerGradCam",
            "16 × attribute",
            "LayerGradCam",
            looped,
            note="for information: the cost attribute_features avoids (about 16×)",
        ),
    ]


def _vit(settings: Settings) -> list[Row]:
    """ViT-B/16: 16 features at once against one Grad-CAM call on the same layer."""
    fam, grad_cam, images, features = _setup("vit_base_patch16_224", lambda m: m.blocks[-1].norm1, 3072, settings)
    timings = time_interleaved(
        {
            "attribute_features": lambda: fam.attribute_features(images, features),
            "LayerGradCam": lambda: grad_cam.attribute(images, target=0),
        },
        repeats=settings.repeats(full=9, quick=2),
        device=settings.device,
    )
    return [
        Row(
            "Grad-FAM ViT-B/16: attribute_features(16 features) / one LayerGradCam",
            "attribute_features",
            "LayerGradCam",
            timings,
            Target("at_most", 3.0),
            f"batch {BATCH} × 3 × {SIDE} × {SIDE}, blocks[-1].norm1, SAE 768 → 3072; the reference is "
            "Captum's LayerGradCam on the same layer (its map of token outputs is meaningless, it is only timed)",
        )
    ]


def run(settings: Settings) -> list[Row]:
    """Time Grad-FAM on ResNet-18 and ViT-B/16 (random weights, untrained SAEs).

    Args:
        settings: Device and repeat counts.

    Returns:
        Rows: ResNet-18 batched (target ≤ 1.3), ResNet-18 loop (information),
        ViT-B/16 batched (target ≤ 3.0).
    """
    return _resnet(settings) + _vit(settings)
