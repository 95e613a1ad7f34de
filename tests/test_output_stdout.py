"""`pybuild build --output` as buildx: `-o -` / `dest=-` stream the archive to stdout (never a
terminal; -q's image id then goes to stderr), type=local writes into an existing directory, and
type=oci / type=docker archives may be unnamed."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import SAMPLES

HELLO = str(SAMPLES / "hello")
needs_skopeo = pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed")


def _pyb(cli, *args, **kw):
    """pybuild with binary stdout (the archive) and text stderr."""
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "timeout": 300, **kw}
    proc = subprocess.run([sys.executable, "-m", "pybuild", *args], env=cli.env(), **kw)
    proc.stderr = proc.stderr.decode()
    return proc


def _names(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return set(tf.getnames())


def test_dash_streams_the_flat_tar_to_stdout_and_the_id_to_stderr(cli, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    reference = tmp_path / "fs.tar"
    image_id = cli("build", "-q", "-o", f"type=tar,dest={reference}", HELLO, check=True).stdout.strip()
    assert image_id.startswith("sha256:")
    # `-o -` is type=tar,dest=-; type=local,dest=- is a tar of the directory on stdout too (buildx)
    for spec in ("-", "type=tar,dest=-", "type=local,dest=-", "dest=-,type=tar"):
        res = _pyb(cli, "build", "-q", "-o", spec, HELLO, cwd=work)
        assert res.returncode == 0, res.stderr
        assert res.stdout == reference.read_bytes(), spec  # the same tar as dest=FILE, and nothing else
        assert res.stderr.strip().splitlines()[-1] == image_id  # -q's id: on stderr, stdout is the archive
        assert list(work.iterdir()) == []  # no file or directory named "-"
    with tarfile.open(fileobj=io.BytesIO(reference.read_bytes())) as tf:
        assert tf.extractfile("app/app.txt").read() == (SAMPLES / "hello" / "app.txt").read_bytes()
    # whatever else a build prints to stdout goes to stderr too: --cache-report json
    res = _pyb(cli, "build", "--cache-report", "json", "-o", "-", HELLO, cwd=work)
    assert res.returncode == 0 and res.stdout == reference.read_bytes(), res.stderr
    assert '"summary"' in res.stderr
    # without -q: the usual report on stderr, the archive alone on stdout
    res = _pyb(cli, "build", "--progress", "plain", "-o", "-", HELLO, cwd=work)
    assert res.returncode == 0 and res.stdout == reference.read_bytes(), res.stderr


def test_a_file_named_dash_is_neither_written_nor_read(cli, tmp_path):
    (tmp_path / "-").write_bytes(b"")
    res = _pyb(cli, "build", "-o", "-", HELLO, cwd=tmp_path)
    assert res.returncode == 0, res.stderr  # was a NotADirectoryError traceback
    assert "Traceback" not in res.stderr
    assert "app/app.txt" in _names(res.stdout)
    assert (tmp_path / "-").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["-", "store"]


@needs_skopeo
def test_oci_and_docker_archives_to_stdout(cli, tmp_path):
    for kind, transport in (("oci", "oci-archive"), ("docker", "docker-archive")):
        ref = tmp_path / f"{kind}-file.tar"
        cli("build", "-q", "-t", "hello:1.0", "-o", f"type={kind},dest={ref}", HELLO, check=True)
        res = _pyb(cli, "build", "-q", "-t", "hello:1.0", "-o", f"type={kind},dest=-", HELLO, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stderr.strip().startswith("sha256:")
        assert res.stdout == ref.read_bytes()  # the same archive as dest=FILE
        streamed = tmp_path / f"{kind}-stdout.tar"
        streamed.write_bytes(res.stdout)
        out = subprocess.run(["skopeo", "inspect", f"{transport}:{streamed}"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["Layers"]) > 1
    assert not (tmp_path / "-").exists()


def test_stdout_outputs_refuse_a_terminal_before_the_build(cli, tmp_path):
    main, tty = os.openpty()
    try:
        for spec, kind in (("-", "tar"), ("type=tar,dest=-", "tar"), ("type=local,dest=-", "tar"),
                           ("type=oci,dest=-", "oci"), ("type=docker,dest=-", "docker")):
            res = _pyb(cli, "build", "--progress", "plain", "-q", "-o", spec, HELLO, cwd=tmp_path,
                       stdin=subprocess.DEVNULL, stdout=tty)
            assert res.returncode == 1
            assert res.stderr == (f"ERROR: --output {spec}: cowardly refusing to write a {kind} archive to a "
                                  "terminal. Use dest=FILE or redirect\n")  # one line: no step ran
        # a terminal is fine when the archive goes to a file
        res = _pyb(cli, "build", "-q", "-o", f"type=tar,dest={tmp_path / 'fs.tar'}", HELLO, cwd=tmp_path,
                   stdin=subprocess.DEVNULL, stdout=tty)
        assert res.returncode == 0, res.stderr
    finally:
        os.close(main)
        os.close(tty)
    assert not (tmp_path / "-").exists()


def test_a_failed_build_writes_nothing_to_stdout(cli, tmp_path):
    ctx = tmp_path / "bad"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo partial; false\n")
    for spec in ("-", "type=oci,dest=-"):
        res = _pyb(cli, "build", "-q", "-o", spec, str(ctx), cwd=tmp_path)
        assert res.returncode == 1 and res.stdout == b"", res.stderr
        assert "exited 1" in res.stderr


def test_local_output_writes_into_an_existing_directory(cli, tmp_path):
    out = tmp_path / "out"
    (out / "app").mkdir(parents=True)
    (out / "app" / "app.txt").write_text("old\n")
    (out / "mine.txt").write_text("keep\n")
    (out / "bin").write_text("a file where the image has a directory\n")
    res = cli("build", "-q", "-o", f"type=local,dest={out}", HELLO)
    assert res.code == 0, res.stderr
    assert (out / "app" / "app.txt").read_text() == (SAMPLES / "hello" / "app.txt").read_text()  # replaced
    assert (out / "mine.txt").read_text() == "keep\n"  # left
    assert (out / "bin" / "busybox").is_file()
    # again, over its own output; and a bare path is type=local too
    cli("build", "-q", "-o", str(out), HELLO, check=True)
    assert (out / "mine.txt").read_text() == "keep\n"
    # a destination that does not exist yet is made, parents included
    cli("build", "-q", "-o", f"type=local,dest={tmp_path / 'new' / 'dir'}", HELLO, check=True)
    assert (tmp_path / "new" / "dir" / "app" / "app.txt").is_file()


def test_bad_destinations_are_refused_before_the_build(cli, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    adir = tmp_path / "adir"
    adir.mkdir()
    cases = [
        (f"type=local,dest={afile}", f"{str(afile)!r} exists and is not a directory"),
        (str(afile), f"{str(afile)!r} exists and is not a directory"),
        (f"type=local,dest={afile}/sub", f"{str(afile)!r} is not a directory"),
        (f"type=tar,dest={adir}", f"{str(adir)!r} is a directory"),
        (f"type=oci,dest={adir}", f"{str(adir)!r} is a directory"),
        (f"type=tar,dest={tmp_path}/nosuch/fs.tar", f"directory {str(tmp_path / 'nosuch')!r} does not exist"),
    ]
    for spec, message in cases:
        res = cli("build", "--progress", "plain", "-o", spec, HELLO)
        assert res.code == 2, (spec, res.output)
        assert res.stderr == f"pybuild: --output {spec}: {message}\n", res.stderr  # one line: no step ran
    assert afile.read_text() == "x\n" and list(adir.iterdir()) == []


@needs_skopeo
def test_unnamed_oci_and_docker_archives(cli, tmp_path):
    oci, docker, meta = tmp_path / "o.tar", tmp_path / "d.tar", tmp_path / "meta.json"
    res = cli("build", "-q", "--metadata-file", str(meta), "-o", f"type=oci,dest={oci}", HELLO)
    assert res.code == 0, res.stderr
    m = json.loads(meta.read_text())
    with tarfile.open(oci) as tf:
        index = json.load(tf.extractfile("index.json"))
    assert index["manifests"] == [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": m["containerimage.digest"], "size": index["manifests"][0]["size"]}]
    out = subprocess.run(["skopeo", "inspect", f"oci-archive:{oci}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Digest"] == m["containerimage.digest"]

    image_id = cli("build", "-q", "-o", f"type=docker,dest={docker}", HELLO, check=True).stdout.strip()
    with tarfile.open(docker) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        assert json.load(tf.extractfile("repositories")) == {}
    assert len(manifest) == 1 and manifest[0]["RepoTags"] == []
    assert manifest[0]["Config"] == image_id.split(":", 1)[1] + ".json"
    out = subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{docker}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"]["Cmd"] == ["greet"]
    out = subprocess.run(["skopeo", "copy", "-q", f"docker-archive:{docker}", f"oci:{tmp_path / 'layout'}:x"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for archive in (oci, docker):  # pybuild loads them back too (by image id)
        res = cli("load", "-i", str(archive))
        assert res.code == 0 and f"Loaded image ID: {image_id}" in res.stdout, res.output

    # name= (or -t) still names them
    cli("build", "-q", "-o", f"type=oci,dest={oci},name=app:2", HELLO, check=True)
    with tarfile.open(oci) as tf:
        entry = json.load(tf.extractfile("index.json"))["manifests"][0]
    assert entry["annotations"]["org.opencontainers.image.ref.name"].endswith("app:2")
    cli("build", "-q", "-t", "app:3", "-o", f"type=docker,dest={docker}", HELLO, check=True)
    with tarfile.open(docker) as tf:
        assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] == ["app:3"]
