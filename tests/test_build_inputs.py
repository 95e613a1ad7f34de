"""`pybuild build` inputs beyond a context dir: stdin contexts, -f -, --label, --platform, --jobs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

DOCKERFILE = "FROM busybox\nCOPY a /a\nLABEL x=1\nRUN cat /a > /copied\n"


def _tar(files: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _config(cli, ref: str) -> dict:
    return json.loads(cli("inspect", ref, check=True).stdout)[0]["Config"]


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_context_tar_on_stdin(cli, mode, tmp_path):
    (tmp_path / "ctx.tar").write_bytes(_tar({"Dockerfile": DOCKERFILE.encode(), "a": b"from the tar\n"}, mode))
    with open(tmp_path / "ctx.tar", "rb") as stdin:
        cli("build", "-t", "fromtar", "-", stdin=stdin, check=True)
    out = cli("run", "fromtar", "cat", "/copied", check=True)
    assert out.stdout == "from the tar\n"


def test_lone_dockerfile_on_stdin_has_an_empty_context(cli):
    ok = cli("build", "-t", "lone", "-", input="FROM busybox\nRUN echo lone > /f\n", check=True)
    assert "naming to lone done" in ok.stderr
    bad = cli("build", "-", input=DOCKERFILE)
    assert bad.code == 1 and "ERROR: Dockerfile:2:6: COPY failed: 'a' not found" in bad.stderr


def test_hostile_context_tar_is_refused(cli, tmp_path):
    (tmp_path / "evil.tar").write_bytes(_tar({"Dockerfile": b"FROM busybox\n", "../../escaped": b"x"}))
    with open(tmp_path / "evil.tar", "rb") as stdin:
        res = cli("build", "-t", "evil", "-", stdin=stdin)
    assert res.code == 2 and "not a usable tar" in res.stderr
    assert "evil" not in cli("images", check=True).stdout


def test_stdin_tar_without_a_dockerfile_names_the_tar_not_a_temp_dir(cli, tmp_path):
    (tmp_path / "ctx.tar").write_bytes(_tar({"a": b"x"}))
    with open(tmp_path / "ctx.tar", "rb") as stdin:
        res = cli("build", "-", stdin=stdin)
    assert res.code == 1 and res.stderr.splitlines() == [
        "ERROR: stdin context: no Dockerfile in the tar (add one at its top level, or name it with -f PATH-IN-TAR)"]
    with open(tmp_path / "ctx.tar", "rb") as stdin:
        res = cli("build", "-f", "sub/Dockerfile.ci", "-", stdin=stdin)
    assert res.code == 1 and res.stderr.splitlines() == [
        "ERROR: stdin context: -f sub/Dockerfile.ci: no such file in the tar"]


def test_stdin_tar_dockerfile_named_by_f_is_inside_the_tar(cli, tmp_path):
    """As docker: with a context tar on stdin, -f is a path in the tar; messages name it so."""
    (tmp_path / "ctx.tar").write_bytes(_tar({"ci/Df": DOCKERFILE.encode(), "a": b"in the tar\n",
                                             "bad/Df": b"FROM busybox\nNOSUCH x\n"}))
    with open(tmp_path / "ctx.tar", "rb") as stdin:
        cli("build", "-t", "tarf", "-f", "ci/Df", "-", stdin=stdin, check=True)
    assert cli("run", "tarf", "cat", "/copied", check=True).stdout == "in the tar\n"
    with open(tmp_path / "ctx.tar", "rb") as stdin:
        res = cli("build", "-f", "../outside", "-", stdin=stdin)
    assert res.code == 1 and "ERROR: stdin context: -f ../outside: no such file in the tar" in res.stderr
    with open(tmp_path / "ctx.tar", "rb") as stdin:
        res = cli("build", "-f", "bad/Df", "-", stdin=stdin)
    assert res.code == 1 and res.stderr.startswith("ERROR: bad/Df:2:") and "pybuild-context" not in res.stderr


def test_dockerfile_from_stdin_with_context_dir(cli, tmp_path):
    (tmp_path / "a").write_text("dir context\n")
    cli("build", "-t", "fstdin", "-f", "-", str(tmp_path), input=DOCKERFILE, check=True)
    assert cli("run", "fstdin", "cat", "/copied", check=True).stdout == "dir context\n"


def test_lowercase_dockerfile_is_the_default_when_there_is_no_Dockerfile(cli, tmp_path):
    """As docker's CLI (getDockerfileRelPath) and BuildKit's frontend: without -f, a context with
    no `Dockerfile` but a `dockerfile` builds that; `Dockerfile` wins when both are there; -f
    Dockerfile names that file only.  A context tar on stdin alike; `check` too."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("lower\n")
    (ctx / "dockerfile").write_text(DOCKERFILE)
    cli("build", "-t", "lower:1", str(ctx), check=True)
    assert cli("run", "--network", "none", "lower:1", "cat", "/copied", check=True).stdout == "lower\n"
    assert cli("check", str(ctx)).code == 0
    res = cli("build", "-f", str(ctx / "Dockerfile"), str(ctx))
    assert res.code == 1 and "cannot read Dockerfile" in res.stderr
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("x=1", "x=upper"))
    cli("build", "-t", "upper:1", str(ctx), check=True)
    assert _config(cli, "upper:1")["Labels"]["x"] == "upper"
    (tmp_path / "ctx.tar").write_bytes(_tar({"dockerfile": DOCKERFILE.encode(), "a": b"tar lower\n"}))
    with open(tmp_path / "ctx.tar", "rb") as stdin:
        cli("build", "-t", "tarlower:1", "-", stdin=stdin, check=True)
    assert cli("run", "--network", "none", "tarlower:1", "cat", "/copied", check=True).stdout == "tar lower\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli("build", str(empty))
    assert res.code == 1 and f"cannot read Dockerfile {empty / 'Dockerfile'}" in res.stderr


def test_binary_dockerfile_error_escapes_control_bytes(cli):
    """`printf '\\x00\\x01binary' | pybuild build -`: the error shows the bytes escaped, never raw."""
    res = cli("build", "-", input="\x00\x01binary")
    assert res.code == 1
    assert res.stderr.splitlines() == ["ERROR: Dockerfile:1:1: unknown instruction \\x00\\x01binary",
                                       "\\x00\\x01binary", "^"]


def test_both_stdin_is_a_usage_error(cli):
    res = cli("build", "-f", "-", "-", input="")
    assert res.code == 2 and "cannot both read stdin" in res.stderr


def test_label_flag_sets_final_image_labels_over_dockerfile(cli, tmp_path):
    (tmp_path / "a").write_text("x")
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    cli("build", "-t", "lab", "--label", "x=2", "--label", "org.example=v 1", "--label", "novalue",
        str(tmp_path), check=True)
    # `--label K` is K with an empty value, as docker's ConvertKVStringsToMap has it
    assert _config(cli, "lab")["Labels"] == {"x": "2", "org.example": "v 1", "novalue": ""}


@pytest.mark.parametrize("flag,msg", [
    (["--label", "=v"], "--label '=v': expected KEY=VALUE or KEY"),
    (["--platform", "linux/arm64"], "only linux/amd64"),
    (["--platform", "garbage"], "pybuild: --platform garbage: expected OS/ARCH[/VARIANT], e.g. linux/amd64"),
    (["--platform", "linux/amd64/v2/x"], "--platform linux/amd64/v2/x: expected OS/ARCH[/VARIANT]"),
    (["--jobs", "0"], "--jobs"),
])
def test_bad_flags_exit_2(cli, tmp_path, flag, msg):
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    res = cli("build", *flag, str(tmp_path))
    assert res.code == 2 and msg in res.stderr, res.stderr


def test_platform_linux_amd64_and_jobs_1_build(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox AS a\nRUN echo a > /a\nFROM busybox AS b\nRUN echo b > /b\n"
        "FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n")
    cli("build", "--platform", "linux/amd64", "-j", "1", "-t", "j1", str(tmp_path), check=True)
    assert cli("run", "j1", "cat", "/a", "/b", check=True).stdout == "a\nb\n"


def test_context_tar_with_a_device_file_says_so(cli, tmp_path):
    """A context tar holding a character device: the error says what is wrong (was tarsafe's
    "tarfile returns true for isblk() or ischr()")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        df = b"FROM busybox\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(df)
        tar.addfile(info, io.BytesIO(df))
        dev = tarfile.TarInfo("dev/null")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(dev)
    (tmp_path / "dev.tar").write_bytes(buf.getvalue())
    with open(tmp_path / "dev.tar", "rb") as stdin:
        res = cli("build", "-t", "devtar", "-", stdin=stdin)
    assert res.code == 2
    assert "not a usable tar: it holds a device file ('dev/null'), which a build context may not" in res.stderr
    assert "isblk" not in res.stderr


def test_context_file_names_that_are_not_utf8_are_copied_byte_for_byte(cli, tmp_path):
    # a Latin-1 name from an old archive: BuildKit copies it as is; it used to end in a traceback
    # (hashing and the context-digest cache encoded names as strict UTF-8)
    import os

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx/\n")
    with open(os.path.join(os.fsencode(ctx), b"caf\xe9.txt"), "w") as f:
        f.write("x")
    os.symlink(b"t\xfe", os.path.join(os.fsencode(ctx), b"ln\xfe"))
    first = cli("build", "--progress", "plain", "-t", "latin1", str(ctx))
    assert first.code == 0, first.output
    again = cli("build", "--progress", "plain", "-t", "latin1", str(ctx), check=True)
    assert "#2 CACHED" in again.stderr
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pybuild", "run", "--rm", "--network", "none", "latin1", "sh", "-c",
                          'for f in /ctx/*; do echo "$f"; done; readlink /ctx/ln*'],
                         env=cli.env(), capture_output=True, check=True, timeout=120).stdout  # bytes
    assert out == b"/ctx/Dockerfile\n/ctx/caf\xe9.txt\n/ctx/ln\xfe\nt\xfe\n"
