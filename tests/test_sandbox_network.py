"""sandbox.runner: joining an existing network namespace file and ProcessSpec.extra_hosts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pybuild.sandbox import runner
from pybuild.sandbox.runner import ProcessSpec, RootfsSpec, SandboxError
from sandbox_helpers import ENV, make_image, run_captured

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/bin/busybox")
                                or not shutil.which("unshare") or not shutil.which("ip"),
                                reason="needs root, /bin/busybox, unshare and ip")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return make_image(tmp_path_factory.mktemp("image"))


@pytest.fixture
def netns(tmp_path):
    """A persistent netns made by the test (util-linux unshare), with a veth pair inside it."""
    path = tmp_path / "ns"
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True)
    try:
        subprocess.run(["nsenter", f"--net={path}", "ip", "link", "add", "pbdummy7", "type", "veth",
                        "peer", "name", "pbdummy8"], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def sh(image, script, **kw):
    return run_captured(ProcessSpec(["sh", "-c", script], dict(ENV), **kw), RootfsSpec([image], None, None))


def test_joins_the_given_netns(image, netns):
    st, out, err = sh(image, "ls /sys/class/net; cat /proc/net/dev", network=str(netns))
    assert st.code == 0, err
    assert "pbdummy7" in out.split()  # sysfs is the joined netns's
    assert "pbdummy7:" in out  # /proc/net/dev too


def test_a_new_netns_does_not_see_it(image, netns):
    st, out, err = sh(image, "ls /sys/class/net", network="none")
    assert st.code == 0, err
    assert out.split() == ["lo"]


def test_two_runs_share_the_joined_netns(image, netns):
    # a change made in the netns from outside (an address) is seen by a run that joins it
    subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "set", "pbdummy7", "up"], check=True)
    subprocess.run(["nsenter", f"--net={netns}", "ip", "addr", "add", "10.250.3.4/32", "dev", "pbdummy7"],
                   check=True)
    st, out, err = sh(image, "cat /proc/net/fib_trie", network=str(netns))
    assert st.code == 0, err
    assert "10.250.3.4" in out


def test_lo_is_up_in_a_joined_netns(image, netns):
    st, out, err = sh(image, "cat /sys/class/net/lo/operstate /sys/class/net/lo/flags", network=str(netns))
    assert st.code == 0, err
    assert int(out.split()[1], 16) & 1  # IFF_UP


@pytest.mark.parametrize("value, msg", [
    ("bridge", "unknown network mode 'bridge'"),
    ("relative/ns", "unknown network mode"),
    ("/nonexistent/ns", "No such file or directory"),
])
def test_bad_network_values(image, value, msg):
    with pytest.raises(SandboxError, match=msg):
        sh(image, "true", network=value)


def test_a_regular_file_is_not_a_netns(image, tmp_path):
    f = tmp_path / "plain"
    f.write_text("x")
    with pytest.raises(SandboxError, match="not a network namespace"):
        sh(image, "true", network=str(f))


def test_a_mount_namespace_file_is_not_a_netns(image):
    with pytest.raises(SandboxError, match="not a network namespace"):
        sh(image, "true", network="/proc/self/ns/mnt")


def test_extra_hosts_in_etc_hosts(image):
    st, out, err = sh(image, "cat /etc/hosts", hostname="me",
                      extra_hosts={"db": "10.89.0.5", "cache.local": "10.89.0.6"})
    assert st.code == 0, err
    lines = out.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost me"
    assert "10.89.0.5\tdb" in lines
    assert "10.89.0.6\tcache.local" in lines


def test_callers_hosts_file_is_seen_live(image, tmp_path):
    # ProcessSpec.hosts_file: bind-mounted as /etc/hosts; rewritten in place by the caller while
    # the sandbox runs, the change shows inside (runtime.launch does this when containers join)
    hosts = tmp_path / "hosts"
    hosts.write_text(runner.hosts_text("me", {}))
    script = ("cat /etc/hosts; i=0; while ! grep -q late /etc/hosts; do i=$((i+1)); [ $i -gt 200 ] && exit 1; "
              "sleep 0.05; done; grep late /etc/hosts")
    import threading

    def rewrite():
        import time
        time.sleep(0.5)
        with open(hosts, "w") as f:  # same inode
            f.write(runner.hosts_text("me", {"late": "10.89.0.9"}))

    t = threading.Thread(target=rewrite)
    t.start()
    st, out, err = sh(image, script, hostname="me", hosts_file=hosts, extra_hosts={"ignored": "10.0.0.1"})
    t.join()
    assert st.code == 0, err
    assert out.splitlines()[0] == "127.0.0.1\tlocalhost me" and "ignored" not in out
    assert out.splitlines()[-1] == "10.89.0.9\tlate"


def test_hosts_file_must_be_a_regular_file(image, tmp_path):
    (tmp_path / "real").write_text("")
    os.symlink(tmp_path / "real", tmp_path / "link")
    for bad in (tmp_path / "link", tmp_path / "missing", tmp_path):
        with pytest.raises(SandboxError, match="hosts file"):
            sh(image, "true", hosts_file=bad)


@pytest.mark.parametrize("hosts, msg", [
    ({"db": "not-an-ip"}, "is not an IP address"),
    ({"two words": "10.0.0.1"}, "invalid extra host name"),
    ({"": "10.0.0.1"}, "invalid extra host name"),
])
def test_bad_extra_hosts(image, hosts, msg):
    with pytest.raises(SandboxError, match=msg):
        sh(image, "true", extra_hosts=hosts)


@pytest.mark.parametrize("host, want", [
    ("nameserver 10.0.0.53\nsearch example.org\n", "nameserver 10.0.0.53\nsearch example.org\n"),
    ("nameserver 127.0.0.53\noptions edns0\nnameserver 10.1.1.1\n", "options edns0\nnameserver 10.1.1.1\n"),
    ("nameserver ::1\n", "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
    ("", "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
])
def test_resolv_conf_for_a_container_with_its_own_network(host, want, monkeypatch):
    # pure transformation (no systemd-resolved upstream file on the test host is assumed)
    real_open = open

    def fake_open(path, *a, **kw):
        if path == "/run/systemd/resolve/resolv.conf":
            raise FileNotFoundError(path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr("builtins.open", fake_open)
    assert runner._resolv_for_own_netns(host) == want


def test_resolv_conf_in_a_joined_netns_has_no_loopback_server(image, netns):
    st, out, err = sh(image, "cat /etc/resolv.conf", network=str(netns))
    assert st.code == 0, err
    assert "nameserver" in out
    assert not any(line.split()[1].startswith(("127.", "::1")) for line in out.splitlines()
                   if line.startswith("nameserver"))
