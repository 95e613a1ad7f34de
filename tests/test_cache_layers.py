import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import time

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
], ids=["dotdot", "inner-dotdot", "absolute", "symlink-root", "symlink-parent", "symlink-rel-dir",
        "symlink-dot", "file-dot", "hardlink-dotdot", "hardlink-abs", "hardlink-via-symlink", "whiteout-dotdot",
        "dir-replaced-by-symlink"])
def test_attacks_rejected(tmp_path, entries):
    (tmp_path / "victim").write_text("victim")
    (tmp_path / "outside").mkdir()
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
