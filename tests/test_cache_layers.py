import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import pytest

from pybuild.cache import (
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR,
    ContentStore,
    LayerBlob,
    LayerError,
    unpack_layer,
    unpack_tar_stream,
    write_layer,
)

CAP = b"\x01\x00\x00\x02\x00\x04\x00\x00" + b"\x00" * 12  # cap_net_bind_service, v2
LONG = "l" * 60 + "/" + "o" * 70 + "_long_file_name_beyond_100_bytes.txt"
T0 = 1_600_000_000


def manifest(root):
    """(path, type, mode, uid, gid, size, sha256, link, rdev, mtime, xattrs, hardlink-group) per entry."""
    out = []
    first_of_inode = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            xattrs = {k: os.getxattr(p, k, follow_symlinks=False)
                      for k in sorted(os.listxattr(p, follow_symlinks=False))
                      if not k.startswith("trusted.overlay.")}
            digest = link = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            if stat.S_ISLNK(st.st_mode):
                link = os.readlink(p)
            group = None
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                group = first_of_inode.setdefault(st.st_ino, rel)
            out.append((rel, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if not stat.S_ISDIR(st.st_mode) else 0, digest, link,
                        st.st_rdev if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else 0,
                        int(st.st_mtime), xattrs, group))
    return out


def make_tree(root):
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "empty").write_bytes(b"")
    (root / os.fsdecode(b"latin1-caf\xe9")).write_bytes(b"not utf-8 name")
    (root / "utf8-\u00fcn\u00ef").write_bytes(b"utf-8 name")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / LONG).parent.mkdir()
    (root / LONG).write_text("long")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("../etc/passwd", root / "etc" / "rel-link")
    os.symlink("dangling/nowhere", root / "dangling")
    os.symlink("../" * 40 + "t" * 90, root / "long-target")  # > 100 bytes: PAX linkpath
    os.link(root / LONG, root / "hard-to-long")  # hard link whose target name needs PAX
    os.link(root / "etc" / "passwd", root / "hardlink")
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    su = root / "su"
    su.write_bytes(b"#!/bin/sh\n")
    os.chmod(su, 0o4755)
    capf = root / "ping"
    capf.write_bytes(b"\x7fELF")
    os.setxattr(capf, "user.x", b"hello")
    os.setxattr(capf, "security.capability", CAP)
    os.setxattr(root / "etc", "user.dir-attr", b"on a directory")
    (root / "private").mkdir(mode=0o700)
    os.chmod(root / "private", 0o700)
    owned = root / "private" / "owned"
    owned.write_text("mine")
    os.chown(owned, 1234, 5678)
    os.chown(root / "private", 1234, 5678)
    os.lchown(root / "abs-link", 1234, 5678)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (T0, T0 + 7), follow_symlinks=False)
    return root


def tar_members(store, layer):
    with store.open(layer.digest) as f:
        with tarfile.open(fileobj=f, mode="r|*") as tf:
            return [m for m in tf]


@pytest.fixture
def store(tmp_path):
    return ContentStore(tmp_path / "store")


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_roundtrip_every_file_kind(tmp_path, store, compression):
    src = make_tree(tmp_path / "src")
    layer = write_layer(src, store, compression=compression)
    assert layer.media_type == (MEDIA_TYPE_LAYER_GZIP if compression == "gzip" else MEDIA_TYPE_LAYER_TAR)
    assert layer.size == store.size(layer.digest)
    if compression == "none":
        assert layer.digest == layer.diff_id
    dest = tmp_path / "dest"
    unpack_layer(store, layer, dest)
    assert manifest(dest) == manifest(src)
    m = dict((e[0], e) for e in manifest(dest))
    assert m["su"][2] == 0o4755
    assert m["private"][2:5] == (0o700, 1234, 5678)
    assert m["ping"][10] == {"security.capability": CAP, "user.x": b"hello"}
    assert m["hardlink"][11] == m["etc/passwd"][11] is not None
    assert m["abs-link"][7] == "/etc/passwd"


def test_tar_format(tmp_path, store):
    src = make_tree(tmp_path / "src")
    layer = write_layer(src, store)
    members = tar_members(store, layer)
    names = [m.name for m in members]
    assert "etc" in names and "etc/passwd" in names and LONG in names
    assert not any(n.startswith(("/", "./")) or n in ("", ".") for n in names)
    assert names.index("etc") < names.index("etc/passwd") < names.index("etc/rel-link")
    assert len(names) == len(set(names))
    for m in members:
        assert m.uname == "" and m.gname == ""
        assert not any(k in m.pax_headers for k in ("atime", "ctime"))
    hl = next(m for m in members if m.name == "hardlink")
    assert hl.islnk() and hl.linkname == "etc/passwd"
    ping = next(m for m in members if m.name == "ping")
    assert ping.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAP
    # raw tar: dirs have a trailing slash, gzip header is reproducible
    raw = store.read_bytes(layer.digest)
    assert raw[:4] == b"\x1f\x8b\x08\x00" and raw[4:8] == b"\0\0\0\0"  # no FNAME, mtime 0
    tar = gzip.decompress(raw)
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == layer.diff_id
    assert tar[:512].split(b"\0", 1)[0] == b"abs-link"
    assert b"etc/\0" in tar


def test_deterministic(tmp_path, store):
    src = make_tree(tmp_path / "src")
    a = write_layer(src, store)
    # touching atime (and reading files) must not change anything
    for dirpath, dirnames, filenames in os.walk(src):
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            os.utime(p, ns=(time.time_ns(), st.st_mtime_ns), follow_symlinks=False)
    b = write_layer(src, store)
    assert a == b
    # an identical copy elsewhere gives the same layer
    subprocess.run(["cp", "-a", str(src), str(tmp_path / "copy")], check=True)
    assert write_layer(tmp_path / "copy", store) == a


def test_source_date_epoch_clamps(tmp_path, store):
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_text("old")
    (src / "new").write_text("new")
    os.utime(src / "old", (100, 100))
    os.utime(src / "new", (T0, T0))
    layer = write_layer(src, store, source_date_epoch=1000)
    mt = {m.name: m.mtime for m in tar_members(store, layer)}
    assert mt == {"new": 1000, "old": 100}
    os.utime(src / "new", (T0 + 50, T0 + 50))  # later mtime, clamped the same
    assert write_layer(src, store, source_date_epoch=1000) == layer
    assert write_layer(src, store).digest != layer.digest


def test_overlay_upper_whiteouts(tmp_path, store):
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "a").mkdir()
    (lower / "a" / "b").write_text("b")
    (lower / "a" / "keep").write_text("k")
    (lower / "d").mkdir()
    (lower / "d" / "x").write_text("x")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        subprocess.run(["sh", "-c", "rm a/b && rm -rf d && mkdir d && touch d/n"], cwd=merged, check=True)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    layer = write_layer(upper, store, overlay_upper=True)
    members = tar_members(store, layer)
    names = [m.name for m in members]
    assert names == ["a", "a/.wh.b", "d", "d/.wh..wh..opq", "d/n"]
    wh = members[1]
    assert wh.isreg() and wh.size == 0 and wh.mode == 0
    assert not any(k.startswith("SCHILY.xattr.trusted.overlay") for m in members for k in m.pax_headers)
    # and back into overlay form
    dest = tmp_path / "snap"
    unpack_layer(store, layer, dest)
    st = os.lstat(dest / "a" / "b")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(dest / "d", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(dest / "d")) == ["n"]
    # the unpacked snapshot stacks like the original upper
    merged2, work2, up2 = tmp_path / "m2", tmp_path / "w2", tmp_path / "u2"
    for d in (merged2, work2, up2):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={dest}:{lower},upperdir={up2},workdir={work2}", str(merged2)], check=True)
    try:
        assert sorted(os.listdir(merged2 / "a")) == ["keep"]
        assert sorted(os.listdir(merged2 / "d")) == ["n"]
    finally:
        subprocess.run(["umount", str(merged2)], check=True)


def _tar(entries, fmt=tarfile.PAX_FORMAT):
    """entries: list of (name, type, extra) -> bytes of an uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, typ, extra in entries:
            ti = tarfile.TarInfo(name)
            ti.type = typ
            ti.mode = 0o644 if typ != tarfile.DIRTYPE else 0o755
            data = b""
            if typ in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = extra
            elif typ == tarfile.REGTYPE:
                data = extra or b""
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


# an absolute path outside every test dir, the target of absolute symlinks in attacks
_OUTSIDE_DIR = Path(tempfile.gettempdir()) / f"pybuild-layer-attack-target-{os.getpid()}"


def _snapshot_outside(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "dest" not in p.parts)


@pytest.mark.parametrize("entries", [
    [("../../x", tarfile.REGTYPE, b"evil")],
    [("a/../../x", tarfile.REGTYPE, b"evil")],
    [("/etc/x", tarfile.REGTYPE, b"evil")],
    [("d", tarfile.SYMTYPE, "/"), ("d/pwned", tarfile.REGTYPE, b"evil")],
    [("d", tarfile.SYMTYPE, ".."), ("d/pwned", tarfile.REGTYPE, b"evil")],
    [("d", tarfile.SYMTYPE, "../outside"), ("d/pwned", tarfile.DIRTYPE, None)],
    [(".", tarfile.SYMTYPE, "/")],
    [("./", tarfile.REGTYPE, b"x")],
    [("h", tarfile.LNKTYPE, "../victim")],
    [("h", tarfile.LNKTYPE, "/etc/passwd")],
    [("d", tarfile.SYMTYPE, "/etc"), ("h", tarfile.LNKTYPE, "d/passwd")],
    [("x/.wh...", tarfile.REGTYPE, b"")],
    [("a/b/", tarfile.DIRTYPE, None), ("a/b/f", tarfile.REGTYPE, b"ok"),
     ("a/b", tarfile.SYMTYPE, "/"), ("a/b/pwned", tarfile.REGTYPE, b"evil")],
    [("d", tarfile.SYMTYPE, str(_OUTSIDE_DIR)), ("d/.wh.victim", tarfile.REGTYPE, b"")],
    [("d", tarfile.SYMTYPE, str(_OUTSIDE_DIR)), ("d/.wh..wh..opq", tarfile.REGTYPE, b"")],
    [("d", tarfile.SYMTYPE, "../outside"), ("d/x", tarfile.SYMTYPE, "/etc/passwd")],
], ids=["dotdot", "inner-dotdot", "absolute", "symlink-root", "symlink-parent", "symlink-rel-dir",
        "symlink-dot", "file-dot", "hardlink-dotdot", "hardlink-abs", "hardlink-via-symlink", "whiteout-dotdot",
        "dir-replaced-by-symlink", "whiteout-via-symlink", "opaque-via-symlink", "symlink-via-symlink"])
def test_attacks_rejected(tmp_path, entries):
    (tmp_path / "victim").write_text("victim")
    (tmp_path / "outside").mkdir()
    _OUTSIDE_DIR.mkdir(exist_ok=True)
    try:
        (_OUTSIDE_DIR / "victim").write_text("victim")
        dest = tmp_path / "dest"
        dest.mkdir()
        before = _snapshot_outside(tmp_path)
        root_before = sorted(os.listdir("/"))
        with pytest.raises(LayerError):
            unpack_tar_stream(io.BytesIO(_tar(entries)), dest)
        assert _snapshot_outside(tmp_path) == before
        assert sorted(os.listdir("/")) == root_before
        assert not os.path.exists("/pwned") and not os.path.exists("/etc/x")
        assert (tmp_path / "victim").stat().st_nlink == 1
        assert os.stat("/etc/passwd").st_nlink == 1
        assert sorted(os.listdir(_OUTSIDE_DIR)) == ["victim"] and os.listxattr(_OUTSIDE_DIR) == []
    finally:
        shutil.rmtree(_OUTSIDE_DIR, ignore_errors=True)


def test_unpack_whiteouts_replacement_and_gzip(tmp_path):
    data = _tar([
        ("./", tarfile.DIRTYPE, None),
        ("./a/", tarfile.DIRTYPE, None),
        ("./a/.wh.gone", tarfile.REGTYPE, b""),
        ("./a/.wh.same", tarfile.REGTYPE, b""),
        ("./a/same", tarfile.REGTYPE, b"same layer wins"),
        ("./d/.wh..wh..opq", tarfile.REGTYPE, b""),  # parent created implicitly
        ("./d/f", tarfile.REGTYPE, b"1"),
        ("./x", tarfile.DIRTYPE, None),
        ("./x/child", tarfile.REGTYPE, b"c"),
        ("./x", tarfile.REGTYPE, b"dir replaced by file"),
        ("./y", tarfile.REGTYPE, b"file"),
        ("./y", tarfile.DIRTYPE, None),
        ("./s", tarfile.SYMTYPE, "/etc"),
        ("./s", tarfile.REGTYPE, b"symlink replaced"),
        ("./.wh..wh.plnk", tarfile.DIRTYPE, None),
    ])
    dest = tmp_path / "dest"
    unpack_tar_stream(io.BytesIO(gzip.compress(data)), dest)
    st = os.lstat(dest / "a" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (dest / "a" / "same").read_bytes() == b"same layer wins"
    assert os.getxattr(dest / "d", "trusted.overlay.opaque") == b"y"
    assert (dest / "x").read_bytes() == b"dir replaced by file"
    assert (dest / "y").is_dir() and not (dest / "y").is_symlink()
    assert (dest / "s").read_bytes() == b"symlink replaced"
    assert sorted(os.listdir(dest)) == ["a", "d", "s", "x", "y"]


def test_unpack_layer_verifies_digests(tmp_path, store):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("content")
    layer = write_layer(src, store)
    bad = LayerBlob(layer.digest, "sha256:" + "0" * 64, layer.size, layer.media_type)
    with pytest.raises(LayerError, match="diff_id"):
        unpack_layer(store, bad, tmp_path / "d1")
    # corrupt the blob on disk
    p = store.path(layer.digest)
    os.chmod(p, 0o644)
    raw = bytearray(p.read_bytes())
    raw[-9] ^= 0xFF  # flip a bit in the gzip CRC
    p.write_bytes(bytes(raw))
    with pytest.raises(LayerError):
        unpack_layer(store, layer, tmp_path / "d2")


def test_trusted_overlay_xattrs_from_tar_ignored(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("dir")
        ti.type = tarfile.DIRTYPE
        ti.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.ok": "1"}
        tf.addfile(ti)
    dest = tmp_path / "dest"
    unpack_tar_stream(io.BytesIO(buf.getvalue()), dest)
    assert os.listxattr(dest / "dir") == ["user.ok"]


# --- parallel gzip / zstd: valid, and the same bytes whatever the thread count -------------

def _mixed_tree(root):
    """A few MiB across many 128 KiB gzip blocks: random, text, zero runs, small files."""
    root.mkdir()
    rnd = os.urandom(700_000)
    (root / "random.bin").write_bytes(rnd)
    (root / "text.txt").write_bytes(b"layer digest diff_id manifest index descriptor\n" * 40_000)
    (root / "zeros.bin").write_bytes(bytes(1_500_000))
    (root / "mixed.bin").write_bytes(bytes(300_000) + rnd[:200_000] + bytes(600_000))
    (root / "small").mkdir()
    for i in range(200):
        (root / "small" / f"f{i:03d}").write_bytes(b"x" * (i * 37))
    return root


def test_gzip_layer_is_one_valid_gzip_member_same_for_any_thread_count(tmp_path, store):
    src = _mixed_tree(tmp_path / "src")
    layers = {t: write_layer(src, store, threads=t) for t in (1, 2, 5)}
    assert len(set(layers.values())) == 1, layers
    layer = layers[1]
    blob = store.path(layer.digest)
    # independent readers: gzip(1), GNU tar, Python's gzip module
    subprocess.run(["gzip", "-t", str(blob)], check=True)
    listed = subprocess.run(["tar", "-tzf", str(blob)], check=True, capture_output=True, text=True).stdout.split()
    assert "random.bin" in listed and "small/f199" in listed
    raw = blob.read_bytes()
    tar = gzip.decompress(raw)
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == layer.diff_id
    # one member: header, deflate data, then CRC32 and ISIZE of the whole tar
    d = zlib.decompressobj(wbits=31)
    assert d.decompress(raw) == tar and d.eof and d.unused_data == b""
    assert raw[-8:] == struct.pack("<II", zlib.crc32(tar), len(tar) & 0xFFFFFFFF)
    # pigz-level compression, not one deflate stream per block without history
    assert len(raw) < len(gzip.compress(tar, 6)) * 1.02


@pytest.mark.parametrize("size", [0, 1, 128 << 10, (128 << 10) + 1, 2 * (128 << 10), 1_000_003])
def test_parallel_gzip_block_boundaries_and_chunking(size):
    from pybuild.cache.layers import _ParallelGzip

    data = (os.urandom(50_000) + bytes(200_000) + b"abc" * 100_000)[:size]
    outs = set()
    for threads in (1, 3):
        for chunk in (1, 4096, 1 << 20):
            if chunk == 1 and size > 200_000:
                continue
            buf = io.BytesIO()
            gz = _ParallelGzip(buf, threads)
            for i in range(0, len(data), chunk):
                gz.write(data[i:i + chunk])
            gz.close()
            assert gzip.decompress(buf.getvalue()) == data
            outs.add(buf.getvalue())
    assert len(outs) == 1


def test_crc32_combine_matches_zlib():
    from pybuild.cache.layers import _Crc32Shift

    a, b = os.urandom(5000), os.urandom(300)
    shift = _Crc32Shift(300)
    assert shift.combine(zlib.crc32(a), zlib.crc32(b)) == zlib.crc32(a + b)
    assert _Crc32Shift.combine_any(zlib.crc32(a), zlib.crc32(b[:7]), 7) == zlib.crc32(a + b[:7])


def test_zstd_layer_same_for_any_thread_count(tmp_path, store):
    import zstandard

    src = _mixed_tree(tmp_path / "src")
    layers = {t: write_layer(src, store, compression="zstd", threads=t) for t in (1, 2, 4)}
    assert len(set(layers.values())) == 1, layers
    layer = layers[1]
    assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    with store.open(layer.digest) as f:
        tar = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == layer.diff_id
    dest = tmp_path / "dest"
    unpack_layer(store, layer, dest)
    assert manifest(dest) == manifest(src)


def test_failed_layer_write_leaves_no_blob_or_temp_file(tmp_path, store, monkeypatch):
    src = _mixed_tree(tmp_path / "src")
    from pybuild.cache import layers as layers_mod

    real = layers_mod._deflate_block
    calls = []

    def failing(block, zdict, last):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk on fire")
        return real(block, zdict, last)

    monkeypatch.setattr(layers_mod, "_deflate_block", failing)
    with pytest.raises(OSError, match="disk on fire"):
        write_layer(src, store, threads=2)
    assert list(store.walk()) == []
    assert os.listdir(store.root / "ingest") == []


# --- sparse files -------------------------------------------------------------------------

GIB = 1 << 30
_SPARSE_CHILD = """
import json, resource, sys
from pathlib import Path
from pybuild.cache import ContentStore, unpack_layer, write_layer
store = ContentStore(Path(sys.argv[2]))
layer = write_layer(Path(sys.argv[1]), store)
unpack_layer(store, layer, Path(sys.argv[3]))
print(json.dumps([[layer.digest, layer.diff_id, layer.size, layer.media_type],
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
"""


@pytest.mark.slow
def test_sparse_file_streams_and_unpacks_sparse(tmp_path, store):
    src = tmp_path / "src"
    src.mkdir()
    img = src / "disk.img"
    with open(img, "wb") as f:
        f.write(b"head" * 1024)
        f.seek(GIB // 2)
        f.write(b"middle" * 100)
        f.seek(GIB - 4096)
        f.write(b"tail" * 1024)
    assert os.stat(img).st_blocks * 512 < 1 << 20  # the filesystem keeps it sparse
    dest = tmp_path / "dest"
    # in a child process, so its peak RSS measures this write + unpack alone
    child = subprocess.run([sys.executable, "-c", _SPARSE_CHILD, str(src), str(store.root), str(dest)],
                           capture_output=True, text=True, check=True)
    fields, maxrss_kib = json.loads(child.stdout)
    layer = LayerBlob(*fields)
    assert maxrss_kib < 200 * 1024, f"peak RSS {maxrss_kib} KiB: the file was not streamed"
    # ordinary tar entry of the full size; zero blocks compress ~1000:1
    assert layer.size < 2 << 20, layer.size
    with store.open(layer.digest) as f, tarfile.open(fileobj=f, mode="r|gz") as tf:
        first = tf.next()  # the header only: iterating would inflate the whole GiB
    assert (first.name, first.size, first.type) == ("disk.img", GIB, tarfile.REGTYPE)
    assert os.listdir(dest) == ["disk.img"]
    out = dest / "disk.img"
    st = os.stat(out)
    assert st.st_size == GIB
    assert st.st_blocks * 512 < 4 << 20, st.st_blocks  # holes, not a GiB of written zeros
    with open(out, "rb") as f:
        assert f.read(4096) == b"head" * 1024
        f.seek(GIB // 2)
        assert f.read(600) == b"middle" * 100
        f.seek(GIB // 2 + 600)
        assert f.read(1 << 16) == bytes(1 << 16)
        f.seek(GIB - 4096)
        assert f.read() == b"tail" * 1024


def test_unpack_writes_holes_only_for_zero_runs(tmp_path):
    """Files with zero runs unpack byte-identical; small files are written plainly."""
    data = bytes(100_000) + b"x" + bytes(3 << 20) + b"end"
    for payload in (data, bytes(5000), b"\0" * (1 << 20)):
        dest = tmp_path / f"d{len(payload)}"
        unpack_tar_stream(io.BytesIO(_tar([("f", tarfile.REGTYPE, payload)])), dest)
        assert (dest / "f").read_bytes() == payload


def test_overlay_upper_dir_file_replacement(tmp_path, store):
    """A lower dir replaced by a file and a lower file replaced by a dir, through a real
    overlay mount: the layer's tar and its unpacked snapshot stack to the same view."""
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "was-dir").mkdir()
    (lower / "was-dir" / "inner").write_text("old")
    (lower / "was-file").write_text("old")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        subprocess.run(["sh", "-c", "rm -rf was-dir && echo now-file > was-dir && "
                        "rm was-file && mkdir was-file && echo in > was-file/in"], cwd=merged, check=True)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    layer = write_layer(upper, store, overlay_upper=True)
    by_name = {m.name: m for m in tar_members(store, layer)}
    assert by_name["was-dir"].isreg() and by_name["was-file"].isdir()
    assert "was-file/in" in by_name and not any(n.startswith("was-dir/") for n in by_name)
    snap = tmp_path / "snap"
    unpack_layer(store, layer, snap)
    m2, w2, u2 = tmp_path / "m2", tmp_path / "w2", tmp_path / "u2"
    for d in (m2, w2, u2):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={snap}:{lower},upperdir={u2},workdir={w2}", str(m2)], check=True)
    try:
        assert (m2 / "was-dir").read_text() == "now-file\n"
        assert sorted(os.listdir(m2 / "was-file")) == ["in"]
    finally:
        subprocess.run(["umount", str(m2)], check=True)


def test_gzip_stream_edge_cases(tmp_path):
    tar = _tar([("f", tarfile.REGTYPE, b"payload" * 1000)])
    gz = gzip.compress(tar)
    # two members (as `cat a.gz b.gz` makes) and trailing zero padding are read
    half = len(tar) // 2
    for blob in (gzip.compress(tar[:half]) + gzip.compress(tar[half:]), gz + bytes(4096)):
        dest = tmp_path / f"ok{len(blob)}"
        unpack_tar_stream(io.BytesIO(blob), dest)
        assert (dest / "f").read_bytes() == b"payload" * 1000
    # truncated in the middle, truncated before the trailer, or garbage after it: refused
    for i, blob in enumerate((gz[: len(gz) // 2], gz[:-4], gz + b"garbage!")):
        with pytest.raises(LayerError):
            unpack_tar_stream(io.BytesIO(blob), tmp_path / f"bad{i}")


def test_entry_replacing_a_hard_link_does_not_write_through_it(tmp_path):
    data = _tar([("a", tarfile.REGTYPE, b"original"), ("h", tarfile.LNKTYPE, "a"),
                 ("h", tarfile.REGTYPE, b"replacement")])
    dest = tmp_path / "dest"
    unpack_tar_stream(io.BytesIO(data), dest)
    assert (dest / "a").read_bytes() == b"original"
    assert (dest / "h").read_bytes() == b"replacement"
    assert os.stat(dest / "a").st_nlink == 1


def test_pax_headers_for_values_ustar_cannot_hold(tmp_path, store):
    """Names > 100 bytes, link targets > 100 bytes, sizes >= 8 GiB, ids >= 2**21 and
    xattrs go into PAX records (the tar format is the contract with other readers)."""
    from pybuild.cache.layers import _tobuf

    ti = tarfile.TarInfo("x" * 150)
    ti.size = 9 << 30
    ti.uid = ti.gid = 3_000_000
    ti.pax_headers["SCHILY.xattr.user.k"] = "v"
    sym = tarfile.TarInfo("s")
    sym.type = tarfile.SYMTYPE
    sym.linkname = "y" * 150
    raw = _tobuf(ti) + _tobuf(sym)
    for record in (b" path=" + b"x" * 150, b" size=%d" % (9 << 30), b" uid=3000000", b" gid=3000000",
                   b" SCHILY.xattr.user.k=v", b" linkpath=" + b"y" * 150):
        assert record + b"\n" in raw, record
    # and they are read back by GNU tar, not only by Python
    src = tmp_path / "src"
    src.mkdir()
    (src / ("n" * 120)).write_text("long")
    os.symlink("t" * 130, src / "sym")
    layer = write_layer(src, store)
    out = subprocess.run(["tar", "-tvzf", str(store.path(layer.digest))], check=True,
                         capture_output=True, text=True).stdout
    assert "n" * 120 in out and "sym -> " + "t" * 130 in out
