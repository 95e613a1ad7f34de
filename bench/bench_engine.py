#!/usr/bin/env python3
"""Build-engine benchmark (issue 6): pybuild against buildah and BuildKit in the same run.

    python3 bench/bench_engine.py [--runs 3] [--files 5000] [--mib 50] [--no-buildkit] [--no-buildah]

Cases, each timed as the median of --runs wall times:
  cold      a 20-step Dockerfile with a --files-file, --mib MiB context, in an empty cache
  cached    the same build again: every step from the cache
  one-file  one source file changed: only the steps from its COPY on rerun
  parallel  three independent CPU-heavy stages + a final stage copying from all three,
            against the longest single stage built alone
  RUN step  the fixed cost of one RUN step (issue 5): a --no-cache build of FROM + --steps x
            `RUN true` minus one of FROM + `RUN true`, divided by steps-1 (setup, `true`,
            teardown, diff of an empty upper, commit)
and pybuild's peak RSS (from wait4's ru_maxrss, the same number `/usr/bin/time -v` reports) on
the cold build.  Reference builders: `buildah bud --layers` (its own store in the work dir;
isolation oci with runc if that works here, else chroot, and the report says which) and
BuildKit inside Debian's dockerd 20.10 (`DOCKER_BUILDKIT=1 /usr/bin/docker build --network
none`, a private daemon with its own data root, `--bridge none --iptables=false`), all building
FROM the same busybox image made by samples/make-busybox.sh.  Run as root, by hand.
"""

from __future__ import annotations

import abc
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def timed(cmd, env=None) -> tuple[float, int]:
    """Wall seconds and the peak RSS (KiB) of the command's process tree's largest process."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss


def umount_under(path: Path) -> None:
    """Unmount whatever the daemons left mounted below ``path`` (deepest first)."""
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    for t in sorted((t for t in targets if t.startswith(str(path) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", t], capture_output=True)


def make_context(ctx: Path, files: int, mib: int) -> None:
    rng = random.Random(42)
    size = max(1, mib * 1024 * 1024 // files)
    for i in range(files):
        d = ctx / "src" / f"d{i // 50:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(rng.randbytes(size))
    steps = ["FROM busybox", "ARG V=1", "ENV APP=/app", "WORKDIR /app"]
    steps += [f"RUN echo step{i} > /step{i}" for i in range(5, 11)]
    steps += ["COPY src/ /app/src/", "RUN find /app/src -type f | wc -l > /count"]
    steps += [f"RUN echo after{i} >> /after" for i in range(13, 20)]
    steps += ['CMD ["cat", "/count"]']
    (ctx / "Dockerfile").write_text("\n".join(steps) + "\n")


PARALLEL = """\
FROM busybox AS a
RUN i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; echo a > /a
FROM busybox AS b
RUN i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; echo b > /b
FROM busybox AS c
RUN i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; echo c > /c
FROM busybox
COPY --from=a /a /a
COPY --from=b /b /b
COPY --from=c /c /c
"""
SINGLE = """\
FROM busybox AS a
RUN i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; echo a > /a
"""


class Builder(abc.ABC):
    name = ""

    @abc.abstractmethod
    def build(self, ctx: Path, tag: str, dockerfile: Path | None = None, no_cache=False) -> tuple[float, int]:
        """Build; wall seconds and peak RSS (KiB) of the builder's client process."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Drop every cached step (a cold build follows)."""


class Pybuild(Builder):
    name = "pybuild"

    def __init__(self, work: Path, busybox_oci: Path):
        self.root = work / "pybuild-root"
        self.busybox_oci = busybox_oci
        self.env = {**os.environ, "PYBUILD_ROOT": str(self.root), "PYBUILD_PROGRESS": "plain"}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.reset()

    def reset(self):
        shutil.rmtree(self.root, ignore_errors=True)
        sh(["pybuild", "load", "-i", str(self.busybox_oci)], env=self.env)

    def build(self, ctx, tag, dockerfile=None, no_cache=False):
        cmd = ["pybuild", "build", "-t", tag, str(ctx)]
        if dockerfile:
            cmd += ["-f", str(dockerfile)]
        if no_cache:
            cmd.append("--no-cache")
        return timed(cmd, self.env)


class Buildah(Builder):
    name = "buildah"

    def __init__(self, work: Path, busybox_oci: Path):
        self.work = work / "buildah"
        self.busybox_oci = busybox_oci
        self.isolation = "oci"
        self.reset()
        probe = work / "probe"
        probe.mkdir(exist_ok=True)
        (probe / "Dockerfile").write_text("FROM busybox\nRUN true\n")
        try:
            self.build(probe, "probe")
        except SystemExit:
            self.isolation = "chroot"
            self.build(probe, "probe")

    def base(self):
        return ["buildah", "--root", str(self.work / "root"), "--runroot", str(self.work / "run"),
                "--storage-driver", "overlay"]

    def reset(self):
        subprocess.run(self.base() + ["rm", "--all"], capture_output=True)
        umount_under(self.work)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        sh(self.base() + ["pull", "-q", f"oci-archive:{self.busybox_oci}"])
        image = sh(self.base() + ["images", "-q"]).stdout.split()[0]
        sh(self.base() + ["tag", image, "busybox"])

    def build(self, ctx, tag, dockerfile=None, no_cache=False):
        cmd = self.base() + ["bud", "--layers", "--isolation", self.isolation, "--network", "none",
                             "--pull=never", "-q", "-t", tag]
        if dockerfile:
            cmd += ["-f", str(dockerfile)]
        if no_cache:
            cmd.append("--no-cache")
        return timed(cmd + [str(ctx)])


class BuildKit(Builder):
    name = "buildkit"

    def __init__(self, work: Path, busybox_docker: Path):
        self.work = work / "docker"
        self.sock = self.work / "docker.sock"
        self.busybox_docker = busybox_docker
        self.daemon = None
        self.reset()

    def _start(self):
        self.work.mkdir(parents=True, exist_ok=True)
        log = open(self.work / "dockerd.log", "w")
        self.daemon = subprocess.Popen(
            ["dockerd", "--data-root", str(self.work / "data"), "--exec-root", str(self.work / "exec"),
             "-H", f"unix://{self.sock}", "--pidfile", str(self.work / "dockerd.pid"), "--bridge", "none",
             "--iptables=false", "--ip-forward=false"],
            stdout=log, stderr=log)
        for _ in range(200):
            if subprocess.run(self.cli() + ["info"], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise SystemExit(f"dockerd did not start; see {self.work / 'dockerd.log'}")

    def stop(self):
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait(timeout=30)
            self.daemon = None
        umount_under(self.work)

    def cli(self):
        return ["/usr/bin/docker", "-H", f"unix://{self.sock}"]

    def reset(self):
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        self._start()
        sh(self.cli() + ["load", "-i", str(self.busybox_docker)])

    def build(self, ctx, tag, dockerfile=None, no_cache=False):
        cmd = self.cli() + ["build", "--network", "none", "-q", "-t", tag]
        if dockerfile:
            cmd += ["-f", str(dockerfile)]
        if no_cache:
            cmd.append("--no-cache")
        return timed(cmd + [str(ctx)], {**os.environ, "DOCKER_BUILDKIT": "1"})


def median(values):
    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--loop", type=int, default=1_500_000, help="iterations of each CPU-heavy stage")
    ap.add_argument("--steps", type=int, default=50, help="RUN steps of the per-step case")
    ap.add_argument("--no-buildah", action="store_true")
    ap.add_argument("--no-buildkit", action="store_true")
    opts = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    env = {**os.environ, "PYBUILD_ROOT": str(work / "seed")}
    sh([str(REPO / "samples/make-busybox.sh"), "busybox:latest"], env=env)
    busybox_oci, busybox_docker = work / "busybox.oci.tar", work / "busybox.docker.tar"
    sh(["pybuild", "save", "-o", str(busybox_oci), "busybox:latest"], env=env)
    sh(["pybuild", "save", "--format", "docker", "-o", str(busybox_docker), "busybox:latest"], env=env)
    ctx = work / "ctx"
    make_context(ctx, opts.files, opts.mib)
    par = work / "par"
    par.mkdir()
    (par / "Dockerfile").write_text(PARALLEL.format(n=opts.loop))
    (par / "single.Dockerfile").write_text(SINGLE.format(n=opts.loop))
    steps = work / "steps"
    steps.mkdir()
    (steps / "Dockerfile").write_text("FROM busybox\n" + "RUN true\n" * opts.steps)
    (steps / "one.Dockerfile").write_text("FROM busybox\nRUN true\n")

    builders: list[Builder] = [Pybuild(work, busybox_oci)]
    if not opts.no_buildah and shutil.which("buildah"):
        builders.append(Buildah(work, busybox_oci))
    if not opts.no_buildkit and shutil.which("dockerd") and os.path.exists("/usr/bin/docker"):
        builders.append(BuildKit(work, busybox_docker))

    results: dict[str, dict[str, float]] = {}
    middle = opts.files // 2
    changed = ctx / "src" / f"d{middle // 50:03d}" / f"f{middle:05d}.txt"
    original = changed.read_bytes()
    try:
        for b in builders:
            r = results.setdefault(b.name, {})
            cold, cached, one, rss = [], [], [], []
            for i in range(opts.runs):
                b.reset()
                wall, maxrss = b.build(ctx, "bench:1")
                cold.append(wall)
                rss.append(maxrss)
                cached.append(b.build(ctx, "bench:1")[0])
                changed.write_bytes(original + str(i).encode())
                one.append(b.build(ctx, "bench:1")[0])
                changed.write_bytes(original)
            r["cold"], r["cached"], r["one-file"] = median(cold), median(cached), median(one)
            r["cold peak RSS MiB"] = max(rss) / 1024
            par_walls, single_walls = [], []
            for _ in range(opts.runs):
                par_walls.append(b.build(par, "par:1", no_cache=True)[0])
                single_walls.append(b.build(par, "single:1", par / "single.Dockerfile", no_cache=True)[0])
            r["parallel (3 stages)"], r["one stage alone"] = median(par_walls), median(single_walls)
            many, one_step = [], []
            for _ in range(opts.runs):
                many.append(b.build(steps, "steps:1", no_cache=True)[0])
                one_step.append(b.build(steps, "step:1", steps / "one.Dockerfile", no_cache=True)[0])
            r["RUN step (ms)"] = (median(many) - median(one_step)) / (opts.steps - 1) * 1000
    finally:
        for b in builders:
            if isinstance(b, BuildKit):
                b.stop()

    cases = ["cold", "cached", "one-file", "parallel (3 stages)", "one stage alone", "RUN step (ms)"]
    print(f"\ncontext: {opts.files} files, {opts.mib} MiB; median of {opts.runs} runs; CPUs: {os.cpu_count()}")
    if any(isinstance(b, Buildah) for b in builders):
        print(f"buildah isolation: {next(b for b in builders if isinstance(b, Buildah)).isolation}")
    head = f"{'case':22}" + "".join(f"{b.name:>12}" for b in builders)
    head += "".join(f"{'pb/' + b.name:>14}" for b in builders[1:])
    print(head)
    for case in cases:
        unit = "" if case.endswith("(ms)") else "s"
        line = f"{case:22}" + "".join(f"{results[b.name][case]:>11.2f}{unit or ' '}" for b in builders)
        line += "".join(f"{results['pybuild'][case] / results[b.name][case]:>14.2f}" for b in builders[1:])
        print(line)
    print(f"{'cold peak RSS':22}{results['pybuild']['cold peak RSS MiB']:>10.1f}MiB  (pybuild's own process)")
    umount_under(work)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
