"""Shared fixtures: small random models of every supported family, and the trained digits models."""

from __future__ import annotations

import os

import pytest
import timm
import torch
import torchvision

from tests.helpers import REPO, small_timm_vit, small_torchvision_vit

# Trained digits-canvas models are cached per checkout (fresh in CI, reused locally).
os.environ.setdefault("CAPTUM_SALVE_CACHE", str(REPO / ".cache-test"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """The models are tiny: with two threads on a busy two-core machine, OpenMP waits cost 50x the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
