r"""Activation maximisation: images that drive an SAE feature's code up.

The objective is ``z_l(x) − λ₂‖x‖² − λ_TV·TV(x)`` for an image x in [0, 1] (the
penalties are means over pixels). For ReLU and TopK SAEs the code's affine part
(its pre-activation) is ascended, since a code that starts switched off has no
gradient; the reported activations are the codes themselves. Robustness transforms (jitter, scale, small
rotation) and a decorrelated Fourier parameterisation, both standard in the
feature-visualisation literature (Olah et al., 2017), make the images far less
adversarial than plain pixel ascent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_salve.attr.feature_codes import FeatureCodes
from captum_salve.checks import check_int, check_real
from captum_salve.models import fixed_image_size, input_config, model_device
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sites import Site, as_device, eval_mode

__all__ = ["MaximizationResult", "maximize_feature"]

PARAMETERIZATIONS = ("pixel", "fourier")
_DEFAULT_LR = {"pixel": 0.05, "fourier": 0.1}
# Square root of the colour correlation of natural images (ImageNet), as used by Lucid.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


@dataclass
class MaximizationResult:
    """Optimised images for several features, with snapshots along the way.

    Attributes:
        features: The features, one image each.
        images: (F, 3, H, W) final images in [0, 1].
        snapshots: Step → (F, 3, H, W) images at that step (step 0 is the starting noise).
        activations: (F,) each final image's code for its own feature (untransformed image).
        history: (steps, F) the ascended values (pre-activations) during the optimisation.

    Example:
        >>> result = maximize_feature(model, sae, [3, 12], steps=128, snapshots=(0, 32))
        >>> sorted(result.snapshots)
        [0, 32, 128]
        >>> fig = plots.maximization_evolution(result)
    """

    features: list[int]
    images: Tensor
    snapshots: dict[int, Tensor]
    activations: Tensor
    history: Tensor


def maximize_feature(
    model: nn.Module,
    sae: SparseAutoencoder,
    features: int | Sequence[int],
    *,
    steps: int = 256,
    lr: float | None = None,
    l2: float = 1e-3,
    tv: float = 5e-3,
    transforms: bool = True,
    parameterization: str = "fourier",
    image_size: int | tuple[int, int] | None = None,
    seed: int = 0,
    snapshots: Sequence[int] = (0, 16, 64),
    site: Site | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> MaximizationResult:
    """Optimise one image per feature, all features in one batch.

    Args:
        model: The classifier (kept in eval mode; its weights get no gradients).
        sae: The SAE whose codes are maximised.
        features: Feature indices, one image each.
        steps: Optimiser steps.
        lr: Adam learning rate on the image parameters; default 0.1 for
            ``"fourier"``, 0.05 for ``"pixel"``.
        l2: λ₂, weight of the mean squared pixel value.
        tv: λ_TV, weight of the total variation.
        transforms: Apply random jitter (±3%), scale (±5%) and rotation (±3°) at every
            step of the first three quarters; the last quarter settles the image
            without them.
        parameterization: ``"fourier"`` (decorrelated spectrum) or ``"pixel"``.
        image_size: (H, W) or a side; default the size a fixed-size ViT takes, else the input
            size of the model's timm data config.
        seed: Seed of the starting noise and of the transforms.
        snapshots: Steps at which to keep a copy of the images (the last is always kept).
        site: Where the SAE reads; default the SAE's own site.
        device: Default the model's device.
        progress: Show a progress bar.

    Example:
        >>> result = maximize_feature(model, sae, [3, 12], steps=128)
        >>> result.activations  # compare with the feature's activations on real images
    """
    index = sae.feature_index(features, "features").tolist()
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    lr = lr if lr is not None else _DEFAULT_LR[parameterization]
    steps, seed = check_int(steps, "steps", 1), check_int(seed, "seed")
    lr, l2, tv = check_real(lr, "lr", 0, above=True), check_real(l2, "l2", 0), check_real(tv, "tv", 0)
    device = as_device(device) if device is not None else model_device(model)
    config, fixed = input_config(model), fixed_image_size(model)
    height, width = _image_size(image_size if image_size is not None else fixed or config["input_size"][-2:])
    if fixed is not None and (height, width) != fixed:
        raise ValueError(f"image_size must be the model's fixed input size {fixed}, got {(height, width)}")
    mean, std = (torch.tensor(config[key], device=device).view(1, -1, 1, 1) for key in ("mean", "std"))
    generator = torch.Generator().manual_seed(seed)
    image_of = _parameterization(parameterization, len(index), height, width, generator, device)
    params = list(image_of.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    target = torch.tensor(index, device=device)
    rows = torch.arange(len(index), device=device)
    keep = set(snapshots) | {steps}
    # The last quarter of the steps settles the image without transforms, so the
    # image itself (not only its jittered copies) drives the code.
    settle = int(steps * 0.75)
    kept: dict[int, Tensor] = {}
    history = []
    codes = FeatureCodes(model, sae, site)
    with eval_mode(model):
        for step in tqdm(range(steps + 1), desc="activation maximisation", disable=not progress):
            images = image_of()
            if step in keep:
                kept[step] = images.detach().cpu()
            if step == steps:
                break
            seen = _random_transform(images, generator) if transforms and step < settle else images
            # A ReLU/TopK code that is off has no gradient: ascend its affine part instead.
            code = codes.pre_activations((seen - mean) / std)[rows, target]
            loss = -code.sum() + l2 * images.pow(2).mean(dim=(1, 2, 3)).sum() + tv * _total_variation(images).sum()
            gradients = torch.autograd.grad(loss, params)
            for param, grad in zip(params, gradients, strict=True):
                param.grad = grad
            optimizer.step()
            history.append(code.detach().cpu())
        with torch.no_grad():
            final = image_of()
            activations = codes((final - mean) / std)[rows, target].cpu()
    return MaximizationResult(index, final.cpu(), kept, activations, torch.stack(history))


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    sides = [image_size] * 2 if not isinstance(image_size, Sequence) else list(image_size)
    if len(sides) != 2:
        raise ValueError(f"image_size must be a side or (H, W) of at least 8, got {image_size!r}")
    height, width = (check_int(side, "image_size (a side or (H, W))", 8) for side in sides)
    return height, width


class _PixelImage(nn.Module):
    def __init__(self, n: int, height: int, width: int, generator: torch.Generator) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(n, 3, height, width, generator=generator) * 0.5)

    def forward(self) -> Tensor:
        return torch.sigmoid(self.logits)


class _FourierImage(nn.Module):
    """An image as a 1/f-scaled spectrum in decorrelated colour space, squashed to [0, 1]."""

    def __init__(self, n: int, height: int, width: int, generator: torch.Generator) -> None:
        super().__init__()
        fy = torch.fft.fftfreq(height)[:, None]
        fx = torch.fft.rfftfreq(width)[None, :]
        frequency = (fx**2 + fy**2).sqrt().clamp_min(1.0 / max(height, width))
        self.register_buffer("scale", (1.0 / frequency) / math.sqrt(height * width))
        self.register_buffer("color", _COLOR_SQRT.clone())
        self.size = (height, width)
        self.spectrum = nn.Parameter(torch.randn(n, 3, height, width // 2 + 1, 2, generator=generator))
        # Start from visible noise, like the pixel parameterisation; each image is
        # scaled on its own so that it does not depend on the others in the batch.
        with torch.no_grad():
            self.spectrum.mul_(0.5 / self._logits().std(dim=(1, 2, 3))[:, None, None, None, None])

    def _logits(self) -> Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        decorrelated = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        return torch.einsum("nchw,dc->ndhw", decorrelated, self.color)

    def forward(self) -> Tensor:
        return torch.sigmoid(self._logits())


def _parameterization(
    name: str, n: int, height: int, width: int, generator: torch.Generator, device: torch.device
) -> nn.Module:
    module = _FourierImage if name == "fourier" else _PixelImage
    return module(n, height, width, generator).to(device)


def _random_transform(
    images: Tensor, generator: torch.Generator, jitter: float = 0.03, scale: float = 0.05, degrees: float = 3.0
) -> Tensor:
    """Jitter, scale and rotate each image by its own random amount (reflection padding)."""
    n = len(images)

    def uniform(low: float, high: float) -> Tensor:
        return (torch.rand(n, generator=generator) * (high - low) + low).to(images.device)

    angle = uniform(-degrees, degrees) * math.pi / 180
    factor = uniform(1 - scale, 1 + scale)
    shift_x, shift_y = uniform(-jitter, jitter) * 2, uniform(-jitter, jitter) * 2
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="reflection", align_corners=False)


def _total_variation(images: Tensor) -> Tensor:
    dy = (images[:, :, 1:] - images[:, :, :-1]).abs().mean(dim=(1, 2, 3))
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return dx + dy
