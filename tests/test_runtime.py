"""`pybuild run` as containers, and ps/logs/stop/kill/rm/exec/inspect/volume (real kernel, root).

Everything uses `--network none` or `host` so these tests do not depend on the bridge.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import mountinfo

NONE = ("--network", "none")


def wait_for(predicate, what: str, timeout: float = 60.0):
    """Wait for a condition of the system under test (not a timing assertion: the deadline only
    keeps a broken build from hanging the suite)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def rt(cli):
    """The CLI, and afterwards every container of the store force-removed."""
    yield cli
    ids = cli("ps", "-aq", "--no-trunc").stdout.split()
    if ids:
        cli("rm", "-f", *ids)


def _state(cli, name: str) -> dict:
    res = cli("inspect", name, check=True)
    return json.loads(res.stdout)[0]


def _container_dirs(root: Path) -> list[str]:
    base = root / "containers"
    return sorted(p.name for p in base.iterdir() if p.name != "names") if base.is_dir() else []


def test_exit_codes(rt):
    assert rt("run", "--rm", *NONE, "busybox:latest", "true").code == 0
    assert rt("run", "--rm", *NONE, "busybox:latest", "sh", "-c", "exit 3").code == 3
    res = rt("run", "--rm", *NONE, "no-such-image:1")
    assert res.code == 125 and "not found" in res.stderr
    res = rt("run", "--rm", *NONE, "busybox:latest", "/etc/passwd")
    assert res.code == 126 and "permission denied" in res.stderr
    res = rt("run", "--rm", *NONE, "busybox:latest", "no-such-command")
    assert res.code == 127 and "executable file not found" in res.stderr
    res = rt("run", "--rm", *NONE, "-u", "nobody-here", "busybox:latest", "true")
    assert res.code == 125 and "nobody-here" in res.stderr


def test_oom_gives_137_and_inspect_shows_it(rt):
    res = rt("run", "--name", "hog", *NONE, "--memory", "32m", "busybox:latest", "tail", "/dev/zero")
    assert res.code == 137, res.stderr
    assert "out of memory" in res.stderr
    state = _state(rt, "hog")["State"]
    assert state["OOMKilled"] is True and state["ExitCode"] == 137 and state["Status"] == "exited"


def test_kill_gives_137(rt):
    assert rt("run", "-d", "--name", "victim", *NONE, "busybox:latest", "sleep", "1000").code == 0
    assert rt("kill", "victim").code == 0
    rt("stop", "victim")  # returns once the exit is recorded
    state = _state(rt, "victim")["State"]
    assert state["ExitCode"] == 137 and state["OOMKilled"] is False


def test_detached_ps_logs_stop_signal_rm(rt, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nSTOPSIGNAL SIGUSR1\n")
    rt("build", "-t", "stopper:1", str(ctx), check=True)
    script = ("trap 'echo stopped-by-usr1 > /data/stopped; exit 0' USR1; "
              "echo to-stdout; echo to-stderr >&2; touch /data/ready; "
              "while true; do sleep 0.1; done")
    res = rt("run", "-d", "--name", "web", *NONE, "-v", "stopvol:/data", "stopper:1", "sh", "-c", script)
    assert res.code == 0, res.stderr
    cid = res.stdout.strip()
    assert len(cid) == 64
    vol = rt.root / "volumes" / "stopvol" / "_data"
    wait_for(lambda: (vol / "ready").exists(), "the container to start")

    ps = rt("ps", check=True).stdout
    assert "web" in ps and cid[:12] in ps and "Up " in ps
    logs = rt("logs", "web", check=True)
    assert logs.stdout == "to-stdout\n" and logs.stderr == "to-stderr\n"

    assert _state(rt, "web")["Config"]["StopSignal"] == "SIGUSR1"  # the name, as docker shows it
    assert rt("stop", "web", check=True).stdout.strip() == "web"
    assert (vol / "stopped").read_text() == "stopped-by-usr1\n"  # the image's STOPSIGNAL, not SIGTERM
    state = _state(rt, "web")["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0
    assert "web" not in rt("ps").stdout and "Exited (0)" in rt("ps", "-a").stdout

    assert rt("rm", "web", check=True).code == 0
    assert "web" not in rt("ps", "-a").stdout
    assert _container_dirs(rt.root) == []
    assert rt("inspect", "web").code == 1
    assert (vol / "stopped").exists()  # the volume outlives its container


def test_stop_timeout_then_sigkill(rt):
    # TERM is ignored: stop must fall back to SIGKILL after --stop-timeout
    rt("run", "-d", "--name", "stubborn", *NONE, "--stop-timeout", "1", "busybox:latest",
       "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done", check=True)
    assert rt("stop", "stubborn").code == 0
    assert _state(rt, "stubborn")["State"]["ExitCode"] == 137


def test_volume_persists_and_is_seeded_from_the_image(rt):
    rt("run", "--rm", *NONE, "-v", "keep:/d", "busybox:latest", "sh", "-c", "echo kept > /d/f", check=True)
    out = rt("run", "--rm", *NONE, "-v", "keep:/d", "busybox:latest", "cat", "/d/f", check=True).stdout
    assert out == "kept\n"
    assert "keep" in rt("volume", "ls", check=True).stdout
    # a new volume gets the image's content at the mount point, as docker does
    out = rt("run", "--rm", *NONE, "-v", "etc-copy:/etc", "busybox:latest", "cat", "/etc/passwd", check=True).stdout
    assert out.startswith("root:")
    assert (rt.root / "volumes" / "etc-copy" / "_data" / "passwd").read_text() == out
    # in use -> refused; unused -> removed
    rt("run", "--name", "user", *NONE, "-v", "keep:/d", "busybox:latest", "true", check=True)
    res = rt("volume", "rm", "keep")
    assert res.code == 1 and "in use" in res.stderr
    rt("rm", "user", check=True)
    assert rt("volume", "rm", "keep", "etc-copy").code == 0
    assert rt("volume", "ls", "-q").stdout == ""


def test_volume_prune_asks_and_removes_only_unused_anonymous_volumes(rt):
    """docker 23+: `volume prune` removes anonymous volumes no container uses, after a [y/N]
    prompt (no answer is no); named ones only with -a (was: every unused volume, no prompt)."""
    from pybuild.runtime.volumes import VolumeStore

    def names():
        return set(rt("volume", "ls", "-q", check=True).stdout.split())

    rt("volume", "create", "precious", check=True)
    rt("run", "--rm", *NONE, "-v", "kept:/d", "busybox:latest", "sh", "-c", "echo data > /d/f", check=True)
    rt("run", "--name", "holder", *NONE, "-v", "/anon", "busybox:latest", "true", check=True)
    (in_use,) = names() - {"precious", "kept"}  # the holder's anonymous volume
    leftover = "f" * 64
    VolumeStore(rt.root).ensure(leftover, anonymous=True)  # an anonymous volume no container uses
    labels = {v["Name"]: v["Labels"] for v in json.loads(rt("volume", "inspect", in_use, "precious").stdout)}
    assert labels == {in_use: {"com.docker.volume.anonymous": ""}, "precious": {}}

    prompt = ("WARNING! This will remove anonymous local volumes not used by at least one container.\n"
              "Are you sure you want to continue? [y/N] ")
    for answer in ("", "n\n", "whatever\n"):  # end of input, no, anything else: nothing goes
        res = rt("volume", "prune", input=answer)
        assert res.code == 0 and res.stdout.startswith(prompt), res.output
        assert "Deleted" not in res.stdout and names() == {"precious", "kept", in_use, leftover}
    res = rt("volume", "prune", input="y\n")
    assert res.code == 0 and res.stdout == prompt + f"Deleted Volume: {leftover}\n", res.output
    assert names() == {"precious", "kept", in_use}
    res = rt("volume", "prune", "-f", stdin=subprocess.DEVNULL)  # -f: no prompt; nothing anonymous is unused
    assert res.code == 0 and res.stdout == "" and names() == {"precious", "kept", in_use}
    assert (rt.root / "volumes" / "kept" / "_data" / "f").read_text() == "data\n"

    res = rt("volume", "prune", "-a", input="y\n")
    assert res.stdout.startswith("WARNING! This will remove all local volumes not used by at least one container.")
    assert res.stdout.endswith("[y/N] Deleted Volume: kept\nDeleted Volume: precious\n"), res.stdout
    assert names() == {in_use}  # still used by the holder, as docker keeps it
    rt("rm", "holder", check=True)
    assert names() == set()


def test_interrupting_a_non_build_command_does_not_talk_about_builds(rt):
    """Ctrl-C (SIGINT) or SIGTERM to `logs -f`: exit 130/143, without the build's "running steps
    were stopped, nothing was tagged"."""
    rt("run", "-d", "--name", "talker", *NONE, "busybox:latest", "sh", "-c", "echo ready; sleep 1000",
       check=True)
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = subprocess.Popen([sys.executable, "-m", "pybuild", "logs", "-f", "talker"], env=rt.env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"  # following: Python's handlers are in place
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == code, err
        assert err == "" and "Traceback" not in err, err


def test_rm_leaves_nothing(rt, tmp_path):
    from pybuild.runtime import launch
    from pybuild.runtime.containers import ContainerStore

    host = tmp_path / "bind"
    host.mkdir()
    before_mounts = mountinfo()
    res = rt("run", "-d", "--rm", "--name", "gone", *NONE, "--memory", "64m", "-v", f"{host}:/host",
             "--tmpfs", "/scratch", "-v", "/anon", "busybox:latest",
             "sh", "-c", "echo x > /scratch/f; echo y > /anon/f; touch /host/ready; sleep 1000")
    assert res.code == 0, res.stderr
    wait_for(lambda: (host / "ready").exists(), "the container to start")
    c = ContainerStore(rt.root).get("gone")
    init = launch.init_pid(c.state()["SupervisorPid"])
    from pybuild.sandbox.enter import _cgroup_procs_of

    cgroup_dirs = [Path(p).parent for p in _cgroup_procs_of(init)]  # v1 or v2, whatever the host has
    assert cgroup_dirs and all(d.is_dir() for d in cgroup_dirs), "the --memory cgroup exists while running"
    assert len(list((rt.root / "volumes").iterdir())) >= 1
    assert rt("stop", "-t", "0", "gone").code == 0
    wait_for(lambda: _container_dirs(rt.root) == [], "the --rm container's record to go")
    assert not any(d.exists() for d in cgroup_dirs)
    assert [v for v in os.listdir(rt.root / "volumes") if not v.startswith(".")] == []  # the anonymous volume
    assert os.listdir(rt.root / "containers" / "names") == []
    assert os.listdir(rt.root / "tmp") == []
    assert [m for m in mountinfo() if str(rt.root) in m] == []
    assert [m for m in mountinfo() if m not in before_mounts and ("/host" in m or "/scratch" in m)] == []
    assert sorted(host.iterdir()) == [host / "ready"]  # bind source untouched otherwise


def test_foreground_rm_leaves_no_record(rt):
    assert rt("run", "--rm", *NONE, "busybox:latest", "true").code == 0
    assert _container_dirs(rt.root) == []
    assert rt("ps", "-aq").stdout == ""


def test_exec_sees_processes_and_files(rt):
    rt("run", "-d", "--name", "box", *NONE, "busybox:latest", "sh", "-c",
       "echo inside > /made-by-container; exec sleep 1000", check=True)
    wait_for(lambda: rt("exec", "box", "test", "-e", "/made-by-container").code == 0, "the file")
    res = rt("exec", "box", "sh", "-c", "cat /made-by-container; ps -o pid,args; hostname", check=True)
    lines = res.stdout.splitlines()
    assert lines[0] == "inside"
    assert any(line.split(None, 1) == ["2", "sleep 1000"] for line in lines[1:]), res.stdout  # its PID ns
    assert lines[-1] == _state(rt, "box")["Config"]["Hostname"]  # its UTS ns
    assert rt("exec", "box", "sh", "-c", "exit 5").code == 5
    assert rt("exec", "-u", "nobody", "box", "id", "-u", check=True).stdout == "65534\n"
    caps = rt("exec", "box", "grep", "CapBnd", "/proc/self/status", check=True).stdout
    assert caps.split()[1] == "00000000a80425fb"  # the sandbox's capability policy applies
    assert rt("exec", "box", "no-such-cmd").code == 127
    rt("stop", "-t", "0", "box", check=True)
    res = rt("exec", "box", "true")
    assert res.code != 0 and "not running" in res.stderr


def test_read_only_rootfs_and_tmpfs(rt):
    res = rt("run", "--rm", *NONE, "--read-only", "--tmpfs", "/tmp", "busybox:latest", "sh", "-c",
             "touch /x 2>/dev/null && echo wrote-root; touch /tmp/y && echo wrote-tmp")
    assert res.code == 0 and res.stdout == "wrote-tmp\n"


def test_tmpfs_flags_are_mount_flags(rt):
    """noexec is a mount flag, not tmpfs data: it used to fail with EINVAL and a sandbox path."""
    res = rt("run", "--rm", *NONE, "--tmpfs", "/x:noexec,size=1m", "--tmpfs", "/y:noexec,exec",
             "busybox:latest", "grep", "-E", " /(x|y) ", "/proc/mounts")
    assert res.code == 0, res.stderr
    x, y = res.stdout.splitlines()
    assert "noexec" in x.split()[3].split(",") and "size=1024k" in x
    assert "noexec" not in y.split()[3].split(",")  # the last of noexec/exec wins


def test_bad_tmpfs_size_names_the_flag_and_makes_no_record(rt):
    res = rt("run", *NONE, "--tmpfs", "/x:size=abc", "busybox:latest", "true")
    assert res.code == 125
    assert res.stderr.splitlines() == ["ERROR: --tmpfs /x:size=abc: invalid size 'abc' (expected a number "
                                       "of bytes, with k/m/g, or a percentage: 64m, 50%)"]
    assert "pybuild-sandbox" not in res.stderr
    assert _container_dirs(rt.root) == [] and rt("ps", "-aq").stdout == ""


def test_missing_bind_source_refused_for_mount_created_for_v(rt, tmp_path):
    """docker: `-v HOST:CTR` creates a missing HOST dir, `--mount type=bind` refuses it."""
    made, missing = tmp_path / "made-by-v", tmp_path / "missing"
    spec = f"type=bind,source={missing},target=/x"
    res = rt("run", "--rm", *NONE, "-v", f"{made}:/a", "--mount", spec, "busybox:latest", "true")
    assert res.code == 125
    assert res.stderr.splitlines() == [f"ERROR: --mount {spec}: bind source path does not exist: {missing}"]
    assert not made.exists() and not missing.exists()  # refused before anything was created
    assert _container_dirs(rt.root) == []
    assert rt("run", "--rm", *NONE, "-v", f"{made}:/a", "busybox:latest", "touch", "/a/f").code == 0
    assert (made / "f").is_file()


def test_env_workdir_user_entrypoint(rt, tmp_path):
    envfile = tmp_path / "env"
    envfile.write_text("# comment\nFROM_FILE=1\n")
    res = rt("run", "--rm", *NONE, "-e", "A=b", "--env-file", str(envfile), "-w", "/tmp", "-u", "65534:65534",
             "--hostname", "myhost", "--entrypoint", "sh", "busybox:latest", "-c",
             'echo "$A $FROM_FILE $(pwd) $(id -u):$(id -g) $(hostname)"', check=True)
    assert res.stdout == "b 1 /tmp 65534:65534 myhost\n"


def test_name_conflict_and_bad_flags(rt):
    rt("run", "--name", "dup", *NONE, "busybox:latest", "true", check=True)
    res = rt("run", "--name", "dup", *NONE, "busybox:latest", "true")
    assert res.code == 125 and "already in use" in res.stderr
    res = rt("run", *NONE, "-v", "rel/path:/x", "busybox:latest", "true")
    assert res.code == 125 and "-v rel/path:/x" in res.stderr
    res = rt("run", *NONE, "-w", "rel", "busybox:latest", "true")  # docker's words and code
    assert res.code == 125 and "the working directory 'rel' is invalid, it needs to be an absolute path" in res.stderr
    res = rt("run", *NONE, "--no-such-flag", "busybox:latest", "true")  # docker run: 125, not 2
    assert res.code == 125 and "--no-such-flag" in res.stderr
    assert len(_container_dirs(rt.root)) == 1  # the refused runs left no record


def test_hostname_variable_as_docker_sets_it(rt):
    res = rt("run", "--rm", *NONE, "--hostname", "box1", "busybox:latest", "sh", "-c", 'echo "$HOSTNAME"', check=True)
    assert res.stdout == "box1\n"
    res = rt("run", "--rm", *NONE, "-e", "HOSTNAME=given", "busybox:latest", "sh", "-c", 'echo "$HOSTNAME"',
             check=True)
    assert res.stdout == "given\n"  # the container's own Env wins


def test_signals_are_forwarded_without_tty(rt, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pybuild", "run", "--rm", *NONE, "-v", f"{marks}:/m",
                             "busybox:latest", "sh", "-c",
                             "trap 'exit 7' HUP; touch /m/ready; while true; do sleep 0.1; done"],
                            env=rt.env())
    try:
        wait_for(lambda: (marks / "ready").exists(), "the trap to be set")
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 7
    finally:
        proc.kill()
        proc.wait()


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie's reaping is its parent's business)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _read_until(fd: int, token: bytes, timeout: float = 60.0) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while token not in buf:
        if time.monotonic() > end:
            raise AssertionError(f"{token!r} not seen; got {buf!r}")
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_interactive_tty(rt):
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(rt.env())
        os.execv(sys.executable, [sys.executable, "-m", "pybuild", "run", "--rm", "-it", *NONE,
                                  "busybox:latest", "sh"])
    try:
        _read_until(fd, b"# ")
        # "42" comes from the process the Ctrl-C must reach, once it runs (a shell forks, then
        # execs: a ^C in between hits the child while it still has the shell's handler, and is
        # lost). It dies of SIGINT; ash then runs its own INT trap, which exits 4.
        os.write(fd, b"trap 'echo caught-int; exit 4' INT; [ -t 0 ] && echo is-a-tty; tty; "
                     b"sh -c 'echo $((6*7)); exec sleep 30'\r")
        out = _read_until(fd, b"42")
        assert b"is-a-tty" in out and b"/dev/console\r\n" in out
        os.write(fd, b"\x03")  # Ctrl-C: through the raw host terminal into the container's line discipline
        assert b"caught-int" in _read_until(fd, b"caught-int")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 4
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_tty_window_size_is_the_hosts(rt):
    import fcntl
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 99, 0, 0))
        os.environ.update(rt.env())
        os.execv(sys.executable, [sys.executable, "-m", "pybuild", "run", "--rm", "-t", *NONE,
                                  "busybox:latest", "stty", "size"])
    out = _read_until(fd, b"\n")
    os.waitpid(pid, 0)
    os.close(fd)
    assert b"33 99" in out


def test_crashed_supervisor_is_settled(rt):
    rt("run", "-d", "--name", "orphan", *NONE, "busybox:latest", "sleep", "1000", check=True)
    rt("run", "-d", "--rm", "--name", "orphan-rm", *NONE, "busybox:latest", "sleep", "1000", check=True)
    from pybuild.runtime import launch
    from pybuild.runtime.containers import ContainerStore

    store = ContainerStore(rt.root)
    for name in ("orphan", "orphan-rm"):
        c = store.get(name)
        wait_for(lambda c=c: c.state().get("SupervisorPid"), "the supervisor")
        init = launch.wait_started(c.state()["SupervisorPid"])
        os.kill(c.state()["SupervisorPid"], signal.SIGKILL)
        wait_for(lambda c=c: not c.supervised(), "the supervisor to die")
        wait_for(lambda i=init: not _alive(i), "the container to die with it")
    ps = rt("ps", "-a", check=True).stdout
    assert "Exited (unknown)" in ps and "orphan-rm" not in ps
    assert len(_container_dirs(rt.root)) == 1


def test_gc_keeps_the_image_of_a_container(rt, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo layer > /only-here\n")
    rt("build", "-t", "temp:1", str(ctx), check=True)
    rt("run", "--name", "holder", *NONE, "temp:1", "true", check=True)
    refused = rt("rmi", "temp:1")  # the container's image: only with -f (as docker)
    assert refused.code != 0 and "must force" in refused.stderr, refused.stderr
    rt("rmi", "-f", "temp:1", check=True)
    rt("prune", "-a", "-f", check=True)
    lowers = json.loads((rt.root / "containers" / _container_dirs(rt.root)[0] / "config.json").read_text())["LowerDirs"]
    assert all(Path(p).is_dir() for p in lowers)
    rt("rm", "holder", check=True)
    rt("prune", "-a", "-f", check=True)
    assert not all(Path(p).is_dir() for p in lowers)


def test_oci_archive_image(rt, tmp_path):
    archive = tmp_path / "bb.tar"
    rt("save", "-o", str(archive), "busybox:latest", check=True)
    res = rt("run", "--rm", *NONE, f"oci-archive:{archive}", "echo", "from-archive")
    assert res.code == 0 and res.stdout == "from-archive\n"


def test_missing_oci_archive_is_one_line(rt, tmp_path):
    missing = tmp_path / "nonexist.tar"
    res = rt("run", "--rm", *NONE, f"oci-archive:{missing}")
    assert res.code == 125 and res.stderr.splitlines() == [f"ERROR: oci-archive:{missing}: no such file"]
    res = rt("run", "--rm", *NONE, f"oci-archive:{tmp_path}")
    assert res.code == 125 and res.stderr.splitlines() == [
        f"ERROR: oci-archive:{tmp_path}: is a directory, not an archive file"]
    assert _container_dirs(rt.root) == []


def test_container_and_volume_errors_share_one_prefix(rt):
    """Every command prints its errors as `ERROR: ...` (BuildKit's, the build's and the golden
    output's form), not docker's mix of "Error:" and "Error response from daemon:"."""
    for args in (("rm", "nope"), ("kill", "nope"), ("stop", "nope"), ("inspect", "nope"), ("rmi", "nope"),
                 ("volume", "inspect", "nope"), ("volume", "rm", "nope"), ("logs", "nope")):
        res = rt(*args)
        assert res.code == 1, (args, res.stderr)
        assert res.stderr.startswith("ERROR: ") and "Error" not in res.stderr, (args, res.stderr)


def test_exec_interactive_tty(rt):
    rt("run", "-d", "--name", "tbox", *NONE, "busybox:latest", "sleep", "1000", check=True)
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(rt.env())
        os.execv(sys.executable, [sys.executable, "-m", "pybuild", "exec", "-it", "tbox", "sh"])
    try:
        _read_until(fd, b"# ")
        # the outputs are computed ($((...))), so the echo of the typed line cannot satisfy them
        os.write(fd, b"[ -t 0 ] && echo exec-has-a-$((1+1))tty; tty; echo tty-done-$((6*7)); exit 9\r")
        out = _read_until(fd, b"tty-done-42")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 9
        assert b"exec-has-a-2tty" in out
        # a pts of the container's own devpts (docker's behaviour), not "not a tty"
        assert b"\r\n/dev/pts/0\r\n" in out, out
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_logs_follow_ends_with_the_container(rt):
    rt("run", "-d", "--name", "talker", *NONE, "busybox:latest", "sh", "-c",
       "for i in 1 2 3; do echo line-$i; sleep 0.2; done", check=True)
    res = rt("logs", "-f", "talker", check=True)  # returns once the container has exited
    assert res.stdout == "line-1\nline-2\nline-3\n"
    assert _state(rt, "talker")["State"]["Status"] == "exited"


def test_foreground_output_goes_to_the_caller_and_the_log(rt):
    res = rt("run", "--name", "fg", *NONE, "busybox:latest", "sh", "-c", "echo out; echo err >&2; exit 2")
    assert (res.code, res.stdout, res.stderr) == (2, "out\n", "err\n")
    logs = rt("logs", "fg", check=True)
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")


def test_logs_tail_counts_lines(rt, tmp_path):
    # one record per line, as docker's json-file (the output came in one chunk), so --tail N is
    # the last N lines; a "\r" redraw stays inside its line. (stdout and stderr are separate
    # pipes read by separate pumps: their relative order is not pinned, so the tail is tested
    # on stdout alone.)
    rt("run", "--name", "many", *NONE, "busybox:latest", "sh", "-c",
       "echo e1 >&2; printf 'l1\\nl2\\nl3\\nbar 10%%\\rbar 100%%\\n'; printf partial", check=True)
    res = rt("logs", "--tail", "2", "many", check=True)  # (text mode shows the "\r" as "\n")
    assert (res.stdout, res.stderr) == ("bar 10%\nbar 100%\npartial", "")
    res = rt("logs", "-n", "1", "many", check=True)
    assert (res.stdout, res.stderr) == ("partial", "")
    assert rt("logs", "-n", "0", "many", check=True).stdout == ""
    res = rt("logs", "-n", "all", "many", check=True)
    assert (res.stdout, res.stderr) == ("l1\nl2\nl3\nbar 10%\nbar 100%\npartial", "e1\n")
    assert rt("logs", "-n", "-1", "many", check=True).stdout == res.stdout  # docker: negative is all
    res = rt("logs", "-n", "x", "many")
    assert res.code == 2 and "a number of lines or all" in res.stderr
    log = rt.root / "containers" / _container_dirs(rt.root)[0] / "container.log"
    assert len(log.read_bytes().split(b"\n")) - 1 == 6  # records: e1 l1 l2 l3 bar partial


def test_ps_command_column_quotes_as_docker():
    """docker ps shows `"sh -c 'exit 3'"` (an argument with a blank in single quotes, the whole
    strconv.Quote'd), cut to 19 characters and "…" unless --no-trunc (was `"sh -c "exit 3""`)."""
    from pybuild.commands.ps import command_text

    assert command_text(["sh", "-c", "exit 3"], True) == "\"sh -c 'exit 3'\""
    assert command_text(["sh", "-c", "echo hello; sleep 100"], True) == "\"sh -c 'echo hello; …\""
    assert command_text(["sh", "-c", "echo hello; sleep 100"], False) == "\"sh -c 'echo hello; sleep 100'\""
    assert command_text(["echo", 'say "hi"'], True) == '"echo \'say \\"hi\\"\'"'
    assert command_text(["top"], True) == '"top"'
    assert command_text([], True) == '""'
