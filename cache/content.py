"""Content-addressed blob store (``root/blobs/sha256/<hex>``).

A blob becomes visible only once :meth:`BlobWriter.commit` has fsynced the
temp file in ``root/ingest/``, verified its digest/size and renamed it into
place, so readers never observe partial content.  Every in-progress ingest
file is flock'ed by its writer; :meth:`ContentStore.clean_ingest` only removes
files it can lock (i.e. whose writer is gone).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from pybuild.atomicfile import fsync_dir
from typing import BinaryIO, Iterator

__all__ = ["BlobInfo", "DigestMismatch", "BlobNotFound", "BlobWriter", "ContentStore"]

_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BlobInfo:
    digest: str  # "sha256:<hex>"
    size: int


class DigestMismatch(Exception):
    """Content did not match the expected digest or size."""


class BlobNotFound(KeyError):
    """No blob with this digest in the store."""


def _hex(digest: str) -> str:
    m = _DIGEST_RE.match(digest) if isinstance(digest, str) else None
    if not m:
        raise ValueError(f"invalid digest {digest!r} (want 'sha256:' + 64 lowercase hex digits)")
    return m.group(1)


class BlobWriter:
    """Streams one blob into ``ingest/``; use as a context manager.

    Leaving the ``with`` block without :meth:`commit` (or with an exception)
    removes the temp file.
    """

    def __init__(self, store: "ContentStore"):
        self._store = store
        self._hash = hashlib.sha256()
        self._size = 0
        self._committed: BlobInfo | None = None
        self._closed = False
        # Create + lock the temp file.  A concurrent clean_ingest() may lock
        # and unlink a brand-new file before we lock it: detect that via
        # st_nlink and retry with a fresh name.
        while True:
            name = f"{os.getpid()}-{secrets.token_hex(8)}"
            path = store._ingest / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                continue
            break
        self._fd = fd
        self.path = path

    # -- writing -----------------------------------------------------------
    def write(self, data: bytes) -> int:
        if self._closed:
            raise ValueError("write to a closed BlobWriter")
        view = memoryview(data)
        self._hash.update(view)
        n = len(view)
        off = 0
        while off < n:
            off += os.write(self._fd, view[off:])
        self._size += n
        return n

    @property
    def size(self) -> int:
        return self._size

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    # -- commit / abort ----------------------------------------------------
    def commit(self, expected_digest: str | None = None, expected_size: int | None = None) -> BlobInfo:
        if self._committed is not None:
            return self._committed
        if self._closed:
            raise ValueError("commit of a closed BlobWriter")
        digest = self.digest()
        try:
            os.fsync(self._fd)
            if expected_size is not None and expected_size != self._size:
                raise DigestMismatch(f"size mismatch: expected {expected_size}, got {self._size} ({digest})")
            if expected_digest is not None and expected_digest != digest:
                _hex(expected_digest)
                raise DigestMismatch(f"digest mismatch: expected {expected_digest}, got {digest}")
            final = self._store.path(digest)
            if final.exists():
                os.unlink(self.path)  # idempotent: identical content already present
            else:
                os.fchmod(self._fd, 0o444)
                os.rename(self.path, final)
                fsync_dir(final.parent)
        except BaseException:
            self.abort()
            raise
        self._close_fd()
        self._committed = BlobInfo(digest, self._size)
        return self._committed

    def abort(self) -> None:
        if self._closed:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._close_fd()

    def _close_fd(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)  # releases the flock

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._committed is None:
            self.abort()

    def __del__(self):  # last resort; never leave an fd behind
        try:
            if not self._closed and self._committed is None:
                self.abort()
        except Exception:
            pass


class ContentStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._ingest = self.root / "ingest"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._ingest.mkdir(parents=True, exist_ok=True)

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> BlobInfo:
        with self.writer() as w:
            w.write(data)
            return w.commit(expected_digest=expected_digest)

    def path(self, digest: str) -> Path:
        return self._blobs / _hex(digest)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def read_bytes(self, digest: str, verify: bool = True) -> bytes:
        with self.open(digest) as f:
            data = f.read()
        if verify:
            got = "sha256:" + hashlib.sha256(data).hexdigest()
            if got != digest:
                raise DigestMismatch(f"blob {digest} is corrupt: content hashes to {got}")
        return data

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def walk(self) -> Iterator[BlobInfo]:
        with os.scandir(self._blobs) as it:
            entries = sorted((e for e in it if _HEX_RE.match(e.name)), key=lambda e: e.name)
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield BlobInfo("sha256:" + e.name, st.st_size)

    def clean_ingest(self, older_than_s: float = 0) -> int:
        """Remove ingest temp files not locked by a live writer and older than
        ``older_than_s`` seconds.  Returns the number removed."""
        now = time.time()
        removed = 0
        with os.scandir(self._ingest) as it:
            entries = list(it)
        for e in entries:
            try:
                if now - e.stat(follow_symlinks=False).st_mtime < older_than_s:
                    continue
                fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno == errno.ELOOP:  # a stray symlink: never ours
                    os.unlink(e.path)
                    removed += 1
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer holds it
                try:
                    os.unlink(e.path)
                    removed += 1
                except FileNotFoundError:
                    pass
            finally:
                os.close(fd)
        return removed

    # -- added for fsck / gc ------------------------------------------------------------
    def rehash(self, digest: str) -> str:
        """Re-hash the stored blob ``digest`` streaming (1 MiB chunks); return the digest
        its content actually has (equal to ``digest`` when the blob is intact)."""
        h = hashlib.sha256()
        with self.open(digest) as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                h.update(chunk)
        return "sha256:" + h.hexdigest()

    def stray_files(self) -> list[Path]:
        """Entries of ``blobs/sha256/`` that are not blobs (not named by 64 lowercase hex)."""
        with os.scandir(self._blobs) as it:
            return sorted(Path(e.path) for e in it if not _HEX_RE.match(e.name))
