"""Where blobs came from: ``$PYBUILD_ROOT/registry/blob-sources.json``.

Maps a blob digest to the ``host/repository`` names it was pulled from or pushed to, so a push
to another repository of the same registry can ask for a cross-repository mount instead of
uploading.  Only a hint: a stale entry costs one refused mount (the registry then starts a
normal upload).  Writes are atomic under a flock; the newest few repositories per blob are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from pybuild.atomicfile import write_atomic

__all__ = ["BlobSources"]

KEEP_PER_BLOB = 8


class BlobSources:
    def __init__(self, root: Path):
        self.dir = Path(root) / "registry"
        self.path = self.dir / "blob-sources.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "blob-sources.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, OSError):
            return {}  # a hint file: unreadable means no hints
        return data if isinstance(data, dict) else {}

    def repositories(self, registry: str, digest: str) -> list[str]:
        """Repositories of ``registry`` known to hold ``digest``, newest first."""
        prefix = registry + "/"
        return [name[len(prefix):] for name in self._read().get(digest, []) if name.startswith(prefix)]

    def record(self, registry: str, repository: str, digests: Iterable[str]) -> None:
        name = f"{registry}/{repository}"
        digests = list(digests)
        if not digests:
            return
        with self._locked():
            data = self._read()
            for d in digests:
                names = [n for n in data.get(d, []) if n != name]
                data[d] = [name, *names][:KEEP_PER_BLOB]
            write_atomic(self.path, json.dumps(data, sort_keys=True).encode())
