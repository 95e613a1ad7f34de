#!/usr/bin/env bash
# Wall time of a cold and of a fully cached build of samples/hello, and of a
# rebuild after one COPY'd file changed, each the median of N runs in a fresh
# state dir; `cp -a` of the same context is measured in the same run as a
# reference for "how fast is doing almost nothing on this disk", and a bare
# interpreter start as the floor under every pybuild command.
# Usage: bench/bench_hello.sh [N]      (run as root; prints one line per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-5}"
# Byte-code caching is what users get; some CI shells turn it off, which would time the compiler.
unset PYTHONDONTWRITEBYTECODE
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYBUILD_ROOT="$work/base"
samples/make-busybox.sh >/dev/null

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
time_cmd() { local t0 t1; t0=$(now); "$@" >/dev/null 2>&1; t1=$(now); echo "$t1 - $t0" | bc -l; }

cold=(); cached=(); changed=(); ref=(); version=(); python=()
for i in $(seq "$n"); do
    rm -rf "$work/store" "$work/ctx" "$work/copy"
    cp -a "$work/base" "$work/store"
    cp -a samples/hello "$work/ctx"
    export PYBUILD_ROOT="$work/store"
    cold+=("$(time_cmd pybuild -t hello:1.0 "$work/ctx")")
    cached+=("$(time_cmd pybuild -t hello:1.0 "$work/ctx")")
    echo "change $i" >> "$work/ctx/app.txt"
    changed+=("$(time_cmd pybuild -t hello:1.0 "$work/ctx")")
    ref+=("$(time_cmd cp -a "$work/ctx" "$work/copy")")
    version+=("$(time_cmd pybuild --version)")
    python+=("$(time_cmd python3 -c pass)")
done
printf 'cold build of samples/hello        %.3f s (median of %d)\n' "$(printf '%s\n' "${cold[@]}" | median)" "$n"
printf 'fully cached rebuild               %.3f s\n' "$(printf '%s\n' "${cached[@]}" | median)"
printf 'rebuild after app.txt changed      %.3f s\n' "$(printf '%s\n' "${changed[@]}" | median)"
printf 'pybuild --version (start-up)       %.3f s\n' "$(printf '%s\n' "${version[@]}" | median)"
printf 'reference: python3 -c pass         %.3f s\n' "$(printf '%s\n' "${python[@]}" | median)"
printf 'reference: cp -a of the context    %.3f s\n' "$(printf '%s\n' "${ref[@]}" | median)"
