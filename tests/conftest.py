"""Shared fixtures: small random models of every supported family, and the trained digits models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm
import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
# Trained digits-canvas models are cached per checkout (fresh in CI, reused locally).
os.environ.setdefault("CAPTUM_SALVE_CACHE", str(REPO / ".cache-test"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def small_timm_vit(num_classes: int = 5) -> torch.nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=num_classes
    ).eval()


def small_torchvision_vit(num_classes: int = 5) -> torch.nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=num_classes
    ).eval()


@pytest.fixture
def timm_resnet():
    return timm.create_model("resnet18", num_classes=4).eval()


@pytest.fixture
def timm_vit():
    return small_timm_vit()


@pytest.fixture
def torchvision_resnet():
    return torchvision.models.resnet18(num_classes=4).eval()


@pytest.fixture
def torchvision_vit():
    return small_torchvision_vit()


@pytest.fixture(scope="session")
def digits_resnet():
    from captum_salve.zoo import digits_classifier

    return digits_classifier("resnet18", progress=False)


@pytest.fixture(scope="session")
def digits_vit():
    from captum_salve.zoo import digits_classifier

    return digits_classifier("vit", progress=False)
