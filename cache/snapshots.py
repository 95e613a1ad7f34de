"""Unpacked layers (overlay form), one directory per diff_id:
``root/snapshots/<diff_id hex>``; used read-only as overlay lowerdirs.

Snapshots appear atomically: unpack into ``snapshots/.tmp-<pid>-<start>-<rand>``
then rename, under a per-diff_id flock in ``root/locks/``.  Work dirs for
overlay upper/work live in ``root/tmp/<pid>-<start>-<rand>`` (same filesystem,
so ``commit_dir`` is a rename); ``clean_tmp`` removes those whose owner died.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
from pathlib import Path

from pybuild.atomicfile import fsync_dir
from typing import Iterator, Sequence

from .content import ContentStore
from .layers import LayerBlob, unpack_layer

__all__ = ["SnapshotStore"]

_DIFF_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_OWNER_RE = re.compile(r"^(?:\.tmp-)?(\d+)-(\d+)-[0-9a-f]+$")


def _diff_hex(diff_id: str) -> str:
    m = _DIFF_RE.match(diff_id) if isinstance(diff_id, str) else None
    if not m:
        raise ValueError(f"invalid diff_id {diff_id!r}")
    return m.group(1)


def _proc_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of pid, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces/parens: fields after the last ')'
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[19])  # field 22 overall


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_proc_start(pid) or 0}-{secrets.token_hex(4)}"


def new_owned_dir(parent: Path) -> Path:
    """A new private dir ``parent/<pid>-<start>-<rand>``: ``SnapshotStore.clean_tmp`` removes it
    once this process is gone (for ``parent`` = the store's tmp dir), even after a SIGKILL."""
    d = Path(parent) / _owner_tag()
    d.mkdir(mode=0o700)
    return d


def _owner_alive(name: str) -> bool:
    m = _OWNER_RE.match(name)
    if not m:
        return False
    pid, start = int(m.group(1)), int(m.group(2))
    return _proc_start(pid) == start


def _mountpoints() -> list[str]:
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4]
                out.append(mp.encode().decode("unicode_escape"))
    except OSError:
        pass
    return out


class SnapshotStore:
    def __init__(self, root: Path, content: ContentStore):
        self.root = Path(root)
        self.content = content
        self._snapshots = self.root / "snapshots"
        self._locks = self.root / "locks"
        self._tmp = self.root / "tmp"
        for d in (self._snapshots, self._locks, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, diff_id: str) -> Path:
        return self._snapshots / _diff_hex(diff_id)

    def exists(self, diff_id: str) -> bool:
        return self.path(diff_id).is_dir()

    @contextlib.contextmanager
    def _lock(self, diff_id: str) -> Iterator[None]:
        fd = os.open(self._locks / f"snapshot-{_diff_hex(diff_id)}.lock",
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure(self, layer: LayerBlob) -> Path:
        final = self.path(layer.diff_id)
        if final.is_dir():
            return final
        with self._lock(layer.diff_id):
            if final.is_dir():
                return final
            tmp = self._snapshots / f".tmp-{_owner_tag()}"
            tmp.mkdir(mode=0o755)
            try:
                os.chmod(tmp, 0o755)
                unpack_layer(self.content, layer, tmp)
                os.rename(tmp, final)
                fsync_dir(self._snapshots)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final

    def commit_dir(self, diff_id: str, src_dir: Path) -> Path:
        src_dir = Path(src_dir)
        final = self.path(diff_id)
        with self._lock(diff_id):
            if final.is_dir():
                shutil.rmtree(src_dir)
            else:
                os.rename(src_dir, final)
                fsync_dir(self._snapshots)
        return final

    def lowerdirs(self, layers: Sequence[LayerBlob]) -> list[Path]:
        """Snapshot dirs for ``layers`` (base first), returned top-most first
        as overlay's ``lowerdir=`` wants them.

        A layer that occurs twice (e.g. a chmod that changed nothing copies up the same
        files again) is listed once, at its top-most position: overlayfs refuses the same
        dir twice (ELOOP), and the top copy already decides every path the layer holds,
        so the merged view is unchanged."""
        dirs = [self.ensure(layer) for layer in layers][::-1]
        seen: set[Path] = set()
        unique = []
        for d in dirs:
            if d not in seen:
                seen.add(d)
                unique.append(d)
        return unique

    def new_work_dir(self) -> Path:
        return new_owned_dir(self._tmp)

    def clean_tmp(self) -> list[Path]:
        """Remove work dirs and half-unpacked snapshots whose owning process is
        gone.  Dirs with something still mounted beneath them are left alone."""
        mounts = _mountpoints()
        removed = []
        candidates = [p for p in self._tmp.iterdir()]
        candidates += [p for p in self._snapshots.iterdir() if p.name.startswith(".tmp-")]
        for p in candidates:
            if _owner_alive(p.name):
                continue
            prefix = str(p) + "/"
            if any(mp == str(p) or mp.startswith(prefix) for mp in mounts):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        return removed

    # -- added for fsck / gc ------------------------------------------------------------
    def walk(self) -> list[str]:
        """diff_ids of the snapshots present (``sha256:<hex>``), sorted; in-progress
        ``.tmp-`` dirs and stray entries are not listed (see :meth:`stray_entries`)."""
        out = []
        with os.scandir(self._snapshots) as it:
            for e in it:
                if _DIFF_RE.match("sha256:" + e.name) and e.is_dir(follow_symlinks=False):
                    out.append("sha256:" + e.name)
        return sorted(out)

    def stray_entries(self) -> list[Path]:
        """Entries of ``snapshots/`` that are neither a snapshot nor a ``.tmp-`` dir."""
        out = []
        with os.scandir(self._snapshots) as it:
            for e in it:
                if e.name.startswith(".tmp-"):
                    continue
                if _DIFF_RE.match("sha256:" + e.name) and e.is_dir(follow_symlinks=False):
                    continue
                out.append(Path(e.path))
        return sorted(out)

    def remove(self, diff_id: str) -> bool:
        """Remove the snapshot of ``diff_id`` (False if absent).  Under the snapshot's lock it
        is first renamed to a ``.tmp-<owner>`` name, so it disappears atomically and a crash
        mid-delete leaves a dir that :meth:`clean_tmp` removes.  Callers must make sure no
        build or container uses it (see ``pybuild.cache.gc``)."""
        final = self.path(diff_id)
        with self._lock(diff_id):
            if not final.is_dir():
                return False
            doomed = self._snapshots / f".tmp-{_owner_tag()}"
            os.rename(final, doomed)
            fsync_dir(self._snapshots)
        shutil.rmtree(doomed, ignore_errors=True)
        # Callers hold the GC's exclusive lock, so no build can be waiting on this lock file.
        (self._locks / f"snapshot-{_diff_hex(diff_id)}.lock").unlink(missing_ok=True)
        return True
