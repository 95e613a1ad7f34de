"""Crash-safe file replacement, shared by every store that writes files readers may see.

Contract: a reader of `path` sees either the old file or the complete new one,
never a partial write; after return the new content and its directory entry are
on disk (file fsync, rename, directory fsync). On any failure the temp file is
removed and `path` is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file in `path`'s directory that replaces `path` when the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    with atomic_write(path, mode) as f:
        f.write(data)
