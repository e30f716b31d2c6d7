"""Writing files so that a reader never sees a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "ensure_directory"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it over ``path`` only if the block succeeds.

    A crash or an exception inside the block leaves any earlier file at ``path`` untouched.

    Example:
        >>> with atomic_path("out/summary.json") as tmp:
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    ensure_directory(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
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
