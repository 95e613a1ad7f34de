"""Shared fixtures: a fresh state directory with the busybox base image, and a CLI runner.

The busybox image is made once per session by samples/make-busybox.sh (the same
script a user runs) and its store is copied for each test that needs a clean one,
so tests never share cache state.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class PybuildCLI:
    """Runs `python -m pybuild` as a separate process against one state directory."""

    def __init__(self, root: Path):
        self.root = root

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYBUILD_ROOT"] = str(self.root)
        env.pop("SOURCE_DATE_EPOCH", None)
        return env

    def __call__(self, *args: str, check: bool = False, timeout: float = 300, **kw) -> Result:
        proc = subprocess.run([sys.executable, "-m", "pybuild", *args], capture_output=True, text=True,
                              env=self.env(), timeout=timeout, **kw)
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and res.code != 0:
            raise AssertionError(f"pybuild {' '.join(args)} exited {res.code}:\n{res.output}")
        return res


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, overlayfs); CI runs as root")


@pytest.fixture(scope="session")
def busybox_store(tmp_path_factory) -> Path:
    """A state dir holding busybox:latest, made by the sample script."""
    _needs_root()
    if not Path("/bin/busybox").exists():
        pytest.fail("busybox-static is not installed (.ci/run installs it)")
    root = tmp_path_factory.mktemp("busybox-store")
    env = dict(os.environ, PYBUILD_ROOT=str(root), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    subprocess.run([str(SAMPLES / "make-busybox.sh"), "busybox:latest"], check=True, env=env,
                   capture_output=True, timeout=120)
    return root


@pytest.fixture
def cli(busybox_store, tmp_path) -> PybuildCLI:
    """A CLI on a private copy of the busybox store."""
    root = tmp_path / "store"
    shutil.copytree(busybox_store, root, symlinks=True)
    return PybuildCLI(root)


def mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split(" ", 4)[4] for line in f]  # drop mount ids, keep what is mounted where
