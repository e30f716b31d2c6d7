"""Faithfulness scores: deletion curves and the pointing game, on toy models whose codes are known in closed form."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from captum_salve import SparseAutoencoder, select_feature
from captum_salve.attr import GradFAM, deletion_curve, deletion_score, mask_mass, pointing_game
from tests.helpers import PixelClassifier, hook_count, trained_digits_sae

SIDE = 8


class _CellMeans(nn.Module):
    """The head reads the mean of each ``cell`` × ``cell`` block of a one-channel image."""

    def __init__(self, cell: int, cells: int) -> None:
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(cells, 2)

    def get_classifier(self) -> nn.Linear:
        return self.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.avg_pool2d(images, self.cell).flatten(1))


# ---- deletion curves -----------------------------------------------------------------------


def _cell_setup(seed: int = 0, cell: int = 2, grid: int = 4) -> tuple[nn.Module, SparseAutoencoder, torch.Tensor]:
    """Feature 0's code is ``Σ_c w_c · mean of cell c`` with positive weights w: a known sum over cells."""
    generator = torch.Generator().manual_seed(seed)
    model = _CellMeans(cell, grid * grid).eval()
    sae = SparseAutoencoder(grid * grid, 2, "linear")  # biases start at zero
    weights = torch.rand(grid * grid, generator=generator) + 0.1
    with torch.no_grad():
        sae.encoder.weight[0] = weights
    return model, sae, weights


def test_deleting_the_top_cells_first_follows_the_hand_computed_sum():
    model, sae, weights = _cell_setup()
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cell_means = F.avg_pool2d(images, 2).flatten(1)  # (3, 16)
    contribution = cell_means * weights
    curve = deletion_curve(model, sae, 0, images, contribution.reshape(3, 1, 4, 4), fill=0.0)
    ranked = contribution.sort(dim=1, descending=True).values
    expected = contribution.sum(1, keepdim=True) - torch.cat([torch.zeros(3, 1), ranked.cumsum(1)], dim=1)
    assert curve.shape == (3, 17)
    torch.testing.assert_close(curve, expected, rtol=1e-5, atol=1e-5)


def test_the_mean_fill_replaces_cells_by_the_images_channel_mean():
    model, sae, weights = _cell_setup()
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    contribution = F.avg_pool2d(images, 2).flatten(1) * weights
    curve = deletion_curve(model, sae, 0, images, contribution.reshape(2, 1, 4, 4), steps=4)
    mean = images.mean(dim=(1, 2, 3))
    order = contribution.argsort(dim=1, descending=True)
    for s, removed in enumerate([0, 4, 8, 12, 16]):  # steps=4: four cells at a time
        gone = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, order[:, :removed], True)
        expected = torch.where(gone, weights * mean[:, None], contribution).sum(1)
        torch.testing.assert_close(curve[:, s], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(curve[:, -1], weights.sum() * mean, rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 8), w=st.integers(1, 8), data=st.data(), seed=st.integers(0, 2**16))
def test_the_curve_equals_deleting_cells_pixel_by_pixel_in_a_loop(h, w, data, seed):
    """Any map grid (even one that does not divide the image) against an explicit loop over pixels."""
    steps = data.draw(st.integers(1, h * w))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = PixelClassifier(SIDE).eval()
    sae = SparseAutoencoder(3 * SIDE * SIDE, 3, "linear")
    images = torch.rand(2, 3, SIDE, SIDE, generator=generator)
    maps = torch.randn(2, 1, h, w, generator=generator)
    curve = deletion_curve(model, sae, 1, images, maps, steps=steps, fill=0.25)
    for n in range(2):
        rank = torch.empty(h * w, dtype=torch.long)
        rank[maps[n].flatten().argsort(descending=True, stable=True)] = torch.arange(h * w)
        for s in range(steps + 1):
            removed = round(s * h * w / steps)
            image = images[n].clone()
            for y in range(SIDE):
                for x in range(SIDE):
                    if rank[(y * h // SIDE) * w + x * w // SIDE] < removed:  # nearest-neighbour cell of the pixel
                        image[:, y, x] = 0.25
            expected = sae.encode(image.flatten()[None])[0, 1]
            assert curve[n, s].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)


def test_a_faithful_map_scores_lower_than_its_reverse():
    model, sae, weights = _cell_setup(seed=4)
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    contribution = (F.avg_pool2d(images, 2).flatten(1) * weights).reshape(4, 1, 4, 4)
    faithful = deletion_score(deletion_curve(model, sae, 0, images, contribution, fill=0.0))
    reverse = deletion_score(deletion_curve(model, sae, 0, images, -contribution, fill=0.0))
    assert (faithful < reverse).all()
    assert (faithful < 0.5).all() and (reverse > 0.5).all()  # concave vs convex fall


def test_deletion_score_by_hand():
    curve = torch.tensor([[4.0, 2.0, 1.0, 0.0], [1.0, 3.0, 1.0, -1.0], [2.0, 2.0, 2.0, 2.0]])
    score = deletion_score(curve)
    assert score[0].item() == pytest.approx((1 + 0.5 + 0.25 + 0) / 4)
    assert score[1].item() == pytest.approx((1 + 2 + 1 + 0) / 4)  # may exceed 1 when the code first rises
    assert torch.isnan(score[2])  # the code never changes


def test_batch_size_does_not_change_the_curve_and_no_hooks_are_left():
    model, sae, weights = _cell_setup()
    images = torch.rand(3, 1, 8, 8)
    maps = torch.rand(3, 1, 4, 4)
    whole = deletion_curve(model, sae, 0, images, maps)
    pieces = deletion_curve(model, sae, 0, images, maps, batch_size=5)
    torch.testing.assert_close(whole, pieces)
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(attribution=torch.rand(2, 2, 4, 4)), r"\(N, 1, h, w\) tensors with the same N, got .*\(2, 2, 4, 4\)"),
        (dict(attribution=torch.full((2, 1, 4, 4), float("nan"))), r"attribution holds 32 non-finite values"),
        (dict(attribution=torch.rand(2, 1, 4, 4).numpy()), r"attribution \(N, 1, h, w\) tensors .* and ndarray"),
        (dict(attribution=torch.rand(3, 1, 4, 4)), r"with the same N, got \(2, 1, 8, 8\) and \(3, 1, 4, 4\)"),
        (dict(images=torch.rand(2, 8, 8)), r"images must be \(N, C, H, W\)"),
        (dict(attribution=torch.rand(2, 1, 16, 16)), r"the map \(16x16\) cannot be finer than the image \(8x8\)"),
        (dict(steps=0), r"steps \(for a 4x4 map\) must be an integer in \[1, 16\], got 0"),
        (dict(steps=17), r"steps \(for a 4x4 map\) must be an integer in \[1, 16\], got 17"),
        (dict(steps=True), r"steps \(for a 4x4 map\) must be an integer in \[1, 16\], got True"),
        (dict(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
        (dict(feature=2), r"feature must be SAE feature indices in \[0, 1\], got \[2\]"),
        (dict(feature=-1), r"feature must be SAE feature indices in \[0, 1\], got \[-1\]"),
        (dict(fill="zero"), "fill must be 'mean' or a finite number, got 'zero'"),
        (dict(fill=float("nan")), "fill must be 'mean' or a finite number, got nan"),
    ],
)
def test_deletion_curve_refuses_bad_input(change, message):
    model, sae, _ = _cell_setup()
    arguments = dict(feature=0, images=torch.rand(2, 1, 8, 8), attribution=torch.rand(2, 1, 4, 4)) | change
    with pytest.raises(ValueError, match=message):
        deletion_curve(
            model, sae, arguments.pop("feature"), arguments.pop("images"), arguments.pop("attribution"), **arguments
        )


# ---- pointing game -------------------------------------------------------------------------


def _box(top: int, left: int, size: int = 4, side: int = 16) -> torch.Tensor:
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_pointing_game_by_hand():
    peaked = torch.zeros(4, 4)
    peaked[1, 2] = 1.0  # cell (1, 2) of a 4x4 map covers pixels [4:8, 8:12] of a 16x16 image, centre (6, 10)
    maps = torch.stack([peaked, peaked, torch.zeros(4, 4), peaked.masked_fill(peaked == 0, float("nan"))])[:, None]
    masks = torch.stack([_box(4, 8), _box(8, 0), _box(0, 0, size=16), _box(4, 8)])
    assert pointing_game(maps, masks).tolist() == [True, False, False, False]  # hit, miss, no peak, NaN


@pytest.mark.parametrize("cells", [2, 4])
def test_a_thin_cue_is_hit_by_the_cell_that_holds_it_at_a_coarse_resolution(cells):
    """A cue one pixel high, at row 3 of a 64x64 image, lies in the top row of cells of a 2x2 or 4x4 map.

    No cell centre (rows 16 and 48, or 8, 24, 40 and 56) lies on it: judged at the centre, every map would miss.
    """
    cue = torch.zeros(64, 64, dtype=torch.bool)
    cue[3, 40:47] = True  # columns 40..46: in the right half, in the third of four columns of cells
    maps = torch.eye(cells * cells).reshape(cells * cells, 1, cells, cells)  # every possible peak cell once
    hits = pointing_game(maps, cue.expand(cells * cells, 64, 64)).reshape(cells, cells)
    expected = torch.zeros(cells, cells, dtype=torch.bool)
    expected[0, 40 * cells // 64] = True  # the top row's cell over columns 40..46
    assert torch.equal(hits, expected)


def test_a_border_peak_is_judged_on_its_cell_not_on_the_image_corner():
    """Upsampled bilinearly, a 2x2 map peaking in its top-left cell has its first maximal pixel at (0, 0)."""
    maps = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    corners = torch.zeros(32, 32, dtype=torch.bool)
    corners[0, 0] = corners[0, 31] = corners[31, 0] = True  # the top-left, top-right and bottom-left corners
    inner = _box(6, 6, size=20, side=32)  # reaches into all four cells
    assert pointing_game(maps, torch.stack([inner, inner])).tolist() == [True, True]
    assert pointing_game(maps, torch.stack([corners, corners])).tolist() == [True, False]


@settings(max_examples=30, deadline=None)
@given(top=st.integers(0, 32), left=st.integers(0, 32))
def test_a_peak_cell_hits_when_the_box_reaches_into_it(top, left):
    """A 4x4 map on a 64x64 image: a 32x32 box touches 2 or 3 of the 16-pixel cells per axis."""
    maps = torch.eye(16).reshape(16, 1, 4, 4)  # every possible peak cell once
    masks = _box(top, left, size=32, side=64).expand(16, 64, 64)
    rows, columns = (top + 31) // 16 - top // 16 + 1, (left + 31) // 16 - left // 16 + 1
    assert int(pointing_game(maps, masks).sum()) == rows * columns


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    extra=st.tuples(st.integers(0, 20), st.integers(0, 20)),
    density=st.floats(0.0, 0.2),
    seed=st.integers(0, 2**16),
)
def test_the_pointing_game_equals_a_loop_over_the_peak_cells_pixels(n, h, w, extra, density, seed):
    generator = torch.Generator().manual_seed(seed)
    height, width = h + extra[0], w + extra[1]
    maps = torch.randn(n, 1, h, w, generator=generator)
    masks = torch.rand(n, height, width, generator=generator) < density
    expected = []
    for i in range(n):
        peak = int(maps[i].flatten().argmax())
        row, column = divmod(peak, w)
        hit = False
        for y in range(height):
            for x in range(width):
                # pixel (y, x) lies in the cell that covers [row·H/h, (row+1)·H/h) × [column·W/w, (column+1)·W/w)
                inside = row * height <= y * h < (row + 1) * height and column * width <= x * w < (column + 1) * width
                hit = hit or (inside and bool(masks[i, y, x]))
        expected.append(hit and h * w > 1)  # a 1x1 map is constant: no peak
    assert pointing_game(maps, masks).tolist() == expected


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5), side=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_at_full_resolution_a_hit_is_the_mask_at_the_maps_argmax(n, side, seed):
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, 1, side, side, generator=generator)
    masks = torch.rand(n, side, side, generator=generator) < 0.3
    expected = [bool(masks[i].flatten()[maps[i].flatten().argmax()]) for i in range(n)]
    assert pointing_game(maps, masks).tolist() == expected


@pytest.mark.parametrize(
    "maps, masks",
    [
        (torch.rand(2, 1, 4, 4), torch.ones(2, 16 * 16, dtype=torch.bool)),
        (torch.rand(2, 4, 4), torch.ones(2, 16, 16, dtype=torch.bool)),
        (torch.rand(2, 2, 4, 4), torch.ones(2, 16, 16, dtype=torch.bool)),
        (torch.rand(3, 1, 4, 4), torch.ones(2, 16, 16, dtype=torch.bool)),
    ],
)
def test_pointing_game_refuses_mismatched_shapes(maps, masks):
    with pytest.raises(ValueError, match=r"and masks \(N, H, W\) tensors with the same N"):
        pointing_game(maps, masks)


# ---- on the trained digits classifier ------------------------------------------------------


@pytest.mark.slow
def test_grad_fam_on_the_digits_resnet_is_faithful_and_points_at_the_digit(digits_resnet):
    model, sae, profile, test = trained_digits_sae(digits_resnet)
    images, labels, masks = test.images[:48], test.labels[:48], test.masks()[:48]
    features = torch.tensor([select_feature(profile, int(c))[0] for c in labels])
    fam = GradFAM(model, "layer3.1", sae)  # a 4x4 map on the 64x64 canvas
    maps = torch.cat([fam.attribute(images[i : i + 1], target=int(features[i])) for i in range(48)])
    hits = pointing_game(maps, masks).float().mean()
    # chance is the share of cells the 32x32 box touches: 2 or 3 of the 16-pixel cells along each axis
    chance = pointing_game(torch.rand(maps.shape, generator=torch.Generator().manual_seed(0)), masks).float().mean()
    assert hits > chance + 0.2
    own = torch.cat(
        [deletion_curve(model, sae, int(features[i]), images[i : i + 1], maps[i : i + 1], steps=8) for i in range(48)]
    )
    rand = torch.cat(
        [
            deletion_curve(model, sae, int(features[i]), images[i : i + 1], torch.rand_like(maps[i : i + 1]), steps=8)
            for i in range(48)
        ]
    )
    assert deletion_score(own).nanmean() < deletion_score(rand).nanmean() - 0.05


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        (torch.ones(2, 16, 16), "masks must be boolean (True inside the object), got torch.float32"),
        (torch.ones(2, 2, 2, dtype=torch.bool), "masks (2x2) must be at least as fine as the maps (4x4)"),
    ],
    ids=["float masks", "masks coarser than the maps"],
)
def test_pointing_game_refuses_masks_it_would_misread(masks, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pointing_game(torch.rand(2, 1, 4, 4), masks)


def test_mask_mass_equals_a_loop_over_pixels_of_the_cells():
    """Each cell's positive value, weighted by the share of its footprint the mask covers, over the total."""
    generator = torch.Generator().manual_seed(5)
    for h, w, height, width in [(4, 4, 32, 32), (3, 5, 14, 80), (7, 7, 7, 7), (2, 3, 9, 10)]:
        maps = torch.randn(3, 1, h, w, generator=generator)
        masks = torch.rand(3, height, width, generator=generator) > 0.7
        got = mask_mass(maps, masks)
        for n in range(3):
            inside = {}
            for y in range(height):
                for x in range(width):
                    cell = (y * h // height, x * w // width)
                    count, covered = inside.get(cell, (0, 0))
                    inside[cell] = (count + 1, covered + int(masks[n, y, x]))
            positive = maps[n, 0].double().clamp_min(0)
            expected = sum(positive[c] * covered / count for c, (count, covered) in inside.items()) / positive.sum()
            assert got[n].item() == pytest.approx(float(expected), rel=1e-12)


def test_mask_mass_of_a_uniform_map_is_the_mean_coverage_and_a_map_with_no_positive_mass_is_nan():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :2, :] = True  # a quarter of the image
    uniform, negative = torch.ones(2, 1, 4, 4), -torch.ones(2, 1, 4, 4)
    assert torch.equal(mask_mass(uniform, masks), torch.full((2,), 0.25, dtype=torch.float64))
    assert mask_mass(negative, masks).isnan().all()
    with pytest.raises(ValueError, match="masks must be boolean"):
        mask_mass(uniform, masks.float())
    with pytest.raises(ValueError, match=r"masks \(2x2\) must be at least as fine as the maps \(4x4\)"):
        mask_mass(uniform, masks[:, :2, :2])
