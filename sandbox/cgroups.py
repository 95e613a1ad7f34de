"""Resource limits for one sandbox run: one cgroup per run, on cgroup v2 or v1.

Detection happens at run time, per controller: a controller offered by the unified (v2)
hierarchy (``cgroup.controllers`` of a cgroup2 mount) is used there, otherwise the v1
hierarchy that has it mounted.  A host may mix both (this is the case when, as on many
"hybrid" hosts, the v2 mount offers no or few controllers).

Where the cgroups live:

* v1: ``<hierarchy>/<our own cgroup>/pybuild/<pid>-<random>``, nested under the cgroup
  pybuild itself runs in, so limits set on pybuild (by systemd, a CI runner, ...) still apply.
* v2: ``<unified mount>/pybuild/<pid>-<random>``: the root cgroup is exempt from the "no
  internal processes" rule, so controllers can be enabled for ``pybuild/`` there.

The sandbox's init process writes itself into ``cgroup.procs`` of each dir before it forks
anything (see ``_init.py``), so every process of the run is limited.  ``Cgroup.destroy`` kills
what is left and removes the dirs; cgroups of runs whose pybuild process died (SIGKILL) are
removed by the next ``create``.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import signal
import time
from dataclasses import dataclass

__all__ = ["Cgroup", "CgroupError", "Hierarchy", "Resources", "create", "detect", "sweep_stale"]

CPU_PERIOD_US = 100_000
MIN_MEMORY = 6 << 20  # below this the runtime itself cannot start (Docker's minimum too)


@dataclass(frozen=True)
class Resources:
    """Limits for one run.  ``None`` = unlimited.

    memory: bytes (memory + swap: swap usage is not allowed beyond it)
    cpus:   CPUs' worth of time per period (0.5 = half a CPU), as ``docker run --cpus``
    pids:   maximum number of processes/threads in the run (including pybuild's init)
    """

    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None

    def controllers(self) -> list[str]:
        return [c for c, v in (("memory", self.memory), ("cpu", self.cpus), ("pids", self.pids))
                if v is not None]

    def validate(self) -> None:
        if self.memory is not None and (not isinstance(self.memory, int) or self.memory < MIN_MEMORY):
            raise CgroupError(f"memory limit must be at least {MIN_MEMORY >> 20} MiB")
        if self.cpus is not None and not (0.01 <= float(self.cpus) <= 1024):
            raise CgroupError(f"invalid cpus value {self.cpus!r}")
        if self.pids is not None and (not isinstance(self.pids, int) or self.pids < 1):
            raise CgroupError(f"invalid pids limit {self.pids!r}")


class CgroupError(Exception):
    """A requested limit cannot be set up on this host."""


@dataclass(frozen=True)
class Hierarchy:
    version: int        # 1 or 2
    base: str           # the dir under which per-run cgroups are made (".../pybuild")
    controllers: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# detection

def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of cgroup mounts."""
    out = []
    try:
        lines = _read("/proc/self/mountinfo").splitlines()
    except OSError:
        return out
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        f = pre.split()
        p = post.split()
        if len(f) < 5 or len(p) < 3 or p[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((p[0], _unescape(f[3]), _unescape(f[4]), set(p[2].split(","))))
    return out


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for v2) -> our cgroup path, from /proc/self/cgroup."""
    own = {}
    try:
        lines = _read("/proc/self/cgroup").splitlines()
    except OSError:
        return own
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            own[""] = parts[2]
        for c in parts[1].split(","):
            if c:
                own[c] = parts[2]
    return own


def _under(mountpoint: str, mount_root: str, path: str) -> str:
    rel = path
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        rel = path[len(mount_root):]
    return os.path.join(mountpoint, rel.lstrip("/"))


@functools.lru_cache(maxsize=1)
def detect() -> dict[str, Hierarchy]:
    """Controller name ("memory", "cpu", "pids", ...) -> where to use it."""
    result: dict[str, Hierarchy] = {}
    own = _own_cgroups()
    mounts = _mounts()
    for fstype, _root, mp, _opts in mounts:
        if fstype != "cgroup2":
            continue
        try:
            offered = _read(os.path.join(mp, "cgroup.controllers")).split()
        except OSError:
            continue
        h = Hierarchy(2, os.path.join(mp, "pybuild"), tuple(offered))
        for c in offered:
            result.setdefault(c, h)
    for fstype, root, mp, opts in mounts:
        if fstype != "cgroup":
            continue
        ctrls = tuple(sorted(c for c in opts if c in ("memory", "cpu", "pids", "cpuacct", "cpuset",
                                                      "blkio", "devices", "freezer", "hugetlb",
                                                      "net_cls", "net_prio", "perf_event", "rdma",
                                                      "misc")))
        if not ctrls:
            continue
        path = own.get(ctrls[0], "/")
        h = Hierarchy(1, os.path.join(_under(mp, root, path), "pybuild"), ctrls)
        for c in ctrls:
            result.setdefault(c, h)
    return result


# ---------------------------------------------------------------------------------------------
# one run's cgroup

def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _kv(path: str) -> dict[str, int]:
    out = {}
    try:
        text = _read(path)
    except OSError:
        return out
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


def _pids(d: str) -> list[int]:
    try:
        return [int(x) for x in _read(os.path.join(d, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def _mkdir_p(base: str, name: str) -> str:
    path = os.path.join(base, name)
    for _ in range(5):  # a concurrent run may rmdir an empty base between our two mkdirs
        try:
            os.makedirs(base, exist_ok=True)
            os.mkdir(path)
            return path
        except FileNotFoundError:
            continue
    raise CgroupError(f"cannot create cgroup {path}")


def _kill_and_rmdir(d: str, timeout: float = 5.0) -> bool:
    """Kill every process in cgroup ``d`` and remove it.  True when it is gone."""
    deadline = time.monotonic() + timeout
    killed_v2 = False
    while True:
        try:
            os.rmdir(d)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                return False
        if not killed_v2 and os.path.exists(os.path.join(d, "cgroup.kill")):
            try:
                _write(os.path.join(d, "cgroup.kill"), "1")
                killed_v2 = True
            except OSError:
                pass
        for pid in _pids(d):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


def _rmdir_if_empty(d: str) -> None:
    try:
        os.rmdir(d)
    except OSError:
        pass


class Cgroup:
    """The cgroup dirs of one run (one per hierarchy involved)."""

    def __init__(self, dirs: dict[str, str], versions: dict[str, int]):
        self.dirs = dirs          # controller -> dir
        self.versions = versions  # dir -> 1|2

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.versions]

    def limit_files(self) -> dict[str, str]:
        """Controller -> the file holding its limit (for tests and diagnostics)."""
        out = {}
        for c, d in self.dirs.items():
            v2 = self.versions[d] == 2
            out[c] = os.path.join(d, {"memory": "memory.max" if v2 else "memory.limit_in_bytes",
                                      "cpu": "cpu.max" if v2 else "cpu.cfs_quota_us",
                                      "pids": "pids.max"}[c])
        return out

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this run."""
        d = self.dirs.get("memory")
        if d is None:
            return False
        if self.versions[d] == 2:
            ev = _kv(os.path.join(d, "memory.events"))
            return ev.get("oom_kill", 0) > 0 or ev.get("oom_group_kill", 0) > 0
        ctl = _kv(os.path.join(d, "memory.oom_control"))
        if "oom_kill" in ctl:  # kernel >= 4.13
            return ctl["oom_kill"] > 0
        try:  # older kernels: the limit was hit (the caller combines this with a SIGKILL)
            return int(_read(os.path.join(d, "memory.failcnt"))) > 0
        except (OSError, ValueError):
            return False

    def destroy(self) -> None:
        for d in self.versions:
            _kill_and_rmdir(d)
            _rmdir_if_empty(os.path.dirname(d))  # the "pybuild" dir, when no other run uses it


def _setup(d: str, version: int, controller: str, res: Resources) -> None:
    if controller == "memory":
        if version == 2:
            _write(os.path.join(d, "memory.max"), str(res.memory))
            if os.path.exists(os.path.join(d, "memory.swap.max")):
                _write(os.path.join(d, "memory.swap.max"), "0")
        else:
            _write(os.path.join(d, "memory.limit_in_bytes"), str(res.memory))
            if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
                _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(res.memory))
    elif controller == "cpu":
        quota = max(1000, round(float(res.cpus) * CPU_PERIOD_US))
        if version == 2:
            _write(os.path.join(d, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
        else:
            _write(os.path.join(d, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            _write(os.path.join(d, "cpu.cfs_quota_us"), str(quota))
    elif controller == "pids":
        _write(os.path.join(d, "pids.max"), str(res.pids))


def _enable_v2(base: str, controllers: list[str]) -> None:
    """Enable ``controllers`` in the subtree_control of base's parent and of base."""
    for d in (os.path.dirname(base), base):
        try:
            enabled = _read(os.path.join(d, "cgroup.subtree_control")).split()
        except OSError as e:
            raise CgroupError(f"cgroup v2 at {d}: {e.strerror}") from None
        missing = [c for c in controllers if c not in enabled]
        if missing:
            try:
                _write(os.path.join(d, "cgroup.subtree_control"), " ".join("+" + c for c in missing))
            except OSError as e:
                raise CgroupError(f"enabling {', '.join(missing)} in {d}: {e.strerror}") from None


def sweep_stale(bases: list[str] | None = None) -> None:
    """Remove per-run cgroups whose pybuild process is gone (killed before its cleanup)."""
    if bases is None:
        layout = detect()
        bases = sorted({layout[c].base for c in ("memory", "cpu", "pids") if c in layout})
    me = os.getpid()
    for base in bases:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            pid = name.split("-", 1)[0]
            d = os.path.join(base, name)
            if not pid.isdigit() or int(pid) == me or not os.path.isdir(d):
                continue
            if os.path.exists(f"/proc/{pid}"):
                continue
            _kill_and_rmdir(d, timeout=1.0)
        _rmdir_if_empty(base)


def create(res: Resources | None) -> Cgroup | None:
    """Create and configure the cgroup(s) of one run; None when there is nothing to limit."""
    if res is None or not res.controllers():
        return None
    res.validate()
    layout = detect()
    wanted = res.controllers()
    missing = [c for c in wanted if c not in layout]
    if missing:
        raise CgroupError(f"cgroup controller(s) not available on this host: {', '.join(missing)}"
                          " (see `pybuild doctor`)")
    bases = sorted({layout[c].base for c in wanted})
    sweep_stale(bases)
    name = f"{os.getpid()}-{secrets.token_hex(6)}"
    dirs: dict[str, str] = {}
    versions: dict[str, int] = {}
    cg = Cgroup(dirs, versions)
    try:
        for c in wanted:
            h = layout[c]
            d = os.path.join(h.base, name)
            if d not in versions:
                if h.version == 2:
                    os.makedirs(h.base, exist_ok=True)
                    _enable_v2(h.base, [x for x in wanted if layout[x] is h])
                _mkdir_p(h.base, name)
                versions[d] = h.version
            dirs[c] = d
            _setup(d, h.version, c, res)
    except OSError as e:
        cg.destroy()
        raise CgroupError(f"setting up cgroup for {', '.join(wanted)}: {e}") from None
    except BaseException:
        cg.destroy()
        raise
    return cg
