"""Command-line contract: subcommands, usage errors (exit 2), load/save round trip, SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import SAMPLES, PybuildCLI, mountinfo


def test_version_and_help():
    cli = PybuildCLI(Path("/nonexistent"))
    assert cli("--version").stdout.startswith("pybuild ")
    res = cli("help")
    assert res.code == 0 and "build" in res.stdout and "run" in res.stdout


def test_every_command_module_is_named_after_its_command():
    # `pybuild X` imports only pybuild/commands/X.py: the file name is the contract
    from pybuild.commands import command_names, load

    names = command_names()
    assert "run" in names and "prune" in names
    for name in names:
        assert load(name).NAME == name


def test_one_command_builds_only_its_own_parser():
    from pybuild.cli import COMMANDS, _parser

    def choices(parser):
        return set(parser._subparsers._group_actions[0].choices)

    assert choices(_parser()) == set(COMMANDS)
    assert choices(_parser(only="run")) == {"run", "help"}
    args = _parser(only="run").parse_args(["run", "--rm", "-e", "A=1", "busybox", "true"])
    assert args.command == "run" and args.rm and args.env == ["A=1"]


def test_run_start_up_does_not_load_the_cache_index_or_archives(tmp_path):
    # what `pybuild run` imports before it starts the container: no sqlite3 (the cache index),
    # no layer codec, no other command's module
    code = ("import sys; from pybuild import cli; from pybuild.store import Store; "
            "cli._parser(only='run'); s = Store.open(sys.argv[1]); s.images.list(); "
            "print(' '.join(m for m in ('sqlite3', 'pybuild.cache.index', 'zstandard', 'pybuild.oci.archive', "
            "'pybuild.commands.build', 'pybuild.commands.prune') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == ""
    code = ("import sys; from pybuild.store import Store; s = Store.open(sys.argv[1]); s.index.keys(); "
            "print('sqlite3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "True"  # ... and the index still opens on first use


@pytest.mark.parametrize("args, message", [
    (["imagess"], "unknown command 'imagess' (did you mean images?)"),
    (["nosuchcmd"], "pybuild: unknown command or build context 'nosuchcmd' (commands: build, check, "),
    (["nosuchcmd"], "; a context must be an existing directory, - or a URL)"),
    (["build"], "the following arguments are required: PATH | URL | -"),
    (["build", "--network=bridge", "."], "invalid choice: 'bridge'"),
    (["save", "-o", "x.tar"], "the following arguments are required: images"),
])
def test_usage_errors_exit_2_with_one_line(args, message, tmp_path):
    res = PybuildCLI(tmp_path / "store")(*args, cwd=tmp_path)
    assert res.code == 2, res.output
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 3  # argparse's usage line + the message
    assert "Traceback" not in res.stderr


def test_implicit_build_of_a_bare_context_still_works(cli):
    """`pybuild .` and `pybuild DIR` are builds; only a word that is neither is refused."""
    res = cli("-q", ".", cwd=SAMPLES / "hello")
    assert res.code == 0 and res.stdout.startswith("sha256:"), res.stderr
    res = cli("samples/hello", cwd=SAMPLES.parent)
    assert res.code == 0 and "unknown command" not in res.stderr, res.stderr


def test_bad_tag_is_a_usage_error(cli):
    res = cli("-t", "UPPER:1", str(SAMPLES / "hello"))
    assert res.code == 2
    assert "-t UPPER:1" in res.stderr and "lowercase" in res.stderr


def test_save_then_load_into_an_empty_store_runs(cli, tmp_path):
    cli("-t", "hello:1.0", str(SAMPLES / "hello"), check=True)
    archive = tmp_path / "hello.tar"
    cli("save", "-o", str(archive), "hello:1.0", check=True)
    other = PybuildCLI(tmp_path / "other-store")
    assert "Loaded image: hello:1.0" in other("load", "-i", str(archive), check=True).stdout
    assert "Hello from pybuild" in other("run", "hello:1.0", check=True).stdout


def test_save_load_and_export_use_stdout_and_stdin_by_default_and_with_dash(cli, tmp_path):
    """As docker: `save IMG > x.tar` and `save -o - IMG` write stdout (refused on a terminal),
    `load < x.tar` reads stdin, `export -o - IMG` is stdout (was: -o required, -i required, and a
    file named "-")."""
    import io
    import pty

    def pyb(*args, **kw):
        kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
        return subprocess.run([sys.executable, "-m", "pybuild", *args], env=cli.env(), **kw)

    cli("tag", "busybox:latest", "hello:1.0", check=True)
    for fmt in ("oci", "docker"):
        (tmp_path / fmt).mkdir()
        reference = tmp_path / fmt / "ref.tar"
        cli("save", "--format", fmt, "-o", str(reference), "hello:1.0", check=True)
        for args in (["save", "--format", fmt, "hello:1.0"], ["save", "--format", fmt, "-o", "-", "hello:1.0"]):
            res = pyb(*args, cwd=tmp_path / fmt)
            assert res.returncode == 0, res.stderr
            assert res.stdout == reference.read_bytes()  # the same archive as -o FILE writes
            assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == ["ref.tar"]  # no file named "-"
        other = PybuildCLI(tmp_path / fmt / "store")
        with open(reference, "rb") as f:
            res = other("load", stdin=f)
        assert res.code == 0 and "Loaded image: hello:1.0" in res.stdout, res.output
        with open(reference, "rb") as f:
            assert "Loaded image: hello:1.0" in other("load", "-i", "-", stdin=f, check=True).stdout
    assert list((cli.root / "tmp").iterdir()) == []
    res = pyb("export", "-o", "-", "hello:1.0", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "-").exists()
    assert "bin/busybox" in tarfile.open(fileobj=io.BytesIO(res.stdout)).getnames()
    # a terminal gets no archive: docker's refusal, exit 1; load from a terminal stdin likewise
    main, tty = pty.openpty()
    try:
        for args in (["save", "hello:1.0"], ["save", "-o", "-", "hello:1.0"]):
            res = pyb(*args, stdin=subprocess.DEVNULL, stdout=tty)
            assert res.returncode == 1
            assert res.stderr.decode() == ("ERROR: cowardly refusing to save to a terminal. "
                                           "Use the -o flag or redirect\n")
        res = pyb("load", stdin=tty)
        assert res.returncode == 1 and res.stderr.decode().startswith(
            "ERROR: requested load from stdin, but stdin is empty"), res.stderr
    finally:
        os.close(main)
        os.close(tty)


def test_load_of_a_truncated_archive_fails_and_tags_nothing(cli, tmp_path):
    cli("-t", "hello:1.0", str(SAMPLES / "hello"), check=True)
    archive = tmp_path / "hello.tar"
    cli("save", "-o", str(archive), "hello:1.0", check=True)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    other = PybuildCLI(tmp_path / "other-store")
    res = other("load", "-i", str(archive))
    assert res.code == 1 and res.stderr.startswith("ERROR: load ")
    assert "hello" not in other("images").stdout


def test_sigterm_mid_build_cleans_up_like_ctrl_c(cli, tmp_path):
    ctx = tmp_path / "slow"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo started && sleep 988\n")
    before = mountinfo()
    proc = subprocess.Popen([sys.executable, "-m", "pybuild", "-t", "slow:1", str(ctx)], env=cli.env(),
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.rstrip().endswith("started"):
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 143, rest
    assert "terminated" in rest
    assert mountinfo() == before
    work_dirs = cli.root / "tmp"
    assert not work_dirs.exists() or not any(work_dirs.iterdir())
    assert not any("sleep 988" in open(f"/proc/{p}/cmdline").read().replace("\0", " ")
                   for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/cmdline"))


def test_images_digests_and_quiet(cli):
    out = cli("images", "--digests", check=True).stdout.splitlines()
    assert out[0].split()[:3] == ["REPOSITORY", "TAG", "DIGEST"]
    index = json.loads((cli.root / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    assert any(digest in line for line in out[1:])
    ids = cli("images", "-q", check=True).stdout.split()
    assert ids and all(len(i) == 12 for i in ids)


def test_non_utf8_dockerfile_and_non_tar_import_are_one_line_errors(cli, tmp_path):
    ctx = tmp_path / "bad"
    ctx.mkdir()
    (ctx / "Dockerfile").write_bytes("FROM busybox:latest\nRUN echo é ".encode() + b"\xff\n")
    res = cli("-t", "bad:1", str(ctx))
    # LINE:COL, the column counting characters (é is two bytes)
    assert res.code == 1 and "Dockerfile:2:12: not valid UTF-8 (byte 0xff)" in res.stderr
    assert "Traceback" not in res.stderr
    notatar = tmp_path / "notatar"
    notatar.write_text("root:x:0:0::/root:/bin/sh\n")
    res = cli("import", str(notatar), "x:1")
    assert res.code == 1 and res.stderr.startswith(f"ERROR: import {notatar}: ") and "Traceback" not in res.stderr


@pytest.mark.parametrize("args, message", [
    (["build", "--memory", "1k", "."], "the minimum is 6m"),
    (["build", "--cpus", "0.0001", "."], "at least 0.01"),
    (["tag", "busybox:latest", "Bad:Tag"], "must be lowercase"),
])
def test_more_usage_errors(cli, args, message):
    res = cli(*args)
    assert res.code == 2 and message in res.stderr, res.stderr


def test_help_for_a_command(cli):
    res = cli("help", "build")
    assert res.code == 0 and res.stdout.startswith("usage: pybuild build")


def test_output_into_a_closed_pipe_is_quiet(cli, tmp_path):
    cli("-t", "hello:1.0", str(SAMPLES / "hello"), check=True)
    proc = subprocess.run(f"{sys.executable} -m pybuild history hello:1.0 | head -1", shell=True,
                          capture_output=True, text=True, env=cli.env())
    assert proc.stdout.startswith("IMAGE")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_zstd_build_then_docker_archive_round_trip(cli, tmp_path):
    res = cli("build", "--compression", "zstd", "-t", "z:1", str(SAMPLES / "hello"), check=True)
    assert "DONE" in res.stderr
    index = json.loads((cli.root / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m["annotations"]["org.opencontainers.image.ref.name"] == "z:1")
    manifest = json.loads((cli.root / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    archive = tmp_path / "z.tar"
    cli("save", "--format", "docker", "-o", str(archive), "z:1", check=True)
    if shutil.which("skopeo"):
        out = subprocess.run(["skopeo", "inspect", f"docker-archive:{archive}"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    other = PybuildCLI(tmp_path / "other")
    assert "Loaded image: z:1" in other("load", "-i", str(archive), check=True).stdout
    assert "Hello from pybuild" in other("run", "z:1", check=True).stdout


def test_cache_report_json_and_rawjson_progress(cli, tmp_path):
    ctx = tmp_path / "hello"
    shutil.copytree(SAMPLES / "hello", ctx)
    cli("-t", "hello:1.0", str(ctx), check=True)
    (ctx / "app.txt").write_text("changed\n")
    res = cli("build", "--progress", "rawjson", "--cache-report", "json", "-t", "hello:1.0", str(ctx), check=True)
    report = json.loads(res.stdout)
    steps = {s["name"]: s for s in report["steps"]}
    copy = next(s for name, s in steps.items() if "COPY app.txt" in name)
    assert copy["result"] != "cached" and "app.txt" in copy["reason"]
    run_adduser = next(s for name, s in steps.items() if "appuser" in name)
    assert run_adduser["cached"] and run_adduser["bytes_reused"] > 0
    assert report["summary"]["text"].startswith("7 steps: 4 cached")
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    assert {"vertex.started", "vertex.cached", "vertex.miss", "vertex.completed"} <= {e["type"] for e in events}


def test_outputs_iidfile_and_metadata_file(cli, tmp_path):
    iid, meta, archive, flat, local = (tmp_path / n for n in ("iid", "meta.json", "o.tar", "flat.tar", "dir"))
    res = cli("build", "-q", "-t", "hello:1.0", "--iidfile", str(iid), "--metadata-file", str(meta),
              "-o", f"type=oci,dest={archive}", str(SAMPLES / "hello"), check=True)
    image_id = res.stdout.strip()
    assert iid.read_text() == image_id
    m = json.loads(meta.read_text())
    assert m["containerimage.config.digest"] == image_id and m["image.name"] == "hello:1.0"
    if shutil.which("skopeo"):
        out = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True, text=True)
        assert out.returncode == 0 and json.loads(out.stdout)["Digest"] == m["containerimage.digest"]
    cli("build", "-q", "-o", f"type=tar,dest={flat}", str(SAMPLES / "hello"), check=True)
    with tarfile.open(flat) as tf:
        assert "app/app.txt" in tf.getnames()
    cli("build", "-q", "-o", str(local), str(SAMPLES / "hello"), check=True)
    assert (local / "app" / "app.txt").read_text() == (SAMPLES / "hello" / "app.txt").read_text()
    # unnamed is valid, as buildx (index.json entry without ref.name): tests/test_output_stdout.py
    res = cli("build", "-o", f"type=oci,dest={tmp_path / 'x.tar'}", str(SAMPLES / "hello"))
    assert res.code == 0 and (tmp_path / "x.tar").is_file(), res.stderr
    res = cli("build", "-o", "type=nosuch", str(SAMPLES / "hello"))
    assert res.code == 2 and "unknown type 'nosuch'" in res.stderr
    res = cli("build", "-o", "type=registry", str(SAMPLES / "hello"))  # pushing needs a name
    assert res.code == 2 and "type=registry needs name=REF" in res.stderr


def test_import_changes_are_docker_imports_set_expanded_in_order(cli, tmp_path):
    src = tmp_path / "rootfs"
    src.mkdir()
    (src / "f").write_text("x\n")
    res = cli("import", "--change", "ENV P=8080", "--change", "EXPOSE $P 53/UDP",
              "--change", 'LABEL a=b "c d"=e', "--change", "VOLUME /data", "--change", "STOPSIGNAL SIGUSR1",
              "--change", "ENV B=${P}x", "--change", "WORKDIR /w$P", str(src), "imp:1")
    assert res.code == 0, res.stderr
    cfg = json.loads(cli("inspect", "imp:1", check=True).stdout)[0]["Config"]
    assert cfg["Env"] == ["P=8080", "B=8080x"] and cfg["WorkingDir"] == "/w8080"
    assert cfg["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}} and cfg["Volumes"] == {"/data": {}}
    assert cfg["Labels"] == {"a": "b", "c d": "e"} and cfg["StopSignal"] == "SIGUSR1"


@pytest.mark.parametrize("change, message", [
    ("ENV A=${X:?msg}", "--change 'ENV A=${X:?msg}': failed to process '${X:?msg}': X: msg"),
    ("EXPOSE abc", "--change 'EXPOSE abc': EXPOSE abc: expected PORT"),
    ("RUN true", "--change 'RUN true': RUN is not supported"),
    ("FROM x", "--change 'FROM x': FROM is not supported"),
    ("STOPSIGNAL FOO", "--change 'STOPSIGNAL FOO': STOPSIGNAL FOO: not a signal name or number"),
    ("ENV", "--change 'ENV': ENV requires at least one argument"),
    ("EXPOSE 99999", "--change 'EXPOSE 99999': EXPOSE 99999: a port is a number from 0 to 65535"),
    ("EXPOSE 80-70", "--change 'EXPOSE 80-70': EXPOSE 80-70: the range ends before it starts"),
])
def test_bad_import_change_is_a_usage_error_and_imports_nothing(cli, tmp_path, change, message):
    """Checked as build checks the same instruction; the error names the --change it came from
    (after another one, so not by a line of the text pybuild parses)."""
    src = tmp_path / "rootfs"
    src.mkdir()
    res = cli("import", "-c", "ENV A=1", "--change", change, str(src), "bad:1")
    assert res.code == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert "bad" not in cli("images", check=True).stdout


def test_import_change_workdir_is_relative_to_the_last_and_port_ranges_expand(cli, tmp_path):
    src = tmp_path / "rootfs"
    src.mkdir()
    cli("import", "-c", "WORKDIR /tmp", "-c", "WORKDIR sub", "-c", "EXPOSE 8000-8002", str(src), "imp:2",
        check=True)
    cfg = json.loads(cli("inspect", "imp:2", check=True).stdout)[0]["Config"]
    assert cfg["WorkingDir"] == "/tmp/sub"
    assert cfg["ExposedPorts"] == {"8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}}


def test_prune_prompt_at_end_of_input_says_nothing_was_removed(tmp_path):
    """`pybuild prune` (no -f) with stdin closed: the prompt's line is ended and the command says
    no answer came and nothing was removed, exit 0 as docker's prompt (was: no newline, no word)."""
    res = PybuildCLI(tmp_path / "store")("prune", input="")
    assert res.code == 0, res.output
    assert res.stdout.endswith("Are you sure you want to continue? [y/N] \n"), res.stdout
    assert "no answer: nothing removed" in res.stderr
    assert not (tmp_path / "store").exists()
    res = PybuildCLI(tmp_path / "store")("prune", input="n\n")
    assert res.code == 0 and "no answer" not in res.stderr
