"""The state directory `$PYBUILD_ROOT`: one object that opens its parts.

The parts own their own files and contracts (see docs/ARCHITECTURE.md): the
content store (blobs), the snapshot store (unpacked layers), the cache index
(step key -> result) and the image store (the OCI layout's index.json). This
module only decides where the root is and cleans what crashed runs left behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pybuild.cache.content import ContentStore
from pybuild.cache.index import CacheIndex
from pybuild.cache.snapshots import SnapshotStore
from pybuild.oci.store import ImageStore


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


@dataclass
class Store:
    root: Path
    content: ContentStore
    snapshots: SnapshotStore
    index: CacheIndex
    images: ImageStore

    @classmethod
    def open(cls, root: Path | None = None) -> "Store":
        root = Path(root) if root is not None else default_root()
        root.mkdir(parents=True, exist_ok=True)
        content = ContentStore(root)
        return cls(root=root, content=content, snapshots=SnapshotStore(root, content),
                   index=CacheIndex(root), images=ImageStore(root, content))

    def clean_stale(self) -> None:
        """Remove what killed runs left: unlocked ingest files and work dirs of dead processes."""
        self.content.clean_ingest()
        self.snapshots.clean_tmp()
