"""The README's own flow repeats across machines: make-busybox.sh, then a SOURCE_DATE_EPOCH build.

Regression (found by trying it): make-busybox.sh dated the image "now" and named its temp dir
in the history comment, so two stores had different busybox images and so different build
results and no --cache-from hits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _pybuild(root: Path, *args: str, **env) -> str:
    e = dict(os.environ, PYBUILD_ROOT=str(root), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env)
    return subprocess.run([sys.executable, "-m", "pybuild", *args], env=e, check=True, capture_output=True,
                          text=True, timeout=300).stdout


def _make_busybox(root: Path) -> str:
    env = dict(os.environ, PYBUILD_ROOT=str(root), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("SOURCE_DATE_EPOCH", None)
    return subprocess.run([str(SAMPLES / "make-busybox.sh")], env=env, check=True, capture_output=True,
                          text=True, timeout=120).stdout.strip()


def test_two_stores_get_the_same_base_and_the_same_build(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _make_busybox(a) == _make_busybox(b)
    digests = [_pybuild(root, "build", "-q", str(SAMPLES / "hello"), SOURCE_DATE_EPOCH="1700000000").strip()
               for root in (a, b)]
    assert digests[0] == digests[1]


def test_import_honours_source_date_epoch_and_message(tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "f").write_text("x")
    ids = {_pybuild(tmp_path / f"s{i}", "import", "-m", "fixed", str(rootfs), "imp:1",
                    SOURCE_DATE_EPOCH="1600000000").strip() for i in range(2)}
    assert len(ids) == 1
    cfg = json.loads(_pybuild(tmp_path / "s0", "inspect", "imp:1"))[0]
    assert cfg["Created"].startswith("2020-09-13T12:26:40")
    assert "fixed" in _pybuild(tmp_path / "s0", "history", "imp:1")
