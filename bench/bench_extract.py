#!/usr/bin/env python3
"""Layer extraction against `tar -xzf` of the same blob, same run.

Usage: python3 bench/bench_extract.py [SIZE_MB] [RUNS] [gzip|zstd]   (default 256 MB, 3 runs, gzip)

The tree is bench_layer.py's mix (text, random, many small files). The layer is
written once by pybuild; then, per run, pybuild's snapshot creation
(SnapshotStore.ensure: unpack_layer with both digests verified, whiteouts to
overlay form, atomic rename) is timed against `tar -xzf BLOB` (`tar --zstd
-xf` for zstd) into a fresh directory; the reference verifies no digest.
Peak RSS of pybuild's run is reported (streaming: it must not grow with the
tree). A sparse case follows: a 1 GiB file with 8 KiB of data, written and
extracted (blob size, times, blocks allocated after extraction).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import make_tree  # noqa: E402

_WRITE = ("import sys, json; from pathlib import Path; from pybuild.cache.content import ContentStore;"
          "from pybuild.cache.layers import write_layer;"
          "l = write_layer(Path(sys.argv[1]), ContentStore(Path(sys.argv[2])), compression=sys.argv[3]);"
          "print(json.dumps([l.digest, l.diff_id, l.size, l.media_type]))")
_ENSURE = ("import sys, json; from pathlib import Path; from pybuild.cache.content import ContentStore;"
           "from pybuild.cache.layers import LayerBlob; from pybuild.cache.snapshots import SnapshotStore;"
           "c = ContentStore(Path(sys.argv[1])); s = SnapshotStore(Path(sys.argv[1]), c);"
           "print(s.ensure(LayerBlob(*json.loads(sys.argv[2]))))")


CPU = [0.0]  # CPU seconds (user + sys) of the last measured command, children included


def run_measured(args: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{args[:3]} failed")
    CPU[0] = usage.ru_utime + usage.ru_stime
    return elapsed, usage.ru_maxrss, out.strip()


def timed(cmd: str) -> float:
    """Wall time of a shell pipeline; its CPU time (all processes) goes to CPU[0]."""
    elapsed, _, _ = run_measured(["sh", "-c", cmd])
    return elapsed


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    compression = sys.argv[3] if len(sys.argv) > 3 else "gzip"
    tar_x = "tar --zstd -xf" if compression == "zstd" else "tar -xzf"
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    med = statistics.median
    try:
        tree = work / "tree"
        make_tree(tree, size_mb)
        store = work / "store"
        _, _, layer_json = run_measured([sys.executable, "-c", _WRITE, str(tree), str(store), compression])
        digest = layer_json.split('"')[1]
        blob = store / "blobs" / "sha256" / digest.split(":")[1]
        ours, rss, ref, ours_cpu, ref_cpu = [], [], [], [], []
        for r in range(runs):
            t, m, snap = run_measured([sys.executable, "-c", _ENSURE, str(store), layer_json])
            ours.append(t)
            ours_cpu.append(CPU[0])
            rss.append(m)
            shutil.rmtree(snap)
            dest = work / f"tar{r}"
            dest.mkdir()
            ref.append(timed(f"{tar_x} {blob} -C {dest}"))
            ref_cpu.append(CPU[0])
            shutil.rmtree(dest)
        print(f"tree: {size_mb} MB, layer blob {blob.stat().st_size / 1e6:.1f} MB ({compression}), median of {runs} runs")
        print(f"pybuild snapshot (unpack_layer, 2 digests checked)  {med(ours):7.2f} s wall "
              f"{med(ours_cpu):6.2f} s CPU   peak RSS {max(rss) / 1024:.0f} MiB")
        print(f"{tar_x + ' BLOB':<50} {med(ref):7.2f} s wall {med(ref_cpu):6.2f} s CPU   "
              f"ratio wall {med(ours) / med(ref):.2f}, CPU {med(ours_cpu) / med(ref_cpu):.2f}")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

        # sparse: 1 GiB apparent, 8 KiB of data
        shutil.rmtree(tree)
        shutil.rmtree(store)
        sparse_tree = work / "sparse"
        sparse_tree.mkdir()
        with open(sparse_tree / "disk.img", "wb") as f:
            f.write(b"head" * 1024)
            f.seek(1 << 30)
            f.write(b"tail" * 1024)
        t_w, rss_w, layer_json = run_measured([sys.executable, "-c", _WRITE, str(sparse_tree), str(store),
                                               compression])
        digest = layer_json.split('"')[1]
        blob = store / "blobs" / "sha256" / digest.split(":")[1]
        t_x, rss_x, snap = run_measured([sys.executable, "-c", _ENSURE, str(store), layer_json])
        st = os.stat(Path(snap) / "disk.img")
        dest = work / "tar-sparse"
        dest.mkdir()
        t_ref = timed(f"{tar_x} {blob} -C {dest}")
        st_ref = os.stat(dest / "disk.img")
        print(f"sparse 1 GiB file: blob {blob.stat().st_size / 1e6:.2f} MB, write {t_w:.2f} s (RSS {rss_w / 1024:.0f} MiB), "
              f"extract {t_x:.2f} s (RSS {rss_x / 1024:.0f} MiB, {st.st_blocks * 512 / 1e6:.2f} MB allocated); "
              f"{tar_x}: {t_ref:.2f} s, {st_ref.st_blocks * 512 / 1e6:.2f} MB allocated")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
