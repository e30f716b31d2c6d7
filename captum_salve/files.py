"""Writing files so that a reader never sees a partial one, and one writer per folder at a time."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs on one folder are not serialised there
    fcntl = None

__all__ = ["LOCK_FILE", "PARTIAL_SUFFIX", "atomic_path", "ensure_directory", "folder_lock"]

LOCK_FILE = ".lock"
# The suffix of atomic_path's temporary files; one left behind was being written when its process died.
PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it over ``path`` only if the block succeeds.

    A crash or an exception inside the block leaves any earlier file at ``path`` untouched.

    Example:
        >>> with atomic_path("out/summary.json") as tmp:
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory; a file is written there, so give a file name")
    ensure_directory(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_directory(path: str | Path) -> Path:
    """Create a directory (and parents) if missing; refuse a path that is a file.

    Raises:
        NotADirectoryError: ``path`` is an existing file.

    Example:
        >>> figures = ensure_directory("salve-report/figures")
        >>> figures.is_dir()
        True
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file, but a directory is needed there")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder/.lock`` for the block; another process (or block) asking for it meanwhile is refused.

    The lock is the operating system's (``flock``): a killed holder releases it, so
    no stale lock ever blocks a rerun.

    Raises:
        ValueError: Another holder has the folder.

    Example:
        >>> with folder_lock("salve-report/resnet18"):
        ...     summary = run_pipeline(inputs, "salve-report/resnet18")
    """
    folder = ensure_directory(folder)
    path = folder / LOCK_FILE
    with open(path, "a+") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(
                    f"another run holds {str(folder)!r}; wait for it to finish or use another folder"
                ) from None
        yield folder
