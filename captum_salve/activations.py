"""Collect a site's activations over a dataset into an :class:`ActivationSet`."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from captum_salve.checks import check_int, check_labels, raised_in, shape_of
from captum_salve.files import atomic_path
from captum_salve.models import model_input, model_label
from captum_salve.sites import HEAD_INPUT, Site, eval_mode, on_device, recording

__all__ = [
    "ActivationSet",
    "ImageData",
    "check_activation_set",
    "collect_activations",
    "iter_batches",
    "require_labels",
]

ImageData = Dataset | DataLoader | Tensor


@dataclass
class ActivationSet:
    """Activations of one site over a dataset.

    Attributes:
        features: (N, M) float tensor, one row per image.
        labels: (N,) class indices, or None when the data had none.
        site: Key of the site the rows were read at: ``"head_input"`` (the default)
            or ``"<module>:<reducer>"`` (see :meth:`~captum_salve.sites.Site.from_key`).
        model: Name of the model they were read from, when known (recorded by
            :func:`collect_activations`, carried on to the SAEs trained on them).

    Example:
        >>> acts = ActivationSet(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> len(acts), acts.dim, acts.num_classes
        (6, 4, 3)
        >>> acts.subset(acts.labels == 2).features.shape
        torch.Size([2, 4])
    """

    features: Tensor
    labels: Tensor | None = None
    site: str = HEAD_INPUT
    model: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.features, Tensor) or self.features.dim() != 2:
            raise ValueError(f"features must be an (N, M) tensor, got {shape_of(self.features)}")
        if self.labels is not None:
            self.labels = check_labels(self.labels)
            if len(self.labels) != len(self.features):
                raise ValueError(
                    f"labels must be an ({len(self.features)},) tensor matching features, got {len(self.labels)} labels"
                )

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        """M, the width of one activation vector."""
        return self.features.shape[1]

    @property
    def num_classes(self) -> int:
        """1 + the largest label (labels are class indices)."""
        return int(self.require_labels().max()) + 1

    def require_labels(self) -> Tensor:
        """The labels, or an error saying that this use needs them."""
        return require_labels(self.labels)

    def subset(self, index: Tensor) -> ActivationSet:
        """The rows selected by a boolean mask or an index tensor."""
        labels = self.labels[index] if self.labels is not None else None
        return ActivationSet(self.features[index], labels, self.site, self.model)

    def save(self, path: str | Path) -> None:
        """Write the set to one ``.safetensors`` file (atomically)."""
        tensors = {"features": self.features.contiguous()}
        if self.labels is not None:
            tensors["labels"] = self.labels.contiguous()
        with atomic_path(path) as tmp:
            metadata = {"site": self.site, "format": json.dumps({"version": 1})}
            if self.model is not None:
                metadata["model"] = self.model
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> ActivationSet:
        """Read a set written by :meth:`save`."""
        if not Path(path).is_file():
            raise ValueError(f"{str(path)!r} is not a file; pass the .safetensors file ActivationSet.save wrote")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except SafetensorError as error:
            raise ValueError(f"{str(path)!r} is not a valid activation file: {error}") from None
        if "features" not in tensors:
            raise ValueError(f"{str(path)!r} holds no 'features' tensor; it was not written by ActivationSet.save")
        return cls(tensors["features"], tensors.get("labels"), metadata.get("site", HEAD_INPUT), metadata.get("model"))


def require_labels(labels: Tensor | None) -> Tensor:
    """Activations' labels, or the error saying that this use needs them (in memory or on disk alike).

    Example:
        >>> require_labels(None)
        Traceback (most recent call last):
        ValueError: these activations carry no labels; collect them from a dataset that yields (image, label)
    """
    if labels is None:
        raise ValueError("these activations carry no labels; collect them from a dataset that yields (image, label)")
    return labels


def check_activation_set(value: object, name: str) -> ActivationSet:
    """Refuse anything but an :class:`ActivationSet`, saying how to make one from a tensor.

    Example:
        >>> check_activation_set(torch.randn(4, 3), "data")
        Traceback (most recent call last):
        TypeError: data must be an ActivationSet, got Tensor; wrap the rows in ActivationSet(features, labels)
    """
    if not isinstance(value, ActivationSet):
        raise TypeError(
            f"{name} must be an ActivationSet, got {type(value).__name__}; "
            "wrap the rows in ActivationSet(features, labels)"
        )
    return value


def iter_batches(data: ImageData, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (images, labels or None) batches from a tensor, a Dataset or a DataLoader.

    A Dataset is read in order (no shuffling); a DataLoader keeps its own batch size.

    Example:
        >>> [(len(images), labels) for images, labels in iter_batches(torch.rand(10, 3, 8, 8), 4)]
        [(4, None), (4, None), (2, None)]
    """
    if isinstance(data, Tensor):
        if data.dim() != 4:
            raise ValueError(f"data as a tensor must be images of shape (N, C, H, W), got {tuple(data.shape)}")
        for start in range(0, len(data), batch_size):
            yield data[start : start + batch_size], None
        return
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, DataLoader):
        raise TypeError(f"data must be an image tensor, a Dataset or a DataLoader, got {type(data).__name__}")
    for batch in _batches_of(data):
        if isinstance(batch, (list, tuple)) and len(batch) == 1:
            batch = batch[0]
        if isinstance(batch, Tensor):
            yield batch, None
        elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
            yield batch[0], check_labels(batch[1], "data's labels")
        else:
            raise ValueError("each batch must be images or (images, labels, ...)")


def _batches_of(loader: DataLoader) -> Iterator:
    """The loader's batches; items it cannot stack (a PIL image without a transform) are named as data's fault."""
    batches = iter(loader)
    while True:
        try:
            yield next(batches)
        except StopIteration:
            return
        except TypeError as error:
            origin = raised_in(error)  # torch's batch collation, or the dataset's own error (passed on as it is)
            if origin is None or "collate" not in origin.name:
                raise
            raise TypeError(
                f"data's items cannot be stacked into a batch ({error}); a Dataset must yield (image tensor, label), "
                "e.g. an ImageFolder with a transform that ends in a tensor (data.model_transform)"
            ) from None


def _batch_count(data: ImageData, batch_size: int) -> int | None:
    if isinstance(data, DataLoader):
        return len(data)
    try:
        return -(-len(data) // batch_size)
    except TypeError:
        return None


def collect_activations(
    model: nn.Module,
    data: ImageData,
    site: Site | str | None = None,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ActivationSet:
    """Run ``model`` over ``data`` and keep one activation vector per image at ``site``.

    The model runs in eval mode under ``torch.inference_mode()``; each module's
    train/eval mode is restored afterwards and the hook is always removed. Rows
    are copied out to the CPU, never aliased to a buffer a later in-place op changes.

    Args:
        model: A classifier (timm or torchvision ResNet / ViT, or any model whose
            head :func:`~captum_salve.models.find_head` recognises).
        data: Images as an (N, C, H, W) tensor, a Dataset of (image, label), or a DataLoader.
        site: Where to read: a Site or its key (``"layer3:spatial_mean"``); default the
            classifier head's input (pre-logits).
        batch_size: Images per forward pass when ``data`` is not a DataLoader.
        device: Where to run; default the model's device. The model is moved there
            for the call and back after.
        progress: Show a progress bar.

    Returns:
        The activations, with labels when the data yields them.

    Example:
        >>> model = timm.create_model("resnet18", num_classes=10)
        >>> acts = collect_activations(model, torch.rand(8, 3, 64, 64), progress=False)
        >>> acts.features.shape
        torch.Size([8, 512])
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    if isinstance(site, str):
        site = Site.from_key(site)
    if site is not None and not isinstance(site, Site):
        raise TypeError(f"site must be a Site, a site key such as 'layer3:spatial_mean', or None, got {site!r}")
    bound = (site or Site()).bind(model)
    features, labels = [], []
    batches = iter_batches(data, batch_size)
    bar = tqdm(batches, total=_batch_count(data, batch_size), desc=f"activations @ {bound.name}", disable=not progress)
    with on_device(model, device), eval_mode(model), recording(model, bound) as rec, torch.inference_mode():
        for images, batch_labels in bar:
            model(model_input(model, images, "data"))
            features.append(rec.take().detach().to("cpu", torch.float32, copy=True))
            if batch_labels is not None:
                labels.append(batch_labels.to("cpu", torch.long))
    if not features:
        raise ValueError("data is empty: no images to collect activations from")
    if labels and len(labels) != len(features):
        raise ValueError("some batches carried labels and others did not")
    rows = torch.cat(features)
    bad = (~torch.isfinite(rows)).any(dim=1)
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} of {len(rows)} activation rows hold NaN or Inf (the first from image "
            f"{int(bad.nonzero()[0])}); check those images. train_sae and the analyses refuse such rows",
            stacklevel=2,
        )
    return ActivationSet(rows, torch.cat(labels) if labels else None, bound.key, model_label(model))
