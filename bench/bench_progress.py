#!/usr/bin/env python3
"""Cost of a step's output on the terminal display (issue 7): a RUN printing 100,000 lines.

    python3 bench/bench_progress.py [LINES] [RUNS]     (default 100000 lines, 5 runs; run as root)

Each case is a --no-cache build of ``FROM busybox`` + ``RUN seq 1 LINES`` (median wall time):
  tty        --progress=tty inside a pseudo-terminal (the live display redraws as lines arrive)
  plain      --progress=plain to a pipe (every line printed, prefixed)
  quiet      -q (the output is only kept in the step log)
and, as the reference measured in the same run, the same build whose RUN sends its lines to
/dev/null inside the container (``RUN seq 1 LINES >/dev/null``) under --progress=tty: what the
step costs when there is nothing to show.  Ratios are against that reference.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_in_pty(cmd: list[str], env: dict) -> float:
    """Wall time of ``cmd`` with a pty as its terminal, its output drained as a terminal would."""
    start = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(cmd[0], cmd, env)
    try:
        while True:
            r, _, _ = select.select([fd], [], [], 1.0)
            if r:
                try:
                    if not os.read(fd, 65536):
                        break
                except OSError:
                    break
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return time.monotonic() - start


def run_piped(cmd: list[str], env: dict) -> float:
    start = time.monotonic()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return time.monotonic() - start


def main() -> int:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = Path(tempfile.mkdtemp(prefix="bench-progress-"))
    env = {**os.environ, "PYBUILD_ROOT": str(work / "root"), "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYBUILD_PROGRESS", None)
    subprocess.run([str(REPO / "samples/make-busybox.sh"), "busybox:latest"], env=env, check=True,
                   capture_output=True)
    ctx = work / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM busybox:latest\nRUN seq 1 {lines}\n")
    (ctx / "silent.Dockerfile").write_text(f"FROM busybox:latest\nRUN seq 1 {lines} >/dev/null\n")
    build = ["pybuild", "build", "--no-cache", "-t", "bench:1"]
    cases = {
        "reference (RUN >/dev/null, tty)": lambda: run_in_pty(
            build + ["--progress=tty", "-f", str(ctx / "silent.Dockerfile"), str(ctx)], env),
        "tty (live display)": lambda: run_in_pty(build + ["--progress=tty", str(ctx)], env),
        "plain (to a pipe)": lambda: run_piped(build + ["--progress=plain", str(ctx)], env),
        "quiet (-q)": lambda: run_piped(build + ["-q", str(ctx)], env),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(runs):  # interleaved, so drift in the machine's load hits every case alike
            for name, case in cases.items():
                times[name].append(case())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref = statistics.median(times["reference (RUN >/dev/null, tty)"])
    print(f"RUN seq 1 {lines}: median of {runs} runs, CPUs: {os.cpu_count()}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:34} {med:7.3f} s   ratio to reference {med / ref:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
