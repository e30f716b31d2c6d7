"""Fingerprints of what a run is computed from: a rerun on other weights or other images gets no stale results."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["data_fingerprint", "model_fingerprint", "tensor_fingerprint"]


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state: every tensor's name, dtype, shape and values.

    Example:
        >>> model_fingerprint(model) == model_fingerprint(copy.deepcopy(model))
        True
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        _update(digest, tensor)
    return digest.hexdigest()


def data_fingerprint(data: Dataset) -> str:
    """SHA-256 of a labelled dataset, from what identifies it without reading every image.

    That is the file list of an ``ImageFolder`` (paths, labels, sizes, modification
    times) with its transform (the data config: size, crop, mean, std), the tensors of
    a ``TensorDataset``, a ``Subset``'s indices with its dataset's fingerprint, and for
    any other dataset its length and a few of its items.

    Example:
        >>> data_fingerprint(image_folder("imagenette2/val", model))[:12]
        '3f0c5e1b9a2d'
    """
    digest = hashlib.sha256(f"{type(data).__name__}\0{len(data)}\0".encode())
    if isinstance(data, Subset):
        digest.update(data_fingerprint(data.dataset).encode())
        digest.update(str(list(data.indices)).encode())
    elif isinstance(getattr(data, "samples", None), list):
        for path, label in data.samples:
            stat = os.stat(path)
            digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        digest.update(repr(getattr(data, "transform", None)).encode())  # timm's transforms show every setting
    elif isinstance(data, TensorDataset):
        for tensor in data.tensors:
            _update(digest, tensor)
    elif len(data):  # no file list: its first, middle and last items stand for it
        for index in sorted({0, len(data) // 2, len(data) - 1}):
            _update_item(digest, data[index])
    return digest.hexdigest()


def tensor_fingerprint(tensor: Tensor | None) -> str | None:
    """SHA-256 of a tensor's dtype, shape and values (None for None).

    Example:
        >>> tensor_fingerprint(torch.zeros(2, dtype=torch.bool)) == tensor_fingerprint(torch.zeros(2))
        False
    """
    if tensor is None:
        return None
    digest = hashlib.sha256(f"{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
    _update(digest, tensor)
    return digest.hexdigest()


def _update(digest: Any, tensor: Tensor) -> None:
    values = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(values.view(torch.uint8).numpy().tobytes() if values.numel() else b"")


def _update_item(digest: Any, item: Any) -> None:
    if isinstance(item, Tensor):
        _update(digest, item)
    elif isinstance(item, (tuple, list)):
        for part in item:
            _update_item(digest, part)
    else:
        digest.update(repr(item).encode())
