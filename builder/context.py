"""The build context as a read-only view, with `.dockerignore` applied.

A `ContextView` is a one-layer `LayeredView` over the context directory in
which excluded paths do not exist: COPY cannot read them, their contents never
reach a cache key, and a COPY naming one is told which pattern excluded it.

It also remembers the content digests of context files across builds (in the
cache index's `context_files` table), so an unchanged 10,000-file context is
not re-read for every COPY's cache key: `file_digest` trusts a remembered digest
only while the file's stamp (size, mtime, ctime, inode, device) is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

from pybuild.builder.dockerignore import DockerIgnore
from pybuild.cache.index import CacheIndex, FileStamp
from pybuild.cache.view import Entry, LayeredView

# A file changed within this long before we read it may change again later without its ctime
# changing (timestamps come from the kernel's coarse clock, one tick behind: at most 10 ms at
# HZ=100), so its digest is not remembered. Filesystems with whole-second timestamps get 2 s.
RACY_WINDOW_NS = 50_000_000
RACY_WINDOW_COARSE_NS = 2_000_000_000
_FLUSH_EVERY = 512  # remembered digests written per transaction
_CHUNK = 1 << 20


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def find_ignore_file(context: Path, dockerfile: Path) -> Path | None:
    """`<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's `.dockerignore`, as in BuildKit."""
    specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if specific.is_file():
        return specific
    general = context / ".dockerignore"
    return general if general.is_file() else None


class ContextView(LayeredView):
    """The context directory `root` as a view. With `checksums` (the store's cache index), file
    digests are remembered across builds; call `save_checksums()` when done (digests not yet
    saved are only lost work, never wrong answers)."""

    def __init__(self, root: Path, ignore: DockerIgnore | None = None, ignore_file: str = ".dockerignore",
                 checksums: CacheIndex | None = None):
        super().__init__([root])
        self.ignore = ignore or DockerIgnore.empty()
        self.ignore_file = ignore_file
        self.checksums = checksums
        self._known: dict[str, tuple[FileStamp, str]] | None = None  # loaded on first use
        self._pending: list[tuple[FileStamp, str]] = []
        self._digest_lock = threading.Lock()

    def file_digest(self, entry: Entry) -> str:
        """sha256 (hex) of the content of the regular file `entry` of this view. The file is read
        only if no digest is remembered for exactly this version of it (same `FileStamp`)."""
        stamp = FileStamp.of(str(entry.real), entry.st)
        if self.checksums is not None:
            with self._digest_lock:
                if self._known is None:
                    self._known = self.checksums.file_digests(str(self.layers[0]))
                known = self._known.get(stamp.path)
            if known is not None and known[0] == stamp:
                return known[1]
        read_started = time.time_ns()
        digest = _sha256_file(entry.real)
        if self.checksums is not None:
            coarse = stamp.ctime_ns % 1_000_000_000 == 0 and stamp.mtime_ns % 1_000_000_000 == 0
            window = RACY_WINDOW_COARSE_NS if coarse else RACY_WINDOW_NS
            if stamp.ctime_ns < read_started - window:
                with self._digest_lock:
                    self._known[stamp.path] = (stamp, digest)
                    self._pending.append((stamp, digest))
                    flush = len(self._pending) >= _FLUSH_EVERY
                if flush:
                    self.save_checksums()
        return digest

    def save_checksums(self) -> None:
        """Write the digests learned so far to the cache index (one short transaction)."""
        if self.checksums is None:
            return
        with self._digest_lock:
            pending, self._pending = self._pending, []
        try:
            self.checksums.put_file_digests(pending)
        except sqlite3.Error:
            pass  # the index is busy or read-only: the next build reads these files again, no harm

    def _hidden(self, rel: str, is_dir: bool) -> bool:
        """Excluded, and (for a directory) no exception pattern can bring back anything inside it:
        an excluded directory with re-included files stays, holding only those files."""
        if not rel or not self.ignore.excluded(rel):
            return False
        return not (is_dir and self.ignore.may_contain_included(rel))

    def walk(self, path: str) -> Iterator[Entry]:
        """`LayeredView.walk` for this one-layer view, with the same entries in the same order,
        in one `scandir` and one `lstat` per entry (the generic walk costs three lstats and
        several path objects per entry: most of a cached build of a large context)."""
        top = self.resolve(path)
        root = os.fspath(self.layers[0])
        filtering = bool(self.ignore)
        stack = [top]
        while stack:
            parts = stack.pop()
            try:
                with os.scandir(os.path.join(root, *parts)) as it:
                    children = sorted(it, key=lambda e: os.fsencode(e.name))
            except (NotADirectoryError, FileNotFoundError):
                continue
            subdirs = []
            for child in children:
                try:
                    st = child.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    continue  # a whiteout hides the name, as in LayeredView
                rel = "/".join([*parts, child.name])
                is_dir = stat.S_ISDIR(st.st_mode)
                if filtering and self._hidden(rel, is_dir):
                    continue
                yield Entry("/" + rel, Path(child.path), st)
                if is_dir:
                    subdirs.append([*parts, child.name])
            stack.extend(reversed(subdirs))

    def lookup(self, path: str, follow_final: bool = True) -> Entry | None:
        entry = super().lookup(path, follow_final)
        if entry is None or self._hidden(entry.path.strip("/"), stat.S_ISDIR(entry.st.st_mode)):
            return None
        return entry

    def listdir(self, path: str) -> list[str]:
        parts = self.resolve(path)
        names = []
        for name in super().listdir(path):
            hit = self._lookup_raw([*parts, name])
            if hit is not None and self._hidden("/".join([*parts, name]), stat.S_ISDIR(hit[1].st_mode)):
                continue
            names.append(name)
        return names

    def why_missing(self, path: str) -> str | None:
        """Which .dockerignore line hides `path`, if one does."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        pattern = self.ignore.excluding_pattern("/".join(parts)) if parts else None
        if pattern is None:
            return None
        return f"it is excluded by {self.ignore_file} line {pattern.line}: {pattern}"
