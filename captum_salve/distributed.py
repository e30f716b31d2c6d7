"""Several processes under ``torchrun``: which one this is, and the few collective steps the package takes.

Everything else runs unchanged in one process: :class:`ProcessGroup` is then rank 0
of 1 and its collectives do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from captum_salve.checks import check_int
from captum_salve.sites import as_device

__all__ = ["ProcessGroup", "launched"]


class ProcessGroup:
    """This process's rank and the number of processes (``torch.distributed``'s, or 0 of 1).

    Args:
        rank: Override the rank (with ``size``, e.g. to write one share of a store by hand).
        size: Override the number of processes.

    Example:
        >>> group = ProcessGroup()
        >>> group.rank, group.size
        (0, 1)
        >>> group.sum_(torch.ones(2))      # all-reduce under torchrun, unchanged alone
        tensor([1., 1.])
    """

    def __init__(self, rank: int | None = None, size: int | None = None) -> None:
        self.active = torch.distributed.is_available() and torch.distributed.is_initialized()
        size = (torch.distributed.get_world_size() if self.active else 1) if size is None else size
        rank = (torch.distributed.get_rank() if self.active else 0) if rank is None else rank
        self.size = check_int(size, "world_size", 1)
        self.rank = check_int(rank, "rank", 0)
        if self.rank >= self.size:
            raise ValueError(f"rank must be below world_size ({self.size}), got {self.rank}")

    def sum_(self, tensor: Tensor) -> Tensor:
        """Add ``tensor`` up over the processes, in place; returns it."""
        if self.active and self.size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.active and self.size > 1:
            torch.distributed.barrier()


@contextmanager
def launched(device: str | None = None) -> Iterator[torch.device]:
    """Join the process group ``torchrun`` set up (NCCL on GPUs, gloo on CPUs) for the block.

    Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing is joined and the
    device is ``device`` or, by default, CUDA when present. Under ``torchrun`` each
    process takes the GPU of its ``LOCAL_RANK`` unless ``device`` is ``"cpu"``.

    Example:
        >>> with launched() as device:     # torchrun --nproc_per_node 4 my_script.py
        ...     sae, history = train_sae(ActivationStore.open("acts/train"), 1024, device=device)
    """
    if "WORLD_SIZE" not in os.environ or torch.distributed.is_initialized():
        yield as_device(device, "device") if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return
    cuda = torch.cuda.is_available() and device != "cpu"
    local = int(os.environ.get("LOCAL_RANK", 0))
    target = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(target)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    try:
        yield target
    finally:
        torch.distributed.destroy_process_group()
