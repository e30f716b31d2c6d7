"""Data: the embedded digits canvas, and loaders for the paper's Imagenette and CIFAR-100.

The digits canvas needs no download: scikit-learn ships 1,797 real handwritten
digits (8 × 8). Each is scaled up and pasted at a random place on a larger dark
canvas, its box kept as a ground-truth mask. A planted *shared cue* (a small red
square shown on most images of two chosen classes, anywhere outside the digit)
is a known cross-class concept, like the paper's "tower" shared by church and gas pump.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from captum_salve.models import input_config

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "CanvasConfig",
    "DigitsCanvas",
    "cifar100",
    "class_folders",
    "folder_masks",
    "image_folder",
    "imagenet_classes",
    "load_rgb",
    "model_transform",
]

# PIL modes of grey images deeper than 8 bits, which a plain convert("RGB") clips at 255.
_DEEP_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

SPLITS = ("train", "test")
_SPLIT_SEED = 1234  # which digits are held out never changes with the canvas seed
_CUE_COLOR = (1.0, 0.15, 0.15)


@dataclass(frozen=True)
class CanvasConfig:
    """How digits-canvas images are drawn.

    Attributes:
        canvas_size: Side of the square image in pixels.
        digit_size: Side of a pasted digit in pixels.
        cue_classes: Classes whose images mostly carry the shared cue (empty: no cue).
        cue_rate: Share of those classes' images that carry it.
        cue_size: Side of the cue square in pixels.
        noise: Standard deviation of the background noise.
        test_fraction: Share of the 1,797 digits held out for the test split.

    Example:
        >>> config = CanvasConfig(canvas_size=96, cue_classes=())    # a larger canvas, no shared cue
        >>> DigitsCanvas("test", config=config).images.shape
        torch.Size([449, 3, 96, 96])
    """

    canvas_size: int = 64
    digit_size: int = 32
    cue_classes: tuple[int, ...] = (3, 8)
    cue_rate: float = 0.8
    cue_size: int = 7
    noise: float = 0.04
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        if not 8 <= self.digit_size <= self.canvas_size - 2 * self.cue_size - 4:
            raise ValueError(
                "digit_size must be in "
                f"[8, canvas_size - 2*cue_size - 4 = {self.canvas_size - 2 * self.cue_size - 4}], "
                f"got {self.digit_size}"
            )
        if not 0.0 <= self.cue_rate <= 1.0 or not 0.0 < self.test_fraction < 1.0:
            raise ValueError("cue_rate must be in [0, 1] and test_fraction in (0, 1)")
        if any(not 0 <= c <= 9 for c in self.cue_classes):
            raise ValueError(f"cue_classes must be digits 0-9, got {self.cue_classes}")


class DigitsCanvas(Dataset):
    """scikit-learn's real handwritten digits on a larger canvas, with boxes and a planted shared cue.

    Items are ``(image, label)``: a (3, S, S) float image in [0, 1] and the digit.
    Every image is drawn once, at construction, from ``seed``; the split of the
    digits into train and test is fixed, so a new ``seed`` gives new positions of
    the same digits (a fresh augmentation of the training set).

    Args:
        split: ``"train"`` or ``"test"``.
        config: Drawing settings.
        seed: Seed for positions, cue placement and noise.
        copies: Canvases drawn per digit.

    Attributes:
        images: (N, 3, S, S) images.
        labels: (N,) digits.
        boxes: (N, 4) digit boxes as (top, left, bottom, right), exclusive ends.
        has_cue: (N,) whether the image carries the shared cue.
        cue_boxes: (N, 4) cue boxes (all -1 where there is no cue).

    Example:
        >>> test = DigitsCanvas("test")
        >>> image, label = test[0]
        >>> image.shape, test.masks()[0].sum() == 32 * 32
        (torch.Size([3, 64, 64]), tensor(True))
    """

    classes = [str(d) for d in range(10)]

    def __init__(
        self, split: str = "train", *, config: CanvasConfig | None = None, seed: int = 0, copies: int = 1
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies must be a positive integer, got {copies!r}")
        self.split, self.config, self.seed = split, config or CanvasConfig(), seed
        digits, labels = _split_digits(split, self.config.test_fraction)
        digits, labels = digits.repeat(copies, 1, 1), labels.repeat(copies)
        self.labels = labels
        generator = torch.Generator().manual_seed(seed * 2 + SPLITS.index(split))
        self.images, self.boxes, self.has_cue, self.cue_boxes = _draw(digits, labels, self.config, generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def masks(self) -> Tensor:
        """(N, S, S) boolean ground-truth masks of the digits' boxes."""
        return _box_masks(self.boxes, self.config.canvas_size)

    def cue_masks(self) -> Tensor:
        """(N, S, S) boolean masks of the cue squares (empty where there is none)."""
        return _box_masks(self.cue_boxes, self.config.canvas_size)


def _split_digits(split: str, test_fraction: float) -> tuple[Tensor, Tensor]:
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = round(len(labels) * test_fraction)
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return images[chosen], labels[chosen]


def _draw(digits: Tensor, labels: Tensor, cfg: CanvasConfig, generator: torch.Generator) -> tuple[Tensor, ...]:
    n, size, d = len(labels), cfg.canvas_size, cfg.digit_size
    strokes = F.interpolate(digits[:, None], size=(d, d), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (torch.randn(n, 3, size, size, generator=generator) * cfg.noise + 0.08).clamp(0, 1)
    tops = torch.randint(0, size - d + 1, (n,), generator=generator)
    lefts = torch.randint(0, size - d + 1, (n,), generator=generator)
    boxes = torch.stack([tops, lefts, tops + d, lefts + d], dim=1)
    cue_class = torch.isin(labels, torch.tensor(cfg.cue_classes, dtype=torch.long))
    has_cue = cue_class & (torch.rand(n, generator=generator) < cfg.cue_rate)
    cue_boxes = torch.full((n, 4), -1, dtype=torch.long)
    cue_color = torch.tensor(_CUE_COLOR)[:, None, None]
    for i in range(n):
        top, left = int(tops[i]), int(lefts[i])
        region = images[i, :, top : top + d, left : left + d]
        images[i, :, top : top + d, left : left + d] = torch.maximum(region, strokes[i])
        if has_cue[i]:
            cue_top, cue_left = _place_outside(boxes[i], size, cfg.cue_size, generator)
            c = cfg.cue_size
            images[i, :, cue_top : cue_top + c, cue_left : cue_left + c] = cue_color
            images[i, :, cue_top + 2 : cue_top + c - 2, cue_left + 2 : cue_left + c - 2] = 0.08
            cue_boxes[i] = torch.tensor([cue_top, cue_left, cue_top + c, cue_left + c])
    return images, boxes, has_cue, cue_boxes


def _place_outside(box: Tensor, size: int, side: int, generator: torch.Generator) -> tuple[int, int]:
    """A top-left corner for a side × side square that keeps 1 pixel clear of ``box``."""
    top, left, bottom, right = box.tolist()
    while True:
        y, x = torch.randint(0, size - side + 1, (2,), generator=generator).tolist()
        if y + side <= top - 1 or y >= bottom + 1 or x + side <= left - 1 or x >= right + 1:
            return y, x


def _box_masks(boxes: Tensor, size: int) -> Tensor:
    rows = torch.arange(size)
    inside_rows = (rows[None] >= boxes[:, 0:1]) & (rows[None] < boxes[:, 2:3])
    inside_cols = (rows[None] >= boxes[:, 1:2]) & (rows[None] < boxes[:, 3:4])
    return inside_rows[:, :, None] & inside_cols[:, None, :]


def model_transform(model: nn.Module, *, train: bool = False) -> Callable[[Image.Image], Tensor]:
    """The timm eval (or train) transform for a model, from its data config.

    torchvision models get timm's defaults: 224 × 224, ImageNet mean and std.

    Example:
        >>> transform = model_transform(timm.create_model("resnet18"))
        >>> transform(PIL.Image.new("RGB", (320, 240))).shape
        torch.Size([3, 224, 224])
    """
    from timm.data import create_transform

    return create_transform(**input_config(model), is_training=train)


def class_folders(root: str | Path) -> list[str]:
    """The classes of an ``ImageFolder`` tree, its sub-folder names in sorted order, read without opening an image.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no class folders.

    Example:
        >>> class_folders("imagenette2/train")[:2]
        ['n01440764', 'n02102040']
    """
    from torchvision.datasets.folder import find_classes

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    try:
        return find_classes(str(root))[0]
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"data folder {str(root)!r} holds no class sub-folders (root/<class>/<image>): {error}"
        ) from None


def image_folder(root: str | Path, model: nn.Module, *, train: bool = False) -> Dataset:
    """An ``ImageFolder`` tree (one folder per class; Imagenette's layout as it is) with the model's transform.

    The transform follows the model's data config (:func:`~captum_salve.models.input_config`):
    size, interpolation, crop, mean and std, as :func:`~captum_salve.models.create_model` set them.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no class folders with images.

    Example:
        >>> train = image_folder("imagenette2/train", model, train=True)
        >>> train.classes[:2]
        ['n01440764', 'n02102040']
        >>> model = keep_classes(model, imagenet_classes(train.classes))    # ImageNet's head, cut to the ten classes
    """
    from torchvision.datasets import ImageFolder

    class_folders(root)
    try:
        return ImageFolder(str(root), transform=model_transform(model, train=train), loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as error:
        raise FileNotFoundError(
            f"data folder {str(root)!r} holds no images in class sub-folders (root/<class>/<image>): {error}"
        ) from None


def folder_masks(images: Dataset, masks_root: str | Path, model: nn.Module) -> Tensor:
    """Object masks of an ImageFolder's images, read from a tree of the same layout and cut as the images are.

    The mask of ``<data>/<class>/<name>.<ext>`` is ``<masks_root>/<class>/<name>.<any image ext>``:
    an image whose non-zero pixels mark the object (a PNG of 0 and 255, say). It is resized
    and cropped exactly as the model's eval transform treats the image (the same data config,
    with nearest-neighbour interpolation), so mask pixel (i, j) covers model-input pixel (i, j).

    Args:
        images: The ImageFolder (or a ``Subset`` of one) the masks belong to.
        masks_root: The mask tree.
        model: The model whose data config prepares the images.

    Returns:
        (N, H, W) boolean masks, one per image in dataset order.

    Raises:
        FileNotFoundError: ``masks_root`` is missing, or images have no mask (the count and the first are named).
        ValueError: ``images`` is not an ImageFolder or a Subset of one, or a mask is empty.

    Example:
        >>> test = image_folder("shapes/val", model)
        >>> masks = folder_masks(test, "shapes/val-masks", model)    # shapes/val-masks/<class>/<name>.png
        >>> masks.shape == (len(test), *input_config(model)["input_size"][1:])
        True
    """
    from timm.data import create_transform

    paths = _sample_paths(images)
    masks_root = Path(masks_root)
    if not masks_root.is_dir():
        raise FileNotFoundError(f"mask folder {str(masks_root)!r} does not exist")
    found, missing = [], []
    for path in paths:
        candidates = sorted(masks_root.joinpath(path.parent.name).glob(f"{glob.escape(path.stem)}.*"))
        (found if candidates else missing).append(candidates[0] if candidates else path)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images have no mask in {str(masks_root)!r}: e.g. no "
            f"{str(masks_root / missing[0].parent.name / missing[0].stem)!r}.* for {str(missing[0])!r}"
        )
    geometry = {**input_config(model), "interpolation": "nearest", "mean": (0.0,) * 3, "std": (1.0,) * 3}
    transform = create_transform(**geometry, is_training=False)
    masks = torch.stack([transform(load_rgb(path))[0] > 0 for path in found])
    empty = [str(found[i]) for i in torch.nonzero(~masks.flatten(1).any(1)).flatten().tolist()]
    if empty:
        raise ValueError(f"{len(empty)} masks mark nothing after the model's resize and crop, e.g. {empty[0]!r}")
    return masks


def _sample_paths(images: Dataset) -> list[Path]:
    """The image files of an ImageFolder or a (nested) Subset of one, in dataset order."""
    from torchvision.datasets import ImageFolder

    index = None
    while isinstance(images, Subset):
        index = [images.indices[i] for i in index] if index is not None else list(images.indices)
        images = images.dataset
    if not isinstance(images, ImageFolder):
        raise ValueError(f"images must be an ImageFolder or a Subset of one, got {type(images).__name__}")
    samples = [Path(path) for path, _ in images.samples]
    return samples if index is None else [samples[i] for i in index]


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as 8-bit RGB; 16-bit grey images are scaled by their depth, not clipped at 255.

    Example:
        >>> np.asarray(load_rgb("scan-16bit.png")).max()     # a 16-bit scan whose brightest pixel is 65535
        255
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in _DEEP_GREY_MODES:
                values = np.asarray(image, dtype=np.float64)
                depth = 65535.0 if image.mode.startswith("I;16") or values.max() <= 65535 else float(2**32 - 1)
                return Image.fromarray(np.round(values.clip(0, None) / depth * 255).astype(np.uint8)).convert("RGB")
            return image.convert("RGB")
    except (FileNotFoundError, PermissionError):
        raise
    except (UnidentifiedImageError, OSError, ValueError) as error:  # truncated, corrupt or not an image
        raise ValueError(f"the image file {str(path)!r} cannot be read ({error}); fix or remove it") from None


def imagenet_classes(folders: list[str]) -> list[int]:
    """ImageNet-1k head rows of class folders named by WordNet id (Imagenette's ``n01440764`` ...).

    Raises:
        ValueError: A folder name is not an ImageNet-1k WordNet id.

    Example:
        >>> imagenet_classes(["n01440764", "n02102040"])
        [0, 217]
    """
    from timm.data import ImageNetInfo

    index = {name: i for i, name in enumerate(ImageNetInfo().label_names())}
    unknown = [name for name in folders if name not in index]
    if unknown:
        raise ValueError(f"class folders {unknown[:3]} are not ImageNet-1k WordNet ids (like Imagenette's 'n01440764')")
    return [index[name] for name in folders]


def cifar100(root: str | Path, model: nn.Module, *, train: bool = False) -> Dataset:
    """CIFAR-100 from a local root (the ``cifar-100-python`` folder inside it), with the model's transform.

    Raises:
        FileNotFoundError: The dataset is not under ``root`` (it is never downloaded here).

    Example:
        >>> test = cifar100("data", model)    # reads data/cifar-100-python/
        >>> test_acts = collect_activations(model, test, batch_size=128)
    """
    from torchvision.datasets import CIFAR100

    try:
        return CIFAR100(str(root), train=train, download=False, transform=model_transform(model, train=train))
    except RuntimeError as error:
        raise FileNotFoundError(
            f"CIFAR-100 was not found under {str(root)!r} (expected {str(Path(root) / 'cifar-100-python')!r}): {error}"
        ) from None
