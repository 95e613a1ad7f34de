"""Garbage collection of the state directory: mark and sweep, safe against concurrent builds.

What is kept (the roots and what they reach):
  * every descriptor in ``root/index.json`` (the OCI layout's tags): the manifest blob, and
    through it the config blob and every layer blob (an image index is followed into its
    manifests); plus every ``rootfs.diff_ids`` entry of those configs;
  * unless the cache is being pruned: every record of the cache index (``root/cache/index.db``,
    see ``cache.index``) - its layer blob and its layer's diff_id.
What is swept: blobs in ``blobs/sha256/`` not reached; snapshot dirs whose diff_id is not
reached; ingest temp files no live writer holds (``ContentStore.clean_ingest``); work dirs and
half-unpacked snapshots of dead processes (``SnapshotStore.clean_tmp``).
Reading index.json is done here directly (it is the standard OCI format) so that ``cache``
keeps not importing ``oci``.

Locking contract (file ``root/locks/gc.lock``, flock(2)):
  * Anything that creates blobs/snapshots/cache records and only later makes them reachable
    (a build: blobs and snapshots are written, cache records and tags come at the end; also
    ``import``, ``load``) or that uses snapshots/blobs it reached earlier (a build reading a
    cache record or a base image; ``run`` with the image's snapshots as overlay lowerdirs;
    ``save``/``export`` streaming blobs) holds ``build_lease(root)`` - a SHARED lock - for its
    whole duration, taken BEFORE it first reads index.json or a cache record.  Many leases
    coexist; taking one is a single open+flock, and never blocks unless a GC is running, in
    which case it waits for the GC to finish (seconds).
  * The GC (``rmi``, ``prune``, ``fsck --repair``) holds ``exclusive(root)`` - an EXCLUSIVE
    lock on the same file - from before its mark until after its sweep, so it never runs
    while any lease is held and no lease starts while it runs.  ``exclusive(wait=False)``
    raises ``GCBusy`` instead of waiting (``rmi`` uses that and leaves the sweep for later).
  * flock locks belong to an open file description: a process that holds a lease must not
    ask for ``exclusive`` (it would wait for itself), and vice versa.  Locks die with the
    process, so a killed build never blocks GC.
  * Writers that do not take a lease are still never corrupted (blob commits are atomic,
    ingest files are flock'ed by their writer), but their not-yet-referenced blobs may be
    swept, making their later ``tag`` fail with "blob missing".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .content import BlobInfo

__all__ = [
    "LOCK_PATH",
    "GCBusy",
    "build_lease",
    "exclusive",
    "Roots",
    "image_roots",
    "cache_roots",
    "mark",
    "GCResult",
    "sweep",
    "prune_cache",
    "collect",
    "dir_size",
]

LOCK_PATH = Path("locks") / "gc.lock"


class GCBusy(Exception):
    """The exclusive GC lock is not available (a build or another GC holds the lock)."""


def _open_lock(root: Path) -> int:
    path = Path(root) / LOCK_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


@contextlib.contextmanager
def build_lease(root: Path | str) -> Iterator[None]:
    """Shared lock on ``root/locks/gc.lock`` for the duration of the ``with`` block: while any
    lease is held no GC sweeps (see the module docstring)."""
    fd = _open_lock(Path(root))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(root: Path | str, *, wait: bool = True,
              on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive lock on ``root/locks/gc.lock``.  If it is not free at once: with ``wait``
    call ``on_wait()`` (e.g. to print "waiting...") and block; without, raise ``GCBusy``."""
    fd = _open_lock(Path(root))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise GCBusy(f"{Path(root) / LOCK_PATH} is held by a running build or GC") from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- mark ---------------------------------------------------------------------------------------

@dataclass
class Roots:
    blobs: set[str] = field(default_factory=set)
    diff_ids: set[str] = field(default_factory=set)

    def update(self, other: "Roots") -> "Roots":
        self.blobs |= other.blobs
        self.diff_ids |= other.diff_ids
        return self


def _read_json_blob(content, digest: str):
    try:
        with content.open(digest) as f:
            return json.load(f)
    except Exception:  # missing, unreadable or not JSON: nothing more is reachable from it
        return None


def _mark_descriptor(content, digest: str, roots: Roots, depth: int = 0) -> None:
    if not isinstance(digest, str) or depth > 8:
        return
    roots.blobs.add(digest)
    obj = _read_json_blob(content, digest)
    if not isinstance(obj, dict):
        return
    if isinstance(obj.get("manifests"), list):  # an image index
        for d in obj["manifests"]:
            if isinstance(d, dict):
                _mark_descriptor(content, d.get("digest"), roots, depth + 1)
        return
    cfg = obj.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("digest"), str):
        roots.blobs.add(cfg["digest"])
        config = _read_json_blob(content, cfg["digest"])
        if isinstance(config, dict):
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config.get("rootfs"), dict) else None
            for d in diff_ids or []:
                if isinstance(d, str):
                    roots.diff_ids.add(d)
    for layer in obj.get("layers") or []:
        if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
            roots.blobs.add(layer["digest"])
    subject = obj.get("subject")
    if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
        roots.blobs.add(subject["digest"])


def index_entries(root: Path) -> list[dict]:
    """The descriptors of ``root/index.json`` (empty if there is none).  Raises ValueError if it
    is unreadable: a GC must not sweep when it cannot see its roots."""
    path = Path(root) / "index.json"
    try:
        with open(path, "rb") as f:
            index = json.load(f)
    except FileNotFoundError:
        return []
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt: {e}") from None
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise ValueError(f"{path} is not an OCI image index")
    return [e for e in manifests if isinstance(e, dict)]


def image_roots(root: Path, content) -> Roots:
    """Everything reachable from the tags in ``root/index.json``."""
    roots = Roots()
    for e in index_entries(root):
        _mark_descriptor(content, e.get("digest"), roots)
    return roots


def cache_roots(index) -> Roots:
    """Layer blobs and diff_ids named by the cache records (unreadable records name nothing)."""
    roots = Roots()
    for entry in index.entries():
        if isinstance(entry, tuple):  # (key, why it is malformed)
            continue
        if entry.record.layer is not None:
            roots.blobs.add(entry.record.layer.digest)
            roots.diff_ids.add(entry.record.layer.diff_id)
    return roots


def container_roots(root: Path, content) -> Roots:
    """The images of container records (``containers/<id>/config.json``'s ``ImageManifest``,
    see ``runtime.containers``): their snapshots are a container's lowerdirs until `rm`."""
    roots = Roots()
    for cfg in sorted((Path(root) / "containers").glob("*/config.json")):
        try:
            digest = json.loads(cfg.read_bytes()).get("ImageManifest")
        except (OSError, ValueError, AttributeError):
            continue
        _mark_descriptor(content, digest, roots)
    return roots


def mark(store, *, include_cache: bool = True) -> Roots:
    """Roots of ``store`` (a ``pybuild.store.Store``): images and containers' images, plus
    cache records unless ``include_cache`` is false."""
    roots = image_roots(store.root, store.content).update(container_roots(store.root, store.content))
    if include_cache:
        roots.update(cache_roots(store.index))
    return roots


# -- sweep --------------------------------------------------------------------------------------

def dir_size(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Disk space used under ``path`` (allocated blocks of every entry, directories and the
    small files that dominate snapshots included; hard links counted once), as `du` counts it.
    Passing the same ``seen`` set to several calls counts an inode shared by them once, as one
    `du` over all of them would."""
    total = 0
    seen = set() if seen is None else seen
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not os.path.isdir(path) or os.path.islink(path):  # a single file (or link) counts itself
        if (st.st_dev, st.st_ino) in seen:
            return 0
        seen.add((st.st_dev, st.st_ino))
        return st.st_blocks * 512
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames, ""]:
            try:
                st = os.lstat(os.path.join(dirpath, name) if name else dirpath)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


@dataclass
class GCResult:
    blobs: list[BlobInfo] = field(default_factory=list)          # removed blobs
    snapshots: list[tuple[str, int]] = field(default_factory=list)  # removed (diff_id, bytes)
    cache_records: list[str] = field(default_factory=list)      # removed cache keys (prune)
    ingest: int = 0                                              # stale ingest files removed
    tmp: int = 0                                                 # stale work dirs removed

    @property
    def reclaimed(self) -> int:
        return sum(b.size for b in self.blobs) + sum(n for _, n in self.snapshots)


def sweep(store, roots: Roots, *, dry_run: bool = False) -> GCResult:
    """Remove what ``roots`` does not reach.  The caller holds ``exclusive(store.root)`` and
    computed ``roots`` under it."""
    result = GCResult()
    for blob in store.content.walk():
        if blob.digest not in roots.blobs:
            if not dry_run:
                store.content.delete(blob.digest)
            result.blobs.append(blob)
    for diff_id in store.snapshots.walk():
        if diff_id not in roots.diff_ids:
            size = dir_size(store.snapshots.path(diff_id))
            if dry_run or store.snapshots.remove(diff_id):
                result.snapshots.append((diff_id, size))
    if not dry_run:
        result.ingest = store.content.clean_ingest()
        result.tmp = len(store.snapshots.clean_tmp())
    return result


def prune_cache(store, *, all: bool = False, older_than: datetime | None = None,
                keep_bytes: int | None = None) -> list[str]:
    """Delete cache records: every one with ``all``, else those with a layer that no tagged
    image uses (records without a layer - steps that changed nothing - cost nothing and are
    kept).  ``older_than`` (``--filter until=``) spares records built or reused since then;
    ``keep_bytes`` (``--keep-storage``) removes candidates least recently used first, only
    until the layers the remaining records hold (blob + snapshot) fit in that many bytes.
    The caller holds ``exclusive(store.root)``.  Returns the removed keys."""
    in_images = image_roots(store.root, store.content)
    removed = []
    candidates: list[tuple[str, str]] = []  # (last used or created, key)
    held: dict[str, int] = {}               # layer digest -> bytes, over every record's layer
    for entry in store.index.entries():
        if isinstance(entry, tuple):  # malformed: useless, drop it
            store.index.delete(entry[0])
            removed.append(entry[0])
            continue
        key, rec = entry.record.key, entry.record
        if rec.layer is not None and rec.layer.digest not in held:
            held[rec.layer.digest] = _layer_bytes(store, rec.layer)
        if not all and (rec.layer is None or rec.layer.digest in in_images.blobs):
            continue
        used = entry.last_used or rec.created
        if older_than is not None and _parse_time(used) >= older_than:
            continue
        candidates.append((used, key))
    candidates.sort()
    if keep_bytes is not None:
        by_key = {e.record.key: e.record for e in store.index.entries() if not isinstance(e, tuple)}
        users: dict[str, int] = {}
        for rec in by_key.values():
            if rec.layer is not None:
                users[rec.layer.digest] = users.get(rec.layer.digest, 0) + 1
        total = sum(held.values())
        for _, key in candidates:
            if total <= keep_bytes:
                break
            store.index.delete(key)
            removed.append(key)
            layer = by_key[key].layer
            if layer is not None:
                users[layer.digest] -= 1
                if users[layer.digest] == 0 and layer.digest not in in_images.blobs:
                    total -= held[layer.digest]
    else:
        for _, key in candidates:
            store.index.delete(key)
            removed.append(key)
    if all and older_than is None and keep_bytes is None:
        # The context checksum cache only saves re-reading files; "all build cache" includes it.
        store.index.clear_file_digests()
        # Step logs (the builder's `logs/`) belong to the build cache. The small records of each
        # step's last definition (`cache/last/`) stay: they let the next miss say "pruned".
        shutil.rmtree(store.root / "logs", ignore_errors=True)
    else:
        store.index.forget_missing_files()
    return removed


def _layer_bytes(store, layer) -> int:
    """Disk bytes a cached layer holds: its blob and its unpacked snapshot."""
    snap = store.snapshots.path(layer.diff_id)
    return layer.size + (dir_size(snap) if snap.exists() else 0)


def _parse_time(text: str | None) -> datetime:
    try:
        return datetime.fromisoformat((text or "").replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)  # undated: as old as can be


def collect(store, *, include_cache: bool = True, wait: bool = True,
            on_wait: Callable[[], None] | None = None, dry_run: bool = False) -> GCResult:
    """Take the exclusive lock (``GCBusy`` if ``wait`` is false and it is held), mark, sweep."""
    with exclusive(store.root, wait=wait, on_wait=on_wait):
        return sweep(store, mark(store, include_cache=include_cache), dry_run=dry_run)
