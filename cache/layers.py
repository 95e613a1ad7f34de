"""Layer tarballs: deterministic writing from a directory, safe unpacking into
overlay form.

``write_layer`` streams a sorted, numeric-owner PAX tar of a directory through
sha256 (diff_id) -> gzip -> sha256 (digest) -> ContentStore in a single pass.
``unpack_layer`` / ``unpack_tar_stream`` extract a layer into a directory in
*overlay form* (OCI whiteouts become 0/0 char devices, opaque markers become
``trusted.overlay.opaque=y``), resolving every path component with
``O_NOFOLLOW`` relative to directory fds so nothing can escape ``dest``.

Compression: gzip is deflated pigz-style in a thread pool (``_ParallelGzip``: fixed
128 KiB blocks, each with the previous 32 KiB as dictionary, so the bytes never depend
on the thread count); zstd uses libzstd's worker threads (its multi-threaded output is
likewise independent of the worker count).  Unpacking decompresses and hashes in a
background thread (``_Decompressor``) while the caller's thread writes files.

Which extraction policy applies where:

* image layers (base images, ``load``, ``import``, snapshots) and ``ADD`` of a local
  tar: this module's ``_Unpacker``.  Layers legitimately hold absolute symlinks
  (``/etc/localtime -> /usr/share/zoneinfo/UTC``), device nodes and hard links, so
  those are *created*; what is refused is any entry that would be written outside
  ``dest``: absolute names, ``..`` components, a parent that is a symlink (every
  component is opened with ``O_NOFOLLOW`` from a directory fd, never by path), and hard
  links whose target is outside or reached through a symlink.  Each layer is unpacked
  into its own empty snapshot dir, so links made by earlier layers are never followed.
* a build context tar on stdin or from a URL (``builder.url_context.unpack_context_tar``):
  the same rule (nothing is followed on the host: parents opened with ``O_NOFOLLOW``),
  symlinks kept with any target as ``docker build -`` keeps them, devices refused.
"""
from __future__ import annotations

import collections
import errno
import gzip
import hashlib
import os
import queue
import shutil
import stat
import struct
import sys
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pybuild.fdio import write_all

from .content import BlobWriter, ContentStore


__all__ = [
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_LAYER_TAR",
    "MEDIA_TYPE_LAYER_ZSTD",
    "ZSTD_MAGIC",
    "LayerBlob",
    "LayerError",
    "PathComponentError",
    "open_dir_beneath",
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
_ZSTD_LEVEL = 3  # zstd's default

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


class _Crc32Shift:
    """crc32 of a concatenation from the crcs of its parts (zlib's crc32_combine,
    which Python does not expose).

    ``zlib.crc32(data, c)`` is affine in ``c``: it equals ``L_n(c) ^ zlib.crc32(data)``
    where the linear map ``L_n`` depends only on ``n = len(data)``.  So
    ``crc(A + B) = L_len(B)(crc(A)) ^ crc(B)``.  ``L_n`` for the fixed block size is
    tabulated once (four 256-entry byte tables); other lengths (the last block) are
    computed from ``crc32`` over ``n`` zero bytes.
    """

    def __init__(self, n: int):
        self.n = n
        zeros = bytes(n)
        base = zlib.crc32(zeros)
        cols = [zlib.crc32(zeros, 1 << k) ^ base for k in range(32)]
        self._tables = []
        for byte in range(4):
            table = [0] * 256
            for v in range(1, 256):
                low = v & -v  # lowest set bit: table[v] = table[v - low] ^ column of that bit
                table[v] = table[v ^ low] ^ cols[byte * 8 + low.bit_length() - 1]
            self._tables.append(table)

    def combine(self, crc_a: int, crc_b: int) -> int:
        """crc32(A + B) for len(B) == self.n."""
        t0, t1, t2, t3 = self._tables
        return (t0[crc_a & 0xFF] ^ t1[(crc_a >> 8) & 0xFF] ^ t2[(crc_a >> 16) & 0xFF]
                ^ t3[crc_a >> 24] ^ crc_b)

    @staticmethod
    def combine_any(crc_a: int, crc_b: int, len_b: int) -> int:
        zeros = bytes(len_b)
        return zlib.crc32(zeros, crc_a) ^ zlib.crc32(zeros) ^ crc_b


# Parallel gzip, the pigz way.  The uncompressed stream is cut into fixed blocks;
# each block is deflated on its own (raw deflate, the previous 32 KiB of input as
# preset dictionary so matches reach back as far as in one-stream deflate) and
# ended with Z_SYNC_FLUSH (byte-aligned, not final); the last block with Z_FINISH.
# The concatenation behind one gzip header and one trailer (CRC32, ISIZE) is a
# single valid gzip member.  Every block's bytes are a pure function of (block,
# dictionary, level), so the blob is identical whatever the thread count or
# timing: layer digests and cache keys rely on that.
_GZ_BLOCK = 128 << 10
_GZ_DICT = 32 << 10
_GZ_LEVEL = 6
_GZ_MEM_LEVEL = 8  # zlib's default, as used by gzip/pigz
# What zlib's own gzip wrapper writes at level 6: no FNAME, MTIME 0, XFL 0, OS 3 (Unix).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
_ZERO_BLOCK = bytes(_GZ_BLOCK)
_crc_shift: _Crc32Shift | None = None
_zero_block_deflated: tuple[bytes, int] | None = None
_gz_lock = threading.Lock()


def _deflate_block(block: bytes, zdict: bytes | None, last: bool) -> tuple[bytes, int]:
    """(raw deflate of block, crc32 of block); runs in pool threads (zlib releases the GIL)."""
    if zdict is None:
        c = zlib.compressobj(_GZ_LEVEL, zlib.DEFLATED, -15, _GZ_MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY)
    else:
        c = zlib.compressobj(_GZ_LEVEL, zlib.DEFLATED, -15, _GZ_MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, zdict)
    out = c.compress(block) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return out, zlib.crc32(block)


def _gz_tables() -> tuple[_Crc32Shift, tuple[bytes, int]]:
    """The block-size crc shift table and the deflate of a zero block after zeros
    (memoised: sparse files and zero-filled images are mostly such blocks)."""
    global _crc_shift, _zero_block_deflated
    with _gz_lock:
        if _crc_shift is None:
            _zero_block_deflated = _deflate_block(_ZERO_BLOCK, _ZERO_BLOCK[-_GZ_DICT:], False)
            _crc_shift = _Crc32Shift(_GZ_BLOCK)
        return _crc_shift, _zero_block_deflated


def default_threads() -> int:
    """Compression threads used when the caller does not say: one per CPU this
    process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover
        return max(1, os.cpu_count() or 1)


class _ParallelGzip:
    """Deterministic multi-threaded gzip into ``out`` (anything with ``write``).

    ``write`` takes uncompressed bytes in any chunking; blocks are submitted to a
    thread pool and their results written in order by the calling thread.  At most
    ``2 * threads + 2`` blocks are in flight, so memory stays bounded (a few MiB)
    whatever the stream size.  ``close`` writes the last block and the trailer;
    ``abort`` stops the pool without writing anything more.
    """

    def __init__(self, out, threads: int):
        from concurrent.futures import Future, ThreadPoolExecutor

        self._Future = Future
        self._out = out
        self._shift, self._zero = _gz_tables()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="layer-gzip")
        self._inflight: collections.deque = collections.deque()
        self._max_inflight = 2 * threads + 2
        self._buf = bytearray()
        self._prev_tail: bytes | None = None  # last 32 KiB of the previous block
        self._prev_zero = False
        self._crc = 0
        self._size = 0
        out.write(_GZIP_HEADER)

    def write(self, data) -> None:
        self._buf += data
        # keep at least one byte back: the last block must be known to be last
        while len(self._buf) > _GZ_BLOCK:
            block = bytes(memoryview(self._buf)[:_GZ_BLOCK])
            del self._buf[:_GZ_BLOCK]
            self._submit(block, last=False)

    def _submit(self, block: bytes, last: bool) -> None:
        zero = len(block) == _GZ_BLOCK and block == _ZERO_BLOCK
        if zero and self._prev_zero and not last:
            fut = self._Future()
            fut.set_result(self._zero)
        else:
            fut = self._pool.submit(_deflate_block, block, self._prev_tail, last)
        self._inflight.append((fut, len(block)))
        self._prev_tail = block[-_GZ_DICT:]
        self._prev_zero = zero
        self._size += len(block)
        while len(self._inflight) >= self._max_inflight:
            self._drain_one()

    def _drain_one(self) -> None:
        fut, n = self._inflight.popleft()
        deflated, crc = fut.result()
        if n == _GZ_BLOCK:
            self._crc = self._shift.combine(self._crc, crc)
        else:
            self._crc = _Crc32Shift.combine_any(self._crc, crc, n)
        self._out.write(deflated)

    def close(self) -> None:
        self._submit(bytes(self._buf), last=True)
        self._buf.clear()
        while self._inflight:
            self._drain_one()
        self._out.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        self._pool.shutdown(wait=True)

    def abort(self) -> None:
        for fut, _ in self._inflight:
            fut.cancel()
        self._inflight.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class _LayerSink:
    """tar bytes -> sha256 (diff_id) -> [gzip | zstd] -> BlobWriter (which hashes the digest).

    gzip: blocks deflated in a thread pool (see ``_ParallelGzip``); zstd: libzstd's
    own worker threads.  Both give the same bytes for any thread count.  Input is
    handled in ~1 MiB pieces so hashlib releases the GIL while compression runs.
    """

    def __init__(self, bw: BlobWriter, compression: str, threads: int | None = None):
        self._bw = bw
        self._diff = hashlib.sha256()
        self._buf = bytearray()
        threads = default_threads() if threads is None else max(1, threads)
        if compression == "gzip":
            self._comp = _ParallelGzip(bw, threads)
        elif compression == "zstd":
            # threads >= 1 selects zstd's multi-threaded mode, whose output does not
            # depend on the number of workers (jobs are cut by size, not by thread);
            # single-threaded mode (threads=0) would give other bytes, so never use it.
            cctx = _zstd_module().ZstdCompressor(level=_ZSTD_LEVEL, threads=threads)
            self._comp = _ZstdAdapter(cctx.compressobj(), bw)
        elif compression == "none":
            self._comp = None
        else:
            raise ValueError(f"unknown compression {compression!r} (want 'gzip', 'zstd' or 'none')")

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
        if self._comp is None:
            self._bw.write(data)
        else:
            self._comp.write(data)

    def close(self) -> str:
        """Flush everything into the BlobWriter; returns the diff_id."""
        self._flush()
        if self._comp is not None:
            comp, self._comp = self._comp, None
            comp.close()
        return "sha256:" + self._diff.hexdigest()

    def abort(self) -> None:
        """Stop the threads (no-op after ``close``); the caller aborts the BlobWriter."""
        if self._comp is not None:
            comp, self._comp = self._comp, None
            comp.abort()


class _ZstdAdapter:
    def __init__(self, cobj, out):
        self._cobj = cobj
        self._out = out

    def write(self, data) -> None:
        chunk = self._cobj.compress(data)
        if chunk:
            self._out.write(chunk)

    def close(self) -> None:
        self._out.write(self._cobj.flush())

    def abort(self) -> None:
        pass


def _zstd_module():
    """`zstandard`, imported when a zstd layer is first written or read (it costs ~3 ms of every
    start-up otherwise)."""
    try:
        import zstandard
    except ImportError:
        raise LayerError("zstd layers need the 'zstandard' Python package (pip install zstandard)") from None
    return zstandard


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
    threads: int | None = None,
) -> LayerBlob:
    """Write ``src_dir`` as one layer blob into ``store`` and return its descriptor data.

    One streaming pass: tar -> sha256 (diff_id) -> compression -> sha256 (digest) ->
    ``store`` (committed atomically; nothing is left behind on error).  The bytes are
    deterministic: they depend on the tree, ``compression``, ``overlay_upper`` and
    ``source_date_epoch`` only, never on ``threads`` (compression threads, default one
    per CPU) or timing.  Memory stays bounded whatever the size of the tree or its files.
    """
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise LayerError(f"layer source {src_dir} is not a directory")
    if compression not in ("gzip", "zstd", "none"):
        raise ValueError(f"unknown compression {compression!r} (want 'gzip', 'zstd' or 'none')")
    media_type = _media_type(compression)
    with store.writer() as bw:
        sink = _LayerSink(bw, compression, threads)
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
            # fewer blocks allocated than the size needs: it has holes worth skipping
            _copy_file_data(sink, path, arc, st.st_size, sparse=st.st_blocks * 512 < st.st_size - _CHUNK)
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


def _data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, end) of the data regions of a file with holes, from SEEK_DATA/SEEK_HOLE;
    [(0, size)] where the filesystem cannot tell (then every byte is read)."""
    segments = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole up to EOF
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if start >= size:
                break
            segments.append((start, end))
            pos = end
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return [(0, size)]
        raise
    os.lseek(fd, 0, os.SEEK_SET)
    return segments


_ZERO_CHUNK = bytes(_CHUNK)


def _copy_file_data(sink: _LayerSink, path: str, arc: str, size: int, sparse: bool) -> None:
    """Stream the file's bytes (then the tar padding) into ``sink``, never holding more
    than one chunk.  Holes of a sparse file are fed as zeros without reading them; the
    tar entry is an ordinary one (readers need no GNU/PAX sparse support), and zero
    blocks are cheap to compress (see ``_gz_tables``)."""
    fd = _open_for_read(path)
    try:
        segments = _data_segments(fd, size) if sparse else [(0, size)]
        pos = 0
        for start, end in segments + [(size, size)]:
            start = max(start, pos)
            while pos < start:  # a hole
                n = min(_CHUNK, start - pos)
                sink.write(_ZERO_CHUNK if n == _CHUNK else _ZERO_CHUNK[:n])
                pos += n
            if sparse:
                os.lseek(fd, pos, os.SEEK_SET)
            while pos < end:
                data = os.read(fd, min(_CHUNK, end - pos))
                if not data:
                    raise LayerError(f"{arc}: file shrank while writing the layer (expected {size} bytes)")
                sink.write(data)
                pos += len(data)
    finally:
        os.close(fd)
    pad = -size % _BLOCK
    if pad:
        sink.write(_NUL_BLOCK[:pad])


# ---------------------------------------------------------------------------
# unpacking
# ---------------------------------------------------------------------------


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


class _Decompressor(threading.Thread):
    """Reads ``raw`` in a background thread, hashing the compressed bytes (digest),
    decompressing gzip (any number of members) / zstd / plain, hashing the result
    (diff_id) and handing it over in chunks of at most 1 MiB through a bounded queue.

    Decompression and both hashes release the GIL, so they run alongside the tar
    parsing and file writes of the consumer; memory stays at a few MiB whatever the
    compression ratio (``max_length`` bounds each inflate step).  The consumer calls
    ``read`` like a file; an error in the thread is raised from ``read``.  ``stop``
    ends the thread early (the consumer failed) and is idempotent.
    """

    _DEPTH = 8

    def __init__(self, raw: BinaryIO, kind: str):
        super().__init__(name="layer-decompress", daemon=True)
        self._raw = raw
        self._kind = kind
        self.outer = hashlib.sha256()
        self.inner = hashlib.sha256()
        self._q: queue.Queue = queue.Queue(maxsize=self._DEPTH)
        self._stopped = threading.Event()
        self._pending = b""
        self._pos = 0
        self._eof = False
        self.error: BaseException | None = None
        self.start()

    # -- producer (thread) ------------------------------------------------------
    def _raw_chunks(self):
        while chunk := self._raw.read(_CHUNK):
            self.outer.update(chunk)
            yield chunk

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _emit(self, data: bytes) -> bool:
        if not data:
            return True
        self.inner.update(data)
        return self._put(data)

    def _gunzip(self):
        d = zlib.decompressobj(wbits=31)
        in_member = False
        for chunk in self._raw_chunks():
            while chunk:
                if not in_member and chunk.count(0) == len(chunk):
                    break  # zero padding after a member, as gzip(1) allows
                in_member = True
                out = d.decompress(chunk, _CHUNK)
                if not self._emit(out):
                    return
                while d.unconsumed_tail and not d.eof:
                    out = d.decompress(d.unconsumed_tail, _CHUNK)
                    if not self._emit(out):
                        return
                if d.eof:  # another member may follow
                    chunk = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                    in_member = False
                else:
                    chunk = b""
        if in_member:
            raise LayerError("gzip stream ends early (truncated blob)")

    def _zstd(self):
        outer = self

        class _Hashing:
            def read(self, n=-1):
                data = outer._raw.read(n)
                outer.outer.update(data)
                return data

        reader = _zstd_module().ZstdDecompressor().stream_reader(_Hashing(), read_across_frames=True)
        while data := reader.read(_CHUNK):
            if not self._emit(data):
                return

    def run(self) -> None:
        try:
            if self._kind == "gzip":
                self._gunzip()
            elif self._kind == "zstd":
                self._zstd()
            else:
                self.inner = self.outer  # plain: the diff_id is the digest
                for chunk in self._raw_chunks():
                    if not self._put(chunk):
                        return
        except BaseException as e:  # handed to the consumer
            self.error = e
        self._put(None)

    # -- consumer ------------------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        # whole chunks are handed out as they are (no copy); only a short read slices
        if self._pos >= len(self._pending):
            if self._eof:
                return b""
            item = self._q.get()
            if item is None:
                self._eof = True
                self.join()
                if self.error is not None:
                    raise self.error
                return b""
            self._pending, self._pos = item, 0
        pos, data = self._pos, self._pending
        if pos == 0 and (n is None or n < 0 or n >= len(data)):
            self._pos = len(data)
            return data
        end = len(data) if n is None or n < 0 else min(len(data), pos + n)
        self._pos = end
        return data[pos:end]

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def stop(self) -> None:
        self._stopped.set()
        # The thread ends at its next queue hand-off; a pipe whose writer stalls could
        # keep it in read(), so do not wait for ever (it is a daemon thread and exits
        # once that read returns).
        self.join(timeout=10)

    def digests(self) -> tuple[str, str]:
        """(digest, diff_id) once ``read`` returned EOF."""
        return "sha256:" + self.outer.hexdigest(), "sha256:" + self.inner.hexdigest()


def _corrupt_stream_error(e: BaseException) -> bool:
    if isinstance(e, (OSError, EOFError, zlib.error)):
        return True
    zstandard = sys.modules.get("zstandard")  # not imported: no zstd stream was read, so not its error
    return zstandard is not None and isinstance(e, zstandard.ZstdError)


def unpack_layer(store: ContentStore, layer: LayerBlob, dest: Path) -> None:
    """Unpack a stored layer into ``dest`` (overlay form), verifying both the blob
    digest and the diff_id of the uncompressed stream.  On error ``dest`` holds a
    partial tree: the caller unpacks into a temp dir and removes it (as
    ``SnapshotStore.ensure`` does)."""
    with store.open(layer.digest) as raw:
        magic = raw.read(4)
        raw.seek(0)
        kind = "gzip" if magic.startswith(GZIP_MAGIC) else "zstd" if magic == ZSTD_MAGIC else "plain"
        src = _Decompressor(raw, kind)
        try:
            _unpack(src, dest, "r|")
            src.drain()
        except LayerError as e:
            raise LayerError(f"layer {layer.digest}: {e}") from e
        except Exception as e:
            if not _corrupt_stream_error(e):
                raise
            raise LayerError(f"layer {layer.digest}: corrupt stream: {e}") from e
        finally:
            src.stop()
        digest, diff_id = src.digests()
        if digest != layer.digest:
            raise LayerError(f"layer {layer.digest}: blob content hashes to {digest}")
        if diff_id != layer.diff_id:
            raise LayerError(
                f"layer {layer.digest}: uncompressed stream hashes to {diff_id}, "
                f"expected diff_id {layer.diff_id}"
            )


def unpack_tar_stream(fileobj: BinaryIO, dest: Path) -> None:
    """Unpack a tar stream (plain, gzip, zstd, bzip2 or xz, detected by magic; pipes
    work, nothing seeks) into ``dest`` in overlay form.  Hostile entries raise
    ``LayerError``; ``dest`` may then hold a partial tree (the caller's to remove)."""
    peek = _PeekReader(fileobj, 4)
    if peek.magic.startswith((b"BZh", b"\xfd7zX")):
        _unpack(peek, dest, "r|*")  # rare for layers: tarfile's own single-threaded reader
        return
    kind = "gzip" if peek.magic.startswith(GZIP_MAGIC) else "zstd" if peek.magic == ZSTD_MAGIC else "plain"
    src = _Decompressor(peek, kind)
    try:
        _unpack(src, dest, "r|")
        src.drain()  # a stream truncated after the tar's end still fails
    except LayerError:
        raise
    except Exception as e:
        if not _corrupt_stream_error(e):
            raise
        raise LayerError(f"corrupt {kind} stream: {e}") from e
    finally:
        src.stop()


def _unpack(fileobj, dest: Path, mode: str) -> None:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    u = _Unpacker(dest)
    try:
        try:
            tf = tarfile.open(fileobj=fileobj, mode=mode, bufsize=_CHUNK)
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


_HOLE_GRAIN = 64 << 10
_ZERO_GRAIN = bytes(_HOLE_GRAIN)


def _write_entry_data(fd: int, src, size: int, name: str) -> None:
    """Copy ``size`` bytes of an entry into the new, empty file ``fd``.  Files of a
    MiB or more are written sparse: aligned 64 KiB runs of zeros are skipped with
    lseek (the file is new, so they read back as zeros) and the size is set with
    ftruncate, so a mostly-empty disk image costs neither time nor disk space."""
    sparse = size >= _CHUNK
    left = size
    while left > 0:
        data = src.read(min(_CHUNK, left))
        if not data:
            raise LayerError(f"entry {name!r}: truncated file data")
        left -= len(data)
        view = memoryview(data)
        if sparse:
            off = 0
            while off < len(data):
                end = min(off + _HOLE_GRAIN, len(data))
                # first and last byte checked first: data that is not zero costs no copy
                if data[off] == 0 and data[end - 1] == 0 and data[off:end] == _ZERO_GRAIN[:end - off]:
                    os.lseek(fd, end - off, os.SEEK_CUR)
                else:
                    write_all(fd, view[off:end])
                off = end
        else:
            write_all(fd, view)
    if sparse:
        os.ftruncate(fd, size)  # trailing holes


def _mtime_ns(m: tarfile.TarInfo) -> int:
    t = m.mtime
    if isinstance(t, int):
        return t * 1_000_000_000
    return int(round(float(t) * 1e9))


_O_PATH_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_O_READ_DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class PathComponentError(Exception):
    """``open_dir_beneath`` could not go on: component ``path`` (the components up to it, joined
    with ``/``) is ``missing``, a ``symlink`` or ``notdir`` (not a directory). Callers word it."""

    def __init__(self, path: str, kind: str):
        super().__init__(f"{path}: {kind}")
        self.path, self.kind = path, kind


def open_dir_beneath(base_fd: int, comps: tuple[str, ...], *, create: bool, start: int = 0,
                     flags: int = _O_PATH_DIR) -> int:
    """A new fd (opened with ``flags``, which must hold O_NOFOLLOW | O_DIRECTORY) of the directory
    ``comps[start:]`` below ``base_fd`` (which is ``comps[:start]``), never following a symlink on
    the host: each component is opened from its parent's fd. With ``create``, missing ones are
    made, mode 0755 whatever the umask. The one walk both tar extractors (layers here, build
    context tars in builder.url_context) go through; PathComponentError says where it stopped."""
    fd = os.dup(base_fd)
    try:
        for i in range(start, len(comps)):
            c = comps[i]
            try:
                nfd = os.open(c, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise PathComponentError("/".join(comps[:i + 1]), "missing") from None
                os.mkdir(c, 0o755, dir_fd=fd)
                nfd = os.open(c, flags, dir_fd=fd)
                os.chmod(f"/proc/self/fd/{nfd}", 0o755)  # undo umask (works for O_PATH fds too)
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                st = os.stat(c, dir_fd=fd, follow_symlinks=False)
                raise PathComponentError("/".join(comps[:i + 1]),
                                         "symlink" if stat.S_ISLNK(st.st_mode) else "notdir") from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


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
        try:
            return open_dir_beneath(self.root_fd if start_fd is None else start_fd, comps,
                                    create=create, start=start)
        except PathComponentError as e:
            if e.kind == "missing":
                raise LayerError(f"entry {entry!r}: {e.path} does not exist") from None
            what = "a symlink" if e.kind == "symlink" else "not a directory"
            raise LayerError(f"entry {entry!r}: parent {e.path!r} is {what}") from None

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
                _write_entry_data(fd, tf.extractfile(m), m.size, m.name)
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
