#!/usr/bin/env python3
"""Fully cached build of a 10,000-file context: with the context checksum cache (files whose
stamp is unchanged are not read) against without it (every file re-read and re-hashed, as
before the cache existed), same store, same run.

Usage: python3 bench/bench_context.py [FILES] [RUNS]     (default 10000 files, 5 runs; run as root)

"Cache off" runs the same pybuild with ContextView.file_digest removed: copy.content_manifest
then streams every file through sha256. "Before" also removes ContextView.walk (the one-lstat
scandir walk), which is the code as it was before the checksum cache. A `cat` of every file
(`find | xargs cat > /dev/null`) is measured too, as the floor for reading the context at all,
and `pybuild --version` as the interpreter-start floor under any pybuild command.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WITHOUT = ("import sys; import pybuild.builder.context as c; del c.ContextView.file_digest; "
           "from pybuild.cli import main; sys.exit(main(sys.argv[1:]))")
WITH = "import sys; from pybuild.cli import main; sys.exit(main(sys.argv[1:]))"
# The code before this work: no checksum cache and LayeredView's generic walk (3 lstats per entry).
BEFORE = WITHOUT.replace("del c.ContextView.file_digest;", "del c.ContextView.file_digest; del c.ContextView.walk;")


def make_context(ctx: Path, files: int) -> None:
    words = b"the quick brown fox jumps over the lazy dog context checksum cache\n" * 200
    for i in range(files):
        d = ctx / "src" / f"pkg{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i:05d}.py").write_bytes(words[: 500 + (i * 131) % 8000])
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nWORKDIR /app\nCOPY src/ /app/src/\n"
                                    "RUN find /app/src -type f | wc -l\nCOPY . /ctx/\n")


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = Path(tempfile.mkdtemp(prefix="bench-context-"))
    try:
        env = dict(os.environ, PYBUILD_ROOT=str(work / "store"))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([str(REPO / "samples" / "make-busybox.sh")], env=env, check=True, stdout=subprocess.DEVNULL)
        ctx = work / "ctx"
        make_context(ctx, files)
        time.sleep(0.2)  # past the racy-timestamp window, as any context not edited this instant
        build = ["-t", "ctx:1", str(ctx)]
        cold = timed([sys.executable, "-c", WITH, *build], env)
        with_cache, without_cache, before, cat, start = [], [], [], [], []
        for _ in range(runs):  # interleaved, so drift in machine load hits both alike
            before.append(timed([sys.executable, "-c", BEFORE, *build], env))
            without_cache.append(timed([sys.executable, "-c", WITHOUT, *build], env))
            with_cache.append(timed([sys.executable, "-c", WITH, *build], env))
            cat.append(timed(["sh", "-c", f"find {ctx} -type f -print0 | xargs -0 cat > /dev/null"], env))
            start.append(timed([sys.executable, "-c", WITH, "--version"], env))
        med = statistics.median
        print(f"context: {files} files, {sum(p.stat().st_size for p in ctx.rglob('*') if p.is_file()) >> 10} KiB; "
              f"median of {runs} runs")
        print(f"cold build (fills the cache)           {cold:7.3f} s")
        print(f"cached build, before (generic walk)    {med(before):7.3f} s")
        print(f"cached build, checksum cache off       {med(without_cache):7.3f} s")
        print(f"cached build, checksum cache on        {med(with_cache):7.3f} s   "
              f"ratio on/off {med(with_cache) / med(without_cache):.2f}, on/before {med(with_cache) / med(before):.2f}")
        print(f"reference: cat every file              {med(cat):7.3f} s")
        print(f"reference: pybuild --version           {med(start):7.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
