"""render_maps against pytorch-grad-cam's recipe in numpy, and TokenGradCam against Captum's LayerGradCam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import (
    LayerGradCam,
)
from hypothesis import given, settings, strategies as st
from torch import nn

from captum_salve.attr import TokenGradCam, render_maps, tokens_to_grid
from tests.helpers import FromGrid, ToGrid

ATOL = 1e-5  # float32 forward passes of the same images, possibly batched differently
RENDER_ATOL = 1e-6  # float32 torch against float64 numpy, values in [0, 1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _resize_axis(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Bilinear resize along one axis with half-pixel centres (OpenCV INTER_LINEAR, align_corners=False)."""
    n = values.shape[axis]
    source = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n - 1)
    t = source - low
    shape = [1] * values.ndim
    shape[axis] = size
    t = t.reshape(shape)
    return np.take(values, low, axis=axis) * (1 - t) + np.take(values, high, axis=axis) * t


def _render_reference(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = []
    for m in maps[:, 0].astype(np.float64):
        m = np.maximum(m, 0)
        span = m.max() - m.min()
        m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
        out.append(_resize_axis(_resize_axis(m, size[0], 0), size[1], 1))
    return np.stack(out)[:, None]


@pytest.mark.parametrize("shape, size", [((2, 2), (8, 8)), ((4, 4), (64, 64)), ((3, 5), (12, 20))])
def test_render_maps_is_pytorch_grad_cams_rendering(shape, size):
    maps = torch.randn(3, 1, *shape)
    rendered = render_maps(maps, size)
    assert rendered.shape == (3, 1, *size)
    np.testing.assert_allclose(rendered.numpy(), _render_reference(maps.numpy(), size), atol=RENDER_ATOL, rtol=0)
    assert rendered.min() >= 0 and rendered.max() <= 1
    has_peak = maps.amax(dim=(2, 3)) > 0
    assert torch.equal(rendered.amax(dim=(2, 3)) > 0.5, has_peak)  # a positive peak stays near 1, none gives 0


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    big_h=st.integers(1, 40),
    big_w=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_render_maps_matches_the_reference_at_any_size(h, w, big_h, big_w, seed):
    maps = torch.randn(2, 1, h, w, generator=torch.Generator().manual_seed(seed))
    rendered = render_maps(maps, (big_h, big_w))
    np.testing.assert_allclose(
        rendered.numpy(), _render_reference(maps.numpy(), (big_h, big_w)), atol=RENDER_ATOL, rtol=0
    )
    assert rendered.min() >= 0 and rendered.max() <= 1


def test_rendered_maps_never_exceed_one():
    # Maps one cell thin: upsampling across them mixes the peak cell with itself, with float32 weights.
    for maps in (torch.tensor([[[[-1.0, 2.0]]]]), torch.tensor([[[[-1.0], [2.0]]]])):
        highest = max(render_maps(maps, (h, w)).max().item() for h in range(1, 33) for w in range(1, 33))
        assert highest <= 1, f"max is 1 + {highest - 1:.3g}"


def test_a_map_without_positive_evidence_renders_all_zero():
    maps = torch.stack([-torch.rand(1, 4, 4) - 0.1, torch.full((1, 4, 4), 0.7)])  # all negative; constant
    rendered = render_maps(maps, (16, 16))
    assert torch.equal(rendered, torch.zeros(2, 1, 16, 16))


def test_a_map_holding_nan_renders_all_nan_and_leaves_the_others_alone():
    maps = torch.randn(2, 1, 4, 4)
    maps[0, 0, 1, 2] = torch.nan
    rendered = render_maps(maps, (16, 16))
    assert rendered[0].isnan().all()
    assert not rendered[1].isnan().any()
    np.testing.assert_allclose(
        rendered[1:].numpy(), _render_reference(maps[1:].numpy(), (16, 16)), atol=RENDER_ATOL, rtol=0
    )


def test_class_grad_cam_on_vit_tokens_equals_captum_after_the_same_reshape(timm_vit):
    """TokenGradCam with the model itself as the forward: the faithfulness stage's class Grad-CAM."""
    images = torch.rand(3, 3, 32, 32)
    layer = timm_vit.blocks[-1].norm1
    ours = TokenGradCam(timm_vit, layer, tokens_to_grid(1, (4, 4))).attribute(images, target=[0, 2, 4])
    to_grid = ToGrid(4)
    timm_vit.blocks[-1].norm1 = nn.Sequential(layer, to_grid, FromGrid(to_grid))
    captum = LayerGradCam(timm_vit, to_grid).attribute(images, target=[0, 2, 4])
    torch.testing.assert_close(ours, captum, atol=ATOL, rtol=1e-4)
    with pytest.raises(ValueError, match=r"target is needed: the forward gives \(5,\) outputs per input"):
        TokenGradCam(timm_vit, layer, tokens_to_grid(1, (4, 4))).attribute(images)
