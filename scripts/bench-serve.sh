#!/usr/bin/env bash
# iscsi-perf against `isomount serve` and against tgtd, same read-only image, same run.
# Prints one line per target and configuration; figures only, nothing is asserted.
# Usage: scripts/bench-serve.sh [SECONDS]   (needs tgt and libiscsi-bin; builds --release)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
cargo build --release --quiet --bin isomount
bin="$PWD/target/release/isomount"

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

image="$work/bench.img"
head -c $((256 << 20)) /dev/urandom >"$image"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# isomount serve
"$bin" serve "$image" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
for _ in $(seq 50); do grep -q "listening on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
serve_portal="$(sed -n 's/^listening on //p' "$work/serve.out")"
serve_url="iscsi://$serve_portal/iqn.2026-01.org.isomount.serve:bench/0"

# tgtd, read-only LUN 1 on the same file
tport="$(free_port)"
control=$((20000 + RANDOM % 20000))
tgtd -f -C "$control" --iscsi "portal=127.0.0.1:$tport" >"$work/tgtd.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do tgtadm -C "$control" --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done
iqn="iqn.2026-01.bench:tgtd"
tgtadm -C "$control" --lld iscsi --op new --mode target --tid 1 -T "$iqn"
tgtadm -C "$control" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$image"
tgtadm -C "$control" --lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params readonly=1
tgtadm -C "$control" --lld iscsi --op bind --mode target --tid 1 -I ALL
tgtd_url="iscsi://127.0.0.1:$tport/$iqn/1"

perf() {
    local label="$1" url="$2"
    shift 2
    local line
    line="$(timeout $((secs + 30)) iscsi-perf -t "$secs" "$@" "$url" 2>&1 | tr '\r' '\n' | grep 'iops average' | tail -1)"
    printf '%-8s %-28s %s\n' "$label" "$*" "${line:-no result}"
}

# Warm both up (page cache, first connections) before anything is measured.
timeout 30 iscsi-perf -t 2 "$serve_url" >/dev/null 2>&1 || true
timeout 30 iscsi-perf -t 2 "$tgtd_url" >/dev/null 2>&1 || true

echo "iscsi-perf, ${secs}s each, 256 MiB image, 2 cores shared"
cases=("-b 8 -m 32" "-b 256 -m 16" "-r -b 8 -m 32")
if [ -n "${BENCH_CASES:-}" ]; then IFS=';' read -r -a cases <<<"$BENCH_CASES"; fi
for args in "${cases[@]}"; do
    # shellcheck disable=SC2086
    perf serve "$serve_url" $args
    # shellcheck disable=SC2086
    perf tgtd "$tgtd_url" $args
done
