"""Run one process in a namespace sandbox on an overlay rootfs.

See ``_init.py`` for what happens inside.  This side writes the config into a private temp
dir, starts the init process, forwards SIGINT/SIGTERM while waiting, and afterwards removes
the mount-point stubs the init had to create in the upper dir and the temp dir.

The init is forked by this process's fork server (``_Zygote``, ``_init.zygote``; started on the
first run from a thread that lives as long as the process, replaced if it died), which saves
starting an interpreter per run: it gets the temp dir and the fds over a unix socket, answers
on the request's own reply socket with the init's pid and a pidfd (used to signal it), and
later with its wait status.  ``run(use_zygote=False)`` starts the init directly as a child
(``runtime.launch``: a container's holder finds its init among its children).
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import json
import marshal
import os
import queue
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import _init, cgroups, policy
from .cgroups import CgroupError, Resources
from .idmap import IdMap, IdMapError

__all__ = ["ExitStatus", "IdMap", "Mount", "ProcessSpec", "Resources", "RootfsSpec", "SandboxError", "abort_all", "run"]

# The sandbox's init runs in a fresh interpreter (-I -S: no site, no environment). It is
# imported, not run as a script: a script is compiled on every start (~13 ms for _init.py),
# a module comes from its cached byte code (written when pybuild itself imported it).
_INIT_DIR = str(Path(_init.__file__).resolve().parent)


def _entry_args(function: str) -> list[str]:
    """Interpreter arguments that run ``_init.<function>(sys.argv)`` (no -B: a stale .pyc is
    rewritten once, not compiled on each start)."""
    code = f"import sys; sys.path.insert(0, {_INIT_DIR!r}); import _init; sys.exit(_init.{function}(sys.argv))"
    return ["-I", "-S", "-c", code]


_INIT_ARGS = _entry_args("main")
# In /proc/PID/cmdline of a sandbox's outer init started directly (run(use_zygote=False)): how
# runtime.launch finds a container's init.
INIT_CMDLINE_MARK = _INIT_ARGS[-1].encode()
# The fork server (zygote, see _init.zygote): the same interpreter and module, started once per
# pybuild process; it forks the outer inits of run(use_zygote=True), so they have its cmdline.
_ZYGOTE_ARGS = _entry_args("zygote")
ZYGOTE_CMDLINE_MARK = _ZYGOTE_ARGS[-1].encode()
_ZYGOTE_START_TIMEOUT = 30.0

# Entries of the upper dir that may be turned into mount-point stubs; checked before the run so
# a whiteout that was there can be put back after the stub is removed.
_STUB_CANDIDATES = ("proc", "dev", "sys", "etc", "etc/hosts", "etc/resolv.conf", "etc/hostname")


@dataclass(frozen=True)
class Mount:
    """A mount the sandbox places in the container's root before the command starts.

    ``type="bind"``: the host path ``source`` (a file or a directory; the caller owns it, the
    sandbox never deletes or changes it) is bind-mounted recursively at ``target``, always
    nosuid and nodev, and read-only when ``readonly``.  ``type="tmpfs"``: an empty tmpfs at
    ``target`` (``options`` are its mount data items, e.g. ``("size=64m", "mode=1777")``),
    gone when the run ends.

    ``target`` is resolved inside the root, so a symlink in the image cannot send the mount to
    the host.  A target missing from the rootfs is created as a stub (a dir, or an empty file
    for a file bind) and removed from the upper dir afterwards: mount points never enter a
    layer.  Mounts are applied in list order after /proc, /dev, /sys and /etc/hosts, so a
    later mount may cover an earlier one.

    ``idmap`` (only with ``ProcessSpec.userns``): the bind is an idmapped mount, so the files
    keep their ids on disk and show the same ids inside, as the rootfs does; for data pybuild
    manages for the container (volumes, cache mounts, secrets).  Other binds (a host path of
    ``run -v``) are plain: there the host's ids show through the mapping (host root's files as
    nobody, not writable by the container's root).
    """

    type: str
    target: str
    source: Path | None = None
    readonly: bool = False
    options: tuple[str, ...] = ()
    idmap: bool = False


@dataclass
class ProcessSpec:
    args: list[str]
    env: dict[str, str]
    cwd: str = "/"
    user: str | None = None
    hostname: str = "pybuild"
    # "none" (a new netns with only lo), "host", or the absolute path of a network-namespace
    # file (e.g. runtime.network's Endpoint.netns) that the sandbox joins instead
    network: str = "none"
    # BuildKit's `RUN --security=insecure`: keep every capability, no no_new_privs (policy.py)
    privileged: bool = False
    # cgroup limits (cgroups.py); None = no cgroup is created
    resources: Resources | None = None
    mounts: list[Mount] = field(default_factory=list)
    # stdin is the slave of a pseudo-terminal: the command gets it as its controlling terminal
    # and as /dev/console (the caller relays the master and sets the window size on it)
    tty: bool = False
    # name -> IPv4/IPv6 address, appended to the sandbox's /etc/hosts (other containers by name)
    extra_hosts: dict[str, str] = field(default_factory=dict)
    # a file the caller owns, bind-mounted as /etc/hosts instead of the one the sandbox writes
    # (from hostname and extra_hosts): the caller may rewrite it in place while the sandbox
    # runs (a container that joins the bridge later appears in the others' /etc/hosts)
    hosts_file: Path | None = None
    # a user namespace (idmap.py; `--userns=auto`): the container's root is the host ids of
    # the mapping, capabilities count only inside it, and the rootfs layers are idmapped mounts
    # so files on disk keep their real ownership (the upper dir is the same layer as without).
    # Bind mounts are not idmapped: host files show as owned by nobody (65534) and host
    # root's files cannot be written.  None = the host's user namespace (`--userns=host`).
    userns: IdMap | None = None


@dataclass
class RootfsSpec:
    lowerdirs: list[Path]
    upperdir: Path | None
    workdir: Path | None


@dataclass(frozen=True)
class ExitStatus:
    code: int
    signal: int | None = None
    oom_killed: bool = False  # the kernel's OOM killer killed a process of the run


class SandboxError(Exception):
    """The sandbox could not be set up (mount failed, unknown user, ...)."""


@dataclass(eq=False)
class _Active:
    """A started outer init: ``pidfd`` refers to it; its exit status comes from ``proc`` (started
    directly, our child) or from ``reply`` (forked by the zygote, which reaps it and sends it)."""
    pidfd: int
    proc: subprocess.Popen | None = None
    reply: socket.socket | None = None
    code: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def wait(self, timeout: float | None = None) -> int:
        """The init's exit code as Popen.returncode gives it (-N: killed by signal N)."""
        if self.proc is not None:
            return self.proc.wait(timeout)
        if self.code is not None:
            return self.code
        if timeout is not None and not select.select([self.reply], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired("sandbox init", timeout)
        data = self.reply.recv(64)
        if len(data) == _Q.size:
            self.code = os.waitstatus_to_exitcode(_Q.unpack(data)[0])
        else:
            # the zygote died: the init dies with it (PDEATHSIG); return once it is gone
            select.select([self.pidfd], [], [])
            self.code = -signal.SIGKILL
        return self.code

    def signal(self, sig: int) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except OSError:
                pass

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                os.close(self.pidfd)
                if self.reply is not None:
                    self.reply.close()  # unanswered: the zygote kills the init


_active: set[_Active] = set()
_active_lock = threading.Lock()


def abort_all() -> None:
    """Kill every sandbox started by ``run`` in this process (e.g. from a Ctrl-C handler).

    The ``run`` calls return ExitStatus(137, SIGKILL) once their process trees are gone.
    """
    with _active_lock:
        active = list(_active)
    for a in active:
        a.signal(_init.ABORT_SIGNAL)


@functools.lru_cache(maxsize=1)
def _seccomp_program() -> bytes | None:
    return policy.seccomp_program()


def _validate(spec: ProcessSpec, rootfs: RootfsSpec) -> None:
    if not spec.args or not spec.args[0]:
        raise SandboxError("empty command")
    if spec.network not in ("none", "host"):
        _validate_netns(spec.network)
    if spec.hosts_file is not None:
        try:
            regular = stat.S_ISREG(os.lstat(spec.hosts_file).st_mode)
        except OSError as e:
            raise SandboxError(f"hosts file {spec.hosts_file}: {e.strerror}") from None
        if not regular or not os.path.isabs(spec.hosts_file):
            raise SandboxError(f"hosts file {spec.hosts_file}: not an absolute path to a regular file")
    for name, addr in spec.extra_hosts.items():
        if not name or any(c.isspace() or c in "#\0" for c in name):
            raise SandboxError(f"invalid extra host name {name!r}")
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise SandboxError(f"extra host {name}: {addr!r} is not an IP address") from None
    if (rootfs.upperdir is None) != (rootfs.workdir is None):
        raise SandboxError("upperdir and workdir must be given together")
    for p in list(rootfs.lowerdirs) + [rootfs.upperdir, rootfs.workdir]:
        if p is None:
            continue
        s = str(p)
        if not os.path.isabs(s):
            raise SandboxError(f"overlay dir {s!r} is not absolute")
        if any(c in s for c in ",:\\\n"):
            raise SandboxError(f"overlay dir {s!r} contains a character overlayfs cannot take")
        if not os.path.isdir(s):
            raise SandboxError(f"overlay dir {s!r} does not exist")
    for k in spec.env:
        if not k or "=" in k or "\0" in k:
            raise SandboxError(f"invalid environment variable name {k!r}")
    if not spec.hostname or len(spec.hostname) > 64:
        raise SandboxError(f"invalid hostname {spec.hostname!r}")
    for m in spec.mounts:
        _validate_mount(m)
    if spec.userns is not None:
        try:
            spec.userns.validate()
        except IdMapError as e:
            raise SandboxError(str(e)) from None
    if spec.resources is not None:
        try:
            spec.resources.validate()
        except CgroupError as e:
            raise SandboxError(str(e)) from None


_NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: returns its CLONE_NEW* type


def _validate_netns(path: str) -> None:
    """``path`` must be an absolute path naming a network namespace (an nsfs file)."""
    if not path.startswith("/") or "\0" in path:
        raise SandboxError(f"unknown network mode {path!r} (none, host or a netns file path)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SandboxError(f"network namespace {path}: {e.strerror}") from None
    try:
        nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        nstype = None
    finally:
        os.close(fd)
    if nstype != _init.CLONE_NEWNET:
        raise SandboxError(f"network namespace {path}: not a network namespace file")


def _validate_mount(m: Mount) -> None:
    if not isinstance(m.target, str) or not m.target.startswith("/") or "\0" in m.target:
        raise SandboxError(f"mount target {m.target!r} is not an absolute path")
    if m.type == "bind":
        if m.source is None or not os.path.isabs(str(m.source)) or "\0" in str(m.source):
            raise SandboxError(f"bind mount at {m.target}: source {m.source!r} is not an absolute path")
        if not os.path.exists(m.source):
            raise SandboxError(f"bind mount at {m.target}: source {str(m.source)!r} does not exist")
        if m.options:
            raise SandboxError(f"bind mount at {m.target}: options are for tmpfs mounts")
    elif m.type == "tmpfs":
        if m.source is not None:
            raise SandboxError(f"tmpfs mount at {m.target} takes no source")
        for o in m.options:
            if not o or any(c in o for c in ",\0\n"):
                raise SandboxError(f"tmpfs mount at {m.target}: invalid option {o!r}")
    else:
        raise SandboxError(f"unknown mount type {m.type!r} (bind or tmpfs)")


def _mount_stub_candidates(mounts: list[Mount]) -> list[str]:
    """Upper-dir paths a mount may turn into stubs: each target and its parents, lexically."""
    out = []
    for m in mounts:
        comps = [c for c in m.target.split("/") if c not in ("", ".", "..")]
        out.extend("/".join(comps[: i + 1]) for i in range(len(comps)))
    return out


def hosts_text(hostname: str, extra_hosts: dict[str, str], own_address: str | None = None) -> str:
    """The /etc/hosts a sandbox sees: localhost, its own name (on ``own_address``, its address on
    a bridge, as docker writes it; else on 127.0.0.1), then ``extra_hosts`` by name."""
    own = f"{own_address}\t{hostname}\n" if own_address else ""
    return (f"127.0.0.1\tlocalhost{'' if own_address else ' ' + hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n" + own
            + "".join(f"{addr}\t{name}\n" for name, addr in sorted(extra_hosts.items())))


def _write_etc(tmp: str, spec: ProcessSpec) -> None:
    etc = os.path.join(tmp, "etc")
    os.mkdir(etc)
    with open(os.path.join(etc, "hosts"), "w") as f:
        f.write(hosts_text(spec.hostname, spec.extra_hosts))
    try:
        with open("/etc/resolv.conf") as f:
            resolv = f.read()
    except OSError:
        resolv = ""
    if spec.network not in ("none", "host"):
        resolv = _resolv_for_own_netns(resolv)
    with open(os.path.join(etc, "resolv.conf"), "w") as f:
        f.write(resolv)
    with open(os.path.join(etc, "hostname"), "w") as f:
        f.write(spec.hostname + "\n")
    for name in ("hosts", "resolv.conf", "hostname"):
        os.chmod(os.path.join(etc, name), 0o644)


def _loopback_nameserver(line: str) -> bool:
    words = line.split()
    if len(words) < 2 or words[0] != "nameserver":
        return False
    try:
        return ipaddress.ip_address(words[1].split("%")[0]).is_loopback
    except ValueError:
        return False


def _resolv_for_own_netns(resolv: str) -> str:
    """The host's resolv.conf for a container with its own network (bridge), as docker makes
    it: a nameserver on the host's loopback (systemd-resolved, dnsmasq) is unreachable from
    there, so systemd-resolved's upstream list is used instead, loopback servers are dropped,
    and with none left docker's defaults (8.8.8.8, 8.8.4.4) are used."""
    if any(_loopback_nameserver(line) for line in resolv.splitlines()):
        try:
            with open("/run/systemd/resolve/resolv.conf") as f:
                resolv = f.read()
        except OSError:
            pass
    lines = [line for line in resolv.splitlines() if not _loopback_nameserver(line)]
    if not any(line.split()[:1] == ["nameserver"] for line in lines):
        lines += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
    return "\n".join(lines) + "\n"


def _lstat_rel(base: str, rel: str) -> os.stat_result | None:
    """lstat ``base/rel`` without following any symlink on the way (None if absent)."""
    comps = rel.split("/")
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for c in comps[:-1]:
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.stat(comps[-1], dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(fd)


def _is_whiteout(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _remove_stubs(upper: str, stubs: list[str], before: dict[str, os.stat_result | None],
                  lowerdirs: list[str]) -> None:
    """Remove mount-point stubs (empty files / empty dirs) the init created in ``upper``.

    Walks with O_NOFOLLOW from ``upper`` so a symlink planted by the command cannot redirect
    the removal to the host.  A whiteout that was at the path before the run is restored, and
    a parent dir that was only copied up because of a stub (same mode/owner as in the lower
    layer, now empty) is removed too.
    """
    parents: set[str] = set()
    for rel in sorted(set(stubs), key=lambda r: r.count("/"), reverse=True):
        _remove_one(upper, rel, before.get(rel))
        if "/" in rel:
            parents.add(rel.rsplit("/", 1)[0])
    for rel in sorted(parents, key=lambda r: r.count("/"), reverse=True):
        if rel in stubs or rel not in before or before[rel] is not None:
            continue  # a stub itself (already handled), unknown, or in the upper dir before
        st = _lstat_rel(upper, rel)
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        lower = next((s for s in (_lstat_rel(d, rel) for d in lowerdirs) if s is not None), None)
        if lower is None or not stat.S_ISDIR(lower.st_mode):
            continue
        if (st.st_mode, st.st_uid, st.st_gid) != (lower.st_mode, lower.st_uid, lower.st_gid):
            continue
        _remove_one(upper, rel, None, only_if_plain_dir=True)


def _remove_one(upper: str, rel: str, was: os.stat_result | None, only_if_plain_dir: bool = False) -> None:
    comps = rel.split("/")
    try:
        fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for c in comps[:-1]:
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
        name = comps[-1]
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_size == 0 and not only_if_plain_dir:
            os.unlink(name, dir_fd=fd)
        elif stat.S_ISDIR(st.st_mode):
            if only_if_plain_dir:
                try:
                    if os.getxattr(name, "trusted.overlay.opaque", follow_symlinks=False) == b"y":
                        return
                except OSError:
                    pass
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                try:
                    if os.listdir(dfd):
                        return
                finally:
                    os.close(dfd)
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                return  # not empty: the command put something there, it is part of the result
        else:
            return
        if _is_whiteout(was):
            os.mknod(name, stat.S_IFCHR | 0o000, 0, dir_fd=fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TMP_PREFIX = "pybuild-sandbox-"


def _sweep_stale_tmp() -> None:
    """Remove temp dirs of runs whose pybuild process died (e.g. SIGKILL) before cleaning up.

    Their mounts lived in a namespace that died with them, so only plain files remain.
    """
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(_TMP_PREFIX):
            continue
        pid = name[len(_TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _read_ctl(fd: int) -> list[dict]:
    chunks = []
    while True:
        try:
            b = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not b:
            break
        chunks.append(b)
    msgs = []
    for line in b"".join(chunks).splitlines():
        try:
            msgs.append(json.loads(line))
        except ValueError:
            continue
    return msgs


_Q = _init.ZYGOTE_REPLY  # the zygote's reply protocol, defined once in _init
_FD_SIZE = _init.FD_SIZE


def _in_lifetime_thread(fn):
    """Call ``fn`` in a thread that lives as long as the process and return its result: a child
    it forks gets PR_SET_PDEATHSIG relative to that thread, not to the (maybe short-lived)
    build thread that needed it."""
    with _starter_lock:
        global _starter_pid
        if _starter_pid != os.getpid():  # first use (or a forked pybuild: threads are gone)
            _starter_pid = os.getpid()
            t = threading.Thread(target=_starter_loop, args=(_starter_q,), name="pybuild-sandbox-zygote",
                                 daemon=True)
            t.start()
        q = _starter_q
    box: list = []
    done = threading.Event()
    q.put((fn, box, done))
    done.wait()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _starter_loop(q: queue.SimpleQueue) -> None:
    while True:
        fn, box, done = q.get()
        try:
            box.append((True, fn()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box.append((False, e))
        done.set()


_starter_lock = threading.Lock()
_starter_pid: int | None = None
_starter_q: queue.SimpleQueue = queue.SimpleQueue()


class _Zygote:
    """This process's fork server (``_init.zygote``): started on first use, replaced when it died."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.owner = 0

    def _alive(self) -> bool:
        return self.proc is not None and self.owner == os.getpid() and self.proc.poll() is None

    def _stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None and self.owner == os.getpid():
            self.proc.kill()  # its runs die with it (PDEATHSIG); callers waiting get EOF
            self.proc.wait()
        self.proc = None

    def _start(self) -> None:
        self._stop()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [sys.executable, *_ZYGOTE_ARGS, str(theirs.fileno()), str(os.getpid())]
            proc = _in_lifetime_thread(lambda: subprocess.Popen(
                argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                close_fds=True, process_group=0, env={}, cwd="/"))
        except OSError as e:
            mine.close()
            raise SandboxError(f"cannot start the sandbox fork server {sys.executable}: {e.strerror}") from None
        except BaseException:
            mine.close()  # interrupted: a zygote started meanwhile exits (nobody to serve)
            raise
        finally:
            theirs.close()
        ready = b""
        if select.select([mine], [], [], _ZYGOTE_START_TIMEOUT)[0]:
            ready = mine.recv(16)
        if ready != b"ready":
            mine.close()
            proc.kill()
            code = proc.wait()
            raise SandboxError(f"the sandbox fork server did not start (exit status {code}; "
                               f"its error, if any, is on stderr above)")
        self.proc, self.sock, self.owner = proc, mine, os.getpid()

    def request(self, tmp: str, fds: list[int]) -> socket.socket:
        """Ask for an init on ``tmp`` with ``fds`` (stdin, stdout, stderr, ctl); the reply socket."""
        with self.lock:
            for _attempt in range(2):
                if not self._alive():
                    self._start()
                mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    self.sock.sendmsg([os.fsencode(tmp)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                            struct.pack(f"{len(fds) + 1}i", theirs.fileno(), *fds))])
                except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError):
                    mine.close()  # it died since the last run (killed?): start a new one
                    self._stop()
                    continue
                except BaseException:
                    mine.close()
                    raise
                finally:
                    theirs.close()
                return mine
        raise SandboxError("the sandbox fork server died on start")


_zygote = _Zygote()


def _std_fd(fd: int | None, default: int, opened: list[int]) -> int:
    """The fd the init gets as stdin/stdout/stderr: as Popen, None means pybuild's own."""
    if fd is not None:
        return fd
    try:
        os.fstat(default)
        return default
    except OSError:  # closed in pybuild: /dev/null stands in
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        opened.append(fd)
        return fd


def _start_zygote_init(tmp: str, stdin: int | None, stdout: int | None, stderr: int | None,
                       ctl_w: int) -> _Active:
    opened: list[int] = []
    try:
        fds = [_std_fd(stdin, 0, opened), _std_fd(stdout, 1, opened), _std_fd(stderr, 2, opened), ctl_w]
        reply = _zygote.request(tmp, fds)
    finally:
        for fd in opened:
            os.close(fd)
    pidfd = -1
    try:
        data, anc, _flags, _addr = reply.recvmsg(_Q.size, socket.CMSG_SPACE(_FD_SIZE))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(payload) >= _FD_SIZE:
                pidfd = struct.unpack("i", payload[:_FD_SIZE])[0]
        if len(data) != _Q.size:
            raise SandboxError("the sandbox fork server died")
        pid = _Q.unpack(data)[0]
        if pid < 0:
            raise SandboxError(f"sandbox fork server: fork: {os.strerror(-pid)}")
        if pidfd < 0:
            raise SandboxError("sandbox fork server: no pidfd for the init")
        os.set_inheritable(pidfd, False)
        return _Active(pidfd, reply=reply)
    except BaseException:
        reply.close()  # the zygote then kills the init, if it forked one
        if pidfd >= 0:
            os.close(pidfd)
        raise


def run(spec: ProcessSpec, rootfs: RootfsSpec, *, stdin: int | None = None,
        stdout: int | None = None, stderr: int | None = None, use_zygote: bool = True) -> ExitStatus:
    """Run ``spec`` in a new sandbox on ``rootfs``; block until its whole process tree is gone.

    SIGINT/SIGTERM arriving while this waits (when called from the main thread) are forwarded
    to the command and ``run`` returns its status; a second SIGINT raises KeyboardInterrupt,
    after the sandbox has been killed.  Raises SandboxError when the sandbox cannot be set up.

    ``use_zygote``: the outer init is forked by this process's fork server (saves starting an
    interpreter per run); False starts it directly as a child of this process, with
    INIT_CMDLINE_MARK in its cmdline (``runtime.launch.init_pid`` finds a container's init so).
    """
    _validate(spec, rootfs)
    lowerdirs = [str(p) for p in rootfs.lowerdirs]
    upper = None if rootfs.upperdir is None else str(rootfs.upperdir)
    work = None if rootfs.workdir is None else str(rootfs.workdir)
    candidates = list(_STUB_CANDIDATES) + _mount_stub_candidates(spec.mounts)
    before = {rel: _lstat_rel(upper, rel) for rel in candidates} if upper else {}

    _sweep_stale_tmp()
    if spec.resources is None:  # with limits, cgroups.create sweeps
        cgroups.sweep_stale()
    tmp = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-")
    ctl_r = ctl_w = -1
    active: _Active | None = None
    proc: subprocess.Popen | None = None
    cg: cgroups.Cgroup | None = None
    oom = False
    try:
        try:
            cg = cgroups.create(spec.resources)
        except CgroupError as e:
            raise SandboxError(str(e)) from None
        for d in ("root", "empty", "rw"):
            os.mkdir(os.path.join(tmp, d), 0o755)
        _write_etc(tmp, spec)
        if spec.userns is not None:
            # the sandbox's root (an unprivileged host user) must reach the mount points and
            # own the /etc files it is given, as it would own them in its image
            root_ids = (spec.userns.uid_host, spec.userns.gid_host)
            os.chown(tmp, *root_ids)
            for name in ("hosts", "resolv.conf", "hostname"):
                os.chown(os.path.join(tmp, "etc", name), *root_ids)
            if spec.hosts_file is not None:
                os.chown(spec.hosts_file, *root_ids)
        ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(ctl_w, True)
        cwd = spec.cwd if spec.cwd.startswith("/") else "/" + spec.cwd
        cfg = {
            "args": list(spec.args), "env": dict(spec.env), "cwd": cwd, "user": spec.user,
            "hostname": spec.hostname, "network": spec.network,
            "lowerdirs": lowerdirs, "upperdir": upper, "workdir": work,
            "ctl_fd": ctl_w, "parent_pid": os.getpid(), "privileged": bool(spec.privileged),
            "tty": bool(spec.tty),
            "hosts_file": None if spec.hosts_file is None else str(spec.hosts_file),
            "userns": None if spec.userns is None else {
                "uid_host": spec.userns.uid_host, "gid_host": spec.userns.gid_host, "size": spec.userns.size},
            "cgroup_procs": cg.procs_files() if cg is not None else [],
            "mounts": [{"type": m.type, "target": m.target,
                        "source": None if m.source is None else str(m.source),
                        "readonly": bool(m.readonly), "options": list(m.options),
                        "idmap": bool(m.idmap)} for m in spec.mounts],
        }
        bpf = None if spec.privileged else _seccomp_program()
        if bpf is not None:
            with open(os.path.join(tmp, "seccomp.bpf"), "wb") as f:
                f.write(bpf)
            cfg["seccomp"] = True
        # marshal: the sandbox's fresh interpreter reads it without importing json (start-up time)
        cfg_path = os.path.join(tmp, "config.marshal")
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            marshal.dump(cfg, f)

        if use_zygote:
            active = _start_zygote_init(tmp, stdin, stdout, stderr, ctl_w)
        else:
            proc = subprocess.Popen(
                [sys.executable, *_INIT_ARGS, tmp],
                stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=(ctl_w,),
                close_fds=True, start_new_session=False, process_group=0, env={},
            )
            active = _Active(os.pidfd_open(proc.pid), proc=proc)
        os.close(ctl_w)
        ctl_w = -1
        with _active_lock:
            _active.add(active)
        code = _wait(active)
    except BaseException:
        if active is not None:
            _kill_and_reap(active)
        elif proc is not None:  # interrupted before the pidfd existed: PDEATHSIG does the rest
            proc.kill()
            proc.wait()
        raise
    finally:
        msgs = _read_ctl(ctl_r) if ctl_r >= 0 and active is not None else []
        if active is not None:
            active.close()
            with _active_lock:
                _active.discard(active)
        for fd in (ctl_r, ctl_w):
            if fd >= 0:
                os.close(fd)
        if active is not None and upper:
            stubs = [s for m in msgs for s in m.get("stubs", [])]
            _remove_stubs(upper, stubs, before, lowerdirs)
        shutil.rmtree(tmp, ignore_errors=True)
        if cg is not None:
            oom = cg.oom_killed()
            cg.destroy()

    errors = [m["error"] for m in msgs if "error" in m]
    if errors:
        raise SandboxError("; ".join(errors))
    for m in msgs:
        if "exit" in m:
            return ExitStatus(int(m["exit"]), m.get("signal"), oom)
    if code < 0:
        return ExitStatus(128 - code, -code, oom)
    if code >= 128:
        return ExitStatus(code, code - 128, oom)
    return ExitStatus(code, None, oom)


def _wait(active: _Active) -> int:
    """Wait for the init; forward SIGINT/SIGTERM to it meanwhile (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return active.wait()
    seen: list[int] = []

    def handler(sig, _frame):
        if sig == signal.SIGINT and signal.SIGINT in seen:
            raise KeyboardInterrupt
        seen.append(sig)
        active.signal(sig)

    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return active.wait()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _kill_and_reap(active: _Active) -> None:
    """Abort the sandbox and wait until the init (and so the whole PID namespace) is gone."""
    active.signal(_init.ABORT_SIGNAL)
    try:
        active.wait(timeout=10)
    except BaseException:  # noqa: BLE001 - a second Ctrl-C must not leave processes behind
        active.signal(signal.SIGKILL)
        active.wait()
