"""runtime.network: bridge, veth endpoints, address leases, published ports, cleanup.

Root tests use their own bridge (pbt<pid> on 10.89.2xx.0/24, or the subnet of a host route to
check the overlap refusal), so they never meet containers the developer runs on pybuild0;
all traffic stays between this host and namespaces the tests create.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from pybuild.runtime import network
from pybuild.runtime.network import (
    BridgeConfig,
    NetworkError,
    PortMapping,
    parse_publish,
)
from pybuild.sandbox import runner
from pybuild.sandbox.runner import ProcessSpec, RootfsSpec
from sandbox_helpers import ENV, run_captured

# -- -p parsing (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("80", PortMapping(80, text="80")),
    ("8080:80", PortMapping(80, 8080, text="8080:80")),
    ("127.0.0.1:18080:80", PortMapping(80, 18080, "127.0.0.1", text="127.0.0.1:18080:80")),
    ("127.0.0.1::80", PortMapping(80, None, "127.0.0.1", text="127.0.0.1::80")),
    ("0.0.0.0:53:53/udp", PortMapping(53, 53, "", "udp", text="0.0.0.0:53:53/udp")),
    ("8080:80/TCP", PortMapping(80, 8080, text="8080:80/TCP")),
    ("8000-8001:80-81", PortMapping(80, 8000, container_port_end=81, host_port_end=8001, text="8000-8001:80-81")),
    ("8000-8010:80", PortMapping(80, 8000, host_port_end=8010, text="8000-8010:80")),
    ("80-81", PortMapping(80, container_port_end=81, text="80-81")),
])
def test_parse_publish(text, want):
    assert parse_publish(text) == want


def test_port_ranges():
    m = parse_publish("8000-8002:90-92/udp")
    assert list(m.container_ports) == [90, 91, 92]
    assert list(m.host_ports) == [8000, 8001, 8002]
    assert parse_publish("80").host_ports is None


@pytest.mark.parametrize("text, msg", [
    ("", "expected \\[IP:\\]\\[HOSTPORT:\\]CONTAINERPORT"),
    ("8080:", "expected"),
    ("1:2:3:4", "expected"),
    ("http", "container port 'http' is not a port"),
    ("0:80", "host port 0 is outside 1-65535"),
    ("70000", "container port 70000 is outside"),
    ("80/sctp", "protocol 'sctp' is not tcp or udp"),
    ("localhost:80:80", "'localhost' is not an IPv4 address"),
    ("[::1]:80:80", "IPv6 host addresses are not supported"),
    ("8000-8002:80-81", "differ in length"),
    ("81-80", "ends before it starts"),
    ("+80", "is not a port"),
])
def test_parse_publish_errors_name_the_value(text, msg):
    with pytest.raises(NetworkError, match=msg) as e:
        parse_publish(text)
    assert f"invalid -p value {text!r}" in str(e.value)


def test_bridge_config_from_env():
    c = BridgeConfig.from_env({})
    assert (c.name, str(c.subnet), str(c.gateway)) == ("pybuild0", "10.89.0.0/24", "10.89.0.1")
    c = BridgeConfig.from_env({"PYBUILD_BRIDGE": "br7", "PYBUILD_BRIDGE_SUBNET": "10.7.0.0/16"})
    assert (c.name, str(c.gateway), c.subnet.prefixlen) == ("br7", "10.7.0.1", 16)
    with pytest.raises(NetworkError, match="PYBUILD_BRIDGE_SUBNET='10.7.0.1/16': not an IPv4 network"):
        BridgeConfig.from_env({"PYBUILD_BRIDGE_SUBNET": "10.7.0.1/16"})
    with pytest.raises(NetworkError, match="PYBUILD_BRIDGE='a-very-long-bridge-name'"):
        BridgeConfig.from_env({"PYBUILD_BRIDGE": "a-very-long-bridge-name"})
    with pytest.raises(NetworkError, match="too small"):
        BridgeConfig.from_env({"PYBUILD_BRIDGE_SUBNET": "10.7.0.0/30"})


# -- on the host (root) ----------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/bin/busybox")
    or not all(shutil.which(t) for t in ("ip", "nft", "nsenter")),
    reason="needs root, /bin/busybox and the ip, nft and nsenter commands (.ci/run installs them)")

# per test session: two sessions on one host (developers, CI jobs) never share a bridge, an
# address range, container ids (veth names derive from them) or host ports
CFG = BridgeConfig(f"pbt{os.getpid() % 100000}", ipaddress.IPv4Network(f"10.89.{200 + os.getpid() % 50}.0/24"))
ID = f"t{os.getpid()}c"
P = 20000 + (os.getpid() % 600) * 20
ROOT = Path("/tmp/pybuild-network-test-store")
APPLETS = ("sh", "cat", "echo", "ping", "nc", "wget", "httpd", "sleep", "seq", "ip", "ifconfig", "route")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("netimage")
    (root / "bin").mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for a in APPLETS:
        (root / "bin" / a).symlink_to("busybox")
    for d in ("etc", "tmp", "www"):
        (root / d).mkdir()
    (root / "www/index.html").write_text("hello from the container\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    os.chmod(root, 0o755)
    return root


def _nft_table() -> str:
    p = subprocess.run(["nft", "list", "table", "ip", CFG.table], capture_output=True, text=True, check=False)
    return p.stdout if p.returncode == 0 else ""


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False).returncode == 0


def _leases() -> dict:
    try:
        return json.loads((CFG.state_dir / "leases.json").read_text())["leases"]
    except FileNotFoundError:
        return {}


@pytest.fixture(scope="module", autouse=True)
def _remove_state_dirs():
    """The state dirs of this session's bridges go with it (nothing is left in them by then)."""
    yield
    for name in (CFG.name, f"pbo{os.getpid() % 100000}"):
        shutil.rmtree(network.STATE_BASE / name, ignore_errors=True)


@pytest.fixture
def bridge():
    """Nothing of the test bridge before; after the test, whatever it left is removed and checked."""
    for cid in list(_leases()):
        network.disconnect(ROOT, cid, config=CFG)
    yield CFG
    runner.abort_all()
    for cid in list(_leases()):
        network.disconnect(ROOT, cid, config=CFG)
    assert not _link_exists(CFG.name)
    assert _nft_table() == ""


def sh(image, script, endpoint=None, **kw) -> tuple[int, str, str]:
    extra = {}
    if endpoint is not None:
        extra = {"network": str(endpoint.netns), "extra_hosts": dict(endpoint.hosts)}
    spec = ProcessSpec(["sh", "-c", script], dict(ENV), **extra, **kw)
    st, out, err = run_captured(spec, RootfsSpec([image], None, None))
    return st.code, out, err


def in_background(image, script, endpoint) -> threading.Thread:
    t = threading.Thread(target=sh, args=(image, script, endpoint), daemon=True)
    t.start()
    return t


@needs_root
def test_two_endpoints_talk_by_ip_and_by_name(image, bridge):
    one = network.connect(ROOT, ID + "01", "one", [], config=bridge)
    two = network.connect(ROOT, ID + "02", "two", [], config=bridge)
    assert one.ip != two.ip and {one.ip, two.ip} <= set(bridge.subnet.hosts())
    assert one.gateway == two.gateway == bridge.gateway
    assert one.hosts == {} and two.hosts == {"one": str(one.ip)}
    assert one.netns.exists() and two.netns.exists()
    # the container's side: eth0 with the address, default route via the bridge
    code, out, err = sh(image, "ip -4 addr show eth0; ip route", one)
    assert code == 0, err
    assert f"inet {one.ip}/24" in out and f"default via {bridge.gateway} dev eth0" in out
    code, out, err = sh(image, f"ping -c 1 -W 5 {one.ip} && ping -c 1 -W 5 one", two)
    assert code == 0, out + err
    # TCP by name: one listens once, two connects (retrying until the listener is up)
    # -e: the reply does not depend on when `echo` runs (with `echo ... | nc -l`, a loaded machine
    # could let the client's EOF reach nc before echo's line did, and nc closed without it)
    server = in_background(image, "nc -l -p 5000 -e echo hello-from-one", one)
    code, out, err = sh(image, "for i in $(seq 100); do nc one 5000 </dev/null && exit 0; sleep 0.1; done; exit 1",
                        two)
    server.join()
    assert code == 0, err
    assert out == "hello-from-one\n"


@needs_root
def test_reaches_the_host_through_the_gateway(image, bridge):
    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    ep = network.connect(ROOT, ID + "03", None, [], config=bridge)
    got = []
    t = threading.Thread(target=lambda: got.append(srv.accept()[0].recv(100)), daemon=True)
    t.start()
    code, _, err = sh(image, f"echo via-gateway | nc {bridge.gateway} {port}", ep)
    t.join(timeout=30)
    srv.close()
    assert code == 0, err
    assert got == [b"via-gateway\n"]


def _fetch(url: str, attempts: int = 200) -> str:
    """GET ``url``, retrying while the server in the container is still starting."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise AssertionError(f"{url}: {last}")


@needs_root
def test_publish_to_localhost_and_ephemeral(image, bridge):
    ep = network.connect(ROOT, ID + "04", "web",
                         [parse_publish(f"127.0.0.1:{P}:80"), parse_publish("127.0.0.1::80")], config=bridge)
    fixed, ephemeral = ep.ports
    assert (fixed.host_ip, fixed.host_port, fixed.container_port, fixed.protocol) == ("127.0.0.1", P, 80, "tcp")
    assert ephemeral.host_port > 0 and ephemeral.container_port == 80
    in_background(image, "httpd -f -p 80 -h /www", ep)
    assert _fetch(f"http://127.0.0.1:{P}/") == "hello from the container\n"
    assert _fetch(f"http://127.0.0.1:{ephemeral.host_port}/") == "hello from the container\n"
    table = _nft_table()
    assert f"dnat to {ep.ip}:80" in table and f'comment "pybuild:{ID}04"' in table


@needs_root
def test_publish_on_all_addresses_and_udp(image, bridge):
    ep = network.connect(ROOT, ID + "05", None, [parse_publish(f"{P + 1}:80"), parse_publish(f"{P + 2}:7/udp")],
                         config=bridge)
    in_background(image, "httpd -f -p 80 -h /www", ep)
    assert _fetch(f"http://127.0.0.1:{P + 1}/") == "hello from the container\n"
    # through a host address from containers: another one, and the publisher itself (hairpin)
    other = network.connect(ROOT, ID + "55", None, [], config=bridge)
    for who in (other, ep):
        code, out, err = sh(image, f"wget -q -O - http://{bridge.gateway}:{P + 1}/", who)
        assert (code, out) == (0, "hello from the container\n"), err
    # UDP (busybox has no UDP server applet): a Python echo server in the endpoint's netns
    server = subprocess.Popen(["nsenter", f"--net={ep.netns}", sys.executable, "-c", UDP_PONG])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            reply = None
            for _ in range(150):
                s.sendto(b"ping\n", ("127.0.0.1", P + 2))
                try:
                    reply, source = s.recvfrom(100)
                    break
                except OSError:
                    continue
        assert reply == b"pong ping\n"
        assert source == ("127.0.0.1", P + 2)  # the reply is un-NATed back to the published address
    finally:
        server.kill()
        server.wait()


UDP_PONG = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7))
data, peer = s.recvfrom(100)
s.sendto(b"pong " + data, peer)
"""


@needs_root
def test_port_conflicts_are_refused_and_leave_nothing(image, bridge):
    network.connect(ROOT, ID + "06", "a", [parse_publish(f"127.0.0.1:{P + 3}:80")], config=bridge)
    with pytest.raises(NetworkError, match=rf"-p {P + 3}:80: host port {P + 3}/tcp is already published by container {ID}06"):
        network.connect(ROOT, ID + "07", "b", [parse_publish(f"{P + 3}:80")], config=bridge)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        with pytest.raises(NetworkError, match=f"127.0.0.1:{busy}/tcp is already in use on the host"):
            network.connect(ROOT, ID + "07", "b", [parse_publish(f"127.0.0.1:{busy}:80")], config=bridge)
    assert set(_leases()) == {ID + "06"}
    assert not (bridge.state_dir / "netns" / (ID + "07")).exists()
    assert not _link_exists(network._veth_name(ID + "07"))
    # the same port on UDP is another port
    network.connect(ROOT, ID + "07", "b", [parse_publish(f"127.0.0.1:{P + 3}:80/udp")], config=bridge)
    with pytest.raises(NetworkError, match="already connected"):
        network.connect(ROOT, ID + "07", "b", [], config=bridge)


@needs_root
def test_disconnect_removes_everything_and_is_idempotent(image, bridge):
    a = network.connect(ROOT, ID + "08", "a", [parse_publish(f"127.0.0.1:{P + 4}:80")], config=bridge)
    b = network.connect(ROOT, ID + "09", "b", [parse_publish(f"127.0.0.1:{P + 5}:80")], config=bridge)
    assert _link_exists(a.veth) and _link_exists(bridge.name)
    with open("/proc/mounts") as f:
        assert str(a.netns) in f.read()
    network.disconnect(ROOT, ID + "08")  # no config: the bridge holding the lease is found
    assert not _link_exists(a.veth) and not a.netns.exists()
    with open("/proc/mounts") as f:
        assert str(a.netns) not in f.read()
    table = _nft_table()
    assert ID + "08" not in table and str(P + 4) not in table
    assert f'comment "pybuild:{ID}09"' in table  # the other container's rules stay
    assert set(_leases()) == {ID + "09"}
    network.disconnect(ROOT, ID + "08", config=bridge)  # again: nothing to do
    network.disconnect(ROOT, "never-connected", config=bridge)
    # the last endpoint takes the bridge and the table with it
    network.disconnect(ROOT, ID + "09", config=bridge)
    assert not _link_exists(b.veth) and not _link_exists(bridge.name) and _nft_table() == ""
    assert _leases() == {}


def _connect_in_child(cid: str, name: str, ports: str = "", hold: bool = False) -> subprocess.Popen:
    """A separate process that connects and prints the endpoint; with ``hold`` it stays until
    its stdin closes, otherwise it exits at once without disconnecting (a crashed `run`)."""
    code = f"""
import ipaddress, json, sys
from pathlib import Path
from pybuild.runtime import network
cfg = network.BridgeConfig({CFG.name!r}, ipaddress.IPv4Network({str(CFG.subnet)!r}))
ports = [network.parse_publish(p) for p in {ports!r}.split()]
try:
    ep = network.connect(Path({str(ROOT)!r}), {cid!r}, {name!r}, ports, config=cfg)
    print(json.dumps({{"ip": str(ep.ip), "netns": str(ep.netns)}}), flush=True)
except network.NetworkError as e:
    print(json.dumps({{"error": str(e)}}), flush=True)
if {hold!r}:
    sys.stdin.read()
"""
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@needs_root
def test_concurrent_connects_never_share_an_address_or_port(bridge):
    children = [_connect_in_child(f"{ID}1{i}", f"n{i}", f"127.0.0.1:{P + 6}:80" if i < 2 else "", hold=True)
                for i in range(6)]
    results = [json.loads(c.stdout.readline()) for c in children]
    try:
        ips = [r["ip"] for r in results if "ip" in r]
        errors = [r["error"] for r in results if "error" in r]
        assert len(errors) == 1 and f"{P + 6}/tcp is already published" in errors[0]
        assert len(ips) == 5 and len(set(ips)) == 5
        assert {r["ip"] for r in results if "ip" in r} == {lease["ip"] for lease in _leases().values()}
    finally:
        for c in children:
            c.stdin.close()
            c.wait()


@needs_root
def test_cleanup_stale_after_a_crash(image, bridge):
    child = _connect_in_child(ID + "20", "crashed", f"127.0.0.1:{P + 7}:80")
    crashed = json.loads(child.stdout.readline())
    child.wait()
    veth = network._veth_name(ID + "20")
    assert _link_exists(veth) and Path(crashed["netns"]).exists() and ID + "20" in _nft_table()
    # a crash between two steps: a netns file, a veth and a rule that no lease accounts for
    orphan_ns = bridge.state_dir / "netns" / (ID + "21")
    network._create_netns(orphan_ns)
    subprocess.run(["ip", "link", "add", "pborphan1", "type", "veth", "peer", "name", "pborphan2"], check=True)
    subprocess.run(["ip", "link", "set", "pborphan1", "master", bridge.name], check=True)
    subprocess.run(["nft", "add", "rule", "ip", bridge.table, "output", "tcp", "dport", str(P + 8), "dnat", "to",
                    f"{bridge.subnet[99]}:80", "comment", f'"pybuild:{ID}21"'], check=True)

    network.cleanup_stale(ROOT)
    assert _leases() == {}
    assert not _link_exists(veth) and not _link_exists("pborphan1") and not _link_exists("pborphan2")
    assert not Path(crashed["netns"]).exists() and not orphan_ns.exists()
    assert not _link_exists(bridge.name) and _nft_table() == ""


@needs_root
def test_an_endpoint_in_use_is_not_stale(image, bridge):
    # the owner (a supervisor, say) died, but a process is still in the netns: keep it
    child = _connect_in_child(ID + "30", "busy")
    info = json.loads(child.stdout.readline())
    child.wait()
    ep = network.lookup(ID + "30", config=bridge)
    assert ep is not None and str(ep.netns) == info["netns"]
    done = threading.Event()
    t = threading.Thread(target=lambda: (sh(image, "sleep 600", ep), done.set()), daemon=True)
    t.start()
    ino = os.stat(ep.netns).st_ino
    for _ in range(500):
        if ino in network._busy_netns_inodes():
            break
        time.sleep(0.01)
    network.cleanup_stale(ROOT)
    assert ID + "30" in _leases() and ep.netns.exists()
    runner.abort_all()
    t.join()
    network.cleanup_stale(ROOT)
    assert _leases() == {} and not ep.netns.exists()


@needs_root
def test_set_owner_hands_the_endpoint_over(bridge):
    child = _connect_in_child(ID + "40", "handed", hold=True)
    json.loads(child.stdout.readline())
    holder = subprocess.Popen(["sleep", "600"])
    try:
        network.set_owner(ROOT, ID + "40", holder.pid, config=bridge)
        child.stdin.close()
        child.wait()
        network.cleanup_stale(ROOT)
        assert ID + "40" in _leases()
    finally:
        holder.kill()
        holder.wait()
    network.cleanup_stale(ROOT)
    assert _leases() == {}
    with pytest.raises(NetworkError, match="not connected"):
        network.set_owner(ROOT, ID + "40", os.getpid(), config=bridge)


@needs_root
def test_a_subnet_overlapping_a_host_route_is_refused(bridge):
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show"], capture_output=True, text=True,
                                       check=True).stdout)
    nets = [r["dst"] for r in routes if r.get("dst", "default") != "default" and "/" in r["dst"]
            and not r.get("dev", "").startswith("pb")]
    if not nets:
        pytest.skip("the host has no non-default IPv4 route to overlap with")
    cfg = BridgeConfig(f"pbo{os.getpid() % 100000}", ipaddress.IPv4Network(nets[0]))
    with pytest.raises(NetworkError, match=f"overlaps the host route {nets[0]}"):
        network.connect(ROOT, ID + "50", None, [], config=cfg)
    assert not _link_exists(cfg.name)
    assert not (cfg.state_dir / "netns" / (ID + "50")).exists()
