"""Bridge networking for `pybuild run --network bridge` (docker's default network mode).

Layout on the host (all of it ours, nothing else is touched)::

    bridge pybuild0 (10.89.0.1/24)  ── veth pb<hash> ══ eth0 10.89.0.N in the container's netns
    nft table ``ip pybuild0``: masquerade of the subnet's outbound traffic, DNAT of published
                               ports (prerouting + output chains), masquerade of 127.0.0.0/8
                               towards the bridge (``-p 127.0.0.1:...`` from the host)
    /run/pybuild/net/pybuild0/ leases.json (address allocator + what every endpoint made), lock,
                               netns/<container id> (persistent netns files, bind mounts)

The bridge name and subnet come from ``$PYBUILD_BRIDGE`` / ``$PYBUILD_BRIDGE_SUBNET`` (default
``pybuild0`` / ``10.89.0.0/24``: podman uses 10.88.0.0/16, docker 172.17.0.0/16); a subnet that
overlaps a host route or address is refused.  State lives under /run, not under the store:
bridge, veths and netns are host-wide and vanish at reboot, so must the allocator; a container
id is unique across stores, and ``hosts`` only lists containers of the same store.

Published ports use netfilter DNAT, not a userland proxy: the kernel forwards at full speed,
UDP works the same as TCP, the container sees the real client address for external traffic,
and no process has to outlive the container to keep a port open.  Locally generated traffic
(``curl 127.0.0.1:8080``) goes through the nat ``output`` hook; reaching the bridge from a
127.0.0.0/8 source needs ``route_localnet=1`` on the bridge and a masquerade, as docker does
without its proxy.  A container reaching a published port through a host address (its own or
another's: hairpin) is masqueraded too, so the reply comes back the way the request went.
The rules of one container carry the comment ``pybuild:<id>`` and are
deleted by handle, so cleanup never touches anyone else's rules.

Tools: the ``ip`` (iproute2), ``nsenter`` (util-linux) and ``nft`` (nftables) commands rather
than a netlink library: nftables has no stable netlink library for Python, ``nft -f`` applies a
whole rule set atomically and ``nft -j`` lists rules with their handles, and iproute2's
commands are what an operator reads when debugging; a connect is a handful of short commands.

Liveness: an endpoint belongs to the process that called ``connect`` (its *owner*, recorded by
pid and start time; ``set_owner`` hands it over).  It is stale when the owner is gone and no
process is left in its network namespace; ``cleanup_stale`` (and every ``connect``) removes
stale endpoints, and anything of ours on the host that no lease accounts for (a crash between
two steps).  When the last endpoint of a bridge goes, the bridge and its nft table go too, and
``net.ipv4.ip_forward`` is set back to 0 if pybuild was the one that turned it on.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BridgeConfig", "Endpoint", "NetworkError", "PortMapping", "PublishedPort", "cleanup_stale",
           "connect", "disconnect", "lookup", "parse_publish", "set_owner"]

DEFAULT_BRIDGE = "pybuild0"
DEFAULT_SUBNET = "10.89.0.0/24"
BRIDGE_ENV = "PYBUILD_BRIDGE"
SUBNET_ENV = "PYBUILD_BRIDGE_SUBNET"
STATE_BASE = Path("/run/pybuild/net")

_COMMENT_PREFIX = "pybuild:"
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_BRIDGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


class NetworkError(Exception):
    """Bridge networking could not be set up or a ``-p`` value is invalid."""


# ---------------------------------------------------------------------------------------------
# -p parsing (pure)

@dataclass(frozen=True)
class PortMapping:
    """One ``-p`` value: container ports ``container_port..container_port_end`` published on
    ``host_ip`` (``""``: every local address) at ``host_port..host_port_end``.

    ``host_port`` None: an ephemeral port per container port, chosen at ``connect``.  A host
    range with a single container port means *any one free port of the range* (docker's rule);
    otherwise the two ranges have the same length and map in order.
    """

    container_port: int
    host_port: int | None = None
    host_ip: str = ""
    protocol: str = "tcp"
    container_port_end: int | None = None
    host_port_end: int | None = None
    text: str = ""  # the flag value, for error messages

    @property
    def container_ports(self) -> range:
        return range(self.container_port, (self.container_port_end or self.container_port) + 1)

    @property
    def host_ports(self) -> range | None:
        if self.host_port is None:
            return None
        return range(self.host_port, (self.host_port_end or self.host_port) + 1)


def _parse_port_range(s: str, what: str, text: str) -> tuple[int, int]:
    lo, sep, hi = s.partition("-")
    try:
        a, b = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise NetworkError(f"invalid -p value {text!r}: {what} {s!r} is not a port or a range like 8000-8010") from None
    if not (lo.isdigit() and (not sep or hi.isdigit())):
        raise NetworkError(f"invalid -p value {text!r}: {what} {s!r} is not a port or a range like 8000-8010")
    for p in (a, b):
        if not 1 <= p <= 65535:
            raise NetworkError(f"invalid -p value {text!r}: {what} {p} is outside 1-65535")
    if b < a:
        raise NetworkError(f"invalid -p value {text!r}: {what} range {s!r} ends before it starts")
    return a, b


def parse_publish(text: str) -> PortMapping:
    """Parse docker's ``-p [IP:][HOSTPORT:]CTRPORT[/tcp|udp]`` (ports may be ranges ``A-B``).

    Pure.  Raises NetworkError naming the flag value.  IPv6 host addresses are refused: the
    bridge is IPv4 only.
    """
    body, slash, proto = text.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in ("tcp", "udp"):
        raise NetworkError(f"invalid -p value {text!r}: protocol {proto!r} is not tcp or udp")
    if body.startswith("["):
        raise NetworkError(f"invalid -p value {text!r}: IPv6 host addresses are not supported (the bridge is IPv4)")
    parts = body.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise NetworkError(f"invalid -p value {text!r}: expected [IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]")
    host_ip, host = "", ""
    if len(parts) == 3:
        host_ip, host = parts[0], parts[1]
    elif len(parts) == 2:
        host = parts[0]
    if host_ip:
        try:
            addr = ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise NetworkError(f"invalid -p value {text!r}: {host_ip!r} is not an IPv4 address") from None
        host_ip = "" if addr.is_unspecified else str(addr)
    c_lo, c_hi = _parse_port_range(parts[-1], "container port", text)
    h_lo = h_hi = None
    if host:
        h_lo, h_hi = _parse_port_range(host, "host port", text)
        if c_hi != c_lo and h_hi - h_lo != c_hi - c_lo:
            raise NetworkError(f"invalid -p value {text!r}: host range {host} and container range "
                               f"{parts[-1]} differ in length")
    return PortMapping(container_port=c_lo, host_port=h_lo, host_ip=host_ip, protocol=proto,
                       container_port_end=c_hi if c_hi != c_lo else None,
                       host_port_end=h_hi if h_hi != h_lo else None, text=text)


# ---------------------------------------------------------------------------------------------
# configuration and results

@dataclass(frozen=True)
class BridgeConfig:
    """Which bridge (also our nft table's name and the state dir's) and which subnet; the
    bridge takes the subnet's first address, containers the others."""

    name: str
    subnet: ipaddress.IPv4Network

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BridgeConfig:
        env = os.environ if env is None else env
        name = env.get(BRIDGE_ENV) or DEFAULT_BRIDGE
        if not _BRIDGE_NAME.fullmatch(name):
            raise NetworkError(f"{BRIDGE_ENV}={name!r}: not a valid interface name (1-15 of A-Za-z0-9_.-)")
        raw = env.get(SUBNET_ENV) or DEFAULT_SUBNET
        try:
            subnet = ipaddress.IPv4Network(raw, strict=True)
        except ValueError as e:
            raise NetworkError(f"{SUBNET_ENV}={raw!r}: not an IPv4 network ({e})") from None
        if subnet.prefixlen > 29:
            raise NetworkError(f"{SUBNET_ENV}={raw!r}: too small (at most /29)")
        return cls(name, subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def state_dir(self) -> Path:
        return STATE_BASE / self.name

    @property
    def table(self) -> str:  # nft table "ip <bridge>"
        return self.name


@dataclass(frozen=True)
class PublishedPort:
    host_ip: str  # "" = every local address
    host_port: int
    container_port: int
    protocol: str


@dataclass
class Endpoint:
    """A container's place on the bridge.  ``netns`` is the persistent network namespace file
    to give the sandbox (ProcessSpec.network); ``hosts`` maps the names of the store's other
    live containers on the bridge to their addresses (for /etc/hosts)."""

    container_id: str
    netns: Path
    ip: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address
    prefixlen: int
    veth: str
    bridge: str
    ports: list[PublishedPort] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# small host helpers

def _run(args: list[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(args, input=input, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pkg = {"ip": "iproute2", "nft": "nftables", "nsenter": "util-linux"}.get(args[0], args[0])
        raise NetworkError(f"bridge networking needs the {args[0]!r} command (Debian package {pkg})") from None
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2


def _create_netns(path: Path) -> None:
    """A new, empty network namespace kept alive by a bind mount on ``path`` (like `ip netns
    add`).  Made in a short-lived thread: unshare(CLONE_NEWNET) only changes the calling thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_netns(path)  # a leftover of a failed teardown (no lease claims it: we hold the lock)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    failure: list[str] = []

    def worker() -> None:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            failure.append(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
            return
        if _libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), None, _MS_BIND, None) != 0:
            failure.append(f"bind-mounting the netns on {path}: {os.strerror(ctypes.get_errno())}")

    t = threading.Thread(target=worker, name="pybuild-netns")
    t.start()
    t.join()
    if failure:
        with contextlib.suppress(OSError):
            path.unlink()
        raise NetworkError(failure[0])


def _remove_netns(path: Path) -> None:
    """Unmount and delete a netns file; idempotent."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise NetworkError(f"unmounting {path}: {os.strerror(e)}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _ns_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _busy_netns_inodes() -> set[int]:
    """Inodes of the network namespaces some process is in."""
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{pid}/ns/net")  # "net:[4026532281]"
        except OSError:
            continue
        if link.startswith("net:["):
            out.add(int(link[5:-1]))
    return out


def _proc_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): a pid plus this names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _veth_name(container_id: str) -> str:
    return "pb" + hashlib.sha256(container_id.encode()).hexdigest()[:12]


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise NetworkError(f"setting {path} to {value}: {e.strerror}") from None


# ---------------------------------------------------------------------------------------------
# state (leases.json under a flock)

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _load(cfg: BridgeConfig) -> dict:
    try:
        with open(cfg.state_dir / "leases.json") as f:
            state = json.load(f)
    except FileNotFoundError:
        state = {}
    state.setdefault("subnet", str(cfg.subnet))
    state.setdefault("leases", {})
    return state


def _save(cfg: BridgeConfig, state: dict) -> None:
    path = cfg.state_dir / "leases.json"
    tmp = path.with_name(f".leases.{os.getpid()}.{threading.get_native_id()}.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _lease_stale(lease: dict, busy: set[int]) -> bool:
    if _proc_start(lease["owner_pid"]) == lease["owner_start"]:
        return False
    ino = _ns_inode(Path(lease["netns"]))
    return ino is None or ino not in busy


# ---------------------------------------------------------------------------------------------
# bridge, table and forwarding

def _host_routes() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(device, destination) of the main table's IPv4 routes but the default one."""
    out = []
    with open("/proc/net/route") as f:
        next(f)
        for line in f:
            fields = line.split()
            dst, mask = (socket.inet_ntoa(struct.pack("<I", int(x, 16))) for x in (fields[1], fields[7]))
            if mask != "0.0.0.0":
                out.append((fields[0], ipaddress.IPv4Network(f"{dst}/{mask}", strict=False)))
    return out


def _check_overlap(cfg: BridgeConfig) -> None:
    for dev, net in _host_routes():
        if dev != cfg.name and net.overlaps(cfg.subnet):
            raise NetworkError(f"bridge subnet {cfg.subnet} overlaps the host route {net} via "
                               f"{dev}: choose another with {SUBNET_ENV}")
    links = json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in links:
        if link.get("ifname") == cfg.name:
            continue
        for a in link.get("addr_info", []):
            if ipaddress.IPv4Address(a["local"]) in cfg.subnet:
                raise NetworkError(f"bridge subnet {cfg.subnet} contains {a['local']} of "
                                   f"{link.get('ifname')}: choose another with {SUBNET_ENV}")


def _link_exists(name: str) -> bool:
    if os.path.isdir("/sys/class/net"):  # no fork: this runs on every connect and disconnect
        return os.path.lexists(f"/sys/class/net/{name}")
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _ensure_bridge(cfg: BridgeConfig) -> None:
    """Create the bridge, its address and our nft table unless the bridge exists (caller holds
    the lock).  Bridge and table are made together here and removed together by
    ``_teardown_bridge`` (table first), and a bridge without endpoints is torn down before a
    connect, so an existing bridge has its table and the recorded subnet."""
    if not _link_exists(cfg.name):
        _check_overlap(cfg)
        _run(["ip", "-batch", "-"], input=(f"link add {cfg.name} type bridge\n"
                                           f"addr add {cfg.gateway}/{cfg.subnet.prefixlen} dev {cfg.name}\n"
                                           f"link set {cfg.name} up\n"))
        # 127.0.0.1 -> container (published ports from the host) must be routable onto the bridge
        _write_sysctl(f"/proc/sys/net/ipv4/conf/{cfg.name}/route_localnet", "1")
        _run(["nft", "-f", "-"], input=f"""
table ip {cfg.table} {{
    chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
    chain output {{ type nat hook output priority -100; policy accept; }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {cfg.subnet} oifname != "{cfg.name}" masquerade
        ip saddr 127.0.0.0/8 oifname "{cfg.name}" masquerade
        ip saddr {cfg.subnet} oifname "{cfg.name}" ct status dnat masquerade
    }}
}}
""")
    _enable_forwarding()


_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def _enable_forwarding() -> None:
    """ip_forward=1, remembering (host-wide, for all our bridges) that we turned it on."""
    with _locked(STATE_BASE / "forward.lock"):
        if _read_sysctl(_FORWARD) == "0":
            _write_sysctl(_FORWARD, "1")
            (STATE_BASE / "ip_forward.was-0").touch()


def _restore_forwarding() -> None:
    """Set ip_forward back to 0 when we turned it on and no bridge of ours has an endpoint."""
    with _locked(STATE_BASE / "forward.lock"):
        marker = STATE_BASE / "ip_forward.was-0"
        if not marker.exists():
            return
        for d in STATE_BASE.iterdir():
            try:
                with open(d / "leases.json") as f:
                    if json.load(f).get("leases"):
                        return
            except (OSError, ValueError):
                continue
        _write_sysctl(_FORWARD, "0")
        marker.unlink()


def _teardown_bridge(cfg: BridgeConfig) -> None:
    """Remove the bridge and our table (no endpoint is left; caller holds the lock)."""
    _run(["nft", "delete", "table", "ip", cfg.table], check=False)
    if _link_exists(cfg.name):
        _run(["ip", "link", "del", cfg.name])
    _restore_forwarding()


# ---------------------------------------------------------------------------------------------
# ports

def _port_free(host_ip: str, port: int, protocol: str) -> bool:
    """Whether nothing on the host listens on ``host_ip:port`` (SO_REUSEADDR: TIME_WAIT is fine)."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_ip or "0.0.0.0", port))
        except OSError:
            return False
    return True


def _ephemeral_port(host_ip: str, protocol: str) -> int:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host_ip or "0.0.0.0", 0))
        return s.getsockname()[1]


def _resolve_ports(ports: list[PortMapping], state: dict) -> list[PublishedPort]:
    """Concrete host ports for the mappings; refuses ports another endpoint or a host socket has."""
    taken: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for cid, lease in state["leases"].items():
        for p in lease["ports"]:
            taken.setdefault((p["protocol"], p["host_port"]), []).append((p["host_ip"], cid))

    def clash(m: PortMapping, ip: str, port: int) -> str | None:
        for other_ip, cid in taken.get((m.protocol, port), []):
            if not ip or not other_ip or ip == other_ip:
                return f"host port {port}/{m.protocol} is already published by container {cid[:12]}"
        if not _port_free(ip, port, m.protocol):
            return f"{ip or '0.0.0.0'}:{port}/{m.protocol} is already in use on the host"
        return None

    out: list[PublishedPort] = []
    for m in ports:
        hosts = m.host_ports
        if hosts is None:
            pairs = []
            for cp in m.container_ports:
                for _ in range(20):
                    hp = _ephemeral_port(m.host_ip, m.protocol)
                    if clash(m, m.host_ip, hp) is None:
                        break
                else:
                    raise NetworkError(f"-p {m.text}: no free ephemeral host port")
                pairs.append((hp, cp))
        elif len(m.container_ports) == 1 and len(hosts) > 1:
            free = next((hp for hp in hosts if clash(m, m.host_ip, hp) is None), None)
            if free is None:
                raise NetworkError(f"-p {m.text}: every host port in {hosts.start}-{hosts.stop - 1} is taken")
            pairs = [(free, m.container_port)]
        else:
            pairs = list(zip(hosts, m.container_ports))
            for hp, _ in pairs:
                why = clash(m, m.host_ip, hp)
                if why:
                    raise NetworkError(f"-p {m.text}: {why}")
        for hp, cp in pairs:
            out.append(PublishedPort(m.host_ip, hp, cp, m.protocol))
            taken.setdefault((m.protocol, hp), []).append((m.host_ip, "(this container)"))
    return out


def _port_rules(cfg: BridgeConfig, container_id: str, ip: str, ports: list[PublishedPort]) -> str:
    comment = f'comment "{_COMMENT_PREFIX}{container_id}"'
    lines = []
    for p in ports:
        match = f"ip daddr {p.host_ip}" if p.host_ip else "fib daddr type local"
        rule = f"{match} {p.protocol} dport {p.host_port} dnat to {ip}:{p.container_port} {comment}"
        for chain in ("prerouting", "output"):
            lines.append(f"add rule ip {cfg.table} {chain} {rule}")
    return "\n".join(lines) + "\n"


def _delete_rules(cfg: BridgeConfig, keep: set[str] | None, only: str | None = None) -> None:
    """Delete our table's per-container rules: those of ``only``, or of every container not in
    ``keep``."""
    proc = _run(["nft", "-j", "-a", "list", "table", "ip", cfg.table], check=False)
    if proc.returncode != 0:
        return  # no table, no rules
    doomed = []
    for item in json.loads(proc.stdout).get("nftables", []):
        rule = item.get("rule")
        if not rule or not str(rule.get("comment", "")).startswith(_COMMENT_PREFIX):
            continue
        cid = rule["comment"][len(_COMMENT_PREFIX):]
        if (only is not None and cid == only) or (only is None and keep is not None and cid not in keep):
            doomed.append(f"delete rule ip {cfg.table} {rule['chain']} handle {rule['handle']}")
    if doomed:
        _run(["nft", "-f", "-"], input="\n".join(doomed) + "\n")


# ---------------------------------------------------------------------------------------------
# endpoints

def _teardown_endpoint(cfg: BridgeConfig, container_id: str, lease: dict | None) -> None:
    """Remove the veth, nft rules and netns file of one container; idempotent.  Without a
    lease (unknown or already dropped) every rule is checked."""
    veth = _veth_name(container_id)
    if _link_exists(veth):
        _run(["ip", "link", "del", veth])  # deletes the peer in the netns too
    if (lease is None or lease["ports"]) and _link_exists(cfg.name):  # no bridge: no table
        _delete_rules(cfg, None, only=container_id)
    _remove_netns(cfg.state_dir / "netns" / container_id)


def _drop_stale(cfg: BridgeConfig, state: dict, busy: set[int]) -> bool:
    """Tear down and forget the stale endpoints (caller holds the lock); whether there were any."""
    stale = [c for c, lease in state["leases"].items() if _lease_stale(lease, busy)]
    for cid in stale:
        _teardown_endpoint(cfg, cid, state["leases"][cid])
        del state["leases"][cid]
        _save(cfg, state)
    return bool(stale)


def _sweep_orphans(cfg: BridgeConfig, state: dict) -> None:
    """Remove netns files, veths on the bridge and nft rules that no lease accounts for (left
    by a crash or a failed teardown; caller holds the lock)."""
    live = set(state["leases"])
    nsdir = cfg.state_dir / "netns"
    if nsdir.is_dir():
        for name in os.listdir(nsdir):
            if name not in live:
                _remove_netns(nsdir / name)
    if _link_exists(cfg.name):
        veths = {lease["veth"] for lease in state["leases"].values()}
        links = json.loads(_run(["ip", "-j", "link", "show", "master", cfg.name]).stdout or "[]")
        for link in links:
            if link["ifname"] not in veths:
                _run(["ip", "link", "del", link["ifname"]], check=False)
        _delete_rules(cfg, live)  # the table exists only with the bridge


def _hosts(state: dict, root: Path, container_id: str, busy: set[int]) -> dict[str, str]:
    return {lease["name"]: lease["ip"] for cid, lease in sorted(state["leases"].items())
            if cid != container_id and lease.get("name") and lease["root"] == str(root)
            and not _lease_stale(lease, busy)}


def _endpoint(cfg: BridgeConfig, cid: str, lease: dict, hosts: dict[str, str]) -> Endpoint:
    return Endpoint(container_id=cid, netns=Path(lease["netns"]), ip=ipaddress.IPv4Address(lease["ip"]),
                    gateway=cfg.gateway, prefixlen=cfg.subnet.prefixlen, veth=lease["veth"],
                    bridge=cfg.name, ports=[PublishedPort(**p) for p in lease["ports"]], hosts=hosts)


def connect(root: Path, container_id: str, name: str | None, ports: list[PortMapping], *,
            owner_pid: int | None = None, config: BridgeConfig | None = None) -> Endpoint:
    """Put a new network namespace for ``container_id`` on the bridge and publish ``ports``.

    The endpoint belongs to ``owner_pid`` (default: the caller) until ``disconnect`` or until
    it is stale (owner gone, nobody in the netns).  All-or-nothing: on failure every host
    change of this call is undone and NetworkError raised.  Connects of any process are
    serialized by a lock, so two never get the same address or host port.
    """
    cfg = config or BridgeConfig.from_env()
    if not _CONTAINER_ID.fullmatch(container_id):
        raise NetworkError(f"invalid container id {container_id!r}")
    owner = os.getpid() if owner_pid is None else owner_pid
    owner_start = _proc_start(owner)
    if owner_start is None:
        raise NetworkError(f"owner process {owner} does not exist")
    with _locked(cfg.state_dir / "lock"):
        state = _load(cfg)
        if state["subnet"] != str(cfg.subnet) and state["leases"]:
            raise NetworkError(f"bridge {cfg.name} is in use with subnet {state['subnet']}, not {cfg.subnet}")
        state["subnet"] = str(cfg.subnet)
        busy = _busy_netns_inodes()
        if _drop_stale(cfg, state, busy) or not state["leases"]:
            _sweep_orphans(cfg, state)
            if not state["leases"] and _link_exists(cfg.name):
                _teardown_bridge(cfg)  # start from a clean bridge (see _ensure_bridge)
        if container_id in state["leases"]:
            raise NetworkError(f"container {container_id} is already connected to {cfg.name}")
        published = _resolve_ports(ports, state)
        used = {lease["ip"] for lease in state["leases"].values()}
        ip = next((a for a in cfg.subnet.hosts() if a != cfg.gateway and str(a) not in used), None)
        if ip is None:
            raise NetworkError(f"no free address left in {cfg.subnet} ({len(used)} containers on {cfg.name})")
        netns = cfg.state_dir / "netns" / container_id
        lease = {"root": str(root), "name": name, "ip": str(ip), "veth": _veth_name(container_id),
                 "netns": str(netns), "owner_pid": owner, "owner_start": owner_start,
                 "ports": [p.__dict__ for p in published]}
        state["leases"][container_id] = lease
        _save(cfg, state)  # before any host change: a crash from here on leaves a stale lease
        try:
            _ensure_bridge(cfg)
            _create_netns(netns)
            veth = lease["veth"]
            _run(["ip", "-batch", "-"], input=(f"link add {veth} type veth peer name eth0 netns {netns}\n"
                                               f"link set {veth} master {cfg.name} up\n"
                                               f"link set {veth} type bridge_slave hairpin on\n"))
            _run(["nsenter", f"--net={netns}", "ip", "-batch", "-"], input=(
                "link set lo up\n"
                f"addr add {ip}/{cfg.subnet.prefixlen} dev eth0\n"
                "link set eth0 up\n"
                f"route add default via {cfg.gateway} dev eth0\n"))
            if published:
                _run(["nft", "-f", "-"], input=_port_rules(cfg, container_id, str(ip), published))
        except BaseException:
            with contextlib.suppress(NetworkError, OSError):
                _teardown_endpoint(cfg, container_id, lease)
            del state["leases"][container_id]
            _save(cfg, state)
            if not state["leases"]:
                with contextlib.suppress(NetworkError, OSError):
                    _teardown_bridge(cfg)
            raise
        return _endpoint(cfg, container_id, lease, _hosts(state, root, container_id, busy))


def _config_holding(container_id: str) -> BridgeConfig:
    """The bridge whose leases name ``container_id`` (the environment may have changed since
    the connect), else the environment's."""
    if STATE_BASE.is_dir():
        for d in sorted(STATE_BASE.iterdir()):
            try:
                with open(d / "leases.json") as f:
                    state = json.load(f)
            except (OSError, ValueError):
                continue
            if container_id in state.get("leases", {}) and _BRIDGE_NAME.fullmatch(d.name):
                return BridgeConfig(d.name, ipaddress.IPv4Network(state["subnet"]))
    return BridgeConfig.from_env()


def disconnect(root: Path, container_id: str, *, config: BridgeConfig | None = None) -> BridgeConfig | None:
    """Remove the container's veth, nft rules, netns file and address lease.  Idempotent (also
    for an id that was never connected); the bridge and table go with the last endpoint.
    Returns the bridge it was on (None for an invalid id)."""
    if not _CONTAINER_ID.fullmatch(container_id):
        return None
    cfg = config or _config_holding(container_id)
    with _locked(cfg.state_dir / "lock"):
        state = _load(cfg)
        _teardown_endpoint(cfg, container_id, state["leases"].get(container_id))
        if state["leases"].pop(container_id, None) is not None:
            _save(cfg, state)
        if not state["leases"] and _link_exists(cfg.name):
            _teardown_bridge(cfg)
    return cfg


def set_owner(root: Path, container_id: str, pid: int, *, config: BridgeConfig | None = None) -> None:
    """Hand the endpoint over to process ``pid`` (e.g. a supervisor that outlives the caller)."""
    cfg = config or _config_holding(container_id)
    start = _proc_start(pid)
    if start is None:
        raise NetworkError(f"owner process {pid} does not exist")
    with _locked(cfg.state_dir / "lock"):
        state = _load(cfg)
        lease = state["leases"].get(container_id)
        if lease is None:
            raise NetworkError(f"container {container_id} is not connected to {cfg.name}")
        lease.update(owner_pid=pid, owner_start=start)
        _save(cfg, state)


def lookup(container_id: str, *, config: BridgeConfig | None = None) -> Endpoint | None:
    """The container's endpoint as recorded (None if it has none); ``hosts`` is left empty."""
    cfg = config or _config_holding(container_id)
    with _locked(cfg.state_dir / "lock"):
        lease = _load(cfg)["leases"].get(container_id)
    return None if lease is None else _endpoint(cfg, container_id, lease, {})


def update_hosts(root: Path, write: Callable[[str, str, dict[str, str]], None], *,
                 config: BridgeConfig | None = None) -> None:
    """Call ``write(container_id, ip, hosts)`` for every live endpoint of store ``root`` on the
    bridge, ``hosts`` being the other named containers' addresses (what its /etc/hosts should
    list), under the bridge's lock: calls of several processes do not interleave, and each sees
    the leases as they are after the connect or disconnect that triggered it."""
    cfg = config or BridgeConfig.from_env()
    if not cfg.state_dir.is_dir():
        return
    with _locked(cfg.state_dir / "lock"):
        state = _load(cfg)
        busy = _busy_netns_inodes()
        for cid, lease in sorted(state["leases"].items()):
            if lease["root"] == str(root) and not _lease_stale(lease, busy):
                write(cid, lease["ip"], _hosts(state, root, cid, busy))


def cleanup_stale(root: Path) -> None:
    """Remove what dead containers left behind on every pybuild bridge of this host: endpoints
    whose owner process is gone and whose netns is empty, netns files, veths and nft rules no
    lease accounts for; a bridge left without endpoints is removed with its table.  Safe to call
    concurrently with ``connect`` (same lock); called at the start of `run` and `ps`."""
    if not STATE_BASE.is_dir():
        return
    busy = None
    for d in sorted(STATE_BASE.iterdir()):
        if not d.is_dir() or not _BRIDGE_NAME.fullmatch(d.name):
            continue
        with _locked(d / "lock"):
            try:
                with open(d / "leases.json") as f:
                    subnet = json.load(f).get("subnet", DEFAULT_SUBNET)
            except (OSError, ValueError):
                subnet = DEFAULT_SUBNET
            cfg = BridgeConfig(d.name, ipaddress.IPv4Network(subnet))
            state = _load(cfg)
            if state["leases"]:
                busy = _busy_netns_inodes() if busy is None else busy
                if not _drop_stale(cfg, state, busy):
                    continue  # every endpoint is alive: nothing was left behind
            elif not _link_exists(cfg.name) and not any((d / "netns").glob("*")):
                continue  # nothing of this bridge is on the host
            _sweep_orphans(cfg, state)
            if not state["leases"]:
                _teardown_bridge(cfg)
