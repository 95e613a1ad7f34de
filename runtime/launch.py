"""Run a container record in the sandbox, recording its state; find, signal and stop it.

``execute`` is the one code path for both foreground `run` and the detached supervisor: it
connects the network (bridge), builds the sandbox's ProcessSpec/RootfsSpec from the record,
marks the record running, blocks in ``sandbox.runner.run``, then records the exit (code,
OOMKilled, FinishedAt) and disconnects.  The caller holds the record's running.lock for the
whole time (see ``containers``) and closes it afterwards.

The process that called ``execute`` (the "holder": `pybuild run` or the supervisor) is the
parent of the sandbox's outer init, whose child is the container's PID 1; ``init_pid`` finds
that PID 1 from the holder's pid through ``/proc/<pid>/task/<tid>/children``.  Signals for the
container (``stop``, ``kill``) go to that PID 1, which forwards every catchable signal to the
command; SIGKILL ends the whole PID namespace.
"""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

from pybuild.errors import PybuildError

from .containers import Container, ContainerStore, now_rfc3339

__all__ = ["execute", "init_pid", "wait_started", "send_signal", "stop", "remove", "release_network"]



def _children(pid: int) -> list[int]:
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def _is_ns_init(pid: int) -> bool:
    """Whether ``pid`` is PID 1 of a PID namespace below ours (``NSpid: <pid> 1``)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) >= 2 and ids[-1] == "1"
    except OSError:
        pass
    return False


def init_pid(holder_pid: int) -> int | None:
    """Host PID of the container's PID 1 under the holder process, or None (not started / gone)."""
    from pybuild.sandbox.runner import INIT_CMDLINE_MARK

    for outer in _children(holder_pid):
        try:
            with open(f"/proc/{outer}/cmdline", "rb") as f:
                if INIT_CMDLINE_MARK not in f.read():
                    continue
        except OSError:
            continue
        for child in _children(outer):
            if _is_ns_init(child):
                return child
    return None


def wait_started(holder_pid: int, done=lambda: False, poll: float = 0.002) -> int | None:
    """Wait until the container's PID 1 has finished its setup and forked the command (it has
    a child), and return its host PID; None when ``done()`` says the run ended first."""
    while not done():
        pid = init_pid(holder_pid)
        if pid is not None and _children(pid):
            return pid
        time.sleep(poll)
    return None


def _holder(c: Container) -> int | None:
    """PID of the process running ``c`` (None when it does not run).  A container still in
    "created" under a live holder is starting: wait for it to be marked running."""
    st = c.state()
    while st.get("Status") == "created" and c.supervised():
        time.sleep(0.01)
        st = c.state()
    if st.get("Status") != "running" or not c.supervised():
        return None
    pid = st.get("SupervisorPid")
    return pid if isinstance(pid, int) and pid > 0 else None


def running_init(c: Container) -> int:
    """PID 1 of a running container (waiting for its setup to finish); raises if not running."""
    holder = _holder(c)
    pid = wait_started(holder, done=lambda: not c.supervised()) if holder else None
    if pid is None:
        raise PybuildError(f"container {c.name} is not running")
    return pid


def send_signal(c: Container, sig: int) -> None:
    """Deliver ``sig`` to the container's command (SIGKILL: to its whole PID namespace)."""
    pid = running_init(c)
    fd = os.pidfd_open(pid)
    try:
        if init_pid(c.state().get("SupervisorPid") or 0) != pid:  # it exited meanwhile
            raise PybuildError(f"container {c.name} is not running")
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        raise PybuildError(f"container {c.name} is not running") from None
    finally:
        os.close(fd)


def stop(c: Container, sig: int, timeout: float) -> bool:
    """Send ``sig``; after ``timeout`` seconds SIGKILL; return once the exit is recorded.
    Returns False when the container was not running (nothing to do; docker's stop succeeds)."""
    holder = _holder(c)
    pid = wait_started(holder, done=lambda: not c.supervised()) if holder else None
    if pid is None:
        return False
    fd = os.pidfd_open(pid)
    try:
        try:
            signal.pidfd_send_signal(fd, sig)
            wait = None if timeout == float("inf") else max(0.0, timeout)  # -1: wait for ever
            if not select.select([fd], [], [], wait)[0]:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finally:
        os.close(fd)
    c.wait_unsupervised()
    return True


def release_network(root: Path, c: Container) -> None:
    """Give back the container's bridge endpoint (idempotent; nothing for none/host); the
    containers still on the bridge lose its /etc/hosts entry."""
    if c.config.get("Network") != "bridge":
        return
    from . import network

    bridge = network.disconnect(root, c.id)
    if bridge is not None:
        network.update_hosts(root, _hosts_writer(root), config=bridge)


# A bridge container's /etc/hosts: a file in its directory, bind-mounted by the sandbox and
# rewritten in place (same inode, so the mount sees it) whenever a container of the same store
# joins or leaves the bridge, as podman does.
HOSTS_FILE = "hosts"


def extra_hosts(cfg: dict, gateway: str) -> dict[str, str]:
    """The container's --add-host entries (``ExtraHosts``, docker's ``NAME:IP`` strings), with
    ``host-gateway`` as ``gateway`` (the bridge's; 127.0.0.1 on the host network)."""
    out = {}
    for item in cfg.get("ExtraHosts") or []:
        name, _, addr = item.partition(":")
        out[name] = gateway if addr == "host-gateway" else addr
    return out


def _write_hosts(c: Container, ip: str, hosts: dict[str, str]) -> None:
    from pybuild.sandbox.runner import hosts_text

    gateway = c.state().get("Gateway") or "127.0.0.1"  # recorded at connect, before the first write
    with open(c.dir / HOSTS_FILE, "w") as f:  # truncate + write: never a new inode
        f.write(hosts_text(c.config["Hostname"], {**hosts, **extra_hosts(c.config, gateway)}, own_address=ip))
    os.chmod(c.dir / HOSTS_FILE, 0o644)


def _hosts_writer(root: Path):
    def write(container_id: str, ip: str, hosts: dict[str, str]) -> None:
        c = ContainerStore(root).load(container_id)
        # only a container that has a hosts file (made above, before its sandbox started) and
        # is not removed meanwhile
        if c is not None and (c.dir / HOSTS_FILE).is_file():
            try:
                _write_hosts(c, ip, hosts)
            except OSError:
                pass  # removed under us: nothing to update
    return write


def remove(store, containers: ContainerStore, c: Container, *, force: bool) -> None:
    """`rm`: refuse a running container unless ``force`` (then SIGKILL it), release its network
    endpoint and anonymous volumes, delete the record."""
    if c.supervised() and c.state().get("Status") in ("created", "running"):
        if not force:
            raise PybuildError(f"cannot remove container {c.name}: it is running (stop it first, or rm -f)")
        stop(c, signal.SIGKILL, 0)
        c.wait_unsupervised()
    release_network(store.root, c)
    containers.remove(c)
    _remove_anonymous_volumes(store.root, c)


def _remove_anonymous_volumes(root: Path, c: Container) -> None:
    from .volumes import VolumeStore

    vols = VolumeStore(root)
    for m in c.config.get("Mounts") or []:
        if m.get("Type") == "volume" and m.get("Anonymous") and vols.exists(m["Source"]):
            vols.remove(m["Source"], [])


def _sandbox_specs(store, c: Container, lowerdirs: list[Path]):
    from pybuild.sandbox.runner import IdMap, Mount, ProcessSpec, Resources, RootfsSpec

    from .volumes import VolumeStore

    cfg = c.config
    vols = VolumeStore(store.root)
    mounts = []
    for m in cfg.get("Mounts") or []:
        if m["Type"] == "bind":
            mounts.append(Mount("bind", m["Destination"], Path(m["Source"]), readonly=not m.get("RW", True)))
        elif m["Type"] == "volume":
            # a volume is the container's own data: idmapped under --userns=auto (a host path is not)
            mounts.append(Mount("bind", m["Destination"], vols.data(m["Source"]), readonly=not m.get("RW", True),
                                idmap=True))
        else:
            mounts.append(Mount("tmpfs", m["Destination"], readonly=not m.get("RW", True),
                                options=tuple(m.get("Options") or ())))
    un = cfg.get("Userns")
    userns = IdMap(uid_host=un["UidHost"], gid_host=un["GidHost"], size=un["Size"]) if un else None
    res = cfg.get("Resources") or {}
    resources = None
    if any(res.get(k) is not None for k in ("Memory", "Cpus", "PidsLimit")):
        resources = Resources(memory=res.get("Memory"), cpus=res.get("Cpus"), pids=res.get("PidsLimit"))
    # as docker's daemon: HOSTNAME (and TERM with -t) unless the container's Env sets them
    env = {"HOSTNAME": cfg["Hostname"], **({"TERM": "xterm"} if cfg.get("Tty") else {}), **cfg["Env"]}
    spec = ProcessSpec(args=list(cfg["Args"]), env=env, cwd=cfg.get("WorkingDir") or "/",
                       user=cfg.get("User") or None, hostname=cfg["Hostname"],
                       network=cfg["Network"] if cfg["Network"] in ("none", "host") else "none",
                       resources=resources, mounts=mounts, tty=bool(cfg.get("Tty")), userns=userns,
                       extra_hosts=extra_hosts(cfg, "127.0.0.1"))  # (bridge: in its own hosts file)
    if cfg.get("ReadOnly"):
        rootfs = RootfsSpec(lowerdirs, None, None)
    else:
        rootfs = RootfsSpec(lowerdirs, c.upper, c.work)
    return spec, rootfs


def execute(store, c: Container, lowerdirs: list[Path], *, stdin: int | None, stdout: int | None,
            stderr: int | None):
    """Run the container to its end and record it; returns the sandbox's ExitStatus.  A setup
    failure is recorded (ExitCode 125, Error) and raised as PybuildError."""
    from pybuild.sandbox.runner import SandboxError, run

    try:
        spec, rootfs = _sandbox_specs(store, c, lowerdirs)
        if c.config["Network"] == "bridge":
            from . import network

            try:
                ports = [network.parse_publish(p) for p in c.config.get("Ports") or []]
                endpoint = network.connect(store.root, c.id, c.name, ports)
            except network.NetworkError as e:
                raise PybuildError(f"bridge network: {e}") from None
            spec.network = str(endpoint.netns)
            spec.hosts_file = c.dir / HOSTS_FILE
            c.set_state(Gateway=str(endpoint.gateway))  # for --add-host NAME:host-gateway
            _write_hosts(c, str(endpoint.ip), endpoint.hosts)
            # ... and this container joins the /etc/hosts of the others (theirs are rewritten)
            network.update_hosts(store.root, _hosts_writer(store.root))
            # the host ports as published (an ephemeral one resolved), in docker's API shape: what
            # ps, inspect (NetworkSettings.Ports) and port show while the container runs
            c.set_state(IPAddress=str(endpoint.ip),
                        Ports=[{"IP": p.host_ip or "0.0.0.0", "PrivatePort": p.container_port,
                                "PublicPort": p.host_port, "Type": p.protocol} for p in endpoint.ports])
        c.set_state(Status="running", SupervisorPid=os.getpid(), StartedAt=now_rfc3339(), ExitCode=0,
                    OOMKilled=False, Error="")
        try:
            # started directly, not by the fork server: init_pid finds the outer init as the
            # holder's child by its cmdline
            status = run(spec, rootfs, stdin=stdin, stdout=stdout, stderr=stderr, use_zygote=False)
        except SandboxError as e:
            raise PybuildError(str(e)) from None
    except PybuildError as e:
        c.set_state(Status="exited", ExitCode=125, Error=str(e), FinishedAt=now_rfc3339(), SupervisorPid=0)
        raise
    except BaseException as e:
        c.set_state(Status="exited", ExitCode=125, Error=f"pybuild failed: {e!r}", FinishedAt=now_rfc3339(),
                    SupervisorPid=0)
        raise
    finally:
        try:
            release_network(store.root, c)
        except Exception:  # noqa: BLE001 - the next clean_stale retries; the exit must be recorded
            pass
    c.set_state(Status="exited", ExitCode=status.code, OOMKilled=bool(status.oom_killed),
                FinishedAt=now_rfc3339(), SupervisorPid=0)
    return status
