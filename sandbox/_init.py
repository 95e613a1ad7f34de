"""Sandbox init: runs as ``python -I -S -c "...; import _init; _init.main(...)" <tmpdir>``
(imported from its directory, so its cached byte code is used; see ``runner._entry_args``).

Stdlib only, so it can start without ``site`` and without importing the pybuild package.

Process layout::

    pybuild ── outer (this script, unshare()s, forwards signals) ── PID 1 (mounts, pivot_root,
               reaper) ── command

For builds the outer process is forked by pybuild's fork server (``zygote`` below: the same
interpreter with this module imported, one per pybuild process) instead of being started as a
fresh interpreter, so it is pybuild's grandchild; the zygote is then its parent for
``parent_pid`` and PDEATHSIG, and dies with pybuild.

The outer process joins the network namespace file given as ``network`` (if any), calls
unshare(NEWNS|NEWPID|NEWUTS|NEWIPC[|NEWNET]) and forks: the child is
PID 1 of the new PID namespace.  PID 1 builds the root file system inside the private mount
namespace, pivots into it, forks the command and reaps everything; when the command exits it
kills whatever is left in the namespace and exits with the command's status.

With ``userns`` (a user namespace, ``--userns=auto``) the outer process first makes, while it
still has the host's privileges, the user namespace (a helper child unshares it, the outer
writes its uid_map/gid_map), the rootfs overlay over idmapped layers and the bind mounts, all as
detached mounts (``idmapped_overlay``); then it joins the namespace as its root, so the other
namespaces are created owned by it, and PID 1 moves the detached mounts into place.

Communication with pybuild goes through one pipe (``ctl_fd`` in the config), one JSON object
per line: ``{"stubs": [...]}`` (mount points created in the rootfs, to remove afterwards),
``{"error": "..."}`` (sandbox setup failure), ``{"exit": code, "signal": n|null}``.

Signals: the outer process forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to PID 1, which forwards them
to the command.  SIGUSR1 sent to the outer process means *abort*: SIGKILL PID 1 (the kernel then
kills the whole PID namespace).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import marshal
import os
import select
import stat
import struct
import sys
import termios

# This file starts a fresh interpreter for every RUN: its imports are most of its start-up
# time.  The C modules below stand in for `signal`, `socket` (both import enum) and `json`
# (imports re), which cost ~15 ms per sandbox; the constants and functions used are the same.
import _signal as signal
import _socket as socket

import warnings  # noqa: F401 - os.execvpe imports it lazily, after pivot_root it is gone

if __package__:
    from . import policy
else:  # run as a script with -I: the script's own directory is not on sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import policy
    finally:
        del sys.path[0]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
SECBIT_NO_SETUID_FIXUP = 1 << 2

# the new mount API (same numbers on every architecture) and its flags
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT, _SYS_MOUNT_SETATTR = \
    428, 429, 430, 431, 432, 442
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x00100000

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
ABORT_SIGNAL = signal.SIGUSR1

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long
_libc.setfsuid.argtypes = [ctypes.c_uint]
_libc.setfsgid.argtypes = [ctypes.c_uint]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class SetupError(Exception):
    """A sandbox setup step failed; reported to pybuild as SandboxError."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(e)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {fstype or ''} {source or ''} on {target} (flags {flags:#x})")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def pivot_root(new_root: str, put_old: str) -> None:
    machine = os.uname().machine
    nr = _SYS_PIVOT_ROOT.get(machine)
    if nr is None:
        raise SetupError(f"pivot_root: unsupported architecture {machine}")
    _check(_libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), "pivot_root")


def set_pdeathsig(sig: int) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


# ---------------------------------------------------------------------------------------------
# user namespace and idmapped mounts (cfg["userns"] = {"uid_host", "gid_host", "size"})

AT_FDCWD = -100


def _sys(nr: int, *args) -> int:
    ret = _libc.syscall(ctypes.c_long(nr), *args)
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def fs_type(path: str) -> str:
    """The file system type of the mount holding ``path`` (for error messages)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mnt = fields[4].replace("\\040", " ")
                sep = fields.index("-")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, fields[sep + 1]
    except (OSError, ValueError, IndexError):
        pass
    return kind


def set_mount_attr(fd: int, attr_set: int, *, path: str = "", recursive: bool = False,
                   userns_fd: int = 0) -> None:
    """mount_setattr(2) on the mount ``fd`` (or ``path``): only sets flags, never clears one (in
    a user namespace, flags the host's mount has are locked and may not be cleared)."""
    attr = _MountAttr(attr_set=attr_set, attr_clr=0, propagation=0, userns_fd=userns_fd)
    flags = (0 if path else AT_EMPTY_PATH) | (AT_RECURSIVE if recursive else 0)
    _sys(_SYS_MOUNT_SETATTR, ctypes.c_int(fd if not path else AT_FDCWD), _b(path or ""),
         ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


def create_userns(userns: dict) -> int:
    """A new user namespace mapping container ids 0..size-1 to the host ranges of ``userns``;
    returns its fd (the namespace lives while some fd or process holds it).

    A helper child unshare()s it and this (privileged) process, its parent, writes uid_map and
    gid_map: a writer with CAP_SETUID/CAP_SETGID in the parent namespace may map any range, and
    /proc/PID/setgroups stays "allow", so USER's supplementary groups still work inside."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - helper child
        try:
            os.close(ready_r)
            os.close(done_w)
            if _libc.unshare(CLONE_NEWUSER) != 0:
                os.write(ready_w, os.strerror(ctypes.get_errno()).encode())
            else:
                os.write(ready_w, b"ok")
                os.read(done_r, 1)  # EOF once the parent holds the namespace (or died)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        answer = os.read(ready_r, 200)
        if answer != b"ok":
            raise SetupError("user namespace: unshare(CLONE_NEWUSER): "
                             f"{answer.decode(errors='replace') or 'the helper process died'}")
        for kind in ("uid", "gid"):
            line = f"0 {int(userns[kind + '_host'])} {int(userns['size'])}\n"
            try:
                with open(f"/proc/{pid}/{kind}_map", "w") as f:
                    f.write(line)
            except OSError as e:
                raise SetupError(f"user namespace: writing {kind}_map {line.strip()!r}: {e.strerror}")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def open_tree_clone(path: str, *, recursive: bool) -> int:
    """A detached bind mount of ``path`` (with its submounts when ``recursive``), as an fd."""
    try:
        return _sys(_SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), _b(path),
                    ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC | (AT_RECURSIVE if recursive else 0)))
    except OSError as e:
        raise SetupError(f"open_tree(OPEN_TREE_CLONE) of {path}: {e.strerror}")


def open_idmapped(path: str, userns_fd: int, *, dir_fd: int = AT_FDCWD) -> int:
    """A detached bind mount of ``path`` (an O_PATH-like fd) idmapped through ``userns_fd``:
    a file owned by id N on disk is seen as the namespace's id N."""
    shown = path if dir_fd == AT_FDCWD else f"fd {dir_fd}"
    try:
        fd = _sys(_SYS_OPEN_TREE, ctypes.c_int(dir_fd), _b(path),
                  ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC | (AT_EMPTY_PATH if not path else 0)))
    except OSError as e:
        raise SetupError(f"user namespace: open_tree(OPEN_TREE_CLONE) of {shown}: {e.strerror} "
                         "(the kernel lacks the new mount API, Linux >= 5.2)")
    try:
        set_mount_attr(fd, MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
    except OSError as e:
        os.close(fd)
        kind = fs_type(path) if dir_fd == AT_FDCWD else "its"
        raise SetupError(f"user namespace: idmapped mount of {shown}: mount_setattr(MOUNT_ATTR_IDMAP): "
                         f"{e.strerror} (the kernel or the {kind} file system does not support "
                         "idmapped mounts, Linux >= 5.12)")
    return fd


def _fsconfig(fsfd: int, key: str, value: str) -> None:
    _sys(_SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_SET_STRING), _b(key), _b(value), ctypes.c_int(0))


def _fs_log(fsfd: int) -> str:
    """The messages the kernel queued on an fs context (why a mount was refused)."""
    out = []
    while True:
        try:
            b = os.read(fsfd, 1024)
        except OSError:
            break
        if not b:
            break
        out.append(b.decode(errors="replace").strip())
    return "; ".join(out)


def _fsmount(fsfd: int, what: str, creator: tuple[int, int] | None = None) -> int:
    """FSCONFIG_CMD_CREATE + fsmount: a detached mount of the configured fs context.

    With ``creator`` (host uid, gid), the superblock is created with that fsuid/fsgid but all of
    this process's capabilities (SECBIT_NO_SETUID_FIXUP keeps them across setfsuid)."""
    old_bits = None
    try:
        if creator is not None:
            old_bits = _libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)
            _check(_libc.prctl(PR_SET_SECUREBITS, old_bits | SECBIT_NO_SETUID_FIXUP, 0, 0, 0),
                   "prctl(PR_SET_SECUREBITS)")
            _libc.setfsgid(creator[1])
            _libc.setfsuid(creator[0])
        _sys(_SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None, ctypes.c_int(0))
    except OSError as e:
        raise SetupError(f"{what}: {e.strerror}: {_fs_log(fsfd) or 'no detail from the kernel'}")
    finally:
        if old_bits is not None:
            _libc.setfsuid(0)
            _libc.setfsgid(0)
            _libc.prctl(PR_SET_SECUREBITS, old_bits, 0, 0, 0)
    try:
        return _sys(_SYS_FSMOUNT, ctypes.c_int(fsfd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(0))
    except OSError as e:
        raise SetupError(f"{what}: fsmount: {e.strerror}")


def _fsopen(fstype: str) -> int:
    try:
        return _sys(_SYS_FSOPEN, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC))
    except OSError as e:
        raise SetupError(f"fsopen({fstype}): {e.strerror}")


def idmapped_overlay(cfg: dict, userns_fd: int) -> int:
    """The rootfs overlay as a detached mount (an fd for move_mount), over idmapped layers.

    Every lowerdir and the upper/work dirs are idmapped into the user namespace, so files keep
    their real ownership on disk: an upper dir written under a user namespace becomes the same
    layer as without one.  The overlay is created by this process, still privileged in the
    initial user namespace, so overlayfs keeps using trusted.overlay.* xattrs (opaque dirs) as
    it does without a user namespace; its creator's fsuid/fsgid are the container root's host
    ids, so what overlayfs itself creates in the upper dir (copy-up files, whiteouts, its work
    dirs) maps back to 0 on disk.  Raises SetupError naming what the kernel refused.
    """
    userns = cfg["userns"]
    creator = (int(userns["uid_host"]), int(userns["gid_host"]))
    lowers = list(cfg["lowerdirs"]) or [os.path.join(cfg["tmp"], "empty")]
    fds: list[int] = []
    try:
        lower_fds = []
        for p in lowers:
            lower_fds.append(open_idmapped(p, userns_fd))
            fds.append(lower_fds[-1])
        upper, work = cfg["upperdir"], cfg["workdir"]
        if upper is None:
            # read-only rootfs: a throw-away tmpfs upper so mount points can be created
            tfd = _fsopen("tmpfs")
            fds.append(tfd)
            _fsconfig(tfd, "mode", "755")
            base_fd = _fsmount(tfd, "tmpfs for the read-only rootfs")
            fds.append(base_fd)
            os.mkdir("upper", 0o755, dir_fd=base_fd)
            os.mkdir("work", 0o700, dir_fd=base_fd)
            try:
                set_mount_attr(base_fd, MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                               userns_fd=userns_fd)
            except OSError as e:
                raise SetupError(f"user namespace: idmapped tmpfs: {e.strerror} (Linux >= 6.3)")
            upper_rel, work_rel = "upper", "work"
        else:
            base = os.path.commonpath([upper, work])
            base_fd = open_idmapped(base, userns_fd)
            fds.append(base_fd)
            upper_rel, work_rel = os.path.relpath(upper, base), os.path.relpath(work, base)
        upper_fd = os.open(upper_rel, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=base_fd)
        fds.append(upper_fd)
        work_fd = os.open(work_rel, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=base_fd)
        fds.append(work_fd)
        ofd = _fsopen("overlay")
        fds.append(ofd)
        try:
            for fd in lower_fds:
                _fsconfig(ofd, "lowerdir+", f"/proc/self/fd/{fd}")
            _fsconfig(ofd, "upperdir", f"/proc/self/fd/{upper_fd}")
            _fsconfig(ofd, "workdir", f"/proc/self/fd/{work_fd}")
            # as mount_overlay: the upper dir becomes a layer tar as it is
            for key, value in (("redirect_dir", "off"), ("metacopy", "off"), ("index", "off")):
                _fsconfig(ofd, key, value)
        except OSError as e:
            raise SetupError(f"overlayfs on idmapped layers: {e.strerror}: "
                             f"{_fs_log(ofd) or 'no detail from the kernel'} (Linux >= 6.8)")
        return _fsmount(ofd, "overlayfs on idmapped layers", creator)
    finally:
        for fd in fds:
            os.close(fd)


def enter_userns(userns_fd: int) -> None:
    """Join the user namespace and become its root (the host ids of the mapping's start).

    Namespaces created afterwards are owned by it: capabilities count there only."""
    _check(_libc.setns(userns_fd, CLONE_NEWUSER), "setns(user namespace)")
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def move_mount_fd(fd: int, target: str) -> None:
    try:
        _sys(_SYS_MOVE_MOUNT, ctypes.c_int(fd), _b(""), ctypes.c_int(AT_FDCWD), _b(target),
             ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
    except OSError as e:
        raise SetupError(f"move_mount onto {target}: {e.strerror}")


_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def _json_str(s: str) -> str:
    s = s.translate(_JSON_ESCAPES)
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (undecodable paths): escaped, as json.dumps does
            s = "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) < 0xE000 else c for c in s)
    return '"' + s + '"'


def to_json(obj) -> str:
    """JSON text of ``obj`` (dict/list/tuple/str/int/float/bool/None) that ``json.loads`` reads
    back equal; written here because importing json (and re) costs every sandbox start ~5 ms."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, (int, float)):
        return repr(obj)
    if isinstance(obj, str):
        return _json_str(obj)
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{_json_str(str(k))}: {to_json(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in obj) + "]"
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


class Ctl:
    def __init__(self, fd: int):
        self.fd = fd

    def send(self, **msg) -> None:
        data = (to_json(msg) + "\n").encode()  # to_json escapes surrogates
        try:
            os.write(self.fd, data)  # < PIPE_BUF for all our messages: atomic
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# path resolution inside the rootfs (before pivot_root, symlinks must not lead outside it)

def resolve_in_root(root: str, path: str) -> str:
    """Resolve ``path`` as if ``root`` were ``/``: symlinks and ``..`` never leave ``root``.

    The final components may not exist.  Returns a host path under ``root``.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    cur: list[str] = []
    links = 0
    while parts:
        p = parts.pop(0)
        if p == "..":
            if cur:
                cur.pop()
            continue
        full = os.path.join(root, *cur, p)
        try:
            st = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):
            cur.append(p)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                raise SetupError(f"{path}: too many levels of symbolic links")
            target = os.readlink(full)
            if target.startswith("/"):
                cur = []
            parts = [t for t in target.split("/") if t not in ("", ".")] + parts
            continue
        cur.append(p)
    return os.path.join(root, *cur)


def ensure_mountpoint(root: str, path: str, is_dir: bool, stubs: list[str]) -> str | None:
    """Resolve ``path`` in ``root`` and create it (and missing parents) if needed.

    Every created entry is appended to ``stubs`` (relative to root) so pybuild can remove it
    from the upper dir afterwards.  Returns the host path, or None when an existing entry of
    the wrong type is in the way.
    """
    target = resolve_in_root(root, path)
    rel = os.path.relpath(target, root)
    comps = [] if rel == "." else rel.split("/")
    cur = root
    for i, c in enumerate(comps):
        cur = os.path.join(cur, c)
        last = i == len(comps) - 1
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if last and not is_dir:
                fd = os.open(cur, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                os.close(fd)
            else:
                os.mkdir(cur, 0o755)
            stubs.append("/".join(comps[: i + 1]))
            continue
        if last:
            if is_dir != stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                return None
            if not is_dir and not stat.S_ISREG(st.st_mode):
                return None
        elif not stat.S_ISDIR(st.st_mode):
            return None
    return target


# ---------------------------------------------------------------------------------------------
# root file system

DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
             ("urandom", 1, 9), ("tty", 5, 0))

# Docker's default masked / read-only paths.
MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def mount_overlay(cfg: dict, root: str) -> None:
    tmp = cfg["tmp"]
    lowers = list(cfg["lowerdirs"]) or [os.path.join(tmp, "empty")]
    upper, work = cfg["upperdir"], cfg["workdir"]
    if upper is None:
        # Read-only rootfs: a throw-away tmpfs upper so mount points can be created, then the
        # root mount is made read-only.
        rw = os.path.join(tmp, "rw")
        mount("tmpfs", rw, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
        upper, work = os.path.join(rw, "upper"), os.path.join(rw, "work")
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
    paths = lowers + [upper, work]
    data = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if len(data) > 4000:
        # The mount data is limited to one page: use paths relative to a common parent.
        base = os.path.commonpath(paths)
        os.chdir(base)
        rel = [os.path.relpath(p, base) for p in paths]
        data = f"lowerdir={':'.join(rel[:-2])},upperdir={rel[-2]},workdir={rel[-1]}"
    # The upper dir becomes a layer tar as it is: renamed directories must be copied up whole and
    # metadata changes must copy the data too, whatever the kernel's defaults are.
    mount("overlay", root, "overlay", 0, data + ",redirect_dir=off,metacopy=off,index=off")
    os.chdir("/")


def mount_proc_sys_dev(cfg: dict, root: str, stubs: list[str]) -> None:
    proc = ensure_mountpoint(root, "/proc", True, stubs)
    if proc is None:
        raise SetupError("/proc in the image is not a directory")
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)

    dev = ensure_mountpoint(root, "/dev", True, stubs)
    if dev is None:
        raise SetupError("/dev in the image is not a directory")
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
    for name, major, minor in DEV_NODES:
        p = os.path.join(dev, name)
        try:
            os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(p, 0o666)
        except OSError:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            os.close(fd)
            mount("/dev/" + name, p, None, MS_BIND)
    if cfg.get("tty"):
        # -t: the pty slave we were given as stdin is also /dev/console, as docker does, so
        # ttyname() inside finds it (the host's devpts is not visible in the container)
        # (bind by path: our copy of the host's mounts has it; the fd's own mount is in the
        # parent namespace, and binding from another namespace's mount is refused)
        slave = os.readlink("/proc/self/fd/0")
        if os.path.exists(slave) and os.stat(slave).st_rdev == os.fstat(0).st_rdev:
            console = os.path.join(dev, "console")
            os.close(os.open(console, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            mount(slave, console, None, MS_BIND)
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    mount("devpts", os.path.join(dev, "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    os.mkdir(os.path.join(dev, "shm"), 0o1777)
    mount("shm", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          "mode=1777,size=65536k")
    os.mkdir(os.path.join(dev, "mqueue"), 0o755)
    mount("mqueue", os.path.join(dev, "mqueue"), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("core", "/proc/kcore")):
        os.symlink(target, os.path.join(dev, name))

    sysdir = ensure_mountpoint(root, "/sys", True, stubs)
    if sysdir is None:
        raise SetupError("/sys in the image is not a directory")
    ro = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if cfg.get("userns") and cfg["network"] != "none":
        # a user namespace may only mount sysfs for a network namespace it owns; the host's or
        # a joined one (bridge) belongs to the initial user namespace: share the host's /sys,
        # recursively (its submounts are locked to it) and read-only all the way down
        mount("/sys", sysdir, None, MS_BIND | MS_REC)
        try:
            set_mount_attr(-1, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                           path=sysdir, recursive=True)
        except OSError as e:
            raise SetupError(f"making {sysdir} read-only: {e.strerror}")
    elif cfg["network"] != "host":  # our own netns (new or joined): a fresh sysfs shows its devices
        mount("sysfs", sysdir, "sysfs", ro)
    else:
        # sysfs shows the net namespace of the mounter; share the host's, read-only.
        mount("/sys", sysdir, None, MS_BIND)
        mount(None, sysdir, None, MS_REMOUNT | MS_BIND | ro)


def mask_paths(root: str) -> None:
    """Hide kernel interfaces a build has no business with (Docker's default list)."""
    null = os.path.join(root, "dev/null")
    for p in MASKED_PATHS:
        target = os.path.join(root, p.lstrip("/"))
        try:
            st = os.lstat(target)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
        elif not stat.S_ISLNK(st.st_mode):
            mount(null, target, None, MS_BIND)
    for p in READONLY_PATHS:
        target = os.path.join(root, p.lstrip("/"))
        if not os.path.lexists(target) or os.path.islink(target):
            continue
        mount(target, target, None, MS_BIND | MS_REC)
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_etc_files(cfg: dict, root: str, stubs: list[str]) -> None:
    for name in ("hosts", "resolv.conf", "hostname"):
        target = ensure_mountpoint(root, "/etc/" + name, False, stubs)
        if target is None:
            continue  # e.g. a directory is in the way: leave the image alone
        source = cfg.get("hosts_file") if name == "hosts" else None  # the caller's, rewritten in place
        mount(source or os.path.join(cfg["tmp"], "etc", name), target, None, MS_BIND)


def mount_requested(cfg: dict, root: str, stubs: list[str]) -> None:
    """The caller's bind and tmpfs mounts (runner.Mount), in order, targets resolved in root."""
    for m in cfg.get("mounts") or []:
        if m.get("fd") is not None:  # idmapped bind, made by the outer process (user namespace)
            target = ensure_mountpoint(root, m["target"], m["is_dir"], stubs)
            if target is None:
                kind = "directory" if m["is_dir"] else "file"
                raise SetupError(f"cannot mount {m['source']} at {m['target']}: "
                                 f"something other than a {kind} is in the way")
            move_mount_fd(m["fd"], target)
            os.close(m["fd"])
            m["fd"] = None
        elif m["type"] == "bind":
            is_dir = os.path.isdir(m["source"])
            target = ensure_mountpoint(root, m["target"], is_dir, stubs)
            if target is None:
                kind = "directory" if is_dir else "file"
                raise SetupError(f"cannot mount {m['source']} at {m['target']}: "
                                 f"something other than a {kind} is in the way")
            mount(m["source"], target, None, MS_BIND | MS_REC)
            flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if m["readonly"] else 0)
            mount(None, target, None, flags)
        else:
            target = ensure_mountpoint(root, m["target"], True, stubs)
            if target is None:
                raise SetupError(f"cannot mount a tmpfs at {m['target']}: it is not a directory")
            # noexec/exec/nosuid/nodev are mount flags, not tmpfs data (which refuses them)
            flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if m["readonly"] else 0)
            if [o for o in m["options"] if o in ("noexec", "exec")][-1:] == ["noexec"]:  # the last one wins
                flags |= MS_NOEXEC
            data = [o for o in m["options"] if o not in ("noexec", "exec", "nosuid", "nodev")]
            mount("tmpfs", target, "tmpfs", flags, ",".join(data) or None)


def loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifr))[1]
        if flags & IFF_UP:
            return  # e.g. a joined (bridge) namespace, which may not be ours to configure
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# users (read from the rootfs after pivot_root)

def _read_db(path: str) -> list[list[str]]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(16 << 20)
    finally:
        os.close(fd)
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def resolve_user(spec: str | None) -> tuple[int, int, list[int], str]:
    """Return (uid, gid, supplementary gids, home) like runc's GetExecUser."""
    if not spec:
        spec = "0"
    user, sep, group = spec.partition(":")
    if sep and not group:
        raise SetupError(f"invalid user {spec!r}")
    passwd = [r for r in _read_db("/etc/passwd") if len(r) >= 7]
    entry = None
    if user.isdigit():
        uid = int(user)
        entry = next((r for r in passwd if r[2] == user), None)
    else:
        if not user:
            raise SetupError(f"invalid user {spec!r}")
        entry = next((r for r in passwd if r[0] == user), None)
        if entry is None:
            raise SetupError(f"unable to find user {user}: no matching entries in passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry else 0
    home = entry[5] if entry and entry[5] else "/"
    groups = [r for r in _read_db("/etc/group") if len(r) >= 3]
    sgids: list[int] = []
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((r for r in groups if r[0] == group), None)
            if g is None:
                raise SetupError(f"unable to find group {group}: no matching entries in group file")
            gid = int(g[2])
    elif entry is not None:
        name = entry[0]
        for r in groups:
            members = r[3].split(",") if len(r) > 3 else []
            if name in members and r[2].isdigit() and int(r[2]) not in sgids:
                sgids.append(int(r[2]))
    return uid, gid, sgids, home


# ---------------------------------------------------------------------------------------------
# the command

def exec_command(cfg: dict, ctl: Ctl, uid: int, gid: int, sgids: list[int], env: dict[str, str],
                 seccomp: bytes | None = None) -> None:
    """In the forked child of PID 1: drop to the user, chdir, exec.  Never returns."""
    try:
        for sig in range(1, signal.NSIG):
            if sig in (signal.SIGKILL, signal.SIGSTOP):
                continue
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.setsid()
        if cfg.get("tty"):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # stdin is the pty slave: our controlling tty
        policy.apply(uid, gid, sgids, privileged=bool(cfg.get("privileged")), seccomp=seccomp)
        try:
            os.chdir(cfg["cwd"])
        except OSError as e:
            raise SetupError(f"chdir to cwd {cfg['cwd']!r}: {e.strerror}")
    except (SetupError, policy.PolicyError) as e:
        ctl.send(error=str(e))
        os._exit(125)
    except OSError as e:
        ctl.send(error=f"setting up user {cfg['user']!r}: {e}")
        os._exit(125)
    args = cfg["args"]
    path = env.get("PATH", DEFAULT_PATH)
    try:
        os.execvpe(args[0], args, dict(env, PATH=path) if "PATH" not in env else env)
    except BaseException as e:  # noqa: BLE001 - must never return into PID 1's code
        err = getattr(e, "errno", None)
        if err in (errno.ENOENT, errno.ENOTDIR):
            if "/" in args[0]:
                msg, code = f'pybuild: exec: "{args[0]}": stat {args[0]}: no such file or directory', 127
            else:
                msg, code = f'pybuild: exec: "{args[0]}": executable file not found in $PATH', 127
        elif err in (errno.EACCES, errno.EPERM, errno.EISDIR):
            msg, code = f'pybuild: exec: "{args[0]}": permission denied', 126
        elif err == errno.ENOEXEC:
            msg, code = f'pybuild: exec: "{args[0]}": exec format error', 126
        else:
            msg, code = f'pybuild: exec: "{args[0]}": {e}', 126
        try:
            os.write(2, (msg + "\n").encode())
        finally:
            os._exit(code)


def pid1(cfg: dict, ctl: Ctl) -> int:
    """PID 1 of the new PID namespace.  Returns the exit code."""
    root = os.path.join(cfg["tmp"], "root")
    stubs: list[str] = []
    try:
        # 1. mounts (private mount namespace; nothing propagates to the host)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        if cfg.get("overlay_fd") is not None:  # user namespace: made by the outer process
            move_mount_fd(cfg["overlay_fd"], root)
            os.close(cfg["overlay_fd"])
        else:
            mount_overlay(cfg, root)
        mount_proc_sys_dev(cfg, root, stubs)
        mount_etc_files(cfg, root, stubs)
        try:
            mount_requested(cfg, root, stubs)
        finally:
            ctl.send(stubs=stubs)  # also after a failed mount: what was created must go
        mask_paths(root)
        if cfg["upperdir"] is None:
            mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        # 2. UTS + network
        socket.sethostname(cfg["hostname"])
        if cfg["network"] != "host":
            loopback_up()
        # the seccomp filter (compiled by pybuild) must be read before the old root is gone
        seccomp = cfg.get("seccomp_bpf")
        if cfg.get("seccomp") and seccomp is None:
            with open(os.path.join(cfg["tmp"], "seccomp.bpf"), "rb") as f:
                seccomp = f.read()
        # 3. pivot_root(".", ".") stacks the old root on the new one; detach it.
        os.chdir(root)
        pivot_root(".", ".")
        umount2(".", MNT_DETACH)
        os.chdir("/")
        # 4. no fd of pybuild's may reach the command (CVE-2024-21626), before any chdir(cwd)
        os.closerange(3, ctl.fd)
        os.closerange(ctl.fd + 1, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
        # 5. user and working directory (created as root, from inside the new root)
        uid, gid, sgids, home = resolve_user(cfg["user"])
        cwd = cfg["cwd"]
        try:
            os.makedirs(cwd, 0o755, exist_ok=True)
        except OSError as e:
            raise SetupError(f"creating cwd {cwd!r}: {e.strerror}")
    except SetupError as e:
        ctl.send(error=str(e))
        return 125
    except OSError as e:
        ctl.send(error=f"sandbox setup: {e}")
        return 125
    env = dict(cfg["env"])
    env.setdefault("HOME", home)

    # 6. fork the command, forward signals, reap everything
    main = os.fork()
    if main == 0:
        exec_command(cfg, ctl, uid, gid, sgids, env, seccomp)
    main_fd = os.pidfd_open(main)
    try:
        policy.confine_init()  # from here on: reap, forward, kill; nothing else (see policy.py)
    except policy.PolicyError as e:
        ctl.send(error=f"sandbox init: {e}")
        os.kill(main, signal.SIGKILL)

    def forward(sig, _frame):
        try:
            signal.pidfd_send_signal(main_fd, sig)
        except OSError:
            pass

    # Every catchable signal reaches the command (`stop` sends the image's STOPSIGNAL, `kill -s`
    # any): the kernel only delivers to a namespace's init the signals it handles.
    for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}:
        signal.signal(sig, forward)

    status = None
    while True:
        if status is not None:
            try:
                os.kill(-1, signal.SIGKILL)  # everything left in the namespace
            except ProcessLookupError:
                pass
        try:
            pid, st = os.wait()
        except ChildProcessError:
            break
        if pid == main:
            status = st
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        ctl.send(exit=128 + sig, signal=sig)
        return 128 + sig
    code = os.WEXITSTATUS(status)
    ctl.send(exit=code, signal=None)
    return code


def join_netns(path: str) -> None:
    """setns() into the network namespace file ``path`` (a bridge endpoint made by pybuild)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError(f"network namespace {path}: {e.strerror}")
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


def join_cgroups(procs_files: list[str]) -> None:
    """Move this (outer) process into the run's cgroups before anything is forked."""
    for path in procs_files:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise SetupError(f"joining cgroup {os.path.dirname(path)}: {e.strerror}")


def enter_sandbox_userns(cfg: dict) -> None:
    """Outer process, ``userns`` set: make the user namespace and the idmapped rootfs overlay
    (``cfg["overlay_fd"]``, moved into place by PID 1) while still privileged on the host,
    then join the namespace as its root."""
    if cfg.get("seccomp"):  # read now: the tmp dir's files may not be readable from inside
        with open(os.path.join(cfg["tmp"], "seccomp.bpf"), "rb") as f:
            cfg["seccomp_bpf"] = f.read()
    userns_fd = create_userns(cfg["userns"])
    try:
        cfg["overlay_fd"] = idmapped_overlay(cfg, userns_fd)
        # Bind sources are opened here, with the host's privileges: the namespace's root may not
        # even be allowed to look up their paths (e.g. under a 0700 directory).
        for m in cfg.get("mounts") or []:
            if m["type"] != "bind":
                continue
            m["is_dir"] = os.path.isdir(m["source"])
            if m.get("idmap"):
                m["fd"] = open_idmapped(m["source"], userns_fd)
            else:
                m["fd"] = open_tree_clone(m["source"], recursive=True)
            attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if m["readonly"] else 0)
            try:
                set_mount_attr(m["fd"], attrs, recursive=not m.get("idmap"))
            except OSError as e:
                    raise SetupError(f"bind mount at {m['target']}: {e.strerror}")
        enter_userns(userns_fd)
    finally:
        os.close(userns_fd)
    set_pdeathsig(signal.SIGKILL)  # a credential change clears it


def outer(cfg: dict, ctl: Ctl) -> int:
    child_fd = None
    pending: list[int] = []

    def handler(sig, _frame):
        if child_fd is None:
            pending.append(sig)
            return
        try:
            signal.pidfd_send_signal(child_fd, signal.SIGKILL if sig == ABORT_SIGNAL else sig)
        except OSError:
            pass

    for sig in FORWARDED_SIGNALS + (ABORT_SIGNAL,):
        signal.signal(sig, handler)
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != cfg["parent_pid"]:
        return 137  # pybuild already gone
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
    if cfg["network"] == "none":
        flags |= CLONE_NEWNET
    try:
        if cfg["network"] not in ("none", "host"):
            join_netns(cfg["network"])  # before NEWNS: the path is the host's
        join_cgroups(cfg.get("cgroup_procs") or [])
        if cfg.get("userns"):
            enter_sandbox_userns(cfg)  # first: every namespace below is then owned by it
            if os.getppid() != cfg["parent_pid"]:
                return 137  # pybuild died while PDEATHSIG was cleared by the new credentials
        if os.path.exists("/proc/self/ns/cgroup"):
            # The run's cgroup (or, without limits, pybuild's) becomes its cgroup root:
            # /proc/self/cgroup inside shows "/", not the host's hierarchy.
            flags |= CLONE_NEWCGROUP
        unshare(flags)
    except SetupError as e:
        ctl.send(error=str(e))
        return 125
    except OSError as e:  # setgroups/setresuid on entering the user namespace
        ctl.send(error=f"user namespace: {e}")
        return 125
    if ABORT_SIGNAL in pending:
        return 137
    me = os.pidfd_open(os.getpid())
    pid = os.fork()
    if pid == 0:
        try:
            for sig in FORWARDED_SIGNALS + (ABORT_SIGNAL,):
                signal.signal(sig, signal.SIG_DFL)
            set_pdeathsig(signal.SIGKILL)
            # getppid() is 0 here (the parent is outside the PID namespace): ask its pidfd
            # whether it already exited before PDEATHSIG was armed.
            if select.select([me], [], [], 0)[0]:
                os._exit(137)
            os.close(me)
            code = pid1(cfg, ctl)
        except BaseException as e:  # noqa: BLE001
            ctl.send(error=f"sandbox init: {e!r}")
            code = 125
        os._exit(code)
    os.close(me)
    for fd in [cfg.get("overlay_fd")] + [m.get("fd") for m in cfg.get("mounts") or []]:
        if fd is not None:
            os.close(fd)  # PID 1 has them
    child_fd = os.pidfd_open(pid)
    for sig in pending:
        handler(sig, None)
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st):
        return 128 + os.WTERMSIG(st)
    return os.WEXITSTATUS(st)


def main(argv: list[str]) -> int:
    return start(argv[1])


def start(tmp: str, ctl_fd: int | None = None, parent_pid: int | None = None) -> int:
    """The outer init for the run whose config is in ``tmp`` (``ctl_fd``/``parent_pid``: when
    forked by the zygote, which received the ctl pipe under another number and is the parent)."""
    with open(os.path.join(tmp, "config.marshal"), "rb") as f:
        cfg = marshal.load(f)
    cfg["tmp"] = tmp
    if ctl_fd is not None:
        cfg["ctl_fd"] = ctl_fd
    if parent_pid is not None:
        cfg["parent_pid"] = parent_pid
    os.set_inheritable(cfg["ctl_fd"], False)
    return outer(cfg, Ctl(cfg["ctl_fd"]))


# ---------------------------------------------------------------------------------------------
# zygote (fork server): `python -I -S -c "...; _init.zygote(sys.argv)" SOCK_FD PARENT_PID`
#
# One per pybuild process (runner._Zygote), started on its first sandbox run from a thread that
# lives as long as the process (PDEATHSIG fires when the forking *thread* exits).  It has this
# module imported already and forks one outer init per request instead of pybuild starting a
# fresh interpreter (~18 ms) per RUN.
#
# Request (SOCK_SEQPACKET message on SOCK_FD): data = the run's tmp dir, SCM_RIGHTS =
# [reply socket, stdin, stdout, stderr, ctl pipe write end].  Replies on the request's own reply
# socket: ``struct "q"`` pid of the outer init with a pidfd of it (SCM_RIGHTS; -errno and no fd
# if fork failed), later ``struct "q"`` its wait status once reaped; then the socket is closed.

ZYGOTE_REQ_FDS = 5
ZYGOTE_REPLY = struct.Struct("q")  # a pid (or -errno), then a wait status: runner reads the same
FD_SIZE = struct.calcsize("i")  # one fd in an SCM_RIGHTS payload


def zygote(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    parent = int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # own process group; pybuild aborts runs itself
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        return 137  # pybuild already gone
    try:
        sock.send(b"ready")
    except OSError:
        return 0  # pybuild gave up starting it
    me = os.getpid()
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, reply socket)
    # reply socket fd -> pidfd: pybuild never writes there, so readable = it closed its end
    # (the run was interrupted before it could track the init): kill that init
    watched: dict[int, int] = {}
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    open_ = True
    while open_ or children:
        for fd, _ev in poller.poll():
            if fd in watched:
                pidfd = watched.pop(fd)
                poller.unregister(fd)
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    pass
                continue
            if fd in children:
                pid, reply = children.pop(fd)
                poller.unregister(fd)
                if watched.pop(reply.fileno(), None) is not None:
                    poller.unregister(reply.fileno())
                os.close(fd)
                _, st = os.waitpid(pid, 0)
                try:
                    reply.send(ZYGOTE_REPLY.pack(st))
                except OSError:
                    pass  # the run was given up (its thread died); nothing to tell
                reply.close()
                continue
            if fd != sock.fileno():
                continue  # closed earlier in this round
            try:
                data, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(ZYGOTE_REQ_FDS * FD_SIZE))
            except InterruptedError:
                continue
            fds: list[int] = []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    n = len(payload) // FD_SIZE
                    fds.extend(struct.unpack(f"{n}i", payload[:n * FD_SIZE]))
            if not data and not fds:  # pybuild closed its end: finish the runs, then exit
                open_ = False
                poller.unregister(sock.fileno())
                continue
            if len(fds) != ZYGOTE_REQ_FDS:
                for fd in fds:
                    os.close(fd)
                continue
            reply = socket.socket(fileno=fds[0])
            try:
                pid = os.fork()
            except OSError as e:
                pid = -e.errno
            if pid == 0:
                _zygote_child(os.fsdecode(data), fds, me)  # never returns
            for fd in fds[1:]:
                os.close(fd)
            if pid < 0:
                reply.send(ZYGOTE_REPLY.pack(pid))
                reply.close()
                continue
            pidfd = os.pidfd_open(pid)
            try:
                reply.sendmsg([ZYGOTE_REPLY.pack(pid)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", pidfd))])
            except OSError:
                pass  # the requester is gone: its reply socket is readable, the init is killed
            children[pidfd] = (pid, reply)
            poller.register(pidfd, select.POLLIN)
            watched[reply.fileno()] = pidfd
            poller.register(reply.fileno(), select.POLLIN)
    return 0


def _zygote_child(tmp: str, fds: list[int], zygote_pid: int) -> None:
    """In the forked child: become what a freshly started init is (fds 0-2 and the ctl pipe,
    nothing else open; default signal dispositions; own process group), then run it."""
    code = 1
    try:
        _reply, stdin, stdout, stderr, ctl = fds
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
        os.setpgid(0, 0)
        for src, dst in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(src, dst)  # inheritable, as Popen leaves them
        if ctl != 3:
            os.dup2(ctl, 3, inheritable=False)
        os.set_inheritable(3, False)
        os.closerange(4, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
        code = start(tmp, ctl_fd=3, parent_pid=zygote_pid)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - as an uncaught exception in a fresh init: traceback, 1
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
