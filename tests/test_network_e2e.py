"""`pybuild run` on the bridge network, end to end (issue 9): a published busybox httpd
fetched from the host, two containers talking by name, nothing left after rm / --rm / a crash.

The containers use a bridge of this test session (PYBUILD_BRIDGE=pbe<pid>, its own subnet), so
these tests never meet what a developer runs on pybuild0, nor another session's containers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest
from pybuild.runtime import network

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft", "nsenter")),
    reason="needs root and the ip, nft and nsenter commands (.ci/run installs them)")

BRIDGE = f"pbe{os.getpid() % 100000}"
NET = f"10.89.{150 + os.getpid() % 50}"
SUBNET = f"{NET}.0/24"


@pytest.fixture
def bridge_cli(cli, monkeypatch):
    monkeypatch.setenv("PYBUILD_BRIDGE", BRIDGE)
    monkeypatch.setenv("PYBUILD_BRIDGE_SUBNET", SUBNET)
    yield cli
    for name in ("web", "server"):
        cli("rm", "-f", name)
    assert _host_state() == (False, "", [], {})
    shutil.rmtree(network.STATE_BASE / BRIDGE, ignore_errors=True)


def _host_state() -> tuple[bool, str, list[str], dict]:
    """(bridge exists, our nft table, netns files, leases) of the test bridge."""
    table = subprocess.run(["nft", "list", "table", "ip", BRIDGE], capture_output=True, text=True, check=False)
    nsdir = network.STATE_BASE / BRIDGE / "netns"
    try:
        leases = json.loads((network.STATE_BASE / BRIDGE / "leases.json").read_text())["leases"]
    except FileNotFoundError:
        leases = {}
    return (os.path.exists(f"/sys/class/net/{BRIDGE}"), table.stdout if table.returncode == 0 else "",
            sorted(os.listdir(nsdir)) if nsdir.is_dir() else [], leases)




def _fetch(url: str, attempts: int = 300) -> str:
    last: Exception | None = None
    for _ in range(attempts):  # the server in the container may still be starting
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise AssertionError(f"{url}: {last}")


def test_published_httpd_fetched_from_the_host(bridge_cli, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("served by pybuild run\n")
    r = bridge_cli("run", "-d", "--name", "web", "-p", "127.0.0.1:18080:80", "-v", f"{www}:/www:ro",
                   "busybox:latest", "httpd", "-f", "-p", "80", "-h", "/www", check=True)
    cid = r.stdout.strip()
    assert _fetch("http://127.0.0.1:18080/") == "served by pybuild run\n"
    up, table, netns, leases = _host_state()
    assert up and f'comment "pybuild:{cid}"' in table and netns == [cid] and set(leases) == {cid}
    inspect = json.loads(bridge_cli("inspect", "web", check=True).stdout)
    assert inspect[0]["NetworkSettings"]["IPAddress"] == leases[cid]["ip"]
    assert "127.0.0.1:18080" in bridge_cli("ps", check=True).stdout

    bridge_cli("rm", "-f", "web", check=True)
    assert _host_state() == (False, "", [], {})  # bridge, table, netns and lease gone
    assert not os.path.exists(f"/sys/class/net/{network._veth_name(cid)}")
    with pytest.raises(OSError):
        urllib.request.urlopen("http://127.0.0.1:18080/", timeout=2)


def test_two_containers_talk_over_the_bridge_by_name(bridge_cli):
    bridge_cli("run", "-d", "--name", "server", "busybox:latest", "sh", "-c",
               "nc -ll -p 5000 -e echo hello-over-the-bridge", check=True)  # see test_network.py
    r = bridge_cli("run", "--rm", "busybox:latest", "sh", "-c",
                   "grep -w server /etc/hosts && ping -c 1 -W 5 server >/dev/null && "
                   "for i in $(seq 300); do nc server 5000 </dev/null && exit 0; sleep 0.05; done; exit 1")
    assert r.code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[1:] == ["server"] and lines[0].startswith(NET + ".")
    assert lines[-1] == "hello-over-the-bridge"
    # the --rm client left nothing: only the server's endpoint remains
    _, _, netns, leases = _host_state()
    assert len(netns) == 1 and [lease["name"] for lease in leases.values()] == ["server"]


def test_hosts_files_follow_containers_joining_and_leaving(bridge_cli):
    # the first container learns the second's name when it joins, and forgets it when it goes
    # (podman's behaviour; the file is rewritten in place under the running container)
    bridge_cli("run", "-d", "--name", "server", "busybox:latest", "sleep", "300", check=True)
    assert "web" not in bridge_cli("exec", "server", "cat", "/etc/hosts", check=True).stdout
    bridge_cli("run", "-d", "--name", "web", "busybox:latest", "sleep", "300", check=True)
    hosts = bridge_cli("exec", "server", "cat", "/etc/hosts", check=True).stdout
    web = [ln.split() for ln in hosts.splitlines() if ln.endswith("\tweb")]
    assert len(web) == 1 and web[0][0].startswith(NET + "."), hosts
    r = bridge_cli("exec", "server", "ping", "-c", "1", "-W", "5", "web")
    assert r.code == 0, r.output
    own = bridge_cli("exec", "web", "cat", "/etc/hosts", check=True).stdout
    hostname = bridge_cli("exec", "web", "hostname", check=True).stdout.strip()
    # its own name on its own address (as docker writes it: `hostname -i` works), then the others
    assert [ln.split()[1] for ln in own.splitlines() if ln.startswith(NET + ".")] == [hostname, "server"]
    assert f"{web[0][0]}\t{hostname}" in own.splitlines()
    bridge_cli("rm", "-f", "web", check=True)
    hosts = bridge_cli("exec", "server", "cat", "/etc/hosts", check=True).stdout
    assert "web" not in hosts and "localhost" in hosts


def test_outbound_traffic_is_masqueraded_to_the_host(bridge_cli):
    # a TCP server on the host's loopback is not reachable from the container, but one on the
    # bridge's gateway address is: the container has a default route through the bridge
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got: list[bytes] = []
    threading.Thread(target=lambda: got.append(srv.accept()[0].recv(100)), daemon=True).start()
    r = bridge_cli("run", "--rm", "busybox:latest", "sh", "-c",
                   f"ip route | grep default; echo from-container | nc {NET}.1 {port}")
    srv.close()
    assert r.code == 0, r.output
    assert f"default via {NET}.1" in r.stdout
    assert got == [b"from-container\n"]


def test_rm_flag_leaves_no_network_state(bridge_cli):
    r = bridge_cli("run", "--rm", "-p", "127.0.0.1::80", "busybox:latest", "sh", "-c", "ip -4 addr show eth0")
    assert r.code == 0, r.output
    assert f"inet {NET}." in r.stdout
    assert _host_state() == (False, "", [], {})  # veth (with the bridge), rules, netns, lease


def test_a_killed_supervisor_is_cleaned_on_next_start(bridge_cli):
    cid = bridge_cli("run", "-d", "--name", "web", "-p", "127.0.0.1::80", "busybox:latest",
                     "httpd", "-f", "-p", "80", check=True).stdout.strip()
    state = json.loads((bridge_cli.root / "containers" / cid / "state.json").read_text())
    holder = state.get("SupervisorPid") or state.get("Pid")
    for _ in range(300):
        leases = _host_state()[3]
        if cid in leases:
            break
        time.sleep(0.05)
    assert cid in leases
    os.kill(holder, signal.SIGKILL)  # the supervisor dies; PDEATHSIG takes the container with it
    for _ in range(300):
        if not os.path.exists(f"/proc/{holder}"):
            break
        time.sleep(0.05)
    bridge_cli("ps", "-a", check=True)  # the next pybuild start cleans up
    assert _host_state() == (False, "", [], {})


def test_bad_publish_value_is_a_usage_error(bridge_cli):
    r = bridge_cli("run", "--rm", "-p", "80/sctp", "busybox:latest", "true")
    assert r.code == 125
    assert "80/sctp" in r.stderr and "tcp or udp" in r.stderr


def _ps_column(out: str, name: str, column: str) -> str:
    """The ``column`` cell of container ``name``'s row in `ps` output (cells sit under their headers)."""
    lines = out.splitlines()
    header = lines[0]
    start = header.index(column)
    following = [header.index(h) for h in ("IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")
                 if header.index(h) > start]
    end = min(following) if following else None
    rows = [ln for ln in lines[1:] if ln.rstrip().endswith("   " + name)]
    assert len(rows) == 1, out
    return rows[0][start:end].strip()


def test_ephemeral_published_port_is_shown_and_reachable(bridge_cli, tmp_path):
    # `-p 80` picks a free host port: ps, inspect and port show it as docker does, and it serves
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("through an ephemeral port\n")
    cid = bridge_cli("run", "-d", "--name", "web", "-p", "80", "-p", "127.0.0.1:18081:81/udp",
                     "-v", f"{www}:/www:ro", "busybox:latest", "httpd", "-f", "-p", "80", "-h", "/www",
                     check=True).stdout.strip()
    leases = _host_state()[3]
    tcp = [p for p in leases[cid]["ports"] if p["protocol"] == "tcp"]
    assert len(tcp) == 1 and tcp[0]["container_port"] == 80
    hp = tcp[0]["host_port"]

    ports = _ps_column(bridge_cli("ps", check=True).stdout, "web", "PORTS")
    assert ports == f"0.0.0.0:{hp}->80/tcp, 127.0.0.1:18081->81/udp"
    info = json.loads(bridge_cli("inspect", "web", check=True).stdout)[0]
    assert info["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(hp)}],
                                                "81/udp": [{"HostIp": "127.0.0.1", "HostPort": "18081"}]}
    assert info["HostConfig"]["PortBindings"] == ["80", "127.0.0.1:18081:81/udp"]  # what was asked
    assert bridge_cli("port", "web", check=True).stdout == \
        f"80/tcp -> 0.0.0.0:{hp}\n81/udp -> 127.0.0.1:18081\n"
    assert bridge_cli("port", "web", "80", check=True).stdout == f"0.0.0.0:{hp}\n"
    assert bridge_cli("port", cid[:12], "81/udp", check=True).stdout == "127.0.0.1:18081\n"
    r = bridge_cli("port", "web", "81")  # 81/tcp is not published
    assert r.code == 1 and "No public port '81' published for web" in r.stderr and not r.stdout
    assert _fetch(f"http://127.0.0.1:{hp}/") == "through an ephemeral port\n"


def test_exited_container_shows_no_ports(bridge_cli):
    bridge_cli("run", "-d", "--name", "web", "-p", "80", "-p", "127.0.0.1:18082:80", "busybox:latest",
               "true", check=True)
    for _ in range(300):
        if json.loads(bridge_cli("inspect", "web", check=True).stdout)[0]["State"]["Status"] == "exited":
            break
        time.sleep(0.05)
    assert _ps_column(bridge_cli("ps", "-a", check=True).stdout, "web", "PORTS") == ""
    info = json.loads(bridge_cli("inspect", "web", check=True).stdout)[0]
    assert info["State"]["Status"] == "exited" and info["NetworkSettings"]["Ports"] == {}
    assert info["HostConfig"]["PortBindings"] == ["80", "127.0.0.1:18082:80"]
    r = bridge_cli("port", "web")
    assert r.code == 0 and r.stdout == ""
    r = bridge_cli("port", "web", "80/tcp")
    assert r.code == 1 and "No public port '80/tcp' published for web" in r.stderr


def test_ps_ports_column_is_dockers():
    # docker's DisplayablePorts: sorted by container port, host IP, host port, protocol; runs of
    # ports published under their own number grouped into ranges, other mappings one by one
    from pybuild.commands.ps import ports_text

    def port(ip, public, private, proto="tcp"):
        return {"IP": ip, "PublicPort": public, "PrivatePort": private, "Type": proto}

    assert ports_text([]) == ""
    assert ports_text([port("0.0.0.0", 48581, 80)]) == "0.0.0.0:48581->80/tcp"
    assert ports_text([port("127.0.0.1", 8080, 80)]) == "127.0.0.1:8080->80/tcp"
    assert ports_text([port("0.0.0.0", 8001, 8001), port("0.0.0.0", 8000, 8000)]) == \
        "0.0.0.0:8000-8001->8000-8001/tcp"
    assert ports_text([port("0.0.0.0", 8000, 80), port("0.0.0.0", 8001, 81)]) == \
        "0.0.0.0:8000->80/tcp, 0.0.0.0:8001->81/tcp"
    assert ports_text([port("1.2.3.4", 9998, 9998, "udp"), port("1.2.3.4", 9999, 9999, "udp"),
                       port("1.2.3.4", 9000, 9000, "udp")]) == \
        "1.2.3.4:9000->9000/udp, 1.2.3.4:9998-9999->9998-9999/udp"
    assert ports_text([port("0.0.0.0", 5353, 53, "udp"), port("0.0.0.0", 5353, 53, "tcp")]) == \
        "0.0.0.0:5353->53/tcp, 0.0.0.0:5353->53/udp"
