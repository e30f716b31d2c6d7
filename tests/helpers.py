"""Small models, SAEs and data shared by the tests (fixtures live in ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]


def small_timm_vit(num_classes: int = 5) -> torch.nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=num_classes
    ).eval()


def small_torchvision_vit(num_classes: int = 5) -> torch.nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=num_classes
    ).eval()
