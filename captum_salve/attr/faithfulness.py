"""Scores that check a feature map without a human: deletion curves, the pointing game, mass inside a mask."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_salve.attr.feature_codes import FeatureCodes
from captum_salve.checks import check_int, check_real, shape_of
from captum_salve.sae.model import SparseAutoencoder, check_finite
from captum_salve.sites import Site, eval_mode

__all__ = ["deletion_curve", "deletion_score", "mask_mass", "pointing_game"]


@torch.no_grad()
def deletion_curve(
    model: nn.Module,
    sae: SparseAutoencoder,
    feature: int,
    images: Tensor,
    attribution: Tensor,
    *,
    site: Site | None = None,
    fill: str | float = "mean",
    steps: int | None = None,
    batch_size: int = 256,
) -> Tensor:
    """A feature's code as the map's highest-ranked cells are removed from the image, one by one.

    The image is divided into the map's h × w cells (pixel (y, x) lies in cell
    (⌊y·h/H⌋, ⌊x·w/W⌋), as nearest-neighbour upsampling places it); at step s the s highest-ranked
    cells are replaced by ``fill``. A faithful map makes the code fall fast; compare
    against a random map (``torch.rand_like(attribution)``) or another feature's map.

    Args:
        model: The classifier.
        sae: The SAE whose code is measured.
        feature: The feature.
        images: (N, C, H, W) images.
        attribution: (N, 1, h, w) maps ranking the cells (e.g. Grad-FAM's).
        site: Where the SAE reads; default the SAE's own site.
        fill: ``"mean"`` (each image's channel means) or a constant.
        steps: Removal steps (default: one per cell); each step removes about
            ``h·w / steps`` more cells.
        batch_size: Images per forward pass.

    Returns:
        (N, steps + 1) code values; column 0 is the intact image, the last has every cell removed.

    Example:
        >>> maps = GradFAM(model, None, sae).attribute(images, target=7)
        >>> deletion_score(deletion_curve(model, sae, 7, images, maps)).mean()
    """
    if (
        not isinstance(images, Tensor)
        or not isinstance(attribution, Tensor)
        or images.dim() != 4
        or attribution.dim() != 4
        or attribution.shape[1] != 1
        or len(attribution) != len(images)
    ):
        raise ValueError(
            f"images must be (N, C, H, W) and attribution (N, 1, h, w) tensors with the same N, "
            f"got {shape_of(images)} and {shape_of(attribution)}"
        )
    check_finite(attribution, "attribution", "; a map with NaN ranks its cells arbitrarily")
    if sae.feature_index(feature).numel() != 1:
        raise ValueError(f"feature must be one SAE feature, got {feature!r}")
    if fill != "mean":
        try:
            fill = check_real(fill, "fill")
        except ValueError:
            raise ValueError(f"fill must be 'mean' or a finite number, got {fill!r}") from None
    batch_size = check_int(batch_size, "batch_size", 1)
    n, _, height, width = images.shape
    h, w = attribution.shape[-2:]
    if h > height or w > width:
        raise ValueError(f"the map ({h}x{w}) cannot be finer than the image ({height}x{width})")
    cell_of_pixel = _cell_of_pixel((h, w), (height, width), images.device)
    order = attribution.reshape(n, -1).argsort(dim=1, descending=True, stable=True).to(images.device)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=images.device).expand(n, -1))
    pixel_rank = rank[:, cell_of_pixel]  # (N, H, W): when each pixel is removed
    filler = (
        images.mean(dim=(2, 3), keepdim=True) if fill == "mean" else torch.full_like(images[:, :, :1, :1], float(fill))
    )
    cells = h * w
    steps = cells if steps is None else check_int(steps, f"steps (for a {h}x{w} map)", 1, cells)
    removed = [round(i * cells / steps) for i in range(steps + 1)]
    variants = torch.stack([torch.where((pixel_rank < r)[:, None], filler, images) for r in removed], dim=1)
    variants = variants.reshape(n * (steps + 1), *images.shape[1:])
    codes = FeatureCodes(model, sae, site)
    with eval_mode(model):
        values = [
            codes(variants[start : start + batch_size])[:, feature] for start in range(0, len(variants), batch_size)
        ]
    return torch.cat(values).reshape(n, steps + 1)


def deletion_score(curve: Tensor) -> Tensor:
    """Area under a deletion curve normalised to fall from 1 (intact) to 0 (all removed); lower is more faithful.

    Returns NaN for an image whose code does not change at all.

    Example:
        >>> deletion_score(torch.tensor([[2.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
        tensor([0.3750, 0.7500,    nan])
    """
    if not isinstance(curve, Tensor) or curve.dim() != 2 or curve.shape[1] < 2:
        raise ValueError(f"curve must be (N, steps + 1) codes from deletion_curve, got {shape_of(curve)}")
    start, end = curve[:, :1], curve[:, -1:]
    span = start - end
    normalised = (curve - end) / span.where(span != 0, torch.nan)
    return normalised.mean(dim=1)


def pointing_game(attribution: Tensor, masks: Tensor) -> Tensor:
    """Whether each map's peak cell overlaps the mask.

    The rule: the peak is the largest value of the map at its own h × w resolution
    (the first in row-major order on a tie), before any upsampling. It is a hit when
    any mask pixel lies in that cell's footprint in the H × W image, the pixels (y, x)
    with ⌊y·h/H⌋ = row and ⌊x·w/W⌋ = column (the cells :func:`deletion_curve`
    removes). A map is only as precise as its cells: judging one pixel of the peak
    cell (its centre, say) would score 0 for every map of a coarse layer when the
    object is thinner than a cell, and judging the argmax of an upsampled map picks
    the image's corner when the peak is a border cell. At full resolution (h = H,
    w = W) the cell is the pixel. Chance is the share of cells the mask touches,
    not the share of pixels it covers.

    A constant map (all zeros, say) has no peak and counts as a miss, as does a map with NaN.

    Args:
        attribution: (N, 1, h, w) maps.
        masks: (N, H, W) boolean ground truth, at least as fine as the maps.

    Returns:
        (N,) booleans.

    Example:
        >>> maps = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]], [[[1.0, 0.0], [0.0, 0.0]]]])    # peaks top-right, top-left
        >>> masks = torch.zeros(2, 8, 8, dtype=torch.bool)
        >>> masks[:, 1, 4:] = True    # a thin line, one pixel high, across the top-right quarter
        >>> pointing_game(maps, masks)
        tensor([ True, False])
    """
    (h, w), (height, width) = _maps_and_masks(attribution, masks)
    maps = attribution.float().flatten(1).to(masks.device)
    peak = maps.argmax(dim=1)
    in_peak_cell = _cell_of_pixel((h, w), (height, width), masks.device).flatten() == peak[:, None]  # (N, H·W)
    hit = (masks.flatten(1) & in_peak_cell).any(dim=1)
    has_peak = (maps.amax(dim=1) > maps.amin(dim=1)) & ~maps.isnan().any(dim=1)
    return hit & has_peak


def mask_mass(attribution: Tensor, masks: Tensor) -> Tensor:
    """The share of each map's positive mass that lies inside the mask, at the map's own resolution.

    Each cell's positive value counts with the share of its footprint (the pixels
    :func:`pointing_game` assigns to it) that the mask covers, so no upsampling is
    involved and a coarse map is neither helped nor hurt by it. A uniform map scores
    the mean coverage of the cells, about the share of the image the mask covers: the
    level a map must beat to say it looks at the masked thing. Maps with no positive
    value (or with NaN) give NaN.

    Args:
        attribution: (N, 1, h, w) maps.
        masks: (N, H, W) boolean masks, at least as fine as the maps.

    Returns:
        (N,) float64 shares in [0, 1].

    Example:
        >>> maps = torch.tensor([[[[3.0, 1.0], [0.0, -2.0]]]])     # positive mass 4, 3 of it in the top-left cell
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> masks[0, :2, :2] = True                                # the top-left cell, all of it
        >>> mask_mass(maps, masks)
        tensor([0.7500], dtype=torch.float64)
    """
    (h, w), (height, width) = _maps_and_masks(attribution, masks)
    cell = _cell_of_pixel((h, w), (height, width), masks.device).flatten()
    inside = torch.zeros(len(masks), h * w, dtype=torch.float64, device=masks.device)
    inside.index_add_(1, cell, masks.flatten(1).double())
    coverage = inside / torch.bincount(cell, minlength=h * w).double()
    positive = attribution.double().flatten(1).to(masks.device).clamp_min(0)
    total = positive.sum(dim=1)
    share = (positive * coverage).sum(dim=1) / total
    return share.masked_fill((total == 0) | total.isnan(), float("nan"))


def _maps_and_masks(attribution: object, masks: object) -> tuple[tuple[int, int], tuple[int, int]]:
    """The maps' (h, w) and the masks' (H, W), after checking they are (N, 1, h, w) maps and (N, H, W) boolean masks."""
    if (
        not isinstance(attribution, Tensor)
        or not isinstance(masks, Tensor)
        or attribution.dim() != 4
        or attribution.shape[1] != 1
        or masks.dim() != 3
        or len(attribution) != len(masks)
    ):
        raise ValueError(
            f"attribution must be (N, 1, h, w) and masks (N, H, W) tensors with the same N, "
            f"got {shape_of(attribution)} and {shape_of(masks)}"
        )
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be boolean (True inside the object), got {masks.dtype}; e.g. masks > 0.5")
    (h, w), (height, width) = attribution.shape[-2:], masks.shape[-2:]
    if height < h or width < w:
        raise ValueError(f"masks ({height}x{width}) must be at least as fine as the maps ({h}x{w})")
    return (h, w), (height, width)


def _cell_of_pixel(cells: tuple[int, int], pixels: tuple[int, int], device: torch.device) -> Tensor:
    """(H, W) row-major index of the map cell each image pixel lies in: pixel (y, x) in cell (⌊y·h/H⌋, ⌊x·w/W⌋)."""
    (h, w), (height, width) = cells, pixels
    rows = torch.arange(height, device=device) * h // height
    columns = torch.arange(width, device=device) * w // width
    return rows[:, None] * w + columns[None, :]
