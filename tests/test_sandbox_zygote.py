"""pybuild.sandbox.runner's fork server (zygote): runs forked from it behave as directly started
ones; it is replaced when killed and dies with its pybuild process (needs root)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sandbox_helpers import ENV, cmdline, make_image, mountinfo, run_captured

from pybuild.sandbox import runner
from pybuild.sandbox.runner import ExitStatus, ProcessSpec, RootfsSpec, abort_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/bin/busybox"),
                                reason="needs root and /bin/busybox")

MARK = "4713"  # distinctive sleep duration to find leaked processes


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return make_image(tmp_path_factory.mktemp("image"))


@pytest.fixture
def ovl(tmp_path) -> tuple[Path, Path]:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return upper, work


def _children(pid: int) -> list[int]:
    out = []
    for p in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(p) as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _sleepers() -> list[int]:
    return [int(p.split("/")[2]) for p in glob.glob("/proc/[0-9]*/cmdline")
            if cmdline(int(p.split("/")[2])).split(b"\0")[:2] == [b"sleep", MARK.encode()]]


def _zygote_pid() -> int | None:
    z = runner._zygote
    return z.proc.pid if z.proc is not None and z.proc.poll() is None else None


@pytest.fixture(autouse=True)
def no_leftovers():
    before_mounts = mountinfo()
    ours = f"/tmp/pybuild-sandbox-{os.getpid()}-*"
    before_tmp = set(glob.glob(ours))
    yield
    assert mountinfo() == before_mounts
    zpid = _zygote_pid()
    assert zpid is None or _children(zpid) == []  # no init left under the zygote
    assert _sleepers() == []
    assert set(glob.glob(ours)) == before_tmp


def sh(image: Path, ovl, script: str, **kw):
    return run_captured(ProcessSpec(["sh", "-c", script], dict(ENV)), RootfsSpec([image], *ovl), **kw)


def test_concurrent_runs_from_threads_get_their_own_results(image, tmp_path):
    results = {}

    def one(i):
        upper, work = tmp_path / f"u{i}", tmp_path / f"w{i}"
        upper.mkdir()
        work.mkdir()
        # different durations so the replies come back in another order than the requests
        results[i] = sh(image, (upper, work), f"sleep 0.{4 - i}; echo out{i}; echo err{i} >&2; exit {10 + i}")

    ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == {i: (ExitStatus(10 + i, None), f"out{i}\n", f"err{i}\n") for i in range(4)}
    kill = sh(image, (tmp_path / "u0", tmp_path / "w0"), "kill -TERM $$")
    assert kill == (ExitStatus(128 + signal.SIGTERM, signal.SIGTERM), "", "")


def test_forked_init_has_only_its_own_fds_and_the_zygote_as_parent(image, ovl):
    sh(image, ovl, "true")
    zpid = _zygote_pid()
    assert zpid is not None and runner.ZYGOTE_CMDLINE_MARK in cmdline(zpid)
    assert runner.INIT_CMDLINE_MARK not in cmdline(zpid)  # runtime.launch.init_pid must not take it
    seen = {}

    def look():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            for pid in _children(zpid):
                if not (_children(pid) and _sleepers()):  # PID 1 exists and the command runs
                    continue
                fds = {}
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    try:
                        fds[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
                    except OSError:
                        pass
                seen.update(pid=pid, fds=fds, pgid=os.getpgid(pid))
                break
            time.sleep(0.01)
        abort_all()  # ends the run in any case

    t = threading.Thread(target=look)
    t.start()
    st, out, _ = sh(image, ovl, f"echo up; sleep {MARK}")
    t.join()
    assert out == "up\n" and st == ExitStatus(137, signal.SIGKILL)
    assert seen, "the outer init was not found under the zygote"
    assert seen["pgid"] == seen["pid"]  # its own process group, as Popen(process_group=0) made it
    fds = seen["fds"]
    assert set(fds) >= {0, 1, 2, 3}
    assert fds[3].startswith("pipe:")  # the ctl pipe
    extra = {fd: target for fd, target in fds.items() if fd > 3}
    assert all(target == "anon_inode:[pidfd]" for target in extra.values()), extra  # no socket of the zygote's


def test_killed_zygote_is_replaced(image, ovl):
    assert sh(image, ovl, "echo one")[:2] == (ExitStatus(0, None), "one\n")
    old = _zygote_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(old) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sh(image, ovl, "echo two")[:2] == (ExitStatus(0, None), "two\n")
    new = _zygote_pid()
    assert new is not None and new != old


def test_killed_zygote_before_it_is_reaped_is_replaced(image, ovl):
    # dead but not yet reaped by pybuild: the request fails with EPIPE and is sent again
    sh(image, ovl, "true")
    z = runner._zygote
    old = z.proc.pid
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(old) and time.monotonic() < deadline:
        time.sleep(0.01)
    real_poll = z.proc.poll
    z.proc.poll = lambda: None  # pretend it still runs
    try:
        assert sh(image, ovl, "echo again")[:2] == (ExitStatus(0, None), "again\n")
    finally:
        if z.proc.pid == old:
            z.proc.poll = real_poll
    assert _zygote_pid() not in (None, old)


def test_abort_all_kills_a_run_of_the_zygote_and_leaves_nothing(image, ovl):
    res = {}
    r, w = os.pipe()

    def one():
        res["st"] = runner.run(ProcessSpec(["sh", "-c", f"trap '' INT TERM; echo up; sleep {MARK}"], dict(ENV)),
                               RootfsSpec([image], *ovl), stdout=w)

    t = threading.Thread(target=one)
    t.start()
    try:
        assert os.read(r, 10) == b"up\n"
        deadline = time.monotonic() + 10
        while not _sleepers() and time.monotonic() < deadline:  # sh forks it after the echo
            time.sleep(0.01)
        assert len(_children(_zygote_pid())) == 1 and _sleepers()
    finally:
        abort_all()
        t.join(10)
        os.close(r)
        os.close(w)
    assert not t.is_alive()
    assert res["st"] == ExitStatus(137, signal.SIGKILL)
    # no_leftovers: mounts, zygote children, sleep processes, temp dir


def test_zygote_dies_with_its_pybuild_process(image, ovl, tmp_path):
    # The first run comes from a thread that ends before the second run: the zygote must outlive
    # that thread (PR_SET_PDEATHSIG is per thread) and die with the process.
    script = tmp_path / "victim.py"
    script.write_text(
        "import sys, threading\nfrom pathlib import Path\n"
        "from pybuild.sandbox import runner\n"
        "from pybuild.sandbox.runner import run, ProcessSpec, RootfsSpec\n"
        f"rootfs = RootfsSpec([Path({str(image)!r})], Path({str(ovl[0])!r}), Path({str(ovl[1])!r}))\n"
        f"t = threading.Thread(target=run, args=(ProcessSpec(['true'], {ENV!r}), rootfs))\n"
        "t.start(); t.join()\n"
        "print(runner._zygote.proc.pid, flush=True)\n"
        f"run(ProcessSpec(['sh', '-c', 'echo up; sleep {MARK}'], {ENV!r}), rootfs)\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        zpid = int(p.stdout.readline())
        assert p.stdout.readline() == b"up\n"
        assert _alive(zpid) and runner.ZYGOTE_CMDLINE_MARK in cmdline(zpid)
        inits = _children(zpid)
        assert len(inits) == 1
    finally:
        p.kill()
        p.wait()
    deadline = time.monotonic() + 5
    while (_alive(zpid) or any(_alive(i) for i in inits) or _sleepers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(zpid)
    assert not any(_alive(i) for i in inits)
    assert _sleepers() == []
    sh(image, ovl, "true")  # sweeps the dead process's temp dir
    assert glob.glob(f"/tmp/pybuild-sandbox-{p.pid}-*") == []


def test_zygote_that_cannot_start_is_a_sandbox_error(monkeypatch):
    monkeypatch.setattr(runner, "_ZYGOTE_ARGS", ["-I", "-S", "-c", "import sys; sys.exit(3)"])
    z = runner._Zygote()
    with pytest.raises(runner.SandboxError, match=r"fork server did not start \(exit status 3"):
        z.request("/nonexistent", [0, 1, 2, 2])
    assert z.proc is None and z.sock is None
