"""`pybuild doctor` and sandbox/probe.py."""

from __future__ import annotations

import argparse
import os

import pytest
from pybuild.sandbox import probe

from pybuild.commands import doctor


def test_plugin_interface():
    assert doctor.NAME == "doctor"
    p = argparse.ArgumentParser()
    doctor.add_parser(p.add_subparsers())
    assert p.parse_args(["doctor"]).command == "doctor"


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")
def test_probe_on_this_host_allows_builds(capsys):
    checks = probe.probe()
    names = {c.name for c in checks}
    for ns in ("mount", "pid", "uts", "ipc", "net", "cgroup", "user"):
        assert f"{ns} namespace" in names
    for n in ("root", "overlayfs", "pivot_root", "seccomp", "cgroup version", "cgroup memory",
              "cgroup cpu", "cgroup pids", "capabilities"):
        assert n in names
    assert any(n.startswith("subuid/subgid") for n in names)
    by = {c.name: c for c in checks}
    for n in ("root", "overlayfs", "mount namespace", "pid namespace", "net namespace", "pivot_root"):
        assert by[n].ok, by[n]
    assert probe.builds_can_run(checks)
    assert doctor.run(argparse.Namespace(command="doctor"), lambda: None) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "pivot_root" in out and "builds can run" in out
    # the pivot_root probe leaves no temp dir behind
    import tempfile
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("pybuild-probe-")]


def test_missing_required_piece_fails(monkeypatch, capsys):
    fake = [probe.Check("root", True, "running as root"),
            probe.Check("overlayfs", False, "not there", "no snapshots: builds cannot run"),
            probe.Check("seccomp", False, "no", "RUN steps run without a syscall filter", False)]
    monkeypatch.setattr(probe, "probe", lambda: fake)
    assert not probe.builds_can_run(fake)
    assert doctor.run(argparse.Namespace(command="doctor"), lambda: None) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and "no snapshots: builds cannot run" in out
    assert "MISSING (optional)" in out


def test_optional_pieces_do_not_fail():
    fake = [probe.Check("root", True, "x"),
            probe.Check("user namespace", False, "no", "rootless only", required=False)]
    assert probe.builds_can_run(fake)


def test_subid_ranges(tmp_path):
    f = tmp_path / "subuid"
    f.write_text("alice:100000:65536\nbob:200000:65536\n0:300000:10\nalice:500000:5\n")
    assert probe._subid_ranges(str(f), "alice") == [(100000, 65536), (500000, 5)]
    assert probe._subid_ranges(str(f), "root") == [(300000, 10)]
    assert probe._subid_ranges(str(tmp_path / "none"), "alice") == []
