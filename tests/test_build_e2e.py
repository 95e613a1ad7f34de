"""End to end: Dockerfile -> sandboxed RUNs -> layers in the store -> tagged image -> run / save.

Each test works on a private copy of a store that holds busybox:latest and runs
the real CLI in a subprocess, with real namespaces and real overlay mounts.
"""

from __future__ import annotations

import gzip
import os
import signal
import sys
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import SAMPLES, mountinfo


def _steps(output: str) -> dict[str, str]:
    """Map each step label (e.g. "RUN adduser ...") to CACHED or DONE, from plain progress output."""
    labels: dict[str, str] = {}
    result: dict[str, str] = {}
    for line in output.splitlines():
        m = re.match(r"#(\d+) \[(?:\S+ )?\d+/\d+\] (.*)$", line)
        if m:
            labels[m.group(1)] = m.group(2)
            continue
        m = re.match(r"#(\d+) (CACHED|DONE [\d.]+s)$", line)
        if m and m.group(1) in labels:
            result[labels[m.group(1)]] = m.group(2).split()[0]
    return result


def _hello(tmp_path: Path) -> Path:
    ctx = tmp_path / "hello"
    shutil.copytree(SAMPLES / "hello", ctx)
    return ctx


def _manifest(cli, ref: str) -> dict:
    index = json.loads((cli.root / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            blob = cli.root / "blobs" / "sha256" / m["digest"].split(":")[1]
            return json.loads(blob.read_text())
    raise AssertionError(f"{ref} not in index.json")


def test_hello_builds_runs_and_rebuild_is_fully_cached(cli, tmp_path):
    ctx = _hello(tmp_path)
    first = cli("-t", "hello:1.0", str(ctx), check=True)
    steps = _steps(first.stderr)
    assert steps and all(state == "DONE" for label, state in steps.items() if not label.startswith("FROM"))
    layers_first = _manifest(cli, "hello:1.0")["layers"]

    second = cli("-t", "hello:1.0", str(ctx), check=True)
    steps2 = _steps(second.stderr)
    assert set(steps2) == set(steps)
    assert all(state == "CACHED" for state in steps2.values()), second.stderr
    # A RUN that ran again would give a new layer (build-info has no fixed content guarantee, the
    # tar has new mtimes): identical layer digests prove nothing was executed.
    assert _manifest(cli, "hello:1.0")["layers"] == layers_first

    run = cli("run", "hello:1.0", check=True)
    assert "Hello from pybuild, appuser in /app" in run.stdout
    assert "This file was copied into the image by COPY." in run.stdout
    assert "built on Linux" in run.stdout


def test_changed_file_reruns_its_copy_and_later_steps_only(cli, tmp_path):
    ctx = _hello(tmp_path)
    cli("-t", "hello:1.0", str(ctx), check=True)
    with open(ctx / "app.txt", "a") as f:
        f.write("change\n")
    out = cli("-t", "hello:1.0", str(ctx), check=True)
    steps = _steps(out.stderr)
    order = list(steps)
    copy_idx = next(i for i, label in enumerate(order) if label.startswith("COPY app.txt"))
    assert all(steps[label] == "CACHED" for label in order[:copy_idx]), out.stderr
    assert steps["COPY greet.sh /usr/local/bin/greet"] == "DONE"
    assert "cache miss: copied files changed: app.txt" in out.stderr
    assert out.stderr.count("cache miss: an earlier step was rebuilt") == 2
    assert all(steps[label] == "DONE" for label in order[copy_idx:]), out.stderr
    assert "change" in cli("run", "hello:1.0", "cat", "/app/app.txt", check=True).stdout


def test_mtime_only_change_stays_cached(cli, tmp_path):
    ctx = _hello(tmp_path)
    cli("-t", "hello:1.0", str(ctx), check=True)
    subprocess.run(["touch", "-d", "2001-01-01", str(ctx / "app.txt")], check=True)
    steps = _steps(cli("-t", "hello:1.0", str(ctx), check=True).stderr)
    assert all(state == "CACHED" for state in steps.values())


def test_no_cache_runs_everything(cli, tmp_path):
    ctx = _hello(tmp_path)
    cli("-t", "hello:1.0", str(ctx), check=True)
    out = cli("build", "--no-cache", "-t", "hello:1.0", str(ctx), check=True)
    steps = _steps(out.stderr)
    assert all(state == "DONE" for label, state in steps.items() if not label.startswith("FROM"))
    assert "cache miss: --no-cache" in out.stderr


def test_run_exit_code_and_command_override(cli, tmp_path):
    cli("-t", "hello:1.0", str(_hello(tmp_path)), check=True)
    assert cli("run", "hello:1.0", "sh", "-c", "exit 3").code == 3
    res = cli("run", "hello:1.0", "sh", "-c", "echo $GREETING; id -u; pwd")
    assert res.code == 0
    assert res.stdout.split("\n")[:3] == ["Hello from pybuild", "1000", "/app"]
    assert cli("run", "hello:1.0", "no-such-command").code == 127


def test_images_lists_tag_with_id_size_created(cli, tmp_path):
    cli("-t", "hello:1.0", str(_hello(tmp_path)), check=True)
    out = cli("images", check=True).stdout.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    row = next(line for line in out if line.startswith("hello "))
    assert re.match(r"hello\s+1\.0\s+[0-9a-f]{12}\s+(Less than a second ago|About a minute ago|\d+ \w+ ago)\s+[\d.]+[kMG]?B$", row)


def test_untagged_build_is_a_none_image_usable_by_its_id(cli, tmp_path):
    # `docker run $(docker build -q .)`: the id printed by a build without -t must resolve
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo untagged-only > /u\n")
    image_id = cli("build", "-q", str(tmp_path), check=True).stdout.strip()
    assert image_id.startswith("sha256:")
    short = image_id[7:19]
    rows = [ln.split() for ln in cli("images", check=True).stdout.splitlines()]
    assert ["<none>", "<none>", short] == rows[1][:3]  # newest first, under the header
    for ref in (image_id, short):
        assert cli("run", "--rm", "--network", "none", ref, "cat", "/u", check=True).stdout == "untagged-only\n"
    assert cli("inspect", short, check=True).stdout.count(image_id) >= 1
    cli("tag", short, "named:1", check=True)  # tagged now: no <none> row any more
    assert "<none>" not in cli("images", check=True).stdout
    cli("rmi", "named:1", check=True)
    # an image that only goes to an archive is not kept in the store
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo tar-only > /t\n")
    cli("build", "-q", "-o", f"type=tar,dest={tmp_path / 'fs.tar'}", str(tmp_path), check=True)
    assert "<none>" not in cli("images", check=True).stdout
    image_id = cli("build", "-q", str(tmp_path), check=True).stdout.strip()
    assert cli("rmi", image_id[7:19], check=True).stdout.startswith("Deleted: ")
    assert "<none>" not in cli("images", check=True).stdout


@pytest.mark.parametrize("flag, path, message", [
    ("--iidfile", "/nonexistent/dir/iid", "directory '/nonexistent/dir' does not exist"),
    ("--iidfile", "/proc/version", "cannot write in '/proc'"),
    ("--metadata-file", "/tmp", "is a directory"),
])
def test_unwritable_iidfile_or_metadata_file_fails_before_the_build(cli, tmp_path, flag, path, message):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    res = cli("build", "-t", "never", flag, path, str(tmp_path))
    assert res.code == 2 and message in res.stderr and "Traceback" not in res.stderr, res.output
    assert "never" not in cli("images", check=True).stdout


def test_whiteout_of_a_file_deleted_in_a_later_run(cli, tmp_path):
    ctx = tmp_path / "wh"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox:latest\n"
        "RUN mkdir -p /data/keep /data/gone && touch /data/a /data/keep/k /data/gone/x /etc/removed\n"
        "RUN rm /data/a /etc/removed && rm -rf /data/gone\n"
    )
    cli("-t", "wh:1", str(ctx), check=True)
    res = cli("run", "wh:1", "sh", "-c", "ls -a /data; test -e /etc/removed && echo present || echo absent")
    assert res.code == 0
    assert res.stdout.split() == [".", "..", "keep", "absent"]
    last = _manifest(cli, "wh:1")["layers"][-1]
    blob = cli.root / "blobs" / "sha256" / last["digest"].split(":")[1]
    with tarfile.open(fileobj=gzip.open(blob)) as tf:
        names = set(tf.getnames())
    assert {"data/.wh.a", "etc/.wh.removed", "data/.wh.gone"} <= names


def test_failing_run_names_the_line_leaves_no_mount_and_no_tag(cli, tmp_path):
    ctx = tmp_path / "fail"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo before\nRUN echo some output && exit 7\n")
    before = mountinfo()
    res = cli("-t", "fail:1", str(ctx))
    assert res.code == 1
    assert "some output" in res.stderr
    assert re.search(r"ERROR: .*Dockerfile:3:1: RUN echo some output && exit 7 exited 7", res.stderr), res.stderr
    log = re.search(r"^full output of the step: (\S+)$", res.stderr, re.M)
    assert log and Path(log.group(1)).read_text() == "some output\n"
    assert mountinfo() == before
    assert "fail" not in cli("images").stdout
    work_dirs = cli.root / "tmp"
    assert not work_dirs.exists() or not any(work_dirs.iterdir())


@pytest.mark.parametrize("dockerfile, expected", [
    ("FROM busybox:latest\nRUNN echo hi\n", r"Dockerfile:2:1: unknown instruction.*RUNN.*did you mean RUN"),
    ("FROM busybox:latest\nCOPY missing.txt /\n", r"Dockerfile:2:6: COPY failed: 'missing.txt' not found in the build context"),
    ("FROM nosuchimage:9\nRUN true\n", r"Dockerfile:1:6: base image 'nosuchimage:9' not found"),
])
def test_bad_input_is_one_clear_line_and_nothing_tagged(cli, tmp_path, dockerfile, expected):
    ctx = tmp_path / "bad"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    res = cli("-t", "bad:1", str(ctx))
    assert res.code == 1
    assert re.search(expected, res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert "bad" not in cli("images").stdout


def test_multistage_sample_skips_unused_stage(cli):
    res = cli("-t", "multi:1", str(SAMPLES / "multistage"), check=True)
    assert "never built" not in res.stderr
    assert "[unused" not in res.stderr
    out = cli("run", "multi:1", check=True).stdout
    assert out.splitlines() == ["MULTI-STAGE BUILDS COPY ONLY WHAT THEY NEED", "lines: 1"]


def test_from_scratch_with_copy(cli, tmp_path):
    ctx = tmp_path / "scratch"
    ctx.mkdir()
    (ctx / "f.txt").write_text("scratch file\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f.txt /f.txt\nCMD [\"/f.txt\"]\n")
    cli("-t", "scr:1", str(ctx), check=True)
    manifest = _manifest(cli, "scr:1")
    assert len(manifest["layers"]) == 1


@pytest.mark.interop
def test_saved_tarball_is_accepted_by_skopeo_and_umoci(cli, tmp_path):
    for tool in ("skopeo", "umoci"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (.ci/run installs it)")
    cli("-t", "hello:1.0", str(_hello(tmp_path)), check=True)
    archive = tmp_path / "hello.tar"
    cli("save", "-o", str(archive), "hello:1.0", check=True)
    inspect = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    info = json.loads(inspect.stdout)
    assert info["Labels"]["org.opencontainers.image.title"] == "hello"
    assert len(info["Layers"]) == len(_manifest(cli, "hello:1.0")["layers"])

    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(archive) as tf:
        tf.extractall(layout, filter="data")
    bundle = tmp_path / "bundle"
    unpack = subprocess.run(["umoci", "unpack", "--image", f"{layout}:hello:1.0", str(bundle)],
                            capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    rootfs = bundle / "rootfs"
    assert (rootfs / "app" / "app.txt").read_text() == (SAMPLES / "hello" / "app.txt").read_text()
    assert (rootfs / "usr" / "local" / "bin" / "greet").stat().st_mode & 0o111
    assert "appuser" in (rootfs / "etc" / "passwd").read_text()
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["greet"]
    assert config["process"]["cwd"] == "/app"


def test_copy_through_a_context_symlink_never_reads_the_host(cli, tmp_path):
    ctx = tmp_path / "links"
    ctx.mkdir()
    os.symlink("/etc", ctx / "hostetc")
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY hostetc/passwd /x\n")
    res = cli("-t", "links:1", str(ctx))
    assert res.code == 1
    assert "'hostetc/passwd' not found in the build context" in res.stderr
    # A source symlink is followed, inside the context: /etc of the context does not exist.
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY hostetc /z\n")
    res = cli("-t", "links:1", str(ctx))
    assert res.code == 1 and "'hostetc' is a symlink whose target is not in the build context" in res.stderr


def test_copy_follows_source_symlinks_but_keeps_links_inside_dirs(cli, tmp_path):
    ctx = tmp_path / "follow"
    (ctx / "real").mkdir(parents=True)
    (ctx / "real" / "r.txt").write_text("r\n")
    os.symlink("r.txt", ctx / "real" / "inner-link")
    os.symlink("real/r.txt", ctx / "link.txt")
    os.symlink("real", ctx / "linkdir")
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY link.txt /a/\nCOPY linkdir /b/\n")
    cli("-t", "follow:1", str(ctx), check=True)
    res = cli("run", "follow:1", "sh", "-c", "cat /a/link.txt; ls /b; readlink /b/inner-link", check=True)
    assert res.stdout.split() == ["r", "inner-link", "r.txt", "r.txt"]


def test_copy_onto_a_symlink_in_the_image_stays_in_the_image(cli, tmp_path):
    outside = tmp_path / "host-target"
    ctx = tmp_path / "dest"
    ctx.mkdir()
    (ctx / "f.txt").write_text("payload\n")
    (ctx / "Dockerfile").write_text(
        "FROM busybox:latest\n"
        f"RUN ln -s {'../' * 12}{str(outside).lstrip('/')} /escape && ln -s / /rootlink\n"
        "COPY f.txt /escape/\n"
        "COPY f.txt /rootlink/at-root.txt\n"
    )
    cli("-t", "dest:1", str(ctx), check=True)
    assert not outside.exists()
    res = cli("run", "dest:1", "sh", "-c", f"cat {outside}/f.txt /at-root.txt", check=True)
    assert res.stdout == "payload\npayload\n"


def test_ctrl_c_mid_run_leaves_no_process_mount_or_tag(cli, tmp_path):
    ctx = tmp_path / "slow"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo started && sleep 987\n")
    before = mountinfo()
    proc = subprocess.Popen([sys.executable, "-m", "pybuild", "-t", "slow:1", str(ctx)], env=cli.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.rstrip().endswith("started"):
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode != 0, rest
    assert "Traceback" not in rest
    assert not _processes_matching("sleep 987")
    assert mountinfo() == before
    work_dirs = cli.root / "tmp"
    assert not work_dirs.exists() or not any(work_dirs.iterdir())
    assert "slow" not in cli("images").stdout


def _processes_matching(needle: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline:
                found.append(cmdline)
    return found


def test_run_heredocs_script_shebang_and_shell_handled(cli, tmp_path):
    ctx = tmp_path / "heredoc"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox:latest\n"
        "ENV WHO=world\n"
        "RUN <<EOF\n"
        "echo \"script says hello $WHO\" > /script.txt\n"
        "echo second line >> /script.txt\n"
        "EOF\n"
        "RUN <<EOF\n"
        "#!/bin/sh -e\n"
        "echo \"shebang $0\" > /shebang.txt\n"
        "EOF\n"
        "RUN cat <<-EOT > /tabs.txt && cat <<'RAW' > /raw.txt\n"
        "\tindented $WHO\n"
        "\tEOT\n"
        "literal $WHO\n"
        "RAW\n"
    )
    cli("-t", "heredoc:1", str(ctx), check=True)
    res = cli("run", "heredoc:1", "cat", "/script.txt", "/shebang.txt", "/tabs.txt", "/raw.txt", check=True)
    assert res.stdout.splitlines() == ["script says hello world", "second line", "shebang /dev/stdin",
                                       "indented world", "literal $WHO"]


def test_add_extracts_local_archives_and_copies_other_files(cli, tmp_path):
    ctx = tmp_path / "add"
    (ctx / "tree" / "sub").mkdir(parents=True)
    (ctx / "tree" / "sub" / "inner.txt").write_text("from the archive\n")
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as tf:
        tf.add(ctx / "tree", arcname=".")
    (ctx / "plain.txt").write_text("plain\n")
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nADD bundle.tar.gz /opt/bundle\nADD plain.txt /opt/\n")
    cli("-t", "add:1", str(ctx), check=True)
    res = cli("run", "add:1", "cat", "/opt/bundle/sub/inner.txt", "/opt/plain.txt", check=True)
    assert res.stdout == "from the archive\nplain\n"


def test_add_archive_that_climbs_out_is_refused(cli, tmp_path):
    ctx = tmp_path / "evil"
    ctx.mkdir()
    payload = tmp_path / "payload"
    payload.write_text("pwned\n")
    with tarfile.open(ctx / "evil.tar", "w") as tf:
        tf.add(payload, arcname="../../../../../../tmp/pybuild-evil-add")
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nADD evil.tar /x/\n")
    res = cli("-t", "evil:1", str(ctx))
    assert res.code == 1
    assert re.search(r"Dockerfile:2:1: ADD failed: cannot extract 'evil.tar'", res.stderr), res.stderr
    assert not Path("/tmp/pybuild-evil-add").exists()


def test_dockerignore_hides_files_from_copy_and_from_the_cache_key(cli, tmp_path):
    ctx = tmp_path / "ign"
    (ctx / "logs").mkdir(parents=True)
    (ctx / "logs" / "a.log").write_text("log\n")
    (ctx / "logs" / "keep.txt").write_text("kept\n")
    (ctx / "secret.txt").write_text("s3cret\n")
    (ctx / "app.txt").write_text("app\n")
    (ctx / ".dockerignore").write_text("# comment\nsecret.txt\nlogs\n!logs/keep.txt\n")
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY . /c/\nRUN find /c | sort\n")
    res = cli("-t", "ign:1", str(ctx), check=True)
    listed = re.findall(r"^#\d+ [\d.]+ (/c\S*)$", res.stderr, re.M)
    assert listed == ["/c", "/c/.dockerignore", "/c/Dockerfile", "/c/app.txt", "/c/logs", "/c/logs/keep.txt"]
    (ctx / "secret.txt").write_text("changed, but ignored\n")
    assert all(v == "CACHED" for v in _steps(cli("-t", "ign:1", str(ctx), check=True).stderr).values())

    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY secret.txt /s\n")
    res = cli("-t", "ign:1", str(ctx))
    assert res.code == 1
    assert "'secret.txt' is not available in the build context: it is excluded by" in res.stderr
    assert ".dockerignore line 2: secret.txt" in res.stderr


def test_bad_dockerignore_pattern_names_file_and_line(cli, tmp_path):
    ctx = tmp_path / "badign"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\n")
    (ctx / ".dockerignore").write_text("ok\n[\n")
    res = cli("-t", "badign:1", str(ctx))
    assert res.code == 1
    assert f"ERROR: {ctx}/.dockerignore:2: syntax error in pattern" in res.stderr


def test_workdir_proc_self_fd_cannot_reach_the_host_root(cli, tmp_path):
    """runc CVE-2024-21626: a leaked fd plus WORKDIR /proc/self/fd/N gave a cwd on the host at build time."""
    marker = Path("/pybuild-host-marker-21626")
    marker.mkdir(exist_ok=True)
    try:
        for n in (3, 4, 5, 6, 7, 8):
            ctx = tmp_path / f"fd{n}"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text(f"FROM busybox:latest\nWORKDIR /proc/self/fd/{n}\nRUN ls -a ../../../ ; ls -a /\n")
            res = cli("-t", f"fd:{n}", str(ctx))
            assert marker.name not in res.output, res.output
            assert "Traceback" not in res.output
    finally:
        marker.rmdir()


def test_dockerignore_double_star_exception_brings_back_only_matching_files(cli, tmp_path):
    ctx = tmp_path / "ign2"
    (ctx / "dir" / "sub").mkdir(parents=True)
    for rel in ("dir/a", "dir/keep", "dir/sub/keep", "dir/sub/y.md"):
        (ctx / rel).write_text(rel + "\n")
    (ctx / ".dockerignore").write_text("dir\n!**/keep\n")
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY . /c\nCOPY dir /d\nRUN find /c/dir /d -type f | sort\n")
    res = cli("-t", "ign2:1", str(ctx), check=True)
    listed = re.findall(r"^#\d+ [\d.]+ (/[cd]/\S*)$", res.stderr, re.M)
    assert listed == ["/c/dir/keep", "/c/dir/sub/keep", "/d/keep", "/d/sub/keep"]


def test_classic_chroot_escape_stays_in_the_sandbox(cli, tmp_path):
    """chroot into a subdir, fchdir back out, climb, chroot("."): with a plain chroot that lands on the
    host root; after pivot_root with the old root unmounted it only reaches the sandbox's own root."""
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to build the escape program (it is on every machine of this kind)")
    ctx = tmp_path / "escape"
    ctx.mkdir()
    subprocess.run(["gcc", "-static", "-O2", "-o", str(ctx / "escape"),
                    str(Path(__file__).parent / "data" / "escape" / "chroot_escape.c")], check=True)
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY escape /escape\nRUN /escape\n")
    marker = Path("/pybuild-escape-marker")
    marker.touch()
    try:
        res = cli("-t", "escape:1", str(ctx), check=True)
    finally:
        marker.unlink()
    assert re.search(r"^#\d+ [\d.]+ contained$", res.stderr, re.M), res.stderr
    assert "ESCAPED" not in res.stderr


def test_a_step_waiting_for_another_stage_is_timed_from_when_it_runs(cli, tmp_path):
    """COPY --from=slow waits for the stage; its DONE time is its own work, not the wait."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox:latest AS slow\nRUN sleep 1.5; echo x > /x\n"
        "FROM busybox:latest\nCOPY --from=slow /x /x\n")
    res = cli("build", "--progress=plain", "--no-cache", "-t", "waits:1", str(ctx), check=True)
    done = dict(re.findall(r"^#(\d+) DONE ([\d.]+)s$", res.stderr, re.M))
    numbers = {label: n for n, label in re.findall(r"^#(\d+) \[[^\]]*\] (RUN|COPY)", res.stderr, re.M)}
    assert float(done[numbers["RUN"]]) >= 1.5
    assert float(done[numbers["COPY"]]) < 1.0, res.stderr
