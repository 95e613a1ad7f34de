#!/usr/bin/env bash
# Start-to-exit wall time of `pybuild run --rm IMAGE true` against `runc run` on the same image
# (busybox:latest saved by pybuild, unpacked into a runtime bundle by umoci) and `podman run --rm`
# (runc) on the same archive when podman is installed; medians of N runs, interleaved, measured in
# the same run.  Like for like: pybuild and podman each with --network none (runc's bundle has no
# network either), and each with its default network (a bridge: pybuild0, netavark's podman0).
# Usage: bench/bench_run.sh [N]      (run as root; needs runc and umoci: apt-get install runc umoci)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-11}"
unset PYTHONDONTWRITEBYTECODE  # byte-code caching is what users get
for tool in runc umoci; do
    command -v "$tool" >/dev/null || { echo "bench_run: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done
work=$(mktemp -d)
cleanup() {
    runc delete -f "pybench-$$" >/dev/null 2>&1 || true
    [ -d "$work/podman" ] && podman_ rm -af >/dev/null 2>&1 || true
    [ -d "$work/podman" ] && podman_ rmi -af >/dev/null 2>&1 || true
    # podman's storage may leave its overlay/shm mounts behind: only ours, under $work
    awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export PYBUILD_ROOT="$work/store"
samples/make-busybox.sh >/dev/null
pybuild save -o "$work/bb.tar" busybox:latest
mkdir "$work/layout"
tar -xf "$work/bb.tar" -C "$work/layout"
umoci unpack --image "$work/layout:busybox:latest" "$work/bundle" >/dev/null
# runc's default spec (from umoci) runs `sh` with a terminal: make it `true`, no terminal
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["args"] = ["true"]
c["process"]["terminal"] = False
json.dump(c, open(p, "w"))
PY

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
time_cmd() { local t0 t1; t0=$(now); "$@" >/dev/null 2>&1 </dev/null || { echo "failed: $*" >&2; exit 1; }; t1=$(now); echo "$t1 - $t0" | bc -l; }

# podman on this kind of host: runc (crun fails on hybrid cgroups), cgroupfs, and ulimits below
# the hard limits (the defaults make runc's setrlimit fail); a private store under $work.
cat > "$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
podman_() { CONTAINERS_CONF="$work/containers.conf" podman --root "$work/podman" --runroot "$work/podman-run" "$@"; }
podman_ok=0
if command -v podman >/dev/null && podman_ load -i "$work/bb.tar" >/dev/null 2>&1 &&
        podman_ run --rm --network none busybox:latest true >/dev/null 2>&1; then
    podman_ok=1
fi
podman_bridge_ok=0  # netavark's bridge: like-for-like with pybuild's default network
if [ "$podman_ok" = 1 ] && podman_ run --rm busybox:latest true >/dev/null 2>&1; then
    podman_bridge_ok=1
fi

# `pybuild` and `python3` on PATH may be a version manager's shims (pyenv's are bash scripts that
# re-run themselves through `pyenv exec`, ~50 ms each): time the console script and interpreter a
# pip or venv install gives the user, next to the interpreter that runs pybuild.
py_bin=$(python3 -c 'import sys; print(sys.executable)')
pybuild_bin="$(dirname "$py_bin")/pybuild"
[ -x "$pybuild_bin" ] || pybuild_bin=$(command -v pybuild)
echo "timing $pybuild_bin (interpreter $py_bin)"

pb=(); pbnone=(); rc=(); pd=(); pdbr=()
"$pybuild_bin" run --rm busybox:latest true >/dev/null  # warm: snapshots unpacked, bridge created
for i in $(seq "$n"); do
    pb+=("$(time_cmd "$pybuild_bin" run --rm busybox:latest true)")
    pbnone+=("$(time_cmd "$pybuild_bin" run --rm --network none busybox:latest true)")
    rc+=("$(cd "$work/bundle" && time_cmd runc run "pybench-$$")")
    if [ "$podman_ok" = 1 ]; then
        pd+=("$(time_cmd podman_ run --rm --network none busybox:latest true)")
        if [ "$podman_bridge_ok" = 1 ]; then
            pdbr+=("$(time_cmd podman_ run --rm busybox:latest true)")
        fi
    fi
done
m_pb=$(printf '%s\n' "${pb[@]}" | median)
m_none=$(printf '%s\n' "${pbnone[@]}" | median)
m_rc=$(printf '%s\n' "${rc[@]}" | median)
printf 'pybuild run --rm (default network)   %.3f s\n' "$m_pb"
printf 'pybuild run --rm --network none      %.3f s\n' "$m_none"
printf 'runc run (same image, bundle)        %.3f s\n' "$m_rc"
printf 'ratio pybuild(none)/runc             %.2fx\n' "$(echo "$m_none / $m_rc" | bc -l)"
printf 'ratio pybuild(default)/runc          %.2fx\n' "$(echo "$m_pb / $m_rc" | bc -l)"
if [ "$podman_ok" = 1 ]; then
    m_pd=$(printf '%s\n' "${pd[@]}" | median)
    printf 'podman run --rm (runc)               %.3f s\n' "$m_pd"
    printf 'ratio pybuild(none)/podman(none)     %.2fx\n' "$(echo "$m_none / $m_pd" | bc -l)"
    if [ "$podman_bridge_ok" = 1 ]; then
        m_pdbr=$(printf '%s\n' "${pdbr[@]}" | median)
        printf 'podman run --rm (default network)    %.3f s\n' "$m_pdbr"
        printf 'ratio pybuild(default)/podman(default) %.2fx\n' "$(echo "$m_pb / $m_pdbr" | bc -l)"
    else
        echo "podman run (default network): not measured (its bridge network does not work on this host)"
    fi
else
    echo "podman run: not measured (podman missing or not configured for this host)"
fi
printf 'python3 -c pass (interpreter floor)  %.3f s\n' "$(for i in 1 2 3; do time_cmd "$py_bin" -c pass; done | median)"
