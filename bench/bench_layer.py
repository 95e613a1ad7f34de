#!/usr/bin/env python3
"""Layer creation against `tar -c | pigz | sha256sum` (and `gzip -6`) on the same tree, same run.

Usage: python3 bench/bench_layer.py [SIZE_MB] [RUNS] [gzip|zstd]   (default 256 MB of mixed files, 3 runs, gzip)

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


CPU = [0.0]  # CPU seconds (user + sys, all processes of it) of the last measured command


def timed(cmd: str) -> float:
    """Wall time of a shell pipeline; its CPU time goes to CPU[0]."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{cmd} failed")
    CPU[0] = usage.ru_utime + usage.ru_stime
    return time.perf_counter() - t0


def pybuild_once(tree: Path, store_dir: Path, compression: str) -> tuple[float, int]:
    code = ("import sys; from pathlib import Path; from pybuild.cache.content import ContentStore;"
            "from pybuild.cache.layers import write_layer;"
            "write_layer(Path(sys.argv[1]), ContentStore(Path(sys.argv[2])), compression=sys.argv[3])")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(tree), str(store_dir), compression])
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if status != 0:
        raise SystemExit("write_layer failed")
    CPU[0] = usage.ru_utime + usage.ru_stime
    return elapsed, usage.ru_maxrss


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    compression = sys.argv[3] if len(sys.argv) > 3 else "gzip"
    work = Path(tempfile.mkdtemp(prefix="bench-layer-"))
    try:
        tree = work / "tree"
        make_tree(tree, size_mb)
        if compression == "zstd":
            refs = {"tar -c | zstd -T0 -3 | sha256sum": f"tar -C {tree} -c . | zstd -q -T0 -3 | sha256sum"}
            size_cmd = f"tar -C {tree} -c . | zstd -q -T0 -3 | wc -c"
        else:
            refs = {"tar -c | pigz -6 | sha256sum": f"tar -C {tree} -c . | pigz -6 | sha256sum",
                    "tar -c | gzip -6 | sha256sum": f"tar -C {tree} -c . | gzip -6 | sha256sum"}
            size_cmd = f"tar -C {tree} -c . | pigz -6 | wc -c"
        ours, ours_cpu, rss, sizes = [], [], [], []
        ref_times: dict[str, list[float]] = {k: [] for k in refs}
        ref_cpu: dict[str, list[float]] = {k: [] for k in refs}
        for r in range(runs):
            store = work / f"store{r}"
            t, m = pybuild_once(tree, store, compression)
            ours.append(t)
            ours_cpu.append(CPU[0])
            rss.append(m)
            sizes.append(sum(p.stat().st_size for p in (store / "blobs" / "sha256").iterdir()))
            shutil.rmtree(store)
            for label, cmd in refs.items():
                if shutil.which(cmd.split("|")[1].split()[0]):
                    ref_times[label].append(timed(cmd))
                    ref_cpu[label].append(CPU[0])
        med = statistics.median
        ref_size = int(subprocess.run(size_cmd, shell=True, capture_output=True, text=True).stdout or 0)
        print(f"tree: {size_mb} MB, median of {runs} runs, {compression}")
        print(f"{'pybuild write_layer (tar+' + compression + '+2 hashes+store)':<46} {med(ours):7.2f} s wall "
              f"{med(ours_cpu):6.2f} s CPU   peak RSS {max(rss) / 1024:.0f} MiB   blob {sizes[0] / 1e6:.1f} MB"
              + (f" ({sizes[0] / ref_size:.3f}x the reference's)" if ref_size else ""))
        for label, times in ref_times.items():
            if times:
                print(f"{label:<46} {med(times):7.2f} s wall {med(ref_cpu[label]):6.2f} s CPU   "
                      f"ratio wall {med(ours) / med(times):.2f}, CPU {med(ours_cpu) / med(ref_cpu[label]):.2f}")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
