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
    "PrunePlan",
    "plan_prune",
    "PruneResult",
    "prune",
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
    blob_bytes: dict[str, int] = field(default_factory=dict)    # removed blob -> bytes on disk
    tmp_bytes: int = 0                                           # bytes of the stale temp files removed

    @property
    def reclaimed(self) -> int:
        """Disk space freed, counted as ``dir_size`` (and `pybuild du`, `du -B1`) counts it:
        allocated blocks of the removed blobs, snapshots and stale temp files."""
        return sum(self.blob_bytes.values()) + sum(n for _, n in self.snapshots) + self.tmp_bytes


def temp_entries(root: Path) -> list[Path]:
    """What ``sweep`` may clean as stale temp files: entries of ``tmp/`` and ``ingest/``, and
    half-unpacked (or half-removed) ``snapshots/.tmp-*`` dirs.  ``du`` counts these as
    "Temporary files"."""
    root = Path(root)
    out = []
    for name in ("tmp", "ingest"):
        try:
            out += sorted((root / name).iterdir())
        except OSError:
            pass
    try:
        out += sorted(p for p in (root / "snapshots").iterdir() if p.name.startswith(".tmp-"))
    except OSError:
        pass
    return out


def sweep(store, roots: Roots, *, dry_run: bool = False) -> GCResult:
    """Remove what ``roots`` does not reach.  The caller holds ``exclusive(store.root)`` and
    computed ``roots`` under it."""
    result = GCResult()
    for blob in store.content.walk():
        if blob.digest not in roots.blobs:
            result.blob_bytes[blob.digest] = dir_size(store.content.path(blob.digest))
            if not dry_run:
                store.content.delete(blob.digest)
            result.blobs.append(blob)
    for diff_id in store.snapshots.walk():
        if diff_id not in roots.diff_ids:
            size = dir_size(store.snapshots.path(diff_id))
            if dry_run or store.snapshots.remove(diff_id):
                result.snapshots.append((diff_id, size))
    if not dry_run:
        before = {p: dir_size(p) for p in temp_entries(store.root)}
        result.ingest = store.content.clean_ingest()
        result.tmp = len(store.snapshots.clean_tmp())
        result.tmp_bytes = sum(n for p, n in before.items() if not os.path.lexists(p))
    return result


@dataclass
class PrunePlan:
    """What ``prune`` with some options deletes, decided without changing anything: ``pybuild
    du`` shows it as reclaimable, ``prune`` (under the exclusive lock) then does exactly this.

    ``base`` is what images and containers hold (never swept), ``cache`` what every cache
    record holds, ``roots`` what is still reachable once ``records`` are deleted (``base`` plus
    the kept records' layers): the sweep after the deletion removes every blob and snapshot
    outside ``roots``."""

    records: list[str]            # keys of the cache records to delete (malformed ones included)
    base: Roots
    cache: Roots
    roots: Roots
    whole: bool                   # all of it (-a, no filter): also step logs, all context digests
    missing_files: list[str]      # otherwise: the context-file digests to forget (files gone)

    def blob_kind(self, digest: str) -> str:
        """``records`` for a blob only the build cache holds (a cached step's own layer), else
        ``layers`` (an image's or container's, or one nothing holds); the kinds of ``du``."""
        return "records" if digest in self.cache.blobs and digest not in self.base.blobs else "layers"

    def snapshot_kind(self, diff_id: str) -> str:
        """``records`` for a snapshot only the build cache holds, else ``snapshots``."""
        return ("records" if diff_id in self.cache.diff_ids and diff_id not in self.base.diff_ids
                else "snapshots")


def plan_prune(store, *, all: bool = False, older_than: datetime | None = None,
               keep_bytes: int | None = None) -> PrunePlan:
    """The cache records ``prune_cache`` with these options deletes, and what remains reachable
    after (see :class:`PrunePlan`).  Reads only.  Which records: every one with ``all``, else
    those with a layer that no tagged image uses (records without a layer - steps that changed
    nothing - cost nothing and are kept); malformed records always.  ``older_than``
    (``--filter until=``) spares records built or reused since then; ``keep_bytes``
    (``--keep-storage``) takes candidates least recently used first, only until the layers the
    remaining records hold (blob + snapshot) fit in that many bytes.  Only what prune could
    free counts against that budget (BuildKit's keep-storage): a blob or snapshot an image or
    container also uses is never freed, so it costs the records nothing; one several records
    share counts once and is freed with the last of them."""
    in_images = image_roots(store.root, store.content)
    base = Roots().update(in_images).update(container_roots(store.root, store.content))
    entries = store.index.entries()
    doomed: list[str] = []
    candidates: list[tuple[str, str]] = []  # (last used or created, key)
    by_key = {}
    for entry in entries:
        if isinstance(entry, tuple):  # malformed: useless, drop it
            doomed.append(entry[0])
            continue
        key, rec = entry.record.key, entry.record
        by_key[key] = rec
        if not all and (rec.layer is None or rec.layer.digest in in_images.blobs):
            continue
        used = entry.last_used or rec.created
        if older_than is not None and _parse_time(used) >= older_than:
            continue
        candidates.append((used, key))
    candidates.sort()
    if keep_bytes is not None:
        # what each record's layer would free: its blob and its snapshot, each unless an image or
        # container holds it too, counted as `du` counts them, and once however many records hold it
        freeable: dict[tuple[str, str], int] = {}
        users: dict[tuple[str, str], int] = {}
        for rec in by_key.values():
            for ident in _layer_objects(rec.layer):
                users[ident] = users.get(ident, 0) + 1
                if ident not in freeable:
                    freeable[ident] = _object_bytes(store, base, ident)
        total = sum(freeable.values())
        for _, key in candidates:
            if total <= keep_bytes:
                break
            doomed.append(key)
            for ident in _layer_objects(by_key[key].layer):
                users[ident] -= 1
                if users[ident] == 0:
                    total -= freeable[ident]
    else:
        doomed += [key for _, key in candidates]
    gone = set(doomed)
    cache, roots = Roots(), Roots().update(base)
    for key, rec in by_key.items():
        if rec.layer is not None:
            for r in (cache, roots) if key not in gone else (cache,):
                r.blobs.add(rec.layer.digest)
                r.diff_ids.add(rec.layer.diff_id)
    whole = all and older_than is None and keep_bytes is None
    return PrunePlan(records=doomed, base=base, cache=cache, roots=roots, whole=whole,
                     missing_files=[] if whole else store.index.missing_files())


def _delete_records(store, plan: PrunePlan) -> None:
    store.index.delete_many(plan.records)
    if plan.whole:
        # The context checksum cache only saves re-reading files; "all build cache" includes it.
        store.index.clear_file_digests()
        # Step logs (the builder's `logs/`) belong to the build cache. The small records of each
        # step's last definition (`cache/last/`) stay: they let the next miss say "pruned".
        shutil.rmtree(store.root / "logs", ignore_errors=True)
    else:
        store.index.forget_files(plan.missing_files)


def prune_cache(store, *, all: bool = False, older_than: datetime | None = None,
                keep_bytes: int | None = None) -> list[str]:
    """Delete the cache records :func:`plan_prune` picks with these options (with ``all`` and no
    filter also every context-file digest and the step logs; otherwise the digests of files
    that are gone).  Blobs and snapshots are left for ``sweep``; the index file is not vacuumed
    (see :func:`prune`).  The caller holds ``exclusive(store.root)``.  Returns the removed keys."""
    plan = plan_prune(store, all=all, older_than=older_than, keep_bytes=keep_bytes)
    _delete_records(store, plan)
    return plan.records


@dataclass
class PruneResult:
    """What :func:`prune` removed, by the kinds of ``pybuild du`` (``layers``, ``snapshots``,
    ``records``, ``logs``, ``tmp``): ``{"count": n, "size": bytes}`` each, sizes counted as
    ``du`` counts them.  ``records`` counts the deleted cache records; its size is the blobs and
    snapshots only they held plus what the index file shrank by, and its ``layers`` and
    ``snapshots`` (``{"count", "size"}`` each) say how many of those blobs and snapshots went
    (they are in ``gc.blobs``/``gc.snapshots`` too; ``held_by_records`` names them)."""

    kinds: dict[str, dict[str, int]]
    records: list[str]
    gc: GCResult
    index_bytes: int  # how much the index database (with its WAL) shrank
    held_by_records: set[tuple[str, str]] = field(default_factory=set)  # ("blob"|"snapshot", id) of "records"

    @property
    def reclaimed(self) -> int:
        return sum(k["size"] for k in self.kinds.values())


def index_disk_usage(index, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes the cache index's files take, measured as ``du`` does: after closing this
    process's connections, so that (when no other process has it open) the write-ahead log is
    checkpointed into the database and removed.  ``seen`` as for :func:`dir_size`."""
    index.close()
    seen = set() if seen is None else seen
    return sum(dir_size(p, seen) for p in index.files())


def prune(store, plan: PrunePlan) -> PruneResult:
    """Carry out ``plan`` (from :func:`plan_prune`, made under the same lock): delete its cache
    records (and, for a whole prune, the context digests and step logs), VACUUM the index so
    its file shrinks, then sweep everything outside ``plan.roots`` and stale temp files.  The
    caller holds ``exclusive(store.root)``.  ``RUN --mount=type=cache`` directories are the
    builder's and left to the caller."""
    kinds = {k: {"count": 0, "size": 0} for k in ("layers", "snapshots", "records", "logs", "tmp")}
    kinds["records"]["layers"] = {"count": 0, "size": 0}     # the blobs and snapshots counted in
    kinds["records"]["snapshots"] = {"count": 0, "size": 0}  # "records": only cache records held them
    held_by_records: set[tuple[str, str]] = set()
    index_before = index_disk_usage(store.index)
    logs = store.root / "logs"
    if plan.whole and logs.is_dir():
        kinds["logs"]["count"] = sum(len(files) for _, _, files in os.walk(logs))
        kinds["logs"]["size"] = dir_size(logs)
    _delete_records(store, plan)
    store.index.vacuum()
    shrink = index_before - index_disk_usage(store.index)
    result = sweep(store, plan.roots)
    result.cache_records = list(plan.records)
    for blob in result.blobs:
        size = result.blob_bytes.get(blob.digest, 0)
        if plan.blob_kind(blob.digest) == "records":
            row = kinds["records"]["layers"]
            held_by_records.add(("blob", blob.digest))
            kinds["records"]["size"] += size
        else:
            row = kinds["layers"]
        row["count"] += 1
        row["size"] += size
    for diff_id, size in result.snapshots:
        if plan.snapshot_kind(diff_id) == "records":
            row = kinds["records"]["snapshots"]
            held_by_records.add(("snapshot", diff_id))
            kinds["records"]["size"] += size
        else:
            row = kinds["snapshots"]
        row["count"] += 1
        row["size"] += size
    kinds["records"]["count"] = len(plan.records)
    kinds["records"]["size"] += shrink
    kinds["tmp"]["count"] = result.ingest + result.tmp
    kinds["tmp"]["size"] = result.tmp_bytes
    return PruneResult(kinds=kinds, records=list(plan.records), gc=result, index_bytes=shrink,
                       held_by_records=held_by_records)


def _layer_objects(layer) -> list[tuple[str, str]]:
    """The blob and the snapshot a cached layer holds, as ``("blob", digest)``, ``("snapshot", diff_id)``."""
    return [] if layer is None else [("blob", layer.digest), ("snapshot", layer.diff_id)]


def _object_bytes(store, base: Roots, ident: tuple[str, str]) -> int:
    """Disk bytes (as ``du`` counts them) deleting the cache records that hold ``ident`` frees:
    none if an image or container (``base``) holds it too, or if it is not on disk."""
    kind, name = ident
    if kind == "blob":
        if name in base.blobs or not store.content.exists(name):
            return 0
        return dir_size(store.content.path(name))
    if name in base.diff_ids:
        return 0
    path = store.snapshots.path(name)
    return dir_size(path) if path.exists() else 0


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
