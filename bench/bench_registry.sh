#!/usr/bin/env bash
# Push and pull of a ~500 MB, 5-layer image (random data, so every layer is ~100 MB compressed)
# against a local docker-registry, with `skopeo copy` of the same image to/from a registry in the
# same run as the reference. Every push goes to a freshly started registry (empty storage), so
# neither tool can skip or mount a blob; every pull goes into an empty destination.
# Then a re-push of the unchanged image: blob uploads must be 0; its wall time is reported.
# Usage: bench/bench_registry.sh [MB_PER_LAYER] [RUNS]   (run as root; defaults 100 and 3; medians)
set -euo pipefail
cd "$(dirname "$0")/.."
mb="${1:-100}"
runs="${2:-3}"
unset PYTHONDONTWRITEBYTECODE
work=$(mktemp -d)
reg_pid=""
stop_registry() { if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null || true; wait "$reg_pid" 2>/dev/null || true; reg_pid=""; fi; }
trap 'stop_registry; rm -rf "$work"' EXIT

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }

start_registry() {  # fresh storage on a free port; sets $host
    local port dir
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    dir="$work/registry-$1"
    mkdir -p "$dir"
    cat > "$dir/config.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $dir/data}}
http: {addr: 127.0.0.1:$port, secret: bench}
YML
    docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
    reg_pid=$!
    host="127.0.0.1:$port"
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do sleep 0.05; done
}

export PYBUILD_ROOT="$work/store"
samples/make-busybox.sh >/dev/null
mkdir -p "$work/ctx"
{
    echo "FROM busybox"
    for i in 1 2 3 4 5; do echo "RUN head -c ${mb}m /dev/urandom > /layer$i"; done
} > "$work/ctx/Dockerfile"
pybuild build -q -t bench/app:1 --progress plain "$work/ctx" >/dev/null
size=$(du -sm "$work/store/blobs" | cut -f1)
echo "image: 5 layers of ${mb} MB random data (+ busybox), store blobs ${size} MB"

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
pb_push=(); pb_pull=(); sk_push=(); sk_pull=(); repush=(); uploads=()
for i in $(seq "$runs"); do
    start_registry "pybuild-$i"
    t0=$(now); pybuild push -q bench/app:1 "$host/bench/app:1" >/dev/null; t1=$(now)
    pb_push+=("$(elapsed "$t0" "$t1")")
    t0=$(now); out=$(pybuild push bench/app:1 "$host/bench/app:1" 2>&1); t1=$(now)
    repush+=("$(elapsed "$t0" "$t1")")
    uploads+=("$(echo "$out" | sed -n 's/^blobs: \([0-9]*\) uploaded.*/\1/p')")
    rm -rf "$work/pulled"
    t0=$(now); PYBUILD_ROOT="$work/pulled" pybuild pull -q "$host/bench/app:1" >/dev/null; t1=$(now)
    pb_pull+=("$(elapsed "$t0" "$t1")")
    stop_registry; rm -rf "$work/registry-pybuild-$i"

    start_registry "skopeo-$i"
    t0=$(now); skopeo copy -q --dest-tls-verify=false "oci:$work/store:bench/app:1" "docker://$host/bench/app:1"; t1=$(now)
    sk_push+=("$(elapsed "$t0" "$t1")")
    rm -rf "$work/skopeo-pulled"
    t0=$(now); skopeo copy -q --src-tls-verify=false "docker://$host/bench/app:1" "oci:$work/skopeo-pulled:app"; t1=$(now)
    sk_pull+=("$(elapsed "$t0" "$t1")")
    stop_registry; rm -rf "$work/registry-skopeo-$i"
done
m() { printf '%s\n' "$@" | median; }
p_push=$(m "${pb_push[@]}"); s_push=$(m "${sk_push[@]}"); p_pull=$(m "${pb_pull[@]}"); s_pull=$(m "${sk_pull[@]}")
printf 'push   pybuild %6.2f s   skopeo copy %6.2f s   ratio %.2f   (median of %s)\n' "$p_push" "$s_push" "$(echo "$p_push / $s_push" | bc -l)" "$runs"
printf 'pull   pybuild %6.2f s   skopeo copy %6.2f s   ratio %.2f\n' "$p_pull" "$s_pull" "$(echo "$p_pull / $s_pull" | bc -l)"
printf 're-push of the unchanged image: blob uploads %s, %.2f s (median)\n' "${uploads[*]}" "$(m "${repush[@]}")"
t0=$(now); pybuild --version >/dev/null; t1=$(now)
printf 'for scale: pybuild --version (interpreter start) %.2f s\n' "$(elapsed "$t0" "$t1")"
