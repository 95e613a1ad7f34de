"""pybuild.sandbox.runner: real namespaces, real overlayfs (needs root)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sandbox_helpers import cmdline, mountinfo, run_captured

from pybuild.sandbox.runner import (INIT_CMDLINE_MARK, ZYGOTE_CMDLINE_MARK, ExitStatus, ProcessSpec, RootfsSpec,
                                    SandboxError, abort_all)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/bin/busybox"),
                                reason="needs root and /bin/busybox")

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
APPLETS = ("sh", "ls", "cat", "echo", "id", "sleep", "hostname", "pwd", "env", "kill", "touch",
           "mkdir", "ps", "true", "head", "wc", "grep", "tr", "sort")
MARK = "4711"  # distinctive sleep duration to find leaked processes


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("image")
    (root / "bin").mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for a in APPLETS:
        (root / "bin" / a).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n")
    (root / "etc/group").write_text(
        "root:x:0:\nnogroup:x:65534:\nalice:x:1000:\nwheel:x:10:alice,bob\nstaff:x:50:alice\n")
    (root / "data").mkdir()
    (root / "data/lower.txt").write_text("from lower\n")
    (root / "notexec").write_text("#!/bin/sh\necho no\n")
    os.chmod(root / "notexec", 0o644)
    os.chmod(root, 0o755)
    return root


@pytest.fixture
def ovl(tmp_path) -> tuple[Path, Path]:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return upper, work


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _descends_from_us(pid: int) -> bool:
    """Only our own sandboxes count: other pybuild processes on the machine may be running."""
    me = os.getpid()
    for _ in range(64):
        pid = _ppid(pid)
        if pid in (0, 1):
            return False
        if pid == me:
            return True
    return False


def _leaked_processes() -> list[str]:
    found = []
    for p in glob.glob("/proc/[0-9]*/cmdline"):
        pid = int(p.split("/")[2])
        cmd = b" ".join(cmdline(pid).split(b"\0")).decode(errors="replace")  # "" once it is gone
        # an outer init: started directly, or forked by the fork server (its cmdline, its child)
        init = INIT_CMDLINE_MARK.decode() in cmd or (
            ZYGOTE_CMDLINE_MARK.decode() in cmd and ZYGOTE_CMDLINE_MARK in cmdline(_ppid(pid)))
        if f"sleep {MARK}" in cmd or (init and pid != os.getpid() and _descends_from_us(pid)):
            found.append(cmd)
    return found


@pytest.fixture(autouse=True)
def no_leftovers():
    before_mounts = mountinfo()
    ours = f"/tmp/pybuild-sandbox-{os.getpid()}-*"
    before_tmp = set(glob.glob(ours))
    yield
    assert mountinfo() == before_mounts
    assert _leaked_processes() == []
    assert set(glob.glob(ours)) == before_tmp


def sh(image: Path, ovl, script: str, **kw) -> tuple[ExitStatus, str, str]:
    """Run ``sh -c script``; return status, stdout, stderr."""
    run_kw = {k: kw.pop(k) for k in ("stdin",) if k in kw}
    spec = ProcessSpec(["sh", "-c", script], dict(kw.pop("env", ENV)), **kw)
    rootfs = RootfsSpec([image], *ovl) if isinstance(ovl, tuple) else ovl
    return _run(spec, rootfs, **run_kw)


def _run(spec, rootfs, **kw) -> tuple[ExitStatus, str, str]:
    return run_captured(spec, rootfs, **kw)


# --------------------------------------------------------------------------- basics

def test_echo_through_pipe(image, ovl):
    st, out, err = sh(image, ovl, "echo hello world")
    assert st == ExitStatus(0, None)
    assert out == "hello world\n"
    assert err == ""


def test_exit_code_propagates(image, ovl):
    assert sh(image, ovl, "exit 3")[0] == ExitStatus(3, None)


def test_killed_by_signal_is_128_plus_n(image, ovl):
    assert sh(image, ovl, "kill -9 $$")[0] == ExitStatus(137, signal.SIGKILL)
    assert sh(image, ovl, "kill -TERM $$")[0] == ExitStatus(143, signal.SIGTERM)


def test_pid_namespace(image, ovl):
    # PID 1 is the sandbox init, the command is its only child.
    st, out, _ = sh(image, ovl, "echo $$ $PPID; cat /proc/1/cmdline | tr '\\0' ' '")
    assert st.code == 0
    lines = out.splitlines()
    assert lines[0] == "2 1"
    assert "_init" in lines[1]


def test_hostname(image, ovl):
    st, out, _ = sh(image, ovl, "hostname; cat /etc/hostname; cat /proc/sys/kernel/hostname",
                    hostname="buildbox")
    assert out == "buildbox\nbuildbox\nbuildbox\n"
    assert os.uname().nodename != "buildbox"


def test_network_none_only_lo(image, ovl):
    st, out, _ = sh(image, ovl, "cat /proc/net/dev")
    ifaces = [line.split(":")[0].strip() for line in out.splitlines()[2:]]
    assert ifaces == ["lo"]
    st, out, _ = sh(image, ovl, "cat /sys/class/net/lo/operstate /sys/class/net/lo/flags")
    assert out.split()[1] == "0x9"  # IFF_UP | IFF_LOOPBACK


def test_network_host_shares_interfaces(image, ovl):
    with open("/proc/net/dev") as f:
        host = sorted(line.split(":")[0].strip() for line in f.read().splitlines()[2:])
    st, out, _ = sh(image, ovl, "cat /proc/net/dev", network="host")
    assert sorted(line.split(":")[0].strip() for line in out.splitlines()[2:]) == host


def test_env_is_exact_and_home_added(image, ovl):
    st, out, _ = sh(image, ovl, "tr '\\0' '\\n' < /proc/$$/environ | sort",
                    env={"PATH": "/bin", "FOO": "bar baz"})
    assert out.splitlines() == ["FOO=bar baz", "HOME=/root", "PATH=/bin"]
    st, out, _ = sh(image, ovl, "echo $HOME", env={"PATH": "/bin", "HOME": "/x"})
    assert out == "/x\n"


# --------------------------------------------------------------------------- cwd and user

def test_cwd_created(image, ovl):
    upper, _ = ovl
    st, out, _ = sh(image, ovl, "pwd", cwd="/work/dir/sub")
    assert (st.code, out) == (0, "/work/dir/sub\n")
    assert (upper / "work/dir/sub").is_dir()
    s = (upper / "work/dir").stat()
    assert (s.st_uid, s.st_gid) == (0, 0)


@pytest.mark.parametrize("user,expected,home", [
    ("nobody", "uid=65534(nobody) gid=65534(nogroup)", "/nonexistent"),
    ("1000:1000", "uid=1000(alice) gid=1000(alice)", "/home/alice"),
    ("alice", "uid=1000(alice) gid=1000(alice) groups=10(wheel),50(staff)", "/home/alice"),
    ("1000", "uid=1000(alice) gid=1000(alice) groups=10(wheel),50(staff)", "/home/alice"),
    ("alice:staff", "uid=1000(alice) gid=50(staff)", "/home/alice"),
    ("4242", "uid=4242 gid=0(root)", "/"),
    ("4242:4343", "uid=4242 gid=4343", "/"),
    (None, "uid=0(root) gid=0(root)", "/root"),
])
def test_user(image, ovl, user, expected, home):
    st, out, err = sh(image, ovl, "id; echo $HOME", user=user)
    assert st.code == 0, err
    idline, homeline = out.splitlines()
    assert idline.startswith(expected)
    if "groups=" not in expected:
        # no supplementary group leaks from pybuild (root's groups) into the sandbox
        assert "groups=" not in idline or idline.split("groups=")[1] in (
            expected.split("gid=")[1], expected.split("gid=")[1].split("(")[0])
    assert homeline == home


def test_unknown_user_is_sandbox_error(image, ovl):
    with pytest.raises(SandboxError, match="unable to find user mallory"):
        sh(image, ovl, "id", user="mallory")
    with pytest.raises(SandboxError, match="unable to find group nogrp"):
        sh(image, ovl, "id", user="alice:nogrp")


def test_user_cannot_write_root_owned(image, ovl):
    st, out, err = sh(image, ovl, "touch /data/x", user="nobody")
    assert st.code != 0
    assert "Permission denied" in err


# --------------------------------------------------------------------------- overlay

def test_write_lands_in_upper_not_lower(image, ovl):
    upper, _ = ovl
    st, _, _ = sh(image, ovl, "echo new > /data/new.txt && echo changed >> /data/lower.txt")
    assert st.code == 0
    assert (upper / "data/new.txt").read_text() == "new\n"
    assert (upper / "data/lower.txt").read_text() == "from lower\nchanged\n"
    assert not (image / "data/new.txt").exists()
    assert (image / "data/lower.txt").read_text() == "from lower\n"


def test_lowerdirs_top_most_first(image, tmp_path, ovl):
    top = tmp_path / "top"
    (top / "data").mkdir(parents=True)
    (top / "data/lower.txt").write_text("from top\n")
    st, out, _ = sh(image, RootfsSpec([top, image], *ovl), "cat /data/lower.txt")
    assert out == "from top\n"


def test_no_stubs_left_in_upper(image, ovl):
    # The image has /etc but no hosts/resolv.conf/hostname and no /proc, /dev, /sys: all
    # are mount points created for the run, none may stay in the layer (not even the
    # copied-up /etc).
    upper, _ = ovl
    st, out, _ = sh(image, ovl, "cat /etc/hosts; ls -d /proc /dev /sys")
    assert st.code == 0 and "localhost" in out
    assert sorted(os.listdir(upper)) == []
    assert not (image / "etc/hosts").exists() and not (image / "proc").exists()


def test_etc_hosts_writes_do_not_land_in_upper(image, ovl):
    upper, _ = ovl
    st, out, _ = sh(image, ovl, "echo '10.0.0.1 db' >> /etc/hosts; touch /etc/new")
    assert st.code == 0
    assert sorted(os.listdir(upper)) == ["etc"]
    assert sorted(os.listdir(upper / "etc")) == ["new"]


def test_existing_etc_hosts_is_kept(image, tmp_path, ovl):
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc/hosts").write_text("1.2.3.4 image\n")
    upper, _ = ovl
    st, out, _ = sh(image, RootfsSpec([base, image], *ovl), "cat /etc/hosts")
    assert "localhost" in out  # the sandbox's is mounted over it
    assert os.listdir(upper) == []
    assert (base / "etc/hosts").read_text() == "1.2.3.4 image\n"


def test_symlinked_mountpoint_does_not_escape(image, tmp_path, ovl):
    # /etc/resolv.conf -> /../../../../tmp/<x>/victim must resolve inside the rootfs
    victim = tmp_path / "victim"
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    os.symlink("/../../../../../.." + str(victim), base / "etc/resolv.conf")
    st, out, err = sh(image, RootfsSpec([base, image], *ovl), "cat /etc/resolv.conf >/dev/null; echo ok")
    assert out == "ok\n", err
    assert not victim.exists()


def test_read_only_rootfs(image):
    st, out, err = sh(image, RootfsSpec([image], None, None), "cat /data/lower.txt; touch /data/x")
    assert st.code == 1
    assert out == "from lower\n"
    assert "Read-only file system" in err
    assert not (image / "data/x").exists()


def test_from_scratch(tmp_path, ovl):
    st, out, err = _run(ProcessSpec(["/bin/sh"], ENV), RootfsSpec([], *ovl))
    assert st == ExitStatus(127, None)
    assert '"/bin/sh"' in err


# --------------------------------------------------------------------------- exec errors

def test_command_not_found_127(image, ovl):
    st, out, err = _run(ProcessSpec(["foo", "x"], ENV), RootfsSpec([image], *ovl))
    assert st == ExitStatus(127, None)
    assert err == 'pybuild: exec: "foo": executable file not found in $PATH\n'


def test_not_executable_126(image, ovl):
    st, out, err = _run(ProcessSpec(["/notexec"], ENV), RootfsSpec([image], *ovl))
    assert st == ExitStatus(126, None)
    assert "permission denied" in err


def test_path_from_spec_env(image, ovl):
    st, _, err = _run(ProcessSpec(["ls", "/"], {"PATH": "/nowhere"}), RootfsSpec([image], *ovl))
    assert st.code == 127


# --------------------------------------------------------------------------- fds

def test_no_fd_leaks_into_sandbox(image, ovl):
    # extra inheritable fds in pybuild (a host directory, a file) must not reach the command
    dfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    ffd = os.open("/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd", os.O_RDONLY)
    os.set_inheritable(dfd, True)
    os.set_inheritable(ffd, True)
    try:
        st, out, _ = sh(image, ovl, "ls /proc/self/fd")
    finally:
        os.close(dfd)
        os.close(ffd)
    assert out.split() == ["0", "1", "2", "3"]  # 3 is ls's own directory fd


@pytest.mark.parametrize("which", ["3", "4", "5", "own", "high"])
def test_workdir_proc_self_fd_does_not_escape(image, ovl, which):
    # CVE-2024-21626: WORKDIR /proc/self/fd/N where N is a host directory fd of the runtime.
    dfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(dfd, True)
    high = os.dup2(dfd, 200, inheritable=True)
    n = {"own": dfd, "high": high}.get(which, which)
    try:
        try:
            st, out, _ = sh(image, ovl, "ls ../../../", cwd=f"/proc/self/fd/{n}")
        except SandboxError as e:
            assert "cwd" in str(e)
            return
        listed = set(out.split())
        assert not (listed and listed >= set(os.listdir("/")))
    finally:
        os.close(dfd)
        os.close(high)


# --------------------------------------------------------------------------- processes & signals

def test_background_daemon_killed(image, ovl):
    t0 = time.monotonic()
    st, out, _ = sh(image, ovl, f"sleep {MARK} & echo started")
    assert time.monotonic() - t0 < 5
    assert st.code == 0
    assert out == "started\n"
    # checked by the no_leftovers fixture too
    assert _leaked_processes() == []


def test_no_host_mounts_during_run(image, ovl):
    before = mountinfo()
    seen = []

    def probe():
        time.sleep(0.5)
        seen.append(mountinfo())

    t = threading.Thread(target=probe)
    t.start()
    st, _, _ = sh(image, ovl, "sleep 1")
    t.join()
    assert st.code == 0
    assert seen == [before]


def _send_sigint_later(delay: float, times: int = 1):
    def fire():
        for _ in range(times):
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=fire, daemon=True)
    t.start()
    return t


def test_sigint_is_forwarded(image, ovl):
    t0 = time.monotonic()
    _send_sigint_later(0.7)
    st, _, _ = sh(image, ovl, f"exec sleep {MARK}")
    assert st == ExitStatus(130, signal.SIGINT)
    assert time.monotonic() - t0 < 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_is_forwarded_to_shell(image, ovl):
    def fire():
        time.sleep(0.7)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=fire, daemon=True).start()
    st, out, _ = sh(image, ovl, f"trap 'echo got TERM; exit 7' TERM; sleep {MARK} & wait")
    assert st == ExitStatus(7, None)
    assert out == "got TERM\n"


def test_keyboard_interrupt_leaves_nothing(image, ovl):
    # The command ignores SIGINT; the second Ctrl-C raises KeyboardInterrupt in the caller
    # after the sandbox has been killed.
    t0 = time.monotonic()
    _send_sigint_later(0.7, times=2)
    with pytest.raises(KeyboardInterrupt):
        sh(image, ovl, f"trap '' INT; sleep {MARK}")
    assert time.monotonic() - t0 < 5
    assert _leaked_processes() == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_abort_all_from_another_thread(image, ovl):
    threading.Timer(0.7, abort_all).start()
    t0 = time.monotonic()
    st, _, _ = sh(image, ovl, f"trap '' INT TERM; sleep {MARK}")
    assert st == ExitStatus(137, signal.SIGKILL)
    assert time.monotonic() - t0 < 5


def test_runs_in_threads_concurrently(image, tmp_path):
    results = {}

    def one(i):
        upper, work = tmp_path / f"u{i}", tmp_path / f"w{i}"
        upper.mkdir()
        work.mkdir()
        results[i] = sh(image, (upper, work), f"echo {i} > /out; cat /out")

    ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert {i: r[1] for i, r in results.items()} == {i: f"{i}\n" for i in range(4)}


def test_dev_and_proc(image, ovl):
    st, out, err = sh(image, ovl, "echo x > /dev/null && head -c 4 /dev/zero | wc -c; "
                      "ls /dev/pts/ptmx /dev/shm /dev/fd/0 >/dev/null && echo devok; "
                      "touch /dev/shm/x && echo shmok; "
                      "cat /proc/kcore | wc -c; "
                      "echo x 2>/dev/null > /proc/sys/kernel/domainname || echo rosys; "
                      "touch /sys/x 2>/dev/null || echo rosysfs")
    assert out.split() == ["4", "devok", "shmok", "0", "rosys", "rosysfs"], err


def test_signal_dispositions_reset(image, ovl):
    # Python ignores SIGPIPE/SIGXFSZ; the command must start with default dispositions and
    # an empty signal mask, in its own session.
    st, out, _ = _run(ProcessSpec(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"], ENV),
                      RootfsSpec([image], *ovl))
    assert out.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]


def test_pybuild_killed_leaves_no_process_and_tmp_is_swept(image, ovl, tmp_path):
    script = tmp_path / "victim.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        "from pybuild.sandbox.runner import run, ProcessSpec, RootfsSpec\n"
        f"run(ProcessSpec(['sh', '-c', 'sleep {MARK} & echo up; sleep {MARK}'], {ENV!r}),\n"
        f"    RootfsSpec([Path({str(image)!r})], Path({str(ovl[0])!r}), Path({str(ovl[1])!r})))\n")
    p = subprocess.Popen([os.sys.executable, str(script)], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"up\n"
    leftover = glob.glob(f"/tmp/pybuild-sandbox-{p.pid}-*")
    assert len(leftover) == 1
    p.kill()
    p.wait()
    deadline = time.monotonic() + 5
    while _leaked_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leaked_processes() == []
    assert os.path.isdir(leftover[0])
    sh(image, ovl, "true")  # the next run sweeps the dead process's temp dir
    assert not os.path.exists(leftover[0])


def test_whiteout_in_upper_is_restored_after_stub(image, tmp_path, ovl):
    # A reused upper dir that deleted /etc/hosts (whiteout): the stub replaces the whiteout
    # during the run, afterwards the whiteout must be back (the file stays deleted).
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc/hosts").write_text("1.2.3.4 image\n")
    upper, _ = ovl
    (upper / "etc").mkdir()
    os.mknod(upper / "etc/hosts", 0o000 | 0o020000, 0)  # S_IFCHR 0/0
    st, out, _ = sh(image, RootfsSpec([base, image], *ovl), "cat /etc/hosts")
    assert "localhost" in out
    s = os.lstat(upper / "etc/hosts")
    assert (s.st_mode & 0o170000, s.st_rdev) == (0o020000, 0)
    assert os.listdir(upper / "etc") == ["hosts"]
