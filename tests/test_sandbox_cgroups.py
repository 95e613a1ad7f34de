"""cgroup limits of sandbox runs (sandbox/cgroups.py): memory/OOM, pids, cpu, cleanup."""

from __future__ import annotations

import glob
import os
import threading
import time

import pytest
from pybuild.sandbox import Resources, SandboxError, abort_all, cgroups
from sandbox_helpers import make_image, sh

LAYOUT = cgroups.detect() if os.geteuid() == 0 else {}
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/bin/busybox")
    or not all(c in LAYOUT for c in ("memory", "pids", "cpu")),
    reason="needs root, /bin/busybox and the memory, pids and cpu cgroup controllers")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return make_image(tmp_path_factory.mktemp("img"))


def _our_cgroups() -> list[str]:
    return [d for h in {h.base for h in LAYOUT.values()}
            for d in glob.glob(os.path.join(h, f"{os.getpid()}-*"))]


@pytest.fixture(autouse=True)
def no_leftover_cgroups():
    assert _our_cgroups() == []
    yield
    assert _our_cgroups() == []


@pytest.fixture
def seen(monkeypatch):
    """Record each run's limit files and their contents just before the cgroup is removed."""
    record: list[dict[str, tuple[str, str]]] = []
    orig = cgroups.Cgroup.destroy

    def destroy(self):
        files = {}
        for c, path in self.limit_files().items():
            with open(path) as f:
                files[c] = (path, f.read().strip())
        record.append(files)
        orig(self)

    monkeypatch.setattr(cgroups.Cgroup, "destroy", destroy)
    return record


def test_resources_validation():
    with pytest.raises(cgroups.CgroupError):
        Resources(memory=1024).validate()
    with pytest.raises(cgroups.CgroupError):
        Resources(pids=0).validate()
    with pytest.raises(cgroups.CgroupError):
        Resources(cpus=0).validate()
    assert Resources().controllers() == []
    assert cgroups.create(None) is None and cgroups.create(Resources()) is None


def test_invalid_resources_are_sandbox_errors(image):
    with pytest.raises(SandboxError):
        sh(image, "true", resources=Resources(pids=-1))


def test_oom_kill_is_reported(image, seen):
    st, _, _ = sh(image, 'x=aaaaaaaaaaaaaaaa; while :; do x="$x$x"; done',
                  resources=Resources(memory=64 << 20))
    assert (st.code, st.signal, st.oom_killed) == (137, 9, True)
    path, value = seen[0]["memory"]
    assert int(value) == 64 << 20
    assert os.path.dirname(os.path.dirname(path)) in {h.base for h in LAYOUT.values()}
    assert not os.path.exists(os.path.dirname(path))


def test_oom_in_a_child_is_reported_too(image):
    st, _, _ = sh(image, "tail /dev/zero; echo survived", resources=Resources(memory=64 << 20))
    assert st.oom_killed and st.code == 0


def test_within_memory_limit_no_oom(image):
    st, out, _ = sh(image, "head -c 1000000 /dev/zero | wc -c", resources=Resources(memory=64 << 20))
    assert (st.code, st.oom_killed, out.strip()) == (0, False, "1000000")


def test_pids_limit_stops_fork_bomb(image, seen):
    t = time.monotonic()
    st, _, err = sh(image, "for i in $(seq 200); do sleep 4711 & done; echo done",
                    resources=Resources(pids=20))
    assert time.monotonic() - t < 5
    assert st.code != 0 and not st.oom_killed
    assert "fork" in err
    assert seen[0]["pids"][1] == "20"
    assert not [p for p in glob.glob("/proc/[0-9]*/cmdline")
                if b"sleep\x004711" in _read(p)]


def _read(p: str) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_cpu_quota(image, seen):
    st, _, _ = sh(image, "true", resources=Resources(cpus=0.5))
    assert st.code == 0
    path, value = seen[0]["cpu"]
    if path.endswith("cpu.max"):
        assert value == "50000 100000"
    else:
        assert value == "50000"  # with cpu.cfs_period_us = 100000


def test_all_limits_together(image, seen):
    st, out, _ = sh(image, "echo ok", resources=Resources(memory=128 << 20, cpus=1.5, pids=50))
    assert (st.code, out) == (0, "ok\n")
    assert set(seen[0]) == {"memory", "cpu", "pids"}


def test_abort_removes_cgroup(image):
    timer = threading.Timer(0.5, abort_all)
    timer.start()
    try:
        st, _, _ = sh(image, "sleep 4711 & sleep 4711", resources=Resources(memory=64 << 20, pids=30))
    finally:
        timer.cancel()
    assert st.code == 137


def test_stale_cgroups_of_dead_runs_are_removed(image):
    h = LAYOUT["pids"]
    os.makedirs(h.base, exist_ok=True)
    stale = os.path.join(h.base, "99999999-deadbeef")
    os.mkdir(stale)
    try:
        st, _, _ = sh(image, "true", resources=Resources(pids=10))
        assert st.code == 0
        assert not os.path.exists(stale)
    finally:
        if os.path.exists(stale):
            os.rmdir(stale)


def test_stale_cgroups_are_removed_by_a_run_without_limits(image):
    h = LAYOUT["memory"]
    os.makedirs(h.base, exist_ok=True)
    stale = os.path.join(h.base, "99999998-deadbeef")
    os.mkdir(stale)
    try:
        assert sh(image, "true")[0].code == 0
        assert not os.path.exists(stale)
        assert not os.path.exists(h.base)  # the empty pybuild/ dir goes too
    finally:
        if os.path.exists(stale):
            os.rmdir(stale)
