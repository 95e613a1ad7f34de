#!/usr/bin/env python3
"""Layer creation against `tar -c | pigz | sha256sum` (and `gzip -6`) on the same tree, same run.

Usage: python3 bench/bench_layer.py [SIZE_MB] [RUNS]     (default 256 MB of mixed files, 3 runs)

The tree mixes compressible text, random bytes and many small files. pybuild's
number covers tar + gzip + both hashes + the atomic write into a content store;
the references write nothing. Peak RSS of pybuild's run is reported too
(streaming: it must not grow with the tree).
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


def make_tree(root: Path, size_mb: int) -> None:
    rnd = open("/dev/urandom", "rb")
    words = b"the quick brown fox jumps over the lazy dog layer tar gzip digest diff_id\n" * 64
    written = 0
    i = 0
    while written < size_mb << 20:
        d = root / f"d{i % 50}" / f"s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        kind = i % 10
        if kind < 6:      # small text files
            data = words[: 200 + (i * 37) % 4000]
        elif kind < 9:    # medium, half random
            data = rnd.read(64 << 10) + words * 8
        else:             # large, random
            data = rnd.read(4 << 20)
        (d / f"f{i}").write_bytes(data)
        written += len(data)
        i += 1


def timed(cmd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def pybuild_once(tree: Path, store_dir: Path) -> tuple[float, int]:
    code = ("import sys; from pathlib import Path; from pybuild.cache.content import ContentStore;"
            "from pybuild.cache.layers import write_layer;"
            "write_layer(Path(sys.argv[1]), ContentStore(Path(sys.argv[2])))")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(tree), str(store_dir)])
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if status != 0:
        raise SystemExit("write_layer failed")
    return elapsed, usage.ru_maxrss


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    work = Path(tempfile.mkdtemp(prefix="bench-layer-"))
    try:
        tree = work / "tree"
        make_tree(tree, size_mb)
        ours, rss, pigz, gzip = [], [], [], []
        for r in range(runs):
            store = work / f"store{r}"
            t, m = pybuild_once(tree, store)
            ours.append(t)
            rss.append(m)
            shutil.rmtree(store)
            if shutil.which("pigz"):
                pigz.append(timed(f"tar -C {tree} -c . | pigz -6 | sha256sum"))
            gzip.append(timed(f"tar -C {tree} -c . | gzip -6 | sha256sum"))
        med = statistics.median
        print(f"tree: {size_mb} MB, median of {runs} runs")
        print(f"pybuild write_layer (tar+gzip+2 hashes+store)  {med(ours):7.2f} s   peak RSS {max(rss) / 1024:.0f} MiB")
        if pigz:
            print(f"tar -c | pigz -6 | sha256sum                    {med(pigz):7.2f} s   ratio {med(ours) / med(pigz):.2f}")
        print(f"tar -c | gzip -6 | sha256sum                    {med(gzip):7.2f} s   ratio {med(ours) / med(gzip):.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
