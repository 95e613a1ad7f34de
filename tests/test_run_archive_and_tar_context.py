"""Two things that must not touch what they are not asked to:

* `pybuild run oci-archive:FILE` uses the archive's image by its manifest digest and never adds
  or moves a local tag (a local `hello:1.0` stays what it was, also when the run fails, e.g. for
  an archive of several images); `run --rm` leaves nothing `fsck` reports.
* a context tar on stdin (`pybuild build -`) keeps symlinks with any target (`/etc/passwd`,
  `../../outside`), as `docker build -` does, and never follows one on the host: a member
  written through a symlink, an absolute or `..` member name, a hard link out of the context
  are refused, the message naming the member, and nothing is written outside the context.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import PybuildCLI

NONE = ("--network", "none")


@pytest.fixture
def other(busybox_store, tmp_path) -> PybuildCLI:
    """A second store (where the archives come from: their images are foreign to `cli`'s)."""
    root = tmp_path / "other-store"
    shutil.copytree(busybox_store, root, symlinks=True)
    return PybuildCLI(root)


def _build(cli, tmp_path: Path, name: str, dockerfile: str, *tags: str) -> str:
    ctx = tmp_path / f"ctx-{name}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    args = [a for t in tags for a in ("-t", t)]
    return cli("build", "-q", *args, str(ctx), check=True).stdout.strip()


def _images(cli) -> list[str]:
    return sorted(cli("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}",
                      check=True).stdout.splitlines())


def _store_objects(root: Path) -> tuple[list[str], list[str]]:
    blobs = sorted(p.name for p in (root / "blobs" / "sha256").iterdir())
    snaps = sorted(p.name for p in (root / "snapshots").iterdir()) if (root / "snapshots").is_dir() else []
    return blobs, snaps


def test_run_oci_archive_keeps_the_local_tag(cli, tmp_path):
    """The issue's case: hello:1.0 saved, then hello:1.0 re-tagged locally; running the archive
    uses the archive's image but leaves hello:1.0 as it was."""
    a = _build(cli, tmp_path, "a", "FROM busybox:latest\nRUN echo A > /a\n", "hello:1.0")
    archive = tmp_path / "hello.tar"
    cli("save", "-o", str(archive), "hello:1.0", check=True)
    cli("tag", "busybox:latest", "hello:1.0", check=True)
    before = _images(cli)
    assert any(line.startswith("hello:1.0 ") and a not in line for line in before), before
    res = cli("run", "--rm", *NONE, f"oci-archive:{archive}", "cat", "/a")
    assert res.code == 0 and res.stdout == "A\n", res.output
    assert _images(cli) == before


def test_run_foreign_oci_archive_tags_nothing_and_leaves_no_garbage(cli, other, tmp_path):
    _build(other, tmp_path, "f", "FROM busybox:latest\nRUN echo foreign > /f\n", "hello:1.0")
    archive = tmp_path / "foreign.tar"
    other("save", "-o", str(archive), "hello:1.0", check=True)
    cli("tag", "busybox:latest", "hello:1.0", check=True)
    cli("run", "--rm", *NONE, "hello:1.0", "true", check=True)  # busybox's own snapshot, a tagged image's
    before, objects = _images(cli), _store_objects(cli.root)
    res = cli("run", "--rm", *NONE, f"oci-archive:{archive}", "cat", "/f")
    assert res.code == 0 and res.stdout == "foreign\n", res.output
    assert _images(cli) == before
    fsck = cli("fsck")
    assert fsck.code == 0 and fsck.output == "", fsck.output  # no garbage snapshot either
    assert _store_objects(cli.root) == objects  # the archive's blobs and snapshots went with --rm


def test_run_oci_archive_of_three_images_fails_before_tagging(cli, other, tmp_path):
    for n in (1, 2, 3):
        tags = [f"img{n}:1"] + (["hello:1.0"] if n == 1 else [])
        _build(other, tmp_path, f"i{n}", f"FROM busybox:latest\nRUN echo {n} > /n\n", *tags)
    archive = tmp_path / "three.tar"
    other("save", "-o", str(archive), "img1:1", "img2:1", "img3:1", "hello:1.0", check=True)
    cli("tag", "busybox:latest", "hello:1.0", check=True)
    before = _images(cli)
    res = cli("run", "--rm", *NONE, f"oci-archive:{archive}", "true")
    assert res.code == 125, res.output
    assert res.stderr.splitlines() == [
        f"ERROR: oci-archive:{archive}: the archive holds 3 images; run needs exactly one"]
    assert _images(cli) == before
    assert not list((cli.root / "containers").glob("*/config.json"))
    fsck = cli("fsck")
    assert fsck.code == 0 and fsck.output == "", fsck.output  # its blobs are unreferenced: prune takes them


def test_gc_keeps_the_archive_image_of_a_container(cli, other, tmp_path):
    _build(other, tmp_path, "g", "FROM busybox:latest\nRUN echo kept > /k\n", "gc:1")
    archive = tmp_path / "gc.tar"
    other("save", "-o", str(archive), "gc:1", check=True)
    try:
        cli("run", "--name", "holder", *NONE, f"oci-archive:{archive}", "true", check=True)
        cfg = json.loads(next((cli.root / "containers").glob("*/config.json")).read_text())
        cli("prune", "-a", "-f", check=True)
        assert all(Path(p).is_dir() for p in cfg["LowerDirs"])
        manifest = cfg["ImageManifest"].split(":", 1)[1]
        assert (cli.root / "blobs" / "sha256" / manifest).is_file()
        fsck = cli("fsck")
        assert fsck.code == 0 and fsck.output == "", fsck.output
        assert "gc" not in "".join(_images(cli))
    finally:
        cli("rm", "-f", "holder")
    cli("prune", "-a", "-f", check=True)
    assert not (cli.root / "blobs" / "sha256" / manifest).exists()


# -- a context tar on stdin ---------------------------------------------------------------------

def _tar(members: list[tuple]) -> bytes:
    """members: (name, "file", data) | (name, "dir") | (name, "sym", target) | (name, "hard", target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, *rest in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size, info.mode = len(rest[0]), 0o644
                tar.addfile(info, io.BytesIO(rest[0]))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            else:
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            tar.addfile(info)
    return buf.getvalue()


def test_stdin_context_tar_keeps_symlinks_pointing_anywhere(cli, tmp_path):
    data = _tar([
        ("Dockerfile", "file", b"FROM busybox:latest\nCOPY . /\n"),
        ("abs", "sym", "/etc/passwd"),
        ("rel-up", "sym", "../../outside"),
        ("sub", "dir"),
        ("sub/up", "sym", "../../../../etc"),
        ("tmplink", "sym", "/tmp"),
        ("f", "file", b"plain\n"),
        ("f-again", "hard", "f"),
    ])
    (tmp_path / "ctx.tar").write_bytes(data)
    with open(tmp_path / "ctx.tar", "rb") as stdin:
        res = cli("build", "-q", "-", stdin=stdin)
    assert res.code == 0, res.output
    image = res.stdout.strip()
    out = cli("run", "--rm", *NONE, image, "sh", "-c",
              "readlink /abs; readlink /rel-up; readlink /sub/up; readlink /tmplink; cat /f-again", check=True)
    assert out.stdout == "/etc/passwd\n../../outside\n../../../../etc\n/tmp\nplain\n"
    # the same files as a directory context build the same way
    ctx = tmp_path / "dirctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY . /\n")
    (ctx / "f").write_text("plain\n")
    for name, target in (("abs", "/etc/passwd"), ("rel-up", "../../outside"), ("sub/up", "../../../../etc"),
                         ("tmplink", "/tmp")):
        os.symlink(target, ctx / name)
    os.link(ctx / "f", ctx / "f-again")
    img2 = cli("build", "-q", str(ctx), check=True).stdout.strip()
    out2 = cli("run", "--rm", *NONE, img2, "sh", "-c",
               "readlink /abs; readlink /rel-up; readlink /sub/up; readlink /tmplink; cat /f-again", check=True)
    assert out2.stdout == out.stdout


def _hostile(outside: Path) -> list[tuple[str, list[tuple], str]]:
    """(id, members after the Dockerfile, what the error must say)."""
    return [
        ("through-symlink", [("lnk", "sym", str(outside)), ("lnk/pwned", "file", b"x")],
         "member 'lnk/pwned' goes through the symlink 'lnk'"),
        ("through-relative-symlink", [("d", "dir"), ("d/up", "sym", "../../../../../../../.."),
                                      ("d/up/pwned", "file", b"x")],
         "member 'd/up/pwned' goes through the symlink 'd/up'"),
        ("through-symlink-chain", [("a", "sym", "b"), ("b", "sym", str(outside)), ("a/pwned", "file", b"x")],
         "member 'a/pwned' goes through the symlink 'a'"),
        ("absolute-name", [(str(outside / "pwned"), "file", b"x")],
         f"member {str(outside / 'pwned')!r} is an absolute path"),
        ("dotdot-name", [("../../../../../../../../../" + str(outside)[1:] + "/pwned", "file", b"x")],
         "climbs out of the context with '..'"),
        ("dotdot-inside-name", [("a/../../pwned", "file", b"x")],
         "member 'a/../../pwned' climbs out of the context with '..'"),
        ("hard-link-outside", [("h", "hard", "../../../../../../../../../" + str(outside)[1:] + "/victim")],
         "member 'h': its hard link target"),
        ("hard-link-absolute", [("h", "hard", str(outside / "victim"))],
         f"member 'h': its hard link target {str(outside / 'victim')!r} is an absolute path"),
        ("hard-link-through-symlink", [("lnk", "sym", str(outside)), ("h", "hard", "lnk/victim")],
         "member 'h': its hard link target 'lnk/victim' goes through the symlink 'lnk'"),
        ("symlink-named-dot", [(".", "sym", str(outside))],
         "member '.' names the context root but is not a directory"),
    ]


def _tree(path: Path) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out.append((os.path.join(dirpath, name), st.st_mode, st.st_mtime_ns))
    return sorted(out)


@pytest.mark.parametrize("case", range(10))
def test_hostile_stdin_context_tar_is_refused_naming_the_member(cli, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("secret\n")
    os.chmod(outside / "victim", 0o600)
    name, members, message = _hostile(outside)[case]
    (tmp_path / "evil.tar").write_bytes(_tar([("Dockerfile", "file", b"FROM busybox:latest\nCOPY . /\n")] + members))
    before = _tree(outside)
    with open(tmp_path / "evil.tar", "rb") as stdin:
        res = cli("build", "-t", "evil:1", "-", stdin=stdin)
    assert res.code == 2, (name, res.output)
    assert res.stderr.startswith("pybuild: build context from stdin: not a usable tar: member "), (name, res.stderr)
    assert message in res.stderr, (name, res.stderr)
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert _tree(outside) == before, name
    assert not any(p.name == "pwned" for p in tmp_path.rglob("pwned")), name
    assert "evil" not in cli("images", check=True).stdout


def test_unpack_context_tar_writes_nothing_outside(tmp_path):
    """The extractor alone, into a known directory: refused members leave the rest of the
    file system as it was; a hard link to a symlink that points out links the symlink itself
    and changes nothing outside."""
    from pybuild.builder.url_context import NotUsableTar, unpack_context_tar

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("secret\n")
    os.chmod(outside / "victim", 0o600)
    for i, (name, members, message) in enumerate(_hostile(outside)):
        dest = tmp_path / f"work{i}" / "a" / "b" / "ctx"
        dest.mkdir(parents=True)
        (tmp_path / f"t{i}.tar").write_bytes(_tar(members))
        before = _tree(tmp_path / "outside")
        with pytest.raises(NotUsableTar) as exc:
            unpack_context_tar(tmp_path / f"t{i}.tar", dest)
        assert message in str(exc.value), (name, str(exc.value))
        assert _tree(tmp_path / "outside") == before, name
        work = tmp_path / f"work{i}"
        stray = [p for p, _, _ in _tree(work) if not p.startswith(str(dest))]
        assert stray == [str(work / "a"), str(work / "a" / "b")], (name, stray)

    dest = tmp_path / "ok"
    dest.mkdir()
    (tmp_path / "ok.tar").write_bytes(_tar([
        ("out", "sym", str(outside / "victim")),
        ("hl", "hard", "out"),  # a second name of the symlink, never of what it points at
        ("lnk", "sym", "/tmp"),
        ("lnk", "dir"),  # a later member replaces the symlink: the new directory is written into
        ("lnk/inside", "file", b"in\n"),
    ]))
    before = _tree(outside)
    assert unpack_context_tar(tmp_path / "ok.tar", dest) is True
    assert os.readlink(dest / "out") == str(outside / "victim") and os.readlink(dest / "hl") == str(outside / "victim")
    assert (dest / "lnk").is_dir() and not (dest / "lnk").is_symlink()
    assert (dest / "lnk" / "inside").read_text() == "in\n"
    assert _tree(outside) == before and (outside / "victim").read_text() == "secret\n"
    assert not Path("/tmp/inside").exists()
