"""Activations on disk: sharded safetensors files read through memory maps.

An :class:`ActivationStore` is a folder::

    manifest.json               site, model, width, dtype, shards, running statistics
    shard-00000.safetensors     features (n, M), labels (n,), image_index (n,), token_index (n,),
    shard-00001.safetensors     sum (M,) and sum_of_squares (M,) of its rows in float64
    ...

:func:`write_activations` fills one; every shard is written to a temporary file and
renamed into place, then the manifest is rewritten, so a killed writer leaves a
store of the shards it committed and a rerun continues after them. Readers gather
rows by index (:meth:`ActivationStore.rows`), read contiguous blocks
(:meth:`ActivationStore.block`) or iterate in chunks (:meth:`ActivationStore.chunks`);
nothing but the labels is held in memory.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler, Subset
from tqdm.auto import tqdm

from captum_salve.activations import ActivationSet, ImageData, check_activation_set, require_labels
from captum_salve.checks import check_int, check_labels, non_finite_error
from captum_salve.distributed import ProcessGroup
from captum_salve.files import PARTIAL_SUFFIX, atomic_path, ensure_directory
from captum_salve.models import model_input, model_label
from captum_salve.sites import BoundSite, Site, eval_mode, on_device, recording

__all__ = [
    "CHUNK_ROWS",
    "MANIFEST_FILE",
    "ActivationStore",
    "RowStatistics",
    "Rows",
    "as_rows",
    "check_rows",
    "write_activations",
]

MANIFEST_FILE = "manifest.json"
# Shards a store keeps mapped at once: each map holds a file descriptor, and a process has ~1024.
_OPEN_SHARDS = 64
# Rows read at a time by the analyses: 8192 rows of 1024 float64 codes are 64 MB, whatever the store's length.
CHUNK_ROWS = 8192
STORE_FORMAT = "captum_salve.activation_store"
STORE_VERSION = 1
_SHARD_NAME = "shard-{:05d}.safetensors"
_STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The safetensors dtypes a store holds, as torch dtypes.
_TORCH_OF = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
}
Tokens = Literal["cls", "all"]


@dataclass(frozen=True)
class RowStatistics:
    """Count, sum and sum of squares of a set of rows about a fixed ``shift``, in float64.

    Summing ``a − shift`` rather than ``a`` keeps the variance exact when the rows sit far
    from the origin (``Σa²/n − ā²`` would cancel); :meth:`Rows.statistics` shifts by the
    first row.

    Example:
        >>> stats = RowStatistics.of(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        >>> stats.mean, stats.total_variance
        (tensor([2., 4.], dtype=torch.float64), 5.0)
    """

    count: int
    sum: Tensor
    sum_of_squares: Tensor
    shift: Tensor | float = 0.0

    @classmethod
    def of(cls, rows: Tensor, shift: Tensor | float = 0.0) -> RowStatistics:
        """The statistics of an (n, M) block of rows about ``shift``."""
        centred = rows.to(torch.float64, copy=True)  # a copy even of float64 rows, which are changed in place next
        centred -= shift  # in place: one float64 copy of the rows
        total = centred.sum(dim=0)
        return cls(len(rows), total, centred.square_().sum(dim=0), shift)  # squared in place: one float64 copy

    @classmethod
    def accumulate(cls, blocks: Iterable[Tensor]) -> RowStatistics:
        """The statistics of consecutive blocks of rows, summed in order about the first row (on the CPU)."""
        total = None
        for block in blocks:
            block = block.cpu()  # one summation order on every device
            shift = block[0].double() if total is None else total.shift
            total = cls.of(block, shift) if total is None else total + cls.of(block, shift)
        if total is None:
            raise ValueError("there are no rows to take statistics of")
        return total

    def __add__(self, other: RowStatistics) -> RowStatistics:
        if self.shift is not other.shift and not torch.equal(torch.as_tensor(self.shift), torch.as_tensor(other.shift)):
            raise ValueError("statistics about different shifts cannot be added")
        return RowStatistics(
            self.count + other.count, self.sum + other.sum, self.sum_of_squares + other.sum_of_squares, self.shift
        )

    @property
    def mean(self) -> Tensor:
        """(M,) mean row."""
        return self.shift + self.sum / self.count

    @property
    def variance(self) -> Tensor:
        """(M,) population variance of each coordinate."""
        return (self.sum_of_squares / self.count - (self.sum / self.count).pow(2)).clamp_min(0.0)

    @property
    def total_variance(self) -> float:
        """Mean over rows of ``‖a − ā‖²``: the sum of the coordinates' variances."""
        return float(self.variance.sum())

    @property
    def spread(self) -> float:
        """The data's scale: the root mean square of one coordinate's deviation from its mean, √(total_variance / M)."""
        return (self.total_variance / len(self.sum)) ** 0.5


class Rows(ABC):
    """What training and the analyses read: rows by index, contiguous blocks and chunks.

    :class:`ActivationStore` reads them from disk; :func:`as_rows` wraps an in-memory
    :class:`~captum_salve.activations.ActivationSet` in the same interface.

    Example:
        >>> rows = as_rows(ActivationSet(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 2])))
        >>> [len(chunk) for chunk in rows.chunks(2)], rows.num_classes
        ([2, 2, 1], 3)
        >>> rows.statistics().count
        5
    """

    site: str
    model: str | None

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def dim(self) -> int:
        """M, the width of one row."""

    @property
    @abstractmethod
    def labels(self) -> Tensor | None:
        """(N,) class indices, or None."""

    @abstractmethod
    def rows(self, index: Tensor) -> Tensor:
        """The rows at ``index`` (any order, repeats allowed), in float32 (float64 ones stay float64)."""

    @abstractmethod
    def block(self, start: int, stop: int) -> Tensor:
        """The rows ``start:stop``, in float32 (float64 ones stay float64)."""

    @property
    def num_classes(self) -> int:
        """1 + the largest label."""
        return int(self.require_labels().max()) + 1

    def require_labels(self) -> Tensor:
        """The labels, or an error saying that this use needs them."""
        return require_labels(self.labels)

    def chunks(self, chunk_rows: int = CHUNK_ROWS, *, rank: int = 0, world_size: int = 1) -> Iterator[ActivationSet]:
        """Consecutive pieces of at most ``chunk_rows`` rows, as in-memory sets.

        With ``world_size`` > 1 the rows are split into ``world_size`` contiguous
        ranges of (nearly) equal length and only rank ``rank``'s range is read.
        """
        chunk_rows = check_int(chunk_rows, "chunk_rows", 1)
        share = ProcessGroup(rank, world_size)
        rank, world_size = share.rank, share.size
        start, stop = (len(self) * rank) // world_size, (len(self) * (rank + 1)) // world_size
        labels = self.labels
        for begin in range(start, stop, chunk_rows):
            end = min(begin + chunk_rows, stop)
            piece = labels[begin:end] if labels is not None else None
            yield ActivationSet(self.block(begin, end), piece, self.site, self.model)

    def statistics(self, chunk_rows: int = CHUNK_ROWS) -> RowStatistics:
        """Count, sum and sum of squares over all rows, summed chunk by chunk in row order.

        The chunking depends only on the row count, so an in-memory set and a store
        of the same rows give bit-identical statistics.
        """
        if len(self) == 0:
            raise ValueError("there are no rows to take statistics of (the activations are empty)")
        return RowStatistics.accumulate(chunk.features for chunk in self.chunks(chunk_rows))

    def finite_statistics(self, name: str, hint: str = "", chunk_rows: int = CHUNK_ROWS) -> RowStatistics:
        """:meth:`statistics`, refusing NaN or Inf as :meth:`check_finite` does.

        A non-finite entry makes the sums non-finite, so the rows are read once; only
        then are they read again, to name the first bad entry.
        """
        stats = self.statistics(chunk_rows)
        if not (torch.isfinite(stats.sum).all() and torch.isfinite(stats.sum_of_squares).all()):
            self.check_finite(name, hint, chunk_rows)
        return stats

    def check_finite(self, name: str, hint: str = "", chunk_rows: int = CHUNK_ROWS) -> None:
        """Refuse rows holding NaN or Inf: how many entries, and the (row, column) of the first."""
        count, first = 0, None
        for offset, chunk in zip(range(0, len(self), chunk_rows), self.chunks(chunk_rows), strict=True):
            bad = ~torch.isfinite(chunk.features)
            if bad.any():
                count += int(bad.sum())
                if first is None:
                    row, column = bad.nonzero()[0].tolist()
                    first = (offset + row, column)
        if count:
            raise non_finite_error(name, count, first, hint)


class _InMemoryRows(Rows):
    def __init__(self, acts: ActivationSet) -> None:
        self.acts, self.site, self.model = acts, acts.site, acts.model

    def __len__(self) -> int:
        return len(self.acts)

    @property
    def dim(self) -> int:
        return self.acts.dim

    @property
    def labels(self) -> Tensor | None:
        return self.acts.labels

    def rows(self, index: Tensor) -> Tensor:
        return _computable(self.acts.features[index.to(self.acts.features.device)])

    def block(self, start: int, stop: int) -> Tensor:
        return _computable(self.acts.features[start:stop])


def _computable(rows: Tensor) -> Tensor:
    """Rows in float32, or float64 when they are: in-memory float64 activations keep their precision."""
    return rows if rows.dtype == torch.float64 else rows.float()


def as_rows(data: ActivationSet | Tensor | Rows, name: str = "acts") -> Rows:
    """``data`` as :class:`Rows`: a store as it is, an ActivationSet or an (N, M) tensor wrapped.

    Example:
        >>> rows = as_rows(torch.randn(10, 4))
        >>> len(rows), rows.dim, rows.block(2, 4).shape
        (10, 4, torch.Size([2, 4]))
    """
    if isinstance(data, Rows):
        return data
    if isinstance(data, Tensor):
        if data.dim() != 2:
            raise ValueError(f"{name} as a tensor must be (N, M) rows, got shape {tuple(data.shape)}")
        data = ActivationSet(data)
    return _InMemoryRows(check_activation_set(data, name))


def check_rows(value: object, name: str) -> Rows:
    """Activations as :class:`~captum_salve.store.Rows`: an ActivationSet wrapped, an ActivationStore as it is.

    Anything else, a bare tensor included, is refused: a tensor carries no labels and
    no site, so the caller wraps it in an ActivationSet.

    Example:
        >>> len(check_rows(ActivationSet(torch.randn(4, 3)), "acts"))
        4
        >>> rows = check_rows(ActivationStore.open("acts/train"), "acts")    # read chunk by chunk from disk
        >>> check_rows(torch.randn(4, 3), "acts")    # TypeError: a bare tensor must be wrapped in an ActivationSet
    """
    if not isinstance(value, (ActivationSet, Rows)):
        raise TypeError(
            f"{name} must be an ActivationSet or an ActivationStore, got {type(value).__name__}; "
            "wrap the rows in ActivationSet(features, labels)"
        )
    return as_rows(value, name)


class ActivationStore(Rows):
    """A folder of activation shards (see the module docstring), opened for reading.

    Only paths are kept: a store is cheap to pickle into DataLoader workers or other
    ranks, and each process maps the shards itself on first use.

    Example:
        >>> store = write_activations(model, dataset, "acts/train", progress=False)
        >>> store = ActivationStore.open("acts/train")
        >>> len(store), store.dim, store.site
        (50000, 512, 'head_input')
        >>> batch = store.rows(torch.randint(len(store), (256,)))
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self._manifest = manifest
        self.site: str = manifest["site"]
        self.model: str | None = manifest.get("model")
        self.tokens: str = manifest.get("tokens", "cls")
        files = [path / shard["file"] for shard in manifest["shards"]] if path.is_dir() else [path]
        self._files = files
        self._offsets = np.cumsum([0] + [shard["rows"] for shard in manifest["shards"]])

    @classmethod
    def open(cls, path: str | Path, *, allow_incomplete: bool = False) -> ActivationStore:
        """Open a store folder, or a file written by :meth:`ActivationSet.save` as a one-shard store.

        A store whose writer stopped before every shard was written is refused unless
        ``allow_incomplete`` (then it holds the committed shards' rows only).
        """
        path = Path(path)
        if path.is_file():
            header = _read_header(path)
            if "features" not in header:
                raise ValueError(f"{str(path)!r} holds no 'features' tensor; it was not written by ActivationSet.save")
            meta = header.get("__metadata__") or {}
            shape = header["features"]["shape"]
            manifest = {
                "site": meta.get("site", "head_input"),
                "model": meta.get("model"),
                "dim": shape[1],
                "shards": [{"file": path.name, "rows": shape[0]}],
            }
            return cls(path, manifest)
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ValueError(
                f"{str(path)!r} is not an activation store (no {MANIFEST_FILE}); write one with write_activations"
            )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != STORE_FORMAT or manifest.get("version", 0) > STORE_VERSION:
            raise ValueError(f"{str(manifest_path)!r} is not a version-{STORE_VERSION} activation store manifest")
        if not manifest.get("complete", True) and not allow_incomplete:
            written = sum(shard["rows"] for shard in manifest["shards"])
            raise ValueError(
                f"the store at {str(path)!r} is incomplete ({len(manifest['shards'])} shards, {written} rows written): "
                "its writer stopped; run write_activations (or captum-salve collect) again with the same settings "
                "to complete it, or open it with allow_incomplete=True"
            )
        return cls(path, manifest)

    @classmethod
    def from_set(
        cls, acts: ActivationSet, out: str | Path, *, shard_rows: int = 65536, dtype: torch.dtype = torch.float32
    ) -> ActivationStore:
        """Write in-memory activations as a store at ``out`` (one image per row, in order).

        Example:
            >>> store = ActivationStore.from_set(ActivationSet(torch.randn(10, 4)), "acts/random", shard_rows=4)
            >>> len(store), len(store.shard_files)
            (10, 3)
        """
        acts = check_activation_set(acts, "acts")
        shard_rows = check_int(shard_rows, "shard_rows", 1)
        out = Path(out)
        settings = _settings(acts.site, acts.model, "cls", acts.dim, _dtype_name(dtype), len(acts), shard_rows)
        _prepare(out, settings, resume=False)
        for shard, begin in enumerate(range(0, len(acts), shard_rows)):
            end = min(begin + shard_rows, len(acts))
            labels = [acts.labels[begin:end]] if acts.labels is not None else []
            index = torch.arange(begin, end)
            features = acts.features[begin:end].to(dtype).contiguous()
            tokens = torch.zeros(len(index), dtype=torch.int32)
            _write_shard(out / _SHARD_NAME.format(shard), features, labels, index, tokens)
        _write_manifest(out, settings)
        return cls.open(out)

    @property
    def shard_files(self) -> list[Path]:
        """The files the rows are read from, in row order."""
        return list(self._files)

    def __getstate__(self) -> dict:
        return {"path": self.path, "manifest": self._manifest}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["manifest"])

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, rows={len(self)}, dim={self.dim}, site={self.site!r})"

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def dim(self) -> int:
        """M, the width of one row."""
        return int(self._manifest["dim"])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the features are stored in (they are read as float32)."""
        return self._shard(0).dtype("features") if self._files else torch.float32

    @property
    def images(self) -> int:
        """How many images the rows came from."""
        return int(self._manifest.get("images", len(self)))

    @cached_property
    def labels(self) -> Tensor | None:
        """(N,) class indices, read once and kept; None when the data had none."""
        parts = [self._column(i, "labels") for i in range(len(self._files))]
        if not parts or any(part is None for part in parts):
            return None
        return torch.cat(parts)

    @cached_property
    def image_index(self) -> Tensor:
        """(N,) the image each row came from (its position in the data given to the writer)."""
        parts = [self._column(i, "image_index") for i in range(len(self._files))]
        if any(part is None for part in parts):
            return torch.arange(len(self))
        return torch.cat(parts)

    @cached_property
    def token_index(self) -> Tensor:
        """(N,) the token (or spatial position) of each row; 0 for one row per image."""
        parts = [self._column(i, "token_index") for i in range(len(self._files))]
        if any(part is None for part in parts):
            return torch.zeros(len(self), dtype=torch.long)
        return torch.cat(parts)

    @property
    def written_statistics(self) -> RowStatistics | None:
        """The running float64 statistics the writer kept in the manifest (None for a single file)."""
        stats = self._manifest.get("statistics")
        if stats is None:
            return None
        return RowStatistics(
            stats["count"],
            torch.tensor(stats["sum"], dtype=torch.float64),
            torch.tensor(stats["sum_of_squares"], dtype=torch.float64),
        )

    def to_set(self) -> ActivationSet:
        """All rows in memory."""
        return ActivationSet(self.block(0, len(self)), self.labels, self.site, self.model)

    def rows(self, index: Tensor) -> Tensor:
        """The float32 rows at ``index``, gathered shard by shard from memory maps of the files."""
        index = torch.as_tensor(index).long().cpu()
        if index.dim() != 1:
            raise ValueError(f"index must be a 1-D tensor of row numbers, got shape {tuple(index.shape)}")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"row index out of range for a store of {len(self)} rows")
        offsets = torch.from_numpy(self._offsets)
        shard_of = torch.searchsorted(offsets, index, right=True) - 1
        shards = shard_of.unique().tolist()
        if len(shards) == 1:  # one shard: a single (multi-threaded) gather straight from the map
            mapped = self._shard(shards[0]).mapped("features")
            return _computable(mapped.index_select(0, index - int(offsets[shards[0]])))
        out = torch.empty(len(index), self.dim, dtype=torch.float64 if self.dtype == torch.float64 else torch.float32)
        for shard in shards:
            where = (shard_of == shard).nonzero().squeeze(1)
            rows = self._shard(shard).mapped("features").index_select(0, index[where] - int(offsets[shard]))
            out.index_copy_(0, where, rows.to(out.dtype))
        return out

    def block(self, start: int, stop: int) -> Tensor:
        """The float32 rows ``start:stop``, read from the files (not mapped: the pages stay out of this process)."""
        start, stop = max(0, start), min(stop, len(self))
        pieces = []
        first = int(np.searchsorted(self._offsets, start, side="right") - 1)
        for shard in range(first, len(self._files)):
            begin = int(self._offsets[shard])
            if begin >= stop:
                break
            pieces.append(_computable(self._shard(shard).read("features", max(start - begin, 0), stop - begin)))
        if not pieces:
            return torch.empty(0, self.dim)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _shard(self, index: int) -> _ShardFile:
        """Shard ``index``, kept open among the most recently used (each mapped shard holds a file descriptor)."""
        shards = self.__dict__.setdefault("_shards", OrderedDict())
        if index in shards:
            shards.move_to_end(index)
        else:
            shards[index] = _ShardFile(self._files[index])
            if len(shards) > _OPEN_SHARDS:
                shards.popitem(last=False)
        return shards[index]

    def close(self) -> None:
        """Release the memory maps and file handles (the store reopens them when read again)."""
        self.__dict__.pop("_shards", None)

    def _column(self, shard: int, name: str) -> Tensor | None:
        file = self._shard(shard)
        return file.whole(name).long() if name in file.entries else None


class _ShardFile:
    """One safetensors file of a store: its tensors read by row range, or memory-mapped for gathers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        header = _read_header(path)
        self.data_start = header.pop("__data_start__")
        header.pop("__metadata__", None)
        self.entries = header
        self._maps: dict[str, Tensor] = {}

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return _TORCH_OF[self.entries[name]["dtype"]]

    def _row_bytes(self, name: str) -> int:
        return math.prod(self.shape(name)[1:]) * self.dtype(name).itemsize

    def read(self, name: str, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of tensor ``name``, read with plain file reads."""
        shape, row_bytes = self.shape(name), self._row_bytes(name)
        stop = min(stop, shape[0])
        raw = torch.empty(max(stop - start, 0) * row_bytes, dtype=torch.uint8)
        view, filled = memoryview(raw.numpy()), 0
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self.data_start + self.entries[name]["data_offsets"][0] + start * row_bytes)
            while filled < len(view):
                count = handle.readinto(view[filled:])
                if not count:
                    raise ValueError(f"{str(self.path)!r} ends early: the shard was truncated after it was written")
                filled += count
        return raw.view(self.dtype(name)).reshape(-1, *shape[1:])

    def whole(self, name: str) -> Tensor:
        """All of tensor ``name``."""
        return self.read(name, 0, self.shape(name)[0])

    def mapped(self, name: str) -> Tensor:
        """Tensor ``name`` as a read-only view of the file's pages (copy-on-write; the file is never changed)."""
        if name not in self._maps:
            dtype, shape = self.dtype(name), self.shape(name)
            begin, end = self.entries[name]["data_offsets"]
            if end == begin:
                self._maps[name] = torch.empty(shape, dtype=dtype)
            else:
                raw = np.memmap(self.path, dtype=np.uint8, mode="c", offset=self.data_start + begin, shape=end - begin)
                self._maps[name] = torch.from_numpy(raw).view(dtype).reshape(shape)
        return self._maps[name]


def _read_header(path: Path) -> dict:
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError(f"{str(path)!r} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError, MemoryError, OverflowError):
            raise ValueError(f"{str(path)!r} is not a safetensors file (bad header)") from None
    header["__data_start__"] = 8 + size
    return header


def write_activations(
    model: nn.Module,
    data: ImageData,
    out: str | Path,
    site: Site | str | None = None,
    *,
    tokens: Tokens = "cls",
    dtype: torch.dtype = torch.float32,
    shard_rows: int = 65536,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    resume: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> ActivationStore:
    """Run ``model`` over ``data`` and write the activations at ``site`` into a store at ``out``.

    Images are split into shards of consecutive images; each shard is read in batches
    of ``batch_size`` from its first image, so the rows do not depend on how many
    processes wrote the store. Under ``torchrun`` (or with ``rank``/``world_size``)
    rank ``r`` writes shards ``r, r + W, …`` and rank 0 writes the manifest at the end.

    Args:
        model: The classifier (as for :func:`~captum_salve.activations.collect_activations`).
        data: An (N, C, H, W) tensor, a Dataset of (image, label) or a DataLoader that
            reads its dataset in order (its batch size, workers and collate function are kept).
        out: The store folder.
        site: Where to read; default the head input.
        tokens: ``"cls"`` keeps the site's one vector per image; ``"all"`` keeps every
            token (or spatial position) of the module's output as its own row, with
            its token index (``site`` must then name a module; its reducer is not used).
        dtype: float32, float16 or bfloat16 on disk (rows are read back as float32).
        shard_rows: Rows per shard (rounded down to whole images).
        batch_size: Images per forward pass (a DataLoader keeps its own).
        device: Where to run the model; default its device.
        resume: Keep the shards a previous run with the same settings committed and
            write only the missing ones. With False an existing store is refused.
        rank: This process's rank; with ``world_size``, this process's share; default from ``torch.distributed``
            when it is initialised, else one process.
        world_size: How many processes write the store together.
        progress: Show a progress bar.

    Returns:
        The store, opened (on every rank, after all ranks finished).

    Example:
        >>> store = write_activations(model, ImageFolder("val", transform), "acts/val", "layer3:spatial_mean")
        >>> store.written_statistics.mean.shape
        torch.Size([256])
    """
    out = Path(out)
    if tokens not in ("cls", "all"):
        raise ValueError(f"tokens must be 'cls' (one row per image) or 'all' (every token), got {tokens!r}")
    dtype_name = _dtype_name(dtype)
    shard_rows, batch_size = check_int(shard_rows, "shard_rows", 1), check_int(batch_size, "batch_size", 1)
    group = ProcessGroup(rank, world_size)
    dataset, loader_options = _as_dataset(data, batch_size)
    batch_size = loader_options.pop("batch_size", batch_size)  # a DataLoader keeps its own
    images = len(dataset)
    if images == 0:
        raise ValueError("data is empty: no images to collect activations from")
    if isinstance(site, str):
        site = Site(site) if tokens == "all" and ":" not in site else Site.from_key(site)
    if site is not None and not isinstance(site, Site):
        raise TypeError(f"site must be a Site, a site key such as 'layer3:spatial_mean', or None, got {site!r}")
    if tokens == "all" and (site is None or site.module is None):
        raise ValueError("tokens='all' needs site to name a module whose output has tokens, e.g. 'blocks.6'")
    bound = (site or Site()).bind(model)
    if tokens == "all":
        bound = BoundSite(bound.module, bound.name, f"{bound.name}:all_tokens", False, _all_tokens(bound.name))

    with on_device(model, device), eval_mode(model), recording(model, bound) as rec, torch.inference_mode():

        def read(batch: Tensor) -> Tensor:
            model(model_input(model, batch, "data"))
            return rec.take().detach()

        rows_per_image, dim = read(_images_of(next(iter(DataLoader(Subset(dataset, [0]), **loader_options))))).shape
        per_shard, seen = max(1, shard_rows // rows_per_image), {}
        settings = _settings(bound.key, model_label(model), tokens, dim, dtype_name, images, per_shard)
        if group.rank == 0:
            _prepare(out, settings, resume)
        group.barrier()
        n_shards = math.ceil(images / per_shard)
        mine = [s for s in range(group.rank, n_shards, group.size) if not (out / _SHARD_NAME.format(s)).is_file()]
        bar = tqdm(total=sum(min(per_shard, images - s * per_shard) for s in mine), desc="store", disable=not progress)
        for shard in mine:
            begin, end = shard * per_shard, min((shard + 1) * per_shard, images)
            loader = _batches(dataset, begin, end, batch_size, loader_options)
            features = torch.empty((end - begin) * rows_per_image, dim, dtype=dtype)  # filled batch by batch
            labels, filled = [], 0
            for batch in loader:
                rows = read(_images_of(batch))
                features[filled : filled + len(rows)] = rows
                filled += len(rows)
                if isinstance(batch, (list, tuple)) and len(batch) > 1:
                    labels.append(check_labels(batch[1], "data's labels").repeat_interleave(rows_per_image))
                bar.update(len(rows) // rows_per_image)
            image_index = torch.arange(begin, end).repeat_interleave(rows_per_image)
            token_index = torch.arange(rows_per_image, dtype=torch.int32).repeat(end - begin)
            _write_shard(out / _SHARD_NAME.format(shard), features, labels, image_index, token_index)
            if group.rank == 0:
                _write_manifest(out, settings, seen)
        bar.close()
    group.barrier()
    if group.rank == 0:
        _write_manifest(out, settings, seen)
    group.barrier()
    # Ranks given by hand (no process group) may run one after another: the store is complete after the last.
    store = ActivationStore.open(out, allow_incomplete=group.size > 1 and not group.active)
    if group.rank == 0 and not torch.isfinite(store.written_statistics.sum).all():
        warnings.warn(
            f"some rows of the store at {str(out)!r} hold NaN or Inf; train_sae and the analyses refuse them",
            stacklevel=2,
        )
    return store


def _dtype_name(dtype: torch.dtype) -> str:
    name = next((name for name, value in _STORE_DTYPES.items() if value == dtype), None)
    if name is None:
        raise ValueError(f"dtype must be one of torch.float32, torch.float16, torch.bfloat16, got {dtype!r}")
    return name


def _settings(site: str, model: str | None, tokens: str, dim: int, dtype: str, images: int, per_shard: int) -> dict:
    """What a store's manifest records about how it was written (a resumed writer must match it)."""
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "site": site,
        "model": model,
        "tokens": tokens,
        "dim": dim,
        "dtype": dtype,
        "images": images,
        "images_per_shard": per_shard,
    }


def _as_dataset(data: ImageData, batch_size: int) -> tuple[Sequence, dict]:
    if isinstance(data, Tensor):
        if data.dim() != 4:
            raise ValueError(f"data as a tensor must be images of shape (N, C, H, W), got {tuple(data.shape)}")
        return torch.utils.data.TensorDataset(data), {}
    if isinstance(data, DataLoader):
        if not isinstance(data.sampler, SequentialSampler):
            raise ValueError(
                "data is a DataLoader that does not read its dataset in order (shuffle=True or a custom sampler); "
                "the store records each row's image index, so pass a loader with shuffle=False"
            )
        options = {"num_workers": data.num_workers, "collate_fn": data.collate_fn, "pin_memory": data.pin_memory}
        return data.dataset, options | {"batch_size": data.batch_size}
    if isinstance(data, Dataset):
        try:
            len(data)
        except TypeError:
            raise TypeError("data must be a Dataset with a length (an iterable dataset cannot be sharded)") from None
        return data, {}
    raise TypeError(f"data must be an image tensor, a Dataset or a DataLoader, got {type(data).__name__}")


def _batches(dataset: Dataset, begin: int, end: int, batch_size: int, options: dict) -> Iterator:
    """Images ``begin:end`` in batches: tensors sliced as they are, any other dataset through a DataLoader."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        for start in range(begin, end, batch_size):
            yield tuple(tensor[start : min(start + batch_size, end)] for tensor in dataset.tensors)
        return
    yield from DataLoader(Subset(dataset, range(begin, end)), batch_size=batch_size, **options)


def _images_of(batch: Tensor | Sequence) -> Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _all_tokens(name: str):
    def apply(output: Tensor) -> Tensor:
        if not isinstance(output, Tensor) or output.dim() not in (3, 4):
            raise ValueError(
                f"tokens='all' needs site {name!r} to give (N, tokens, C) or (N, C, H, W), got {tuple(output.shape)}"
            )
        if output.dim() == 4:
            output = output.flatten(2).transpose(1, 2)
        return output.reshape(-1, output.shape[-1])

    return apply


def _prepare(out: Path, settings: dict, resume: bool) -> None:
    manifest_path = out / MANIFEST_FILE
    if manifest_path.is_file():
        if not resume:
            raise FileExistsError(
                f"{str(out)!r} already holds a store; pass resume=True to complete it, or choose another folder"
            )
        old = json.loads(manifest_path.read_text())
        differences = [key for key, value in settings.items() if old.get(key) != value]
        if differences:
            listed = ", ".join(f"{key}: store {old.get(key)!r} vs now {settings[key]!r}" for key in differences)
            raise ValueError(f"the store at {str(out)!r} was written with other settings ({listed})")
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{str(out)!r} is a non-empty folder without a store manifest; choose another folder")
    ensure_directory(out)
    for partial in out.glob(f".*{PARTIAL_SUFFIX}"):  # a shard a killed writer had begun
        partial.unlink()
    _write_manifest(out, settings)


def _write_shard(path: Path, features: Tensor, labels: list, image_index: Tensor, token_index: Tensor) -> None:
    tensors = {"features": features, "image_index": image_index, "token_index": token_index}
    stats = sum(  # in pieces about zero: the shards' sums add up in the manifest, and no float64 copy of the shard
        (RowStatistics.of(piece) for piece in features.split(CHUNK_ROWS)[1:]), RowStatistics.of(features[:CHUNK_ROWS])
    )
    tensors["sum"], tensors["sum_of_squares"] = stats.sum, stats.sum_of_squares
    if labels:
        tensors["labels"] = torch.cat(labels)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _write_manifest(out: Path, settings: dict, seen: dict[str, RowStatistics] | None = None) -> None:
    """List the committed shards in order with their rows, and the sum of their statistics.

    ``seen`` keeps each shard's statistics from one call to the next, so a writer reads
    every shard's sums once, not once per shard written after it.
    """
    seen = {} if seen is None else seen
    shards, total = [], None
    n_shards = math.ceil(settings["images"] / settings["images_per_shard"])
    for index in range(n_shards):
        path = out / _SHARD_NAME.format(index)
        if not path.is_file():
            continue
        if path.name not in seen:
            shard = _ShardFile(path)
            seen[path.name] = RowStatistics(
                shard.shape("features")[0], shard.whole("sum"), shard.whole("sum_of_squares")
            )
        stats = seen[path.name]
        shards.append({"file": path.name, "rows": stats.count})
        total = stats if total is None else total + stats
    manifest = {**settings, "complete": len(shards) == n_shards, "shards": shards}
    if total is not None:
        manifest["statistics"] = {
            "count": total.count,
            "sum": total.sum.tolist(),
            "sum_of_squares": total.sum_of_squares.tolist(),
        }
    with atomic_path(out / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps(manifest))
