"""Data: the embedded digits canvas, and loaders for the paper's Imagenette and CIFAR-100.

The digits canvas needs no download: scikit-learn ships 1,797 real handwritten
digits (8 × 8). Each is scaled up and pasted at a random place on a larger dark
canvas, its box kept as a ground-truth mask. A planted *shared cue* (by default a
small red square shown on most images of two chosen classes, anywhere outside the
digit) is a known cross-class concept, like the paper's "tower" shared by church and
gas pump. The cue's kind, place, colour, classes and rates are settings
(:class:`CanvasConfig`), and :data:`CUE_VARIANTS` names canvases that differ in them.
"""

from __future__ import annotations

import glob
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from captum_salve.checks import check_int, check_real
from captum_salve.models import input_config

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "CUE_VARIANTS",
    "CanvasConfig",
    "CueKind",
    "CueMode",
    "CuePosition",
    "DigitsCanvas",
    "cifar100",
    "class_folders",
    "cue_probe_folder",
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
_BACKGROUND = 0.08
_TINT_STRENGTH = 0.3  # a tint moves every pixel this far towards the cue colour
# Settings added after the demo models were cached: left out of a config's key while at their defaults.
_LATER_FIELDS = ("cue_kind", "cue_position", "cue_color", "test_cue_rate")

CueKind = Literal["patch", "bar", "tint", "texture"]
CuePosition = Literal[
    "random", "top_left", "top_right", "bottom_left", "bottom_right", "top", "bottom", "left", "right"
]
CueMode = Literal["config", "all", "none", "conflicting"]
_CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
_SIDES = ("top", "bottom", "left", "right")
# Where each kind may sit: a bar runs along a whole side, a tint covers the whole image.
_POSITIONS_OF_KIND = {
    "patch": ("random", *_CORNERS, *_SIDES),
    "texture": ("random", *_CORNERS, *_SIDES),
    "bar": ("random", *_SIDES),
    "tint": ("random",),
}


@dataclass(frozen=True)
class CanvasConfig:
    """How digits-canvas images are drawn, the planted cue included.

    The defaults draw the demo's canvas: a red hollow square on 80% of the 3s and 8s,
    anywhere outside the digit, in both splits.

    Attributes:
        canvas_size: Side of the square image in pixels.
        digit_size: Side of a pasted digit in pixels.
        cue_classes: Classes whose images mostly carry the shared cue (empty: no cue).
        cue_rate: Share of those classes' training images that carry it.
        cue_size: Side of a patch or texture square, thickness of a bar, in pixels.
        noise: Standard deviation of the background noise.
        test_fraction: Share of the 1,797 digits held out for the test split.
        cue_kind: ``"patch"`` (a hollow square), ``"bar"`` (a strip along a whole side),
            ``"tint"`` (every pixel moved 30% of the way to the cue colour) or
            ``"texture"`` (a square of one-pixel checks).
        cue_position: ``"random"``: a new place outside the digit for every image (a
            random free side for a bar; the whole image for a tint); a corner
            (``"top_left"`` ...) or a side (``"top"`` ...): the same place on every
            image, and every digit (cued or not) is drawn clear of it.
        cue_color: RGB of the cue, each in [0, 1].
        test_cue_rate: Share of the cue classes' test images that carry the cue
            (None: ``cue_rate``).

    Raises:
        ValueError: A setting is out of range or does not fit the others; the message names it.

    Example:
        >>> config = CanvasConfig(canvas_size=96, cue_classes=())    # a larger canvas, no shared cue
        >>> DigitsCanvas("test", config=config).images.shape
        torch.Size([449, 3, 96, 96])
        >>> bar = CanvasConfig(cue_kind="bar", cue_position="left", cue_size=3, cue_color=(0.2, 0.4, 1.0))
        >>> DigitsCanvas("test", config=bar, cue="all").cue_masks()[0, :, :3].all()    # every image carries it
        tensor(True)
    """

    canvas_size: int = 64
    digit_size: int = 32
    cue_classes: tuple[int, ...] = (3, 8)
    cue_rate: float = 0.8
    cue_size: int = 7
    noise: float = 0.04
    test_fraction: float = 0.25
    cue_kind: CueKind = "patch"
    cue_position: CuePosition = "random"
    cue_color: tuple[float, float, float] = (1.0, 0.15, 0.15)
    test_cue_rate: float | None = None

    def __post_init__(self) -> None:
        def store(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        store("canvas_size", check_int(self.canvas_size, "CanvasConfig canvas_size", 16))
        store("cue_size", check_int(self.cue_size, "CanvasConfig cue_size", 1))
        room = self.canvas_size - 2 * self.cue_size - 4  # a cue square always fits beside the digit
        digit = check_int(self.digit_size, "CanvasConfig digit_size")
        if not 8 <= digit <= room:
            raise ValueError(
                f"CanvasConfig digit_size must be in [8, canvas_size - 2*cue_size - 4 = {room}], got {digit}"
            )
        store("digit_size", digit)
        classes = self.cue_classes
        if (
            not isinstance(classes, (tuple, list))
            or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c <= 9 for c in classes)
            or len(set(classes)) != len(classes)
        ):
            raise ValueError(f"CanvasConfig cue_classes must be digits 0-9, each once, got {classes!r}")
        store("cue_classes", tuple(int(c) for c in classes))
        for name in ("cue_rate", "test_cue_rate", "noise", "test_fraction"):
            value = getattr(self, name)
            if value is None and name == "test_cue_rate":
                continue
            value = check_real(value, f"CanvasConfig {name}", 0.0)
            if name != "noise" and not (0.0 < value < 1.0 if name == "test_fraction" else value <= 1.0):
                bounds = "(0, 1)" if name == "test_fraction" else "[0, 1]"
                raise ValueError(f"CanvasConfig {name} must be in {bounds}, got {value!r}")
            store(name, value)
        if self.cue_kind not in _POSITIONS_OF_KIND:
            raise ValueError(f"CanvasConfig cue_kind must be one of {tuple(_POSITIONS_OF_KIND)}, got {self.cue_kind!r}")
        allowed = _POSITIONS_OF_KIND[self.cue_kind]
        if self.cue_position not in allowed:
            raise ValueError(
                f"CanvasConfig cue_position must be one of {allowed} for cue_kind {self.cue_kind!r}, "
                f"got {self.cue_position!r}"
            )
        color = self.cue_color
        if (
            not isinstance(color, (tuple, list))
            or len(color) != 3
            or any(isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 <= c <= 1 for c in color)
        ):
            raise ValueError(f"CanvasConfig cue_color must be 3 numbers (R, G, B) in [0, 1], got {color!r}")
        store("cue_color", tuple(float(c) for c in color))
        if self.cue_kind == "texture" and self.cue_size < 2:
            raise ValueError("CanvasConfig cue_size must be at least 2 for a texture (a check pattern), got 1")

    def rate(self, split: str) -> float:
        """Share of the cue classes' images of ``split`` that carry the cue."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.cue_rate if split == "train" or self.test_cue_rate is None else self.test_cue_rate

    def key(self) -> dict:
        """The settings as a dict, without the cue settings that are at their defaults.

        The models cached before the cue became configurable were keyed by the first
        seven settings only; leaving defaults out keeps their keys (and files) valid.
        """
        defaults = CanvasConfig.__dataclass_fields__
        return {
            name: value
            for name, value in asdict(self).items()
            if name not in _LATER_FIELDS or value != defaults[name].default
        }


class DigitsCanvas(Dataset):
    """scikit-learn's real handwritten digits on a larger canvas, with boxes and a planted shared cue.

    Items are ``(image, label)``: a (3, S, S) float image in [0, 1] and the digit.
    Every image is drawn once, at construction, from ``seed``; the split of the
    digits into train and test is fixed, so a new ``seed`` gives new positions of
    the same digits (a fresh augmentation of the training set).

    ``cue`` chooses which images carry the cue. Canvases of one split, config and
    seed share everything else (digits, positions, noise), whatever ``cue`` is: so
    ``cue="all"`` and ``cue="none"`` are the same images with and without the cue
    (pairs for :func:`~captum_salve.analysis.cue_reliance`), and ``cue="conflicting"``
    puts it on the other classes' images only (the cue-conflicting images a shortcut
    benchmark scores).

    Args:
        split: ``"train"`` or ``"test"``.
        config: Drawing settings.
        seed: Seed for positions, cue placement and noise.
        copies: Canvases drawn per digit.
        cue: ``"config"``: the config's cue classes at the split's rate;
            ``"all"``: every image; ``"none"``: no image; ``"conflicting"``: every
            image of the classes outside ``config.cue_classes`` and none of theirs.

    Attributes:
        images: (N, 3, S, S) images.
        labels: (N,) digits.
        boxes: (N, 4) digit boxes as (top, left, bottom, right), exclusive ends.
        has_cue: (N,) whether the image carries the shared cue.
        cue_boxes: (N, 4) boxes of the pixels the cue changes (the whole image for a
            tint; all -1 where there is no cue).

    Example:
        >>> test = DigitsCanvas("test")
        >>> image, label = test[0]
        >>> image.shape, test.masks()[0].sum() == 32 * 32
        (torch.Size([3, 64, 64]), tensor(True))
        >>> with_cue, without_cue = DigitsCanvas("test", cue="all"), DigitsCanvas("test", cue="none")
        >>> outside = ~with_cue.cue_masks()[:, None]    # the pixels the cue leaves alone
        >>> torch.equal(with_cue.images * outside, without_cue.images * outside)
        True
    """

    classes = [str(d) for d in range(10)]

    def __init__(
        self,
        split: str = "train",
        *,
        config: CanvasConfig | None = None,
        seed: int = 0,
        copies: int = 1,
        cue: CueMode = "config",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies must be a positive integer, got {copies!r}")
        if cue not in get_args(CueMode):
            raise ValueError(f"cue must be one of {get_args(CueMode)}, got {cue!r}")
        if config is not None and not isinstance(config, CanvasConfig):
            raise TypeError(f"config must be a CanvasConfig or None, got {type(config).__name__}")
        self.split, self.config, self.seed, self.cue = split, config or CanvasConfig(), seed, cue
        digits, labels = _split_digits(split, self.config.test_fraction)
        digits, labels = digits.repeat(copies, 1, 1), labels.repeat(copies)
        self.labels = labels
        generator = torch.Generator().manual_seed(seed * 2 + SPLITS.index(split))
        self.images, self.boxes, self.has_cue, self.cue_boxes = _draw(
            digits, labels, self.config, self.config.rate(split), cue, generator
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def masks(self) -> Tensor:
        """(N, S, S) boolean ground-truth masks of the digits' boxes."""
        return _box_masks(self.boxes, self.config.canvas_size)

    def cue_masks(self) -> Tensor:
        """(N, S, S) boolean masks of the pixels the cue changes (all of them for a tint; none without a cue)."""
        return _box_masks(self.cue_boxes, self.config.canvas_size)


# Canvases whose cue differs from the demo's in kind, place, colour, classes and rates.
# "tuning" ones may be used to develop and choose the package's methods and defaults;
# "held_out" ones only to report how those carry over: never choose a default, a
# threshold or a method by looking at them, or they stop being held out.
CUE_VARIANTS: dict[str, dict[str, CanvasConfig]] = {
    "tuning": {
        "patch-corner-green-1-7": CanvasConfig(
            cue_classes=(1, 7), cue_position="top_right", cue_color=(0.15, 0.9, 0.15)
        ),
        "bar-left-blue-2-5": CanvasConfig(
            cue_classes=(2, 5), cue_kind="bar", cue_position="left", cue_size=3, cue_color=(0.2, 0.4, 1.0),
            cue_rate=0.9, test_cue_rate=0.5,
        ),
        "tint-yellow-0-6": CanvasConfig(cue_classes=(0, 6), cue_kind="tint", cue_color=(1.0, 0.9, 0.2), cue_rate=0.7),
        "texture-cyan-4-9": CanvasConfig(cue_classes=(4, 9), cue_kind="texture", cue_color=(0.1, 0.9, 0.9)),
    },
    "held_out": {
        "texture-corner-magenta-3-5": CanvasConfig(
            cue_classes=(3, 5), cue_kind="texture", cue_position="bottom_left", cue_size=6,
            cue_color=(0.9, 0.2, 0.9), cue_rate=0.9, test_cue_rate=0.5,
        ),
        "bar-orange-6-9": CanvasConfig(
            cue_classes=(6, 9), cue_kind="bar", cue_size=2, cue_color=(1.0, 0.55, 0.1), cue_rate=0.75
        ),
        "patch-bottom-purple-0-2": CanvasConfig(
            cue_classes=(0, 2), cue_position="bottom", cue_size=5, cue_color=(0.6, 0.2, 1.0), cue_rate=0.85
        ),
        "tint-cyan-1-4": CanvasConfig(
            cue_classes=(1, 4), cue_kind="tint", cue_color=(0.2, 0.8, 1.0), test_cue_rate=0.3
        ),
    },
}  # fmt: skip


def _split_digits(split: str, test_fraction: float) -> tuple[Tensor, Tensor]:
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = round(len(labels) * test_fraction)
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return images[chosen], labels[chosen]


def _draw(
    digits: Tensor, labels: Tensor, cfg: CanvasConfig, rate: float, cue: str, generator: torch.Generator
) -> tuple[Tensor, ...]:
    # Everything but the cue is drawn first, from the same stream whatever ``cue`` is:
    # that is what makes canvases that differ only in ``cue`` pairs.
    n, size, d = len(labels), cfg.canvas_size, cfg.digit_size
    strokes = F.interpolate(digits[:, None], size=(d, d), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (torch.randn(n, 3, size, size, generator=generator) * cfg.noise + _BACKGROUND).clamp(0, 1)
    tops, lefts = _digit_corners(n, cfg, generator)
    boxes = torch.stack([tops, lefts, tops + d, lefts + d], dim=1)
    cue_class = torch.isin(labels, torch.tensor(cfg.cue_classes, dtype=torch.long))
    drawn = torch.rand(n, generator=generator) < rate
    has_cue = {
        "config": cue_class & drawn,
        "all": torch.ones(n, dtype=torch.bool),
        "none": torch.zeros(n, dtype=torch.bool),
        "conflicting": ~cue_class,
    }[cue]
    cue_boxes = torch.full((n, 4), -1, dtype=torch.long)
    for i in range(n):
        top, left = int(tops[i]), int(lefts[i])
        region = images[i, :, top : top + d, left : left + d]
        images[i, :, top : top + d, left : left + d] = torch.maximum(region, strokes[i])
        if has_cue[i]:
            cue_boxes[i] = torch.tensor(_cue_box(boxes[i], cfg, generator))
            _paint_cue(images[i], cue_boxes[i].tolist(), cfg)
    return images, boxes, has_cue, cue_boxes


def _digit_corners(n: int, cfg: CanvasConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Top-left corners of the digits: anywhere, or clear of a cue that always sits in the same place."""
    size, d = cfg.canvas_size, cfg.digit_size
    tops = torch.randint(0, size - d + 1, (n,), generator=generator)
    lefts = torch.randint(0, size - d + 1, (n,), generator=generator)
    if cfg.cue_position == "random":
        return tops, lefts
    top, left, bottom, right = _fixed_box(cfg.cue_kind, cfg.cue_position, size, cfg.cue_size)
    # every digit, cued or not, keeps 1 pixel clear of the cue's place: where the digit sits says nothing of the cue
    while (clash := ~_clear(tops, lefts, tops + d, lefts + d, top, left, bottom, right)).any():
        again = int(clash.sum())
        tops[clash] = torch.randint(0, size - d + 1, (again,), generator=generator)
        lefts[clash] = torch.randint(0, size - d + 1, (again,), generator=generator)
    return tops, lefts


def _clear(
    top: Tensor | int,
    left: Tensor | int,
    bottom: Tensor | int,
    right: Tensor | int,
    other_top: int,
    other_left: int,
    other_bottom: int,
    other_right: int,
) -> Tensor | bool:
    """Whether a box (ints, or tensors of many boxes) keeps at least 1 pixel clear of another."""
    return (bottom <= other_top - 1) | (top >= other_bottom + 1) | (right <= other_left - 1) | (left >= other_right + 1)


def _fixed_box(kind: str, place: str, size: int, c: int) -> tuple[int, int, int, int]:
    """The cue's box at a corner or side: a bar spans the side, a square sits in the corner or the side's middle."""
    if kind == "bar":
        return {"top": (0, 0, c, size), "bottom": (size - c, 0, size, size),
                "left": (0, 0, size, c), "right": (0, size - c, size, size)}[place]  # fmt: skip
    middle, far = (size - c) // 2, size - c
    top = middle if place in ("left", "right") else 0 if place.startswith("top") else far
    left = middle if place in ("top", "bottom") else 0 if place.endswith("left") else far
    return top, left, top + c, left + c


def _cue_box(box: Tensor, cfg: CanvasConfig, generator: torch.Generator) -> tuple[int, int, int, int]:
    """The box of the pixels the cue changes on an image whose digit sits in ``box``."""
    size, c = cfg.canvas_size, cfg.cue_size
    if cfg.cue_kind == "tint":
        return 0, 0, size, size
    if cfg.cue_position != "random":
        return _fixed_box(cfg.cue_kind, cfg.cue_position, size, c)
    if cfg.cue_kind == "bar":
        top, left, bottom, right = box.tolist()
        # the digit leaves at least one side free: canvas_size - digit_size >= 2 * cue_size + 4
        gaps = (top, size - bottom, left, size - right)
        free = [side for side, gap in zip(_SIDES, gaps, strict=True) if gap >= c + 1]
        side = free[int(torch.randint(0, len(free), (1,), generator=generator))]
        return _fixed_box("bar", side, size, c)
    y, x = _place_outside(box, size, c, generator)
    return y, x, y + c, x + c


def _paint_cue(image: Tensor, box: list[int], cfg: CanvasConfig) -> None:
    top, left, bottom, right = box
    color = torch.tensor(cfg.cue_color)[:, None, None]
    if cfg.cue_kind == "tint":
        image.lerp_(color.expand_as(image), _TINT_STRENGTH)
        return
    image[:, top:bottom, left:right] = color
    if cfg.cue_kind == "patch":  # hollow: a frame two pixels wide
        image[:, top + 2 : bottom - 2, left + 2 : right - 2] = _BACKGROUND
    elif cfg.cue_kind == "texture":  # one-pixel checks of the colour and the background
        rows, cols = torch.meshgrid(torch.arange(bottom - top), torch.arange(right - left), indexing="ij")
        image[:, top:bottom, left:right][:, (rows + cols) % 2 == 1] = _BACKGROUND


def _place_outside(box: Tensor, size: int, side: int, generator: torch.Generator) -> tuple[int, int]:
    """A top-left corner for a side × side square that keeps 1 pixel clear of ``box``."""
    top, left, bottom, right = box.tolist()
    while True:
        y, x = torch.randint(0, size - side + 1, (2,), generator=generator).tolist()
        if _clear(y, x, y + side, x + side, top, left, bottom, right):
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
    root, paths = _sample_paths(images)
    return _load_masks(_matching_files(paths, root, masks_root, "mask"), model)


def cue_probe_folder(root: str | Path, model: nn.Module) -> tuple[Tensor, Tensor, Tensor | None]:
    """Paired images with and without a suspected cue, prepared for the model, and where the cue is.

    The layout: ``root/with_cue/...`` and ``root/without_cue/...`` hold the same file names
    (sub-folders allowed), each pair the same image with and without the cue; optional
    ``root/cue_masks/...`` marks the cue in each ``with_cue`` image (non-zero inside), cut
    as :func:`folder_masks` cuts masks. All are read into memory: a probe is a few hundred pairs.

    Returns:
        ``(with_cue, without_cue, masks)``: (N, C, H, W) model inputs twice, and (N, H, W)
        boolean masks or None.

    Raises:
        FileNotFoundError: A folder is missing or empty, or an image has no partner (or mask).

    Example:
        >>> with_cue, without_cue, masks = cue_probe_folder("probe", model)
        >>> cue_reliance(model, sae, with_cue, without_cue).table(5)
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root)
    with_root = root / "with_cue"
    if not with_root.is_dir():
        raise FileNotFoundError(f"probe folder {str(root)!r} has no with_cue/ folder (and without_cue/ beside it)")
    paths = sorted(p for p in with_root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"{str(with_root)!r} holds no images")
    partners = _matching_files(paths, with_root, root / "without_cue", "partner without the cue")
    transform = model_transform(model)
    with_cue, without_cue = (torch.stack([transform(load_rgb(path)) for path in files]) for files in (paths, partners))
    masks = None
    if (root / "cue_masks").exists():
        masks = _load_masks(_matching_files(paths, with_root, root / "cue_masks", "cue mask"), model)
    return with_cue, without_cue, masks


def _matching_files(paths: list[Path], root: Path, other_root: str | Path, what: str) -> list[Path]:
    """For each file under ``root``, the file of the same relative name (any extension) under ``other_root``."""
    other_root = Path(other_root)
    if not other_root.is_dir():
        raise FileNotFoundError(f"{what} folder {str(other_root)!r} does not exist")
    found, missing = [], []
    for path in paths:
        relative = path.relative_to(root)
        candidates = sorted(other_root.joinpath(relative.parent).glob(f"{glob.escape(relative.stem)}.*"))
        (found if candidates else missing).append(candidates[0] if candidates else relative)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images have no {what} in {str(other_root)!r}: e.g. no "
            f"{str(other_root / missing[0].parent / missing[0].stem)!r}.* for {str(root / missing[0])!r}"
        )
    return found


def _load_masks(paths: list[Path], model: nn.Module) -> Tensor:
    """Mask images (non-zero inside) resized and cropped as the model's eval transform treats images."""
    from timm.data import create_transform

    geometry = {**input_config(model), "interpolation": "nearest", "mean": (0.0,) * 3, "std": (1.0,) * 3}
    transform = create_transform(**geometry, is_training=False)
    masks = torch.stack([transform(load_rgb(path))[0] > 0 for path in paths])
    empty = [str(paths[i]) for i in torch.nonzero(~masks.flatten(1).any(1)).flatten().tolist()]
    if empty:
        raise ValueError(f"{len(empty)} masks mark nothing after the model's resize and crop, e.g. {empty[0]!r}")
    return masks


def _sample_paths(images: Dataset) -> tuple[Path, list[Path]]:
    """The root and the image files of an ImageFolder or a (nested) Subset of one, in dataset order."""
    from torchvision.datasets import ImageFolder

    index = None
    while isinstance(images, Subset):
        index = [images.indices[i] for i in index] if index is not None else list(images.indices)
        images = images.dataset
    if not isinstance(images, ImageFolder):
        raise ValueError(f"images must be an ImageFolder or a Subset of one, got {type(images).__name__}")
    samples = [Path(path) for path, _ in images.samples]
    return Path(images.root), samples if index is None else [samples[i] for i in index]


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
