"""What this host allows the sandbox to do (``pybuild doctor``).

Every check is a real attempt where that is cheap and safe (namespaces and pivot_root are tried
in a short-lived forked child), otherwise a read of the kernel's own report.
"""

from __future__ import annotations

import ctypes
import os
import platform
import pwd
import tempfile
from dataclasses import dataclass

from . import _init, cgroups, idmap, policy

__all__ = ["Check", "builds_can_run", "probe"]

NAMESPACES = (  # name, clone flag, needed for every build?, what pybuild does without it
    ("mount", _init.CLONE_NEWNS, True, "no sandbox possible: builds cannot run"),
    ("pid", _init.CLONE_NEWPID, True, "no sandbox possible: builds cannot run"),
    ("uts", _init.CLONE_NEWUTS, True, "no sandbox possible: builds cannot run"),
    ("ipc", _init.CLONE_NEWIPC, True, "no sandbox possible: builds cannot run"),
    ("net", _init.CLONE_NEWNET, True, "--network=none cannot be isolated: builds cannot run"),
    ("cgroup", _init.CLONE_NEWCGROUP, False,
     "runs with limits see the host's cgroup paths in /proc/self/cgroup"),
)
CLONE_NEWUSER = 0x10000000


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str            # what was found
    consequence: str = ""  # what pybuild does when it is missing
    required: bool = True  # builds cannot run without it

    @property
    def fatal(self) -> bool:
        return self.required and not self.ok


def _in_child(fn) -> tuple[bool, str]:
    """Run ``fn()`` in a forked child; (True, "") if it returned, else (False, error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(r)
            fn()
        except BaseException as e:  # noqa: BLE001
            try:
                os.write(w, str(e).encode()[:500])
            except OSError:
                pass
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode(errors="replace")
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st) == 0, msg


def _check_root() -> Check:
    if os.geteuid() == 0:
        return Check("root", True, "running as root")
    return Check("root", False, f"running as uid {os.geteuid()}",
                 "pybuild needs root (it has no rootless mode): run it as root")


def _check_overlay() -> Check:
    try:
        with open("/proc/filesystems") as f:
            fs = {line.split()[-1] for line in f if line.strip()}
    except OSError:
        fs = set()
    if "overlay" in fs:
        return Check("overlayfs", True, "the kernel has overlay")
    return Check("overlayfs", False, "overlay is not in /proc/filesystems (modprobe overlay?)",
                 "no snapshots: builds cannot run")


def _check_namespace(name: str, flag: int, required: bool, consequence: str) -> Check:
    nsfile = {"mount": "mnt"}.get(name, name)
    if not os.path.exists(f"/proc/self/ns/{nsfile}"):
        return Check(f"{name} namespace", False, "not supported by this kernel", consequence, required)
    ok, err = _in_child(lambda: _init.unshare(flag))
    if ok:
        return Check(f"{name} namespace", True, "unshare works", required=required)
    return Check(f"{name} namespace", False, err or "unshare failed", consequence, required)


def _invoking_user() -> str:
    for var in ("SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _subid_ranges(path: str, user: str) -> list[tuple[int, int]]:
    try:
        uid = str(pwd.getpwnam(user).pw_uid)
    except KeyError:
        uid = user if user.isdigit() else None
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (user, uid) and parts[1].isdigit() and parts[2].isdigit():
                    out.append((int(parts[1]), int(parts[2])))
    except OSError:
        pass
    return out


def _check_userns() -> list[Check]:
    consequence = ("needed for --userns=auto; the default --userns=host does not use it "
                   "(pybuild itself runs as root: there is no rootless mode)")
    checks = []
    if not os.path.exists("/proc/self/ns/user"):
        checks.append(Check("user namespace", False, "not supported by this kernel", consequence, False))
    else:
        ok, err = _in_child(lambda: _init.unshare(CLONE_NEWUSER))
        try:
            with open("/proc/sys/user/max_user_namespaces") as f:
                limit = f.read().strip()
        except OSError:
            limit = "?"
        checks.append(Check("user namespace", ok,
                            f"unshare works (max_user_namespaces={limit})" if ok else err,
                            "" if ok else consequence, False))
    user = _invoking_user()
    uids = _subid_ranges("/etc/subuid", user)
    gids = _subid_ranges("/etc/subgid", user)
    fmt = lambda rs: ", ".join(f"{s}-{s + n - 1}" for s, n in rs) or "none"
    ok = bool(uids and gids)
    checks.append(Check(f"subuid/subgid ({user})", ok, f"subuid {fmt(uids)}; subgid {fmt(gids)}",
                        "" if ok else ("no range for root: --userns=auto uses host ids "
                                       f"{idmap.DEFAULT_HOST_BASE}-{idmap.DEFAULT_HOST_BASE + idmap.DEFAULT_SIZE - 1}"),
                        False))
    return checks


def _probe_dir_base() -> str:
    """Where to try idmapped mounts: the store's file system if it exists (snapshots live
    there), else the temp dir's."""
    for cand in (os.environ.get("PYBUILD_ROOT"), "/var/lib/pybuild"):
        if cand and os.path.isdir(cand):
            return cand
    return tempfile.gettempdir()


def _try_idmapped_overlay(base: str, m: idmap.IdMap) -> None:
    """A user namespace with ``m`` and the sandbox's overlay over idmapped layers, checked to
    show a file owned by 0 on disk as the mapping's root (in a forked child: raises on failure)."""
    tmp = tempfile.mkdtemp(prefix="pybuild-probe-", dir=base)
    try:
        for d in ("lower", "upper", "work"):
            os.mkdir(os.path.join(tmp, d))
        with open(os.path.join(tmp, "lower", "f"), "w"):
            pass
        os.chown(os.path.join(tmp, "lower", "f"), 0, 0)
        userns_fd = _init.create_userns({"uid_host": m.uid_host, "gid_host": m.gid_host, "size": m.size})
        cfg = {"lowerdirs": [os.path.join(tmp, "lower")], "upperdir": os.path.join(tmp, "upper"),
               "workdir": os.path.join(tmp, "work"), "tmp": tmp,
               "userns": {"uid_host": m.uid_host, "gid_host": m.gid_host, "size": m.size}}
        ofd = _init.idmapped_overlay(cfg, userns_fd)
        st = os.stat("f", dir_fd=ofd)
        os.close(ofd)
        os.close(userns_fd)
        if (st.st_uid, st.st_gid) != (m.uid_host, m.gid_host):
            raise RuntimeError(f"a file owned by 0:0 shows as {st.st_uid}:{st.st_gid}, "
                               f"not {m.uid_host}:{m.gid_host}")
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def _check_userns_idmap() -> Check:
    """``--userns=auto``: a user namespace plus overlayfs on idmapped layers, really tried."""
    consequence = "--userns=auto fails; the default --userns=host is unaffected"
    try:
        m = idmap.default_idmap()
    except idmap.IdMapError as e:
        return Check("userns idmapped overlay", False, str(e), consequence, False)
    base = _probe_dir_base()
    ok, err = _in_child(lambda: _try_idmapped_overlay(base, m))
    where = f"on {base} ({_init.fs_type(os.path.realpath(base))})"
    if ok:
        return Check("userns idmapped overlay", True,
                     f"works {where}; --userns=auto maps ids 0-{m.size - 1} to host uids "
                     f"{m.uid_host}-{m.uid_host + m.size - 1}, gids {m.gid_host}-{m.gid_host + m.size - 1}",
                     required=False)
    return Check("userns idmapped overlay", False, f"{where}: {err or 'failed'}", consequence, False)


def _check_cgroups() -> list[Check]:
    layout = cgroups.detect()
    checks = []
    for c, flag in (("memory", "--memory"), ("cpu", "--cpus"), ("pids", "--pids-limit")):
        h = layout.get(c)
        if h is None:
            checks.append(Check(f"cgroup {c}", False, "controller not available (v1 nor v2)",
                                f"{flag} is refused; builds without it run unlimited", False))
            continue
        checks.append(Check(f"cgroup {c}", True, f"cgroup v{h.version}, under {h.base}",
                            required=False))
    v2 = sorted({c for c, h in layout.items() if h.version == 2})
    v1 = sorted({c for c, h in layout.items() if h.version == 1})
    checks.append(Check("cgroup version", bool(layout),
                        f"v2 controllers: {' '.join(v2) or 'none'}; v1 controllers: {' '.join(v1) or 'none'}",
                        "" if layout else "no cgroup mounted: resource limits are unavailable", False))
    return checks


def _check_seccomp() -> Check:
    PR_GET_SECCOMP, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 21, 22, 2
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return Check("seccomp", False, "the kernel has no seccomp",
                     "RUN steps run without a syscall filter", False)
    # With filter support, a NULL program is rejected with EFAULT (EINVAL without it).
    libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, 0, 0, 0)
    if ctypes.get_errno() != 14:
        return Check("seccomp", False, "seccomp filter mode (CONFIG_SECCOMP_FILTER) missing",
                     "RUN steps run without a syscall filter", False)
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            actions = f.read().strip()
    except OSError:
        actions = "?"
    if policy.seccomp_program() is None:
        return Check("seccomp", False, f"available, but pybuild has no syscall table for "
                     f"{platform.machine()}", "RUN steps run without a syscall filter", False)
    return Check("seccomp", True, f"filter mode available (actions: {actions}); RUN steps get "
                 "Docker's default profile", required=False)


def _check_capabilities() -> Check:
    eff, _, _ = policy.capget()
    missing = policy.DEFAULT_CAP_MASK & ~eff
    if not missing:
        return Check("capabilities", True, f"CapEff {eff:#x} covers Docker's default set")
    names = [n for n, b in policy.CAPABILITIES.items() if missing & (1 << b)]
    return Check("capabilities", False, f"missing {', '.join(names)}",
                 "the sandbox cannot set up mounts or switch users: builds cannot run")


def _try_pivot_root() -> None:
    tmp = tempfile.mkdtemp(prefix="pybuild-probe-")
    try:
        _init.unshare(_init.CLONE_NEWNS)
        _init.mount(None, "/", None, _init.MS_REC | _init.MS_PRIVATE)
        _init.mount("tmpfs", tmp, "tmpfs", 0, "size=64k")
        os.chdir(tmp)
        _init.pivot_root(".", ".")
        _init.umount2(".", _init.MNT_DETACH)
    finally:
        os.chdir("/")


def _check_pivot_root() -> Check:
    before = set(os.listdir(tempfile.gettempdir()))
    ok, err = _in_child(_try_pivot_root)
    for name in set(os.listdir(tempfile.gettempdir())) - before:
        if name.startswith("pybuild-probe-"):
            try:
                os.rmdir(os.path.join(tempfile.gettempdir(), name))
            except OSError:
                pass
    if ok:
        return Check("pivot_root", True, "works in a new mount namespace")
    return Check("pivot_root", False, err or "failed",
                 "the root is probably an initramfs (rootfs): builds cannot run")


def probe() -> list[Check]:
    checks = [_check_root(), _check_overlay()]
    if os.geteuid() == 0:
        checks.append(_check_capabilities())
    for name, flag, required, consequence in NAMESPACES:
        checks.append(_check_namespace(name, flag, required, consequence))
    checks.extend(_check_userns())
    if os.geteuid() == 0:
        checks.append(_check_userns_idmap())
        checks.append(_check_pivot_root())
    checks.extend(_check_cgroups())
    checks.append(_check_seccomp())
    return checks


def builds_can_run(checks: list[Check]) -> bool:
    return not any(c.fatal for c in checks)
