"""ADD of local tar archives whose member names Docker normalises.

BuildKit extracts ADD's local archives with moby's pkg/archive (chrootarchive.Untar ->
archive.Unpack), which for every header does:

    hdr.Name = filepath.Clean(hdr.Name)
    path := filepath.Join(dest, hdr.Name)
    rel, _ := filepath.Rel(dest, path)
    if strings.HasPrefix(rel, "../") { return breakoutError(...) }

so "/etc/x" lands at dest/etc/x, "a/../b" at dest/b and "/../x" at dest/x, while "../x"
and "a/../../x" are refused; hard-link targets are joined the same way, and a symlink
whose target, joined to the link's directory, leaves dest is refused ("invalid symlink").
Absolute symlink targets are kept as written (they resolve inside the container).
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest


def _tar(path: Path, members: list[tuple[str, str, str]]) -> None:
    """members: (kind, name, data-or-link-target), kind in file|dir|hardlink|symlink."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, data in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_500_000_000
            if kind == "file":
                raw = data.encode()
                ti.size, ti.mode = len(raw), 0o644
                tf.addfile(ti, io.BytesIO(raw))
                continue
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, data
            else:
                ti.type, ti.linkname = tarfile.SYMTYPE, data
            tf.addfile(ti)


def _build(cli, tmp_path: Path, members, dest: str = "/dst/") -> tuple[object, Path]:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _tar(ctx / "a.tar", members)
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD a.tar {dest}\n")
    out = tmp_path / "fs.tar"
    res = cli("build", "-o", f"type=tar,dest={out}", str(ctx))
    return res, out


def _members(out: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(out) as tf:
        return {m.name.lstrip("./").rstrip("/"): m for m in tf.getmembers()}


def test_absolute_member_names_land_under_the_destination(cli, tmp_path):
    res, out = _build(cli, tmp_path, [
        ("dir", "/etc/", ""), ("file", "/etc/x", "abs"), ("file", "/../../up.txt", "up"),
        ("file", "rel/../flat.txt", "flat"), ("hardlink", "/etc/x-link", "/etc/x"),
    ])
    assert res.code == 0, res.stderr
    members = _members(out)
    assert members["dst/etc/x"].isfile() and members["dst/up.txt"].isfile() and members["dst/flat.txt"].isfile()
    assert members["dst/etc/x-link"].islnk() and members["dst/etc/x-link"].linkname.lstrip("./") == "dst/etc/x"
    assert not any(name.startswith(("etc", "up.txt")) for name in members)  # nothing outside /dst
    with tarfile.open(out) as tf:
        assert tf.extractfile(tf.getmember(next(m.name for m in tf.getmembers()
                                                if m.name.lstrip("./") == "dst/etc/x"))).read() == b"abs"


def test_absolute_symlink_target_is_kept(cli, tmp_path):
    res, out = _build(cli, tmp_path, [("symlink", "/bin/sh-link", "/bin/busybox")])
    assert res.code == 0, res.stderr
    assert _members(out)["dst/bin/sh-link"].linkname == "/bin/busybox"


@pytest.mark.parametrize("members, what", [
    ([("file", "../escape.txt", "x")], r"entry '\.\./escape\.txt' would be written outside the destination"),
    ([("file", "a/../../escape.txt", "x")], r"entry 'a/\.\./\.\./escape\.txt' would be written outside"),
    ([("file", "ok", "x"), ("hardlink", "h", "../../etc/passwd")],
     r"hard link 'h' -> target '\.\./\.\./etc/passwd' would be written"),
    ([("symlink", "sub/evil", "../../etc")], r"symlink 'sub/evil' -> '\.\./\.\./etc' points outside the destination"),
])
def test_breakouts_are_refused_as_docker_does(cli, tmp_path, members, what):
    res, out = _build(cli, tmp_path, members)
    assert res.code == 1
    assert re.search(r"Dockerfile:2:1: ADD failed: cannot extract 'a\.tar': " + what, res.stderr), res.stderr
    assert not out.exists()


def test_relative_symlink_inside_the_destination_is_fine(cli, tmp_path):
    res, out = _build(cli, tmp_path, [("dir", "a/", ""), ("file", "a/f", "f"), ("symlink", "a/b/l", "../f")])
    assert res.code == 0, res.stderr
    assert _members(out)["dst/a/b/l"].linkname == "../f"
