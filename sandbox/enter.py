"""Run a command inside a running sandbox (`pybuild exec`): join its namespaces and cgroups.

Process layout::

    pybuild exec ── joiner (setns into the container's ipc, uts, net, cgroup, pid, mnt
                    namespaces; chroot to its root) ── command (forked, so it is in the
                    container's PID namespace; user, privileges, cwd, exec as the sandbox does)

The namespaces are those of the sandbox's PID 1 (``pid`` is its host PID).  The command gets
the same privilege policy as the sandbox's own command (``policy.apply``: Docker's
capabilities, no_new_privs, seccomp; see ``_init.exec_command``, which does the last steps
for both), and joins the sandbox's cgroups, so its limits apply.  When PID 1 exits, the kernel
kills the command with the rest of the namespace.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
from dataclasses import dataclass
from typing import Callable

from . import _init, cgroups, policy

__all__ = ["ExecSpec", "EnterError", "enter"]

# setns order as nsenter(1): mnt last, since after it /proc/<pid> paths of the host are gone
_NAMESPACES = (("ipc", _init.CLONE_NEWIPC), ("uts", _init.CLONE_NEWUTS), ("net", _init.CLONE_NEWNET),
               ("cgroup", _init.CLONE_NEWCGROUP), ("pid", _init.CLONE_NEWPID), ("mnt", _init.CLONE_NEWNS))
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2, signal.SIGWINCH)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


class EnterError(Exception):
    """The container cannot be entered (it is gone, or the command could not be set up)."""


@dataclass
class ExecSpec:
    args: list[str]
    env: dict[str, str]
    cwd: str = "/"
    user: str | None = None
    tty: bool = False  # stdin is a pty slave: make it the command's controlling terminal
    privileged: bool = False


def _cgroup_procs_of(pid: int) -> list[str]:
    """The cgroup.procs files of ``pid``'s own cgroups (read in the host's cgroup namespace),
    for the hierarchies where it is in a per-run cgroup that pybuild made."""
    out = []
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    mounts = cgroups._mounts()
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if "/pybuild/" not in path + "/":
            continue
        for fstype, root, mp, opts in mounts:
            if (ctrls == "" and fstype == "cgroup2") or (
                    fstype == "cgroup" and any(c in opts for c in ctrls.split(",") if c)):
                procs = os.path.join(cgroups._under(mp, root, path), "cgroup.procs")
                if os.path.exists(procs) and procs not in out:
                    out.append(procs)
                break
    return out


def enter(pid: int, spec: ExecSpec, *, stdin: int | None = None, stdout: int | None = None,
          stderr: int | None = None, after_fork: Callable[[], None] | None = None) -> int:
    """Run ``spec`` in the sandbox whose PID 1 has host PID ``pid``; return its exit status
    (128+N when killed by signal N; 125 when it could not be set up, 126/127 when the command
    cannot be executed / is not found, as for the sandbox's own command).  SIGINT, SIGTERM,
    SIGHUP, SIGQUIT, SIGUSR1/2 and SIGWINCH sent to the caller meanwhile are forwarded.  Raises
    EnterError when the sandbox is gone.  It forks, so the caller must be single-threaded at that
    point; ``after_fork()`` runs in the caller once the fork is done (e.g. to start threads)."""
    if not spec.args or not spec.args[0]:
        raise EnterError("empty command")
    try:
        ns_fds = [(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), flag)
                  for name, flag in _NAMESPACES if os.path.exists(f"/proc/{pid}/ns/{name}")]
        root_fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        userns_fd = _own_userns_fd(pid)
    except OSError as e:
        raise EnterError(f"the container's process {pid} is gone ({e.strerror})") from None
    procs = _cgroup_procs_of(pid)
    seccomp = None if spec.privileged else policy.seccomp_program()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        child = os.fork()
        if child == 0:
            try:
                os.close(err_r)
                _joiner(ns_fds, root_fd, procs, spec, seccomp, err_w, stdin, stdout, stderr, userns_fd)
            except BaseException as e:  # noqa: BLE001 - never return into the caller's code
                _init.Ctl(err_w).send(error=f"entering the container: {e!r}")
            finally:
                os._exit(125)
    finally:
        os.close(err_w)
        for fd, _ in ns_fds:
            os.close(fd)
        os.close(root_fd)
        if userns_fd is not None:
            os.close(userns_fd)
    child_fd = os.pidfd_open(child)
    if after_fork is not None:
        after_fork()

    def forward(sig, _frame):
        try:
            signal.pidfd_send_signal(child_fd, sig)
        except OSError:
            pass

    old = {}
    try:
        for sig in _FORWARDED:
            if not (spec.tty and sig == signal.SIGWINCH):  # with a pty, its size is the caller's
                old[sig] = signal.signal(sig, forward)
        _, status = os.waitpid(child, 0)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        os.close(child_fd)
        with os.fdopen(err_r, "rb") as f:
            msgs = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    errors = [m["error"] for m in msgs if "error" in m]
    if errors:
        raise EnterError("; ".join(errors))
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _own_userns_fd(pid: int) -> int | None:
    """An fd of ``pid``'s user namespace when it is not ours (a `--userns=auto` sandbox)."""
    theirs, ours = os.stat(f"/proc/{pid}/ns/user"), os.stat("/proc/self/ns/user")
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        return None
    return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)


def _joiner(ns_fds, root_fd, procs, spec: ExecSpec, seccomp, err_w, stdin, stdout, stderr,
            userns_fd: int | None = None) -> None:
    """The forked child: join, fork the command, wait for it.  Never returns."""
    ctl = _init.Ctl(err_w)
    try:
        for want, fd in ((0, stdin), (1, stdout), (2, stderr)):
            if fd is not None and fd != want:
                os.dup2(fd, want)
        for path in procs:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        for fd, flag in ns_fds:
            if _libc.setns(fd, flag) != 0:
                raise _init.SetupError(f"setns: {os.strerror(ctypes.get_errno())}")
        os.fchdir(root_fd)
        os.chroot(".")
        os.chdir("/")
        uid, gid, sgids, home = _init.resolve_user(spec.user)
        if userns_fd is not None:
            # last: joining the other namespaces needed the host's privileges; from here on
            # the command's ids and capabilities are those of the sandbox's user namespace
            _init.enter_userns(userns_fd)
    except (OSError, _init.SetupError) as e:
        ctl.send(error=f"entering the container: {e}")
        os._exit(125)
    env = dict(spec.env)
    env.setdefault("HOME", home)
    cfg = {"args": list(spec.args), "cwd": spec.cwd, "user": spec.user, "tty": spec.tty,
           "privileged": spec.privileged}
    cmd = os.fork()  # the first process created after setns(pid) is in the container's PID ns
    if cmd == 0:
        os.closerange(3, err_w)
        os.closerange(err_w + 1, 65536)
        _init.exec_command(cfg, ctl, uid, gid, sgids, env, seccomp)
    cmd_fd = os.pidfd_open(cmd)

    def forward(sig, _frame):
        try:
            signal.pidfd_send_signal(cmd_fd, sig)
        except OSError:
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    _, status = os.waitpid(cmd, 0)
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
