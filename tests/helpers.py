"""Small models, SAEs and data shared by the tests (fixtures live in ``tests/conftest.py``).

Import them as ``from tests.helpers import ...``; pytest puts the repository root on
``sys.path`` because ``tests/`` is a package.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import timm
import torch
import torchvision
from einops import rearrange
from PIL import Image
from torch import Tensor, nn

from captum_salve import ActivationSet, ClassProfile, SparseAutoencoder, class_profile, collect_activations, train_sae

if TYPE_CHECKING:
    from captum_salve.data import DigitsCanvas
    from captum_salve.zoo import TrainedClassifier

REPO = Path(__file__).resolve().parents[1]


# ---- models --------------------------------------------------------------------------------


def small_timm_vit(num_classes: int = 5) -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=num_classes
    ).eval()


def small_torchvision_vit(num_classes: int = 5) -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=num_classes
    ).eval()


class HeadOnly(nn.Module):
    """A classifier that is only its head: the tests hand it head-input activations directly.

    ``find_head`` finds ``head`` through ``get_classifier``, as for any timm model.
    """

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    @classmethod
    def from_weights(cls, weight: Tensor, bias: Tensor) -> HeadOnly:
        """A head with the given (K, M) weight and (K,) bias."""
        head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        return cls(head)

    def get_classifier(self) -> nn.Linear:
        return self.head

    def forward(self, a: Tensor) -> Tensor:
        return self.head(a)


class PixelClassifier(nn.Module):
    """The head reads the raw pixels, so a linear SAE's code is linear in the image: ``z_l = e_l · x + β_l``."""

    def __init__(self, side: int, classes: int = 3) -> None:
        super().__init__()
        self.head = nn.Linear(3 * side * side, classes)
        self.pretrained_cfg = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "input_size": (3, side, side)}

    def get_classifier(self) -> nn.Linear:
        return self.head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(images.flatten(1))


class ToGrid(nn.Module):
    """Exposes a ViT layer's patch tokens as a map so Captum's LayerGradCam can read them."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid, self.prefix = grid, None

    def forward(self, tokens: Tensor) -> Tensor:
        self.prefix = tokens[:, :1]
        return rearrange(tokens[:, 1:], "n (h w) c -> n c h w", h=self.grid)


class FromGrid(nn.Module):
    """Puts the map of a :class:`ToGrid` back into tokens, behind the prefix token it kept."""

    def __init__(self, to_grid: ToGrid) -> None:
        super().__init__()
        self.to_grid = [to_grid]

    def forward(self, grid: Tensor) -> Tensor:
        return torch.cat([self.to_grid[0].prefix, rearrange(grid, "n c h w -> n (h w) c")], dim=1)


def hook_count(model: nn.Module) -> int:
    """Forward, forward-pre, backward and backward-pre hooks on every module of ``model``."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


# ---- SAEs ----------------------------------------------------------------------------------


def random_sae(
    d_in: int,
    activation: str = "linear",
    *,
    d_latent: int = 10,
    k: int | None = None,
    seed: int | None = None,
    site: str = "head_input",
    dtype: torch.dtype | None = None,
) -> SparseAutoencoder:
    """An untrained SAE whose encoder and decoder biases are drawn from N(0, 1) too.

    ``seed`` reseeds torch's global generator first; None draws from it as it stands.
    ``dtype`` converts the SAE before the biases are drawn.
    """
    if seed is not None:
        torch.manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_latent, activation, k=k, site=site)
    if dtype is not None:
        sae = sae.to(dtype)
    with torch.no_grad():
        sae.encoder.bias.normal_()
        sae.decoder.bias.normal_()
    return sae


def identity_sae(d: int, activation: str = "linear") -> SparseAutoencoder:
    """Codes equal the activations: feature l is coordinate l."""
    sae = SparseAutoencoder(d, d, activation)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.eye(d))
        sae.decoder.weight.copy_(torch.eye(d))
    return sae


def float64_head_and_sae(
    m: int = 6, k: int = 4, d: int = 5, n: int = 9, seed: int = 0
) -> tuple[nn.Linear, SparseAutoencoder, Tensor]:
    """A float64 head, an SAE with random biases, and non-negative head inputs."""
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(m, k).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(k, m, generator=generator, dtype=torch.float64))
        head.bias.copy_(torch.randn(k, generator=generator, dtype=torch.float64))
    sae = random_sae(m, d_latent=d, seed=seed, dtype=torch.float64)
    a = torch.rand(n, m, generator=generator, dtype=torch.float64) * 3
    return head, sae, a


# ---- data ----------------------------------------------------------------------------------


def labelled_clusters(
    n: int = 90,
    d: int = 6,
    classes: int = 3,
    *,
    scale: float = 2.0,
    spread: float = 1.0,
    offset: float = 0.0,
    seed: int = 0,
) -> tuple[Tensor, ActivationSet]:
    """Row i belongs to class ``i % classes`` and lies at its class centre plus noise.

    The centres are N(0, ``scale``²) draws, the noise N(0, ``spread``²), and ``offset``
    moves every row away from the origin.

    Returns:
        The (classes, d) centres and the labelled activations.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=generator) * scale
    features = centres[labels] + spread * torch.randn(n, d, generator=generator) + offset
    return centres, ActivationSet(features, labels)


def classified_clusters(n: int = 90, d: int = 6, classes: int = 3, seed: int = 0) -> tuple[HeadOnly, ActivationSet]:
    """A head that scores each class by its centre, over :func:`labelled_clusters`; it classifies most rows right."""
    centres, acts = labelled_clusters(n, d, classes, seed=seed)
    return HeadOnly.from_weights(centres, torch.zeros(classes)), acts


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """The command line refused a user's mistake: exit status 2 and one ``error:`` line holding each fragment."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("captum-salve: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def image_tree(root: Path, classes: int = 3, per_class: int = 8) -> Path:
    """An ImageFolder tree whose classes differ by where a bright square sits."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"n0{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((40, 40, 3)) * 80).astype("uint8")
            pixels[4 + 10 * c : 14 + 10 * c, 4:14] = 255
            Image.fromarray(pixels).save(folder / f"{i}.JPEG")
    return root


def trained_digits_sae(
    digits_resnet: TrainedClassifier,
) -> tuple[nn.Module, SparseAutoencoder, ClassProfile, DigitsCanvas]:
    """The digits ResNet, an SAE trained on 600 training images' head inputs, its class profile, and the test split."""
    from captum_salve.data import DigitsCanvas

    model = digits_resnet.model
    train, test = DigitsCanvas("train"), DigitsCanvas("test")
    acts = collect_activations(model, torch.utils.data.Subset(train, range(600)), progress=False)
    sae, _ = train_sae(acts, 64, epochs=20, progress=False)
    return model, sae, class_profile(sae, acts), test
