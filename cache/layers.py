"""Layer tarballs: deterministic writing from a directory, safe unpacking into
overlay form.

``write_layer`` streams a sorted, numeric-owner PAX tar of a directory through
sha256 (diff_id) -> gzip -> sha256 (digest) -> ContentStore in a single pass.
``unpack_layer`` / ``unpack_tar_stream`` extract a layer into a directory in
*overlay form* (OCI whiteouts become 0/0 char devices, opaque markers become
``trusted.overlay.opaque=y``), resolving every path component with
``O_NOFOLLOW`` relative to directory fds so nothing can escape ``dest``.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import os
import queue
import shutil
import stat
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .content import BlobWriter, ContentStore

try:  # optional, faster deflate
    from isal import isal_zlib as _isal_zlib  # type: ignore
except Exception:  # pragma: no cover - isal is not a hard dependency
    _isal_zlib = None

try:  # needed only for compression="zstd" and for reading zstd layers
    import zstandard as _zstd  # type: ignore
except ImportError:  # pragma: no cover
    _zstd = None

__all__ = [
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_LAYER_TAR",
    "MEDIA_TYPE_LAYER_ZSTD",
    "ZSTD_MAGIC",
    "LayerBlob",
    "LayerError",
    "write_layer",
    "unpack_layer",
    "unpack_tar_stream",
    "open_decompressed",
]

MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_LEVEL = 3  # zstd's default; single-threaded, so the output is deterministic

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_XATTR_PAX_PREFIX = "SCHILY.xattr."

_CHUNK = 1 << 20
_FD_CACHE_SIZE = 128
_BLOCK = tarfile.BLOCKSIZE  # 512
_NUL_BLOCK = bytes(_BLOCK)


@dataclass(frozen=True)
class LayerBlob:
    digest: str  # sha256 of the blob as stored (compressed)
    diff_id: str  # sha256 of the uncompressed tar stream
    size: int  # size of the stored blob
    media_type: str


class LayerError(Exception):
    """A layer could not be written or unpacked (message names the entry)."""


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


class _LayerSink:
    """tar bytes -> sha256(diff_id) -> [gzip] -> BlobWriter (which hashes the digest).

    Deflate runs in a worker thread (zlib and hashlib release the GIL), fed
    through a small bounded queue, so reading files / building headers /
    hashing the tar overlaps with compression while memory stays bounded
    (at most ~_QUEUE_DEPTH MiB in flight).
    """

    _QUEUE_DEPTH = 4

    def __init__(self, bw: BlobWriter, compression: str):
        self._bw = bw
        self._diff = hashlib.sha256()
        self._buf = bytearray()
        self._err: BaseException | None = None
        self._thread = None
        if compression == "gzip":
            if _isal_zlib is not None:
                self._comp = _isal_zlib.compressobj(
                    _isal_zlib.ISAL_DEFAULT_COMPRESSION, _isal_zlib.DEFLATED, 31
                )
            else:
                # wbits=31: gzip wrapper, header mtime=0, no file name.
                self._comp = zlib.compressobj(6, zlib.DEFLATED, 31)
            self._q: queue.Queue = queue.Queue(maxsize=self._QUEUE_DEPTH)
            self._thread = threading.Thread(target=self._worker, name="layer-gzip", daemon=True)
            self._thread.start()
        elif compression == "zstd":
            self._comp = _zstd_module().ZstdCompressor(level=_ZSTD_LEVEL).compressobj()
            self._q = queue.Queue(maxsize=self._QUEUE_DEPTH)
            self._thread = threading.Thread(target=self._worker, name="layer-zstd", daemon=True)
            self._thread.start()
        elif compression == "none":
            self._comp = None
        else:
            raise ValueError(f"unknown compression {compression!r} (want 'gzip', 'zstd' or 'none')")

    def _worker(self) -> None:
        q = self._q
        try:
            while True:
                data = q.get()
                if data is None:
                    break
                out = self._comp.compress(data)
                if out:
                    self._bw.write(out)
            self._bw.write(self._comp.flush())
        except BaseException as e:  # reported to the producer
            self._err = e
            while q.get() is not None:  # keep the producer from blocking
                pass

    def write(self, data) -> None:
        if len(self._buf) + len(data) < _CHUNK:
            self._buf += data
            return
        self._flush()
        self._process(data)

    def _flush(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._process(data)

    def _process(self, data) -> None:
        self._diff.update(data)
        if self._thread is None:
            self._bw.write(data)
            return
        if self._err is not None:
            raise self._err
        self._q.put(bytes(data))

    def close(self) -> str:
        self._flush()
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
            if self._err is not None:
                raise self._err
        return "sha256:" + self._diff.hexdigest()

    def abort(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None


def _zstd_module():
    if _zstd is None:
        raise LayerError("zstd layers need the 'zstandard' Python package (pip install zstandard)")
    return _zstd


def _media_type(compression: str) -> str:
    return {"gzip": MEDIA_TYPE_LAYER_GZIP, "zstd": MEDIA_TYPE_LAYER_ZSTD}.get(compression, MEDIA_TYPE_LAYER_TAR)


def read_xattrs(path: str) -> dict[str, bytes]:
    """All xattrs of `path` (not following a symlink); {} where the filesystem has none."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                continue
            raise
    return out


def _open_for_read(path: str) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


def _fsbytes_key(e: os.DirEntry) -> bytes:
    return os.fsencode(e.name)


def write_layer(
    src_dir: Path,
    store: ContentStore,
    *,
    overlay_upper: bool = False,
    compression: str = "gzip",
    source_date_epoch: int | None = None,
) -> LayerBlob:
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise LayerError(f"layer source {src_dir} is not a directory")
    if compression not in ("gzip", "zstd", "none"):
        raise ValueError(f"unknown compression {compression!r} (want 'gzip', 'zstd' or 'none')")
    media_type = _media_type(compression)
    with store.writer() as bw:
        sink = _LayerSink(bw, compression)
        try:
            _write_tar(sink, str(src_dir), overlay_upper, source_date_epoch)
            diff_id = sink.close()
        finally:
            sink.abort()
        info = bw.commit()
    return LayerBlob(digest=info.digest, diff_id=diff_id, size=info.size, media_type=media_type)


def _tobuf(ti: tarfile.TarInfo) -> bytes:
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _write_tar(sink: _LayerSink, root: str, overlay_upper: bool, sde: int | None) -> None:
    inodes: dict[tuple[int, int], str] = {}

    def children(dir_path: str, arc_prefix: str) -> list[tuple[str, str]]:
        with os.scandir(dir_path) as it:
            ents = sorted(it, key=_fsbytes_key)
        return [(e.path, arc_prefix + e.name) for e in ents]

    # Iterative pre-order DFS: each directory, then its (sorted) contents.
    stack = children(root, "")
    stack.reverse()
    while stack:
        path, arc = stack.pop()
        st = os.lstat(path)
        mode = st.st_mode
        mtime = st.st_mtime_ns // 1_000_000_000
        if sde is not None and mtime > sde:
            mtime = sde
        xattrs = read_xattrs(path)

        ti = tarfile.TarInfo(arc)
        ti.mode = stat.S_IMODE(mode)
        ti.uid = st.st_uid
        ti.gid = st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime = mtime

        if overlay_upper:
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                # overlay whiteout -> OCI whiteout file (never a hard link)
                head, _, name = arc.rpartition("/")
                ti.name = (head + "/" if head else "") + WHITEOUT_PREFIX + name
                ti.type = tarfile.REGTYPE
                ti.mode = 0
                ti.size = 0
                sink.write(_tobuf(ti))
                continue
            for bad in ("trusted.overlay.redirect", "user.overlay.redirect",
                        "trusted.overlay.metacopy", "user.overlay.metacopy"):
                if bad in xattrs:
                    raise LayerError(
                        f"{arc}: overlay upper dir uses {bad} (redirect_dir/metacopy), "
                        "which cannot be converted to a layer; mount with redirect_dir=off,metacopy=off"
                    )

        for k in sorted(xattrs):
            if k.startswith(OVERLAY_XATTR_PREFIXES):
                continue
            ti.pax_headers[_XATTR_PAX_PREFIX + k] = xattrs[k].decode("utf-8", "surrogateescape")

        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
            sink.write(_tobuf(ti))
            if overlay_upper and (
                xattrs.get("trusted.overlay.opaque") == b"y" or xattrs.get("user.overlay.opaque") == b"y"
            ):
                opq = tarfile.TarInfo(arc + "/" + WHITEOUT_OPAQUE)
                opq.type = tarfile.REGTYPE
                opq.mode = 0
                opq.uid, opq.gid = st.st_uid, st.st_gid
                opq.uname = opq.gname = ""
                opq.mtime = mtime
                sink.write(_tobuf(opq))
            kids = children(path, arc + "/")
            kids.reverse()
            stack.extend(kids)
            continue

        if stat.S_ISSOCK(mode):
            continue  # sockets cannot be represented in a tar (same as docker)

        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = inodes.get(key)
            if first is not None:
                ti.type = tarfile.LNKTYPE
                ti.linkname = first
                ti.size = 0
                sink.write(_tobuf(ti))
                continue
            inodes[key] = arc

        if stat.S_ISREG(mode):
            ti.type = tarfile.REGTYPE
            ti.size = st.st_size
            sink.write(_tobuf(ti))
            _copy_file_data(sink, path, arc, st.st_size)
        elif stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(path)
            sink.write(_tobuf(ti))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor = os.major(st.st_rdev)
            ti.devminor = os.minor(st.st_rdev)
            sink.write(_tobuf(ti))
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
            sink.write(_tobuf(ti))
        else:  # pragma: no cover
            raise LayerError(f"{arc}: unsupported file type {stat.filemode(mode)}")

    sink.write(_NUL_BLOCK * 2)  # end-of-archive marker


def _copy_file_data(sink: _LayerSink, path: str, arc: str, size: int) -> None:
    fd = _open_for_read(path)
    try:
        left = size
        while left > 0:
            data = os.read(fd, min(_CHUNK, left))
            if not data:
                raise LayerError(f"{arc}: file shrank while writing the layer (expected {size} bytes)")
            sink.write(data)
            left -= len(data)
    finally:
        os.close(fd)
    pad = -size % _BLOCK
    if pad:
        sink.write(_NUL_BLOCK[:pad])


# ---------------------------------------------------------------------------
# unpacking
# ---------------------------------------------------------------------------


class _HashReader:
    def __init__(self, f):
        self._f = f
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def hexdigest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class _PeekReader:
    """Re-serves the bytes already read by ``peek`` before the rest of ``f`` (for pipes)."""

    def __init__(self, f, n: int = 4):
        self._f = f
        self._head = b""
        while len(self._head) < n:
            data = f.read(n - len(self._head))
            if not data:
                break
            self._head += data
        self.magic = self._head

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data = self._head + self._f.read()
                self._head = b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            if len(data) < n:
                data += self._f.read(n - len(data))
            return data
        return self._f.read(n)


def open_decompressed(fileobj: BinaryIO):
    """A reader of the uncompressed tar inside ``fileobj``: gzip (1f 8b), zstd (28 b5 2f fd)
    or plain, detected by magic; works on pipes (never seeks)."""
    peek = _PeekReader(fileobj, 4)
    if peek.magic.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=peek, mode="rb")
    if peek.magic == ZSTD_MAGIC:
        return _zstd_module().ZstdDecompressor().stream_reader(peek, read_across_frames=True)
    return peek


def unpack_layer(store: ContentStore, layer: LayerBlob, dest: Path) -> None:
    """Unpack a stored layer into ``dest`` (overlay form), verifying both the
    blob digest and the diff_id of the uncompressed stream."""
    with store.open(layer.digest) as raw:
        magic = raw.read(4)
        raw.seek(0)
        outer = _HashReader(raw)
        if magic.startswith(GZIP_MAGIC):
            inner_src = gzip.GzipFile(fileobj=outer, mode="rb")
        elif magic == ZSTD_MAGIC:
            inner_src = _zstd_module().ZstdDecompressor().stream_reader(outer, read_across_frames=True)
        else:
            inner_src = outer
        inner = _HashReader(inner_src) if inner_src is not outer else outer
        try:
            _unpack(inner, dest, "r|")
            inner.drain()
            outer.drain()
        except (OSError, EOFError, zlib.error) as e:  # LayerError is not an OSError
            raise LayerError(f"layer {layer.digest}: corrupt stream: {e}") from e
        except Exception as e:
            if _zstd is None or not isinstance(e, _zstd.ZstdError):
                raise
            raise LayerError(f"layer {layer.digest}: corrupt stream: {e}") from e
        if outer.hexdigest() != layer.digest:
            raise LayerError(f"layer {layer.digest}: blob content hashes to {outer.hexdigest()}")
        if inner.hexdigest() != layer.diff_id:
            raise LayerError(
                f"layer {layer.digest}: uncompressed stream hashes to {inner.hexdigest()}, "
                f"expected diff_id {layer.diff_id}"
            )


def unpack_tar_stream(fileobj: BinaryIO, dest: Path) -> None:
    """Unpack a tar stream (plain or compressed, auto-detected) into ``dest`` in overlay form."""
    peek = _PeekReader(fileobj, 4)
    if peek.magic == ZSTD_MAGIC:
        try:
            _unpack(_zstd_module().ZstdDecompressor().stream_reader(peek, read_across_frames=True), dest, "r|")
        except LayerError:
            raise
        except Exception as e:
            if _zstd is not None and isinstance(e, _zstd.ZstdError):
                raise LayerError(f"corrupt zstd stream: {e}") from e
            raise
        return
    _unpack(peek, dest, "r|*")


def _unpack(fileobj, dest: Path, mode: str) -> None:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    u = _Unpacker(dest)
    try:
        try:
            tf = tarfile.open(fileobj=fileobj, mode=mode)
        except tarfile.TarError as e:
            raise LayerError(f"not a tar stream: {e}") from e
        with tf:
            while True:
                try:
                    m = tf.next()
                except tarfile.TarError as e:
                    raise LayerError(f"corrupt tar stream: {e}") from e
                if m is None:
                    break
                try:
                    u.member(tf, m)
                except LayerError:
                    raise
                except (OSError, tarfile.TarError, ValueError) as e:
                    raise LayerError(f"entry {m.name!r}: {e}") from e
        u.finish()
    finally:
        u.close()


def _split(name: str, what: str = "entry") -> tuple[str, ...]:
    if name.startswith("/"):
        raise LayerError(f"{what} {name!r}: absolute path not allowed")
    if "\x00" in name:
        raise LayerError(f"{what} {name!r}: NUL in name")
    parts = []
    for c in name.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            raise LayerError(f"{what} {name!r}: '..' component not allowed")
        parts.append(c)
    return tuple(parts)


def _mtime_ns(m: tarfile.TarInfo) -> int:
    t = m.mtime
    if isinstance(t, int):
        return t * 1_000_000_000
    return int(round(float(t) * 1e9))


_O_PATH_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_O_READ_DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class _Unpacker:
    def __init__(self, dest: Path):
        self.root_fd = os.open(dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.is_root = os.geteuid() == 0
        self.dir_times: list[tuple[tuple[str, ...], int]] = []
        # O_PATH fds of recently used parent dirs, keyed by path components
        self._fds: dict[tuple[str, ...], int] = {}

    # -- parent resolution ---------------------------------------------------
    def _walk(self, comps: tuple[str, ...], entry: str, create: bool,
              start: int = 0, start_fd: int | None = None) -> int:
        """Return a new O_PATH fd for dest/comps (walking comps[start:] from
        start_fd, which is dest/comps[:start]), never following symlinks."""
        fd = os.dup(self.root_fd if start_fd is None else start_fd)
        try:
            for i in range(start, len(comps)):
                c = comps[i]
                try:
                    nfd = os.open(c, _O_PATH_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise LayerError(f"entry {entry!r}: {'/'.join(comps[:i + 1])} does not exist") from None
                    os.mkdir(c, 0o755, dir_fd=fd)
                    nfd = os.open(c, _O_PATH_DIR, dir_fd=fd)
                    os.chmod(f"/proc/self/fd/{nfd}", 0o755)  # undo umask
                except OSError as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    st = os.stat(c, dir_fd=fd, follow_symlinks=False)
                    what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                    raise LayerError(
                        f"entry {entry!r}: parent {'/'.join(comps[:i + 1])!r} is {what}"
                    ) from None
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _parent(self, parts: tuple[str, ...], entry: str) -> int:
        """O_PATH fd of the parent dir of parts (owned by the cache), created
        as needed; resolution starts at the nearest cached ancestor."""
        key = parts[:-1]
        if not key:
            return self.root_fd
        fd = self._fds.get(key)
        if fd is not None:
            return fd
        n = len(key) - 1
        while n > 0 and key[:n] not in self._fds:
            n -= 1
        fd = self._walk(key, entry, True, start=n, start_fd=self._fds[key[:n]] if n else None)
        self._fds[key] = fd
        if len(self._fds) > _FD_CACHE_SIZE:
            oldest = next(iter(self._fds))
            os.close(self._fds.pop(oldest))
        return fd

    def _forget(self, prefix: tuple[str, ...]) -> None:
        """Drop cached fds at or below prefix (that directory is going away)."""
        n = len(prefix)
        for k in [k for k in self._fds if k[:n] == prefix]:
            os.close(self._fds.pop(k))

    def _drop_cache(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- helpers -------------------------------------------------------------
    @staticmethod
    def _lstat(name: str, pfd: int):
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _remove(self, parts: tuple[str, ...], pfd: int, st) -> None:
        if stat.S_ISDIR(st.st_mode):
            self._forget(parts)
            shutil.rmtree(parts[-1], dir_fd=pfd)
        else:
            os.unlink(parts[-1], dir_fd=pfd)

    @staticmethod
    def _xattrs(m: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        out = []
        for k, v in m.pax_headers.items():
            if not k.startswith(_XATTR_PAX_PREFIX):
                continue
            name = k[len(_XATTR_PAX_PREFIX):]
            if name.startswith(OVERLAY_XATTR_PREFIXES):
                continue  # only whiteout markers may create overlay metadata
            out.append((name, v.encode("utf-8", "surrogateescape")))
        return out

    def _set_xattrs_path(self, m, base: str, pfd: int, special: bool) -> None:
        xs = self._xattrs(m)
        if not xs:
            return
        p = f"/proc/self/fd/{pfd}/{base}"
        for name, val in xs:
            if special and name.startswith("user."):
                continue  # user.* is not allowed on symlinks/devices/fifos
            os.setxattr(p, name, val, follow_symlinks=False)

    def _chown(self, m, base: str, pfd: int) -> None:
        if self.is_root:
            os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)

    # -- one member ----------------------------------------------------------
    def member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _split(m.name)
        if not parts:
            if m.isdir():
                return  # "./" entry: the layer root itself
            raise LayerError(f"entry {m.name!r}: names the layer root but is not a directory")
        base = parts[-1]

        if m.islnk():
            tparts = _split(m.linkname, f"hard link {m.name!r} -> target")
            if not tparts:
                raise LayerError(f"hard link {m.name!r}: target {m.linkname!r} is the layer root")
            if tparts == parts:
                return  # link to itself: nothing to do

        pfd = self._parent(parts, m.name)

        if base == WHITEOUT_OPAQUE:
            dfd = os.open(".", _O_READ_DIR, dir_fd=pfd)
            try:
                os.setxattr(dfd, OVERLAY_OPAQUE_XATTR, b"y")
            finally:
                os.close(dfd)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # other aufs metadata (.wh..wh.plnk etc.): ignore
        if base.startswith(WHITEOUT_PREFIX):
            target = base[len(WHITEOUT_PREFIX):]
            if target in ("", ".", ".."):
                raise LayerError(f"entry {m.name!r}: invalid whiteout")
            if self._lstat(target, pfd) is not None:
                return  # whiteouts only hide lower layers, never this layer's own files
            os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
            return

        existing = self._lstat(base, pfd)
        if existing is not None:
            if m.isdir() and stat.S_ISDIR(existing.st_mode):
                pass
            else:
                self._remove(parts, pfd, existing)

        mt = _mtime_ns(m)
        if m.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=pfd)
            fd = os.open(base, _O_READ_DIR, dir_fd=pfd)
            try:
                if self.is_root:
                    os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode & 0o7777)
                for name, val in self._xattrs(m):
                    os.setxattr(fd, name, val)
            finally:
                os.close(fd)
            self.dir_times.append((parts, mt))
        elif m.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            try:
                src = tf.extractfile(m)
                left = m.size
                while left > 0:
                    data = src.read(min(_CHUNK, left))
                    if not data:
                        raise LayerError(f"entry {m.name!r}: truncated file data")
                    view = memoryview(data)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                    left -= len(data)
                if self.is_root:
                    os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid
                for name, val in self._xattrs(m):  # after chown, which clears caps
                    os.setxattr(fd, name, val)
                os.utime(fd, ns=(mt, mt))
            finally:
                os.close(fd)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            self._chown(m, base, pfd)
            self._set_xattrs_path(m, base, pfd, special=True)
            os.utime(base, ns=(mt, mt), dir_fd=pfd, follow_symlinks=False)
        elif m.islnk():
            tparts = _split(m.linkname, f"hard link {m.name!r} -> target")
            tfd = self._walk(tparts[:-1], m.name, create=False)
            try:
                tst = self._lstat(tparts[-1], tfd)
                if tst is None:
                    raise LayerError(f"hard link {m.name!r}: target {m.linkname!r} does not exist")
                if stat.S_ISDIR(tst.st_mode):
                    raise LayerError(f"hard link {m.name!r}: target {m.linkname!r} is a directory")
                os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tfd)
        elif m.ischr() or m.isblk() or m.isfifo():
            if m.isfifo():
                os.mkfifo(base, 0o600, dir_fd=pfd)
            else:
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            self._chown(m, base, pfd)
            # we just created it (not a symlink), so following is harmless here
            os.chmod(base, m.mode & 0o7777, dir_fd=pfd)
            self._set_xattrs_path(m, base, pfd, special=True)
            os.utime(base, ns=(mt, mt), dir_fd=pfd, follow_symlinks=False)
        else:
            raise LayerError(f"entry {m.name!r}: unsupported tar entry type {m.type!r}")

    def finish(self) -> None:
        """Set directory mtimes, deepest/latest first, after all contents exist."""
        self._drop_cache()
        for parts, mt in reversed(self.dir_times):
            try:
                pfd = self._walk(parts[:-1], "/".join(parts), create=False)
            except LayerError:
                continue  # replaced later in the stream
            try:
                st = self._lstat(parts[-1], pfd)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    os.utime(parts[-1], ns=(mt, mt), dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(pfd)

    def close(self) -> None:
        self._drop_cache()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1
