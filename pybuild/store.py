"""The state directory `$PYBUILD_ROOT`: one object that opens its parts.

The parts own their own files and contracts (see docs/ARCHITECTURE.md): the
content store (blobs), the snapshot store (unpacked layers), the cache index
(step key -> result) and the image store (the OCI layout's index.json). This
module only decides where the root is and cleans what crashed runs left behind.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pybuild.cache.content import ContentStore
from pybuild.cache.snapshots import SnapshotStore
from pybuild.oci.store import ImageStore

if TYPE_CHECKING:
    from pybuild.cache.index import CacheIndex


def default_root() -> Path:
    env = os.environ.get("PYBUILD_ROOT")
    if env:
        return Path(env).expanduser().absolute()
    from pybuild.config import settings  # the config file's `root`, below the env var

    if settings().root is not None:
        return settings().root
    if os.geteuid() == 0:
        return Path("/var/lib/pybuild")
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "pybuild"


class Store:
    """The parts of one state directory. The cache index is opened on first use: it is an SQLite
    database (a connection, a schema check) that `run`, `images`, `save` ... never read."""

    def __init__(self, root: Path, content: ContentStore, snapshots: SnapshotStore, images: ImageStore):
        self.root = root
        self.content = content
        self.snapshots = snapshots
        self.images = images
        self._index: CacheIndex | None = None
        self._index_lock = threading.Lock()  # build threads may be the first to ask

    @property
    def index(self) -> CacheIndex:
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    from pybuild.cache.index import CacheIndex

                    self._index = CacheIndex(self.root, self.content)
        return self._index

    @classmethod
    def open(cls, root: Path | None = None) -> "Store":
        root = Path(root) if root is not None else default_root()
        root.mkdir(parents=True, exist_ok=True)
        content = ContentStore(root)
        return cls(root=root, content=content, snapshots=SnapshotStore(root, content),
                   images=ImageStore(root, content))

    def clean_stale(self) -> None:
        """Remove what killed runs left: unlocked ingest files and work dirs of dead processes."""
        self.content.clean_ingest()
        self.snapshots.clean_tmp()
