"""Helpers for the sandbox test suites (a busybox image and a run-with-captured-output)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from pybuild.sandbox.runner import ExitStatus, ProcessSpec, RootfsSpec, run

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/sbin"}
APPLETS = ("sh", "cat", "echo", "id", "sleep", "true", "head", "grep", "mount", "umount", "unshare",
           "chroot", "mknod", "seq", "dd", "tail", "hostname", "awk", "ls", "kill", "wc", "tr")


def cmdline(pid: int) -> bytes:
    """/proc/PID/cmdline (NUL-separated); b"" once the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def mountinfo() -> list[str]:
    """This process's mount table, sorted (to compare before and after a run)."""
    with open("/proc/self/mountinfo") as f:
        return sorted(f.read().splitlines())


def make_image(root: Path) -> Path:
    (root / "bin").mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for a in APPLETS:
        (root / "bin" / a).symlink_to("busybox")
    for d in ("etc", "mnt", "tmp"):
        (root / d).mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nalice:x:1000:\n")
    os.chmod(root, 0o755)
    return root


def run_captured(spec: ProcessSpec, rootfs: RootfsSpec, **run_kw) -> tuple[ExitStatus, str, str]:
    """Run with stdout and stderr drained by threads (so a chatty command never blocks)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res: dict[str, bytes] = {}

    def drain(fd, key):
        chunks = []
        while b := os.read(fd, 65536):
            chunks.append(b)
        res[key] = b"".join(chunks)
        os.close(fd)

    threads = [threading.Thread(target=drain, args=(out_r, "out")),
               threading.Thread(target=drain, args=(err_r, "err"))]
    for t in threads:
        t.start()
    try:
        status = run(spec, rootfs, stdout=out_w, stderr=err_w, **run_kw)
    finally:
        os.close(out_w)
        os.close(err_w)
        for t in threads:
            t.join()
    return status, res["out"].decode(), res["err"].decode()


def sh(image: Path, script: str, **kw) -> tuple[ExitStatus, str, str]:
    """``sh -c script`` on a read-only ``image``; returns status, stdout, stderr."""
    spec = ProcessSpec(["sh", "-c", script], dict(ENV), **kw)
    return run_captured(spec, RootfsSpec([image], None, None))
