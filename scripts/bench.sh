#!/usr/bin/env bash
# Throughput benchmark: isomount beside its peers, measured in the same run on the same LUN.
#
#   scripts/bench.sh            # RUNS=5 PERF_SECONDS=6 LATENCY_MS=10 SIZE_MIB=256 by default
#   ONLY='cat NAME' scripts/bench.sh   # only the rows whose label matches this regex
#
# Starts tgtd (through the harness) with one disk LUN of SIZE_MIB random bytes on loopback, nginx
# serving the same bytes as a file (a web mirror), and a fault proxy adding LATENCY_MS each way in
# front of each. Each row prints a peer's figure, ours
# and ours/peer, all in MiB/s (iscsi-perf's unit), each the median of RUNS runs.
# To add a row: write a measure_* function that prints one MiB/s figure for one run, then call
# `row "label" measure_peer ARGS -- measure_ours ARGS` in main (see the existing rows).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
PERF_SECONDS=${PERF_SECONDS:-6}
PERF_REQUESTS=${PERF_REQUESTS:-32}        # iscsi-perf -m: requests in flight
PERF_BLOCKS=${PERF_BLOCKS:-512}           # iscsi-perf -b: 512 × 512 B = 256 KiB per request, as ours
LATENCY_MS=${LATENCY_MS:-10}
SIZE_MIB=${SIZE_MIB:-256}
IQN=iqn.2026-11.org.isomount.bench:disk

for tool in tgtd iscsi-perf; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install tgt libiscsi-bin)" >&2; exit 1; }
done
cargo build --release --quiet --bin isomount
cargo build --release --quiet -p isomount-harness --bins
BIN=target/release

WORK=$(mktemp -d /tmp/isomount-bench.XXXXXX)
PIDS=()
cleanup() {
    if mountpoint -q "$WORK/mnt" 2>/dev/null; then umount -l "$WORK/mnt" || true; fi
    exec 3>&- 2>/dev/null || true          # harness-target stops tgtd when its stdin closes
    exec 4>&- 2>/dev/null || true          # harness-web stops nginx when its stdin closes
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# One tgtd with the LUN; the harness picks free ports and kills tgtd when we go.
head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/disk.img"
mkfifo "$WORK/target.in"
"$BIN/harness-target" tgtd "$IQN" "$WORK/disk.img" <"$WORK/target.in" >"$WORK/target.out" &
PIDS+=($!)
exec 3>"$WORK/target.in"
for _ in $(seq 300); do [ -s "$WORK/target.out" ] && break; sleep 0.1; done
read -r PORTAL LUN <"$WORK/target.out" || { echo "bench: tgtd did not start" >&2; exit 1; }

# Warm tgtd up before anything is measured. A fresh tgtd allocates each 256 KiB read buffer with
# mmap (glibc's threshold starts at 128 KiB and rises only once a bigger block is freed) and
# faults it in anew every time: half the throughput of the same tgtd a moment later, for the
# peer and for us alike. A mirror's long-running target is the warm one.
timeout -s INT 2 iscsi-perf -m 8 -b 4096 "iscsi://$PORTAL/$IQN/$LUN" >/dev/null 2>&1 || true

"$BIN/faultproxy" "$PORTAL" --latency-ms "$LATENCY_MS" --counts "$WORK/proxy.counts" >"$WORK/proxy.out" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/proxy.out" ] && break; sleep 0.1; done
read -r SLOW_PORTAL <"$WORK/proxy.out" || { echo "bench: faultproxy did not start" >&2; exit 1; }

# `isomount serve` (issue 6) on the same image file, read-only, beside tgtd.
# It serves a copy: serve maps its images, and mapped pages outlive drop_caches, which would
# warm the file the mount and cat rows read cold.
mkdir "$WORK/served" && cp "$WORK/disk.img" "$WORK/served/disk.img"
"$BIN/isomount" serve "$WORK/served/disk.img" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening on' "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
SERVE_PORTAL=$(sed -n 's/^listening on //p' "$WORK/serve.out")
[ -n "$SERVE_PORTAL" ] || { echo "bench: isomount serve did not start" >&2; exit 1; }
SERVE_IQN=iqn.2026-01.org.isomount.serve:disk
SERVE_URL="iscsi://$SERVE_PORTAL/$SERVE_IQN/0"

# A web mirror (issue 10): nginx serving the same image file over http, and the proxy adding
# LATENCY_MS each way in front of it.
mkdir "$WORK/www" && cp "$WORK/disk.img" "$WORK/www/disk.img"
mkfifo "$WORK/web.in"
"$BIN/harness-web" nginx "$WORK/www" <"$WORK/web.in" >"$WORK/web.out" &
PIDS+=($!)
exec 4>"$WORK/web.in"
for _ in $(seq 100); do [ -s "$WORK/web.out" ] && break; sleep 0.1; done
read -r WEB_BASE <"$WORK/web.out" || { echo "bench: nginx did not start" >&2; exit 1; }
WEB_URL="$WEB_BASE/disk.img"
"$BIN/faultproxy" "${WEB_BASE#http://}" --latency-ms "$LATENCY_MS" >"$WORK/web-proxy.out" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/web-proxy.out" ] && break; sleep 0.1; done
read -r SLOW_WEB <"$WORK/web-proxy.out" || { echo "bench: faultproxy did not start" >&2; exit 1; }
SLOW_WEB_URL="http://$SLOW_WEB/disk.img"
# The same mirrors published again with BLAKE3 chunk hashes (`publish --hash blake3`) as
# web-blake3 and web-slow-blake3, for the rows marked "(blake3 manifest)".
for name in web:"$WEB_URL" web-slow:"$SLOW_WEB_URL"; do
    for hash in sha256 blake3; do
        suffix=${hash/sha256/}
        "$BIN/isomount" publish "$WORK/disk.img" --name "${name%%:*}${suffix:+-$suffix}" --url "${name#*:}" \
            --hash "$hash" -o "$WORK/web.toml" >/dev/null 2>"$WORK/publish.err" ||
            { cat "$WORK/publish.err" >&2; exit 1; }
    done
done

# --- measurements: each prints one MiB/s figure for one run ------------------------------------

# libiscsi's iscsi-perf, sequential reads, PERF_SECONDS long; its own running average at the end.
measure_iscsi_perf() {
    local out
    out=$(timeout -s INT "$PERF_SECONDS" iscsi-perf -m "$PERF_REQUESTS" -b "$PERF_BLOCKS" "$1" 2>&1 || true)
    # Lines are "... iops average N (X MB/s) ..." separated by carriage returns; take the last.
    tr '\r' '\n' <<<"$out" | sed -n 's/.*iops average [0-9]* (\([0-9.]*\) MB\/s).*/\1/p' | tail -1 | grep . \
        || { echo "bench: iscsi-perf gave no figure: $out" >&2; return 1; }
}

# iscsi-perf with 4 KiB requests (-b 8): per-command cost rather than bandwidth.
measure_iscsi_perf_small() {
    PERF_BLOCKS=8 measure_iscsi_perf "$1"
}

# MiB/s of BYTES moved since START (`date +%s.%N`), timed to now.
mibs_since() {
    awk -v b="$1" -v s="$2" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b / (e - s) / 1048576 }'
}

# `isomount cat URL > /dev/null`: the whole LUN, timed.
measure_isomount_cat() {
    local start
    start=$(date +%s.%N)
    "$BIN/isomount" cat "$1" >/dev/null
    mibs_since $((SIZE_MIB << 20)) "$start"
}

# The mount (issue 4): `dd bs=1M` of the image file of `isomount bench MNT`, published from the
# LUN into a catalog. drop_caches needs root; so does mounting without fusermount3.
MNT="$WORK/mnt"
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# The whole `dd` (its open included: an open of the mounted image may check the cache first),
# timed from outside, for ours and the peer's alike.
dd_mibs() {
    local start bytes
    bytes=$(stat -c %s "$1")
    start=$(date +%s.%N)
    dd if="$1" of=/dev/null bs=1M 2>/dev/null
    mibs_since "$bytes" "$start"
}
# mount_bench CACHE_DIR [CATALOG NAME]: the LUN's image by default, or a web mirror's.
mount_bench() { "$BIN/isomount" --catalog "${2:-$WORK/catalog.toml}" --cache-dir "$1" mount "${3:-bench}" "$MNT"; }
unmount_bench() { "$BIN/isomount" unmount "$MNT"; }
# Cold: empty cache, empty page cache; every byte comes over iSCSI and is verified.
measure_mount_cold() {
    rm -rf "$WORK/cache-cold"
    mount_bench "$WORK/cache-cold"
    drop_caches
    dd_mibs "$MNT/bench.img"
    unmount_bench
}
# The same through the proxy's +LATENCY_MS each way (issue 12: ≥ 1.0× iscsi-perf on that link).
measure_mount_cold_slow() {
    rm -rf "$WORK/cache-cold"
    mount_bench "$WORK/cache-cold" "$WORK/catalog-slow.toml"
    drop_caches
    dd_mibs "$MNT/bench.img"
    unmount_bench
}
# Remounted over a full cache ($1), page cache dropped: the persistent cache serves.
measure_mount_cached() {
    mount_bench "$1"
    drop_caches
    dd_mibs "$MNT/bench.img"
    unmount_bench
}
# A second read of the mounted image: the kernel's page cache, kept across opens.
measure_mount_again() {
    mount_bench "$1"
    cat "$MNT/bench.img" >/dev/null
    dd_mibs "$MNT/bench.img"
    unmount_bench
}
# `isomount cat NAME` (issue 3) through the image core: cold from an empty cache (every chunk
# fetched, verified and written to the cache), then from a full cache ($1) with the page cache
# dropped (every chunk read back and re-hashed).
cat_name_mibs() {
    local start
    start=$(date +%s.%N)
    "$BIN/isomount" --catalog "$WORK/catalog.toml" --cache-dir "$1" cat bench >/dev/null
    mibs_since $((SIZE_MIB << 20)) "$start"
}
measure_cat_name_cold() { rm -rf "$WORK/cache-cat-cold"; cat_name_mibs "$WORK/cache-cat-cold"; }
measure_cat_name_cached() { drop_caches; cat_name_mibs "$1"; }
measure_file_cold() { drop_caches; dd_mibs "$1"; }

# Web mirrors: `curl` of the whole file from nginx, and ours cold (empty cache) by catalog name
# ($1: web or web-slow). The served file is warm for both (nginx serves from the page cache).
measure_curl() {
    local start
    start=$(date +%s.%N)
    curl -sf -o /dev/null "$1"
    mibs_since $((SIZE_MIB << 20)) "$start"
}
measure_web_cat_cold() {
    local start
    rm -rf "$WORK/cache-web"
    start=$(date +%s.%N)
    "$BIN/isomount" --catalog "$WORK/web.toml" --cache-dir "$WORK/cache-web" cat "$1" >/dev/null
    mibs_since $((SIZE_MIB << 20)) "$start"
}
measure_web_mount_cold() {
    rm -rf "$WORK/cache-web"
    mount_bench "$WORK/cache-web" "$WORK/web.toml" "$1"
    drop_caches
    cat "$WORK/www/disk.img" >/dev/null        # nginx's copy warm again, as for curl
    dd_mibs "$MNT/$1.img"
    unmount_bench
}
measure_file_again() { cat "$1" >/dev/null; dd_mibs "$1"; }

# Reference rows: what the machine allows, measured in the same run (README, "What caps the
# rows"). The web row's work done by standard tools: curl's body piped into `openssl dgst
# -sha256` (fetching and verifying, without storing anything).
measure_curl_sha256() {
    local start
    start=$(date +%s.%N)
    curl -sf "$1" | openssl dgst -sha256 >/dev/null
    mibs_since $((SIZE_MIB << 20)) "$start"
}
# The ceiling of checking the whole cache before the kernel may read it (remount): reading the
# file from the disk and then once more from the page cache, timed as one.
measure_file_twice() {
    local start
    drop_caches
    start=$(date +%s.%N)
    dd if="$1" of=/dev/null bs=1M 2>/dev/null
    dd if="$1" of=/dev/null bs=1M 2>/dev/null
    mibs_since $((SIZE_MIB << 20)) "$start"
}
# The cached `cat NAME` row with each program's own binary loaded first (after drop_caches,
# before the timing): the image's bytes cold, the programs not (dd is 70 KiB, isomount 14 MiB).
measure_file_cold_warm_binary() { drop_caches; dd --version >/dev/null; dd_mibs "$1"; }
measure_cat_name_cached_warm_binary() { drop_caches; "$BIN/isomount" --version >/dev/null; cat_name_mibs "$1"; }

# CPU-seconds per GiB delivered cold (issue 12), beside the cost of verification itself:
# `openssl dgst -sha256` of the same bytes (the file in the page cache) in the same run. Lower
# is better here: the ratio is ours over the floor (targets: cat NAME 1.5, the mount 2).
TICKS=$(getconf CLK_TCK)
cpu_seconds() {                          # command…: its user + system CPU-seconds
    local TIMEFORMAT='%U %S'
    { time "$@" >/dev/null 2>"$WORK/cpu.err"; } 2>"$WORK/cpu.time" || { cat "$WORK/cpu.err" >&2; return 1; }
    awk '{ print $1 + $2 }' "$WORK/cpu.time"
}
per_gib() { awk -v s="$1" -v m="$SIZE_MIB" 'BEGIN { printf "%.3f\n", s * 1024 / m }'; }
measure_sha256_cpu() { cat "$1" >/dev/null; per_gib "$(cpu_seconds openssl dgst -sha256 "$1")"; }
# $1: the catalog naming `bench` (catalog.toml; catalog-blake3.toml for the BLAKE3 manifest).
measure_cat_name_cold_cpu() {
    rm -rf "$WORK/cache-cpu"
    per_gib "$(cpu_seconds "$BIN/isomount" --catalog "$1" --cache-dir "$WORK/cache-cpu" cat bench)"
}
# The mount daemon's CPU-seconds (all its threads, start-up included) plus `dd`'s, read from
# /proc before unmounting. $1: the catalog, as above.
measure_mount_cold_cpu() {
    local pid reader
    rm -rf "$WORK/cache-cpu"
    mount_bench "$WORK/cache-cpu" "$1"
    pid=$(pgrep -n -f -- "--cache-dir $WORK/cache-cpu mount")    # the newest: an unmounted one may still be exiting
    drop_caches
    reader=$(cpu_seconds dd if="$MNT/bench.img" of=/dev/null bs=1M)
    per_gib "$(awk -v r="$reader" -v t="$TICKS" '{ print r + ($14 + $15) / t }' "/proc/$pid/stat")"
    unmount_bench
}

# Connecting through the proxy: "MS ROUND_TRIPS" for one run of a command, its whole run timed
# and its round trips counted by the proxy (connections and turns of request and response).
proxy_round_trips() { awk '{ print $1 + $2 }' "$WORK/proxy.counts"; }
connect_cost() {
    local start end before after
    sleep 0.05                            # the counts file is rewritten every 10 ms
    before=$(proxy_round_trips)
    start=$(date +%s.%N)
    "$@" >/dev/null 2>"$WORK/connect.err" || { cat "$WORK/connect.err" >&2; return 1; }
    end=$(date +%s.%N)
    sleep 0.05
    after=$(proxy_round_trips)
    awk -v s="$start" -v e="$end" -v n=$((after - before)) 'BEGIN { printf "%.1f %d\n", (e - s) * 1000, n }'
}
# libiscsi's iscsi-inq: login, INQUIRY, logout.
measure_connect_inq() { connect_cost iscsi-inq "iscsi://$SLOW_PORTAL/$IQN/$LUN"; }
# `isomount NAME MNT` until it returns with the mount usable, from an empty cache; then unmounted.
measure_connect_mount() {
    rm -rf "$WORK/cache-connect"
    connect_cost "$BIN/isomount" --catalog "$WORK/catalog-slow.toml" --cache-dir "$WORK/cache-connect" mount \
        bench "$MNT" && grep '^connect:' "$MNT/info/stats" >"$WORK/connect.stats"
    unmount_bench
}

# `isomount serve` under a hostile initiator (issue 13): iscsi-perf against serve while
# `rudeclient` holds 1,000 connections that never finish their login (reopened as serve closes
# them), a session reading a byte a minute, and ten rounds a second of malformed PDUs and
# oversized and endless login text. Beside iscsi-perf alone on the same serve.
measure_attacked() {
    local rude
    "$BIN/rudeclient" "$SERVE_PORTAL" "$SERVE_IQN" --seconds $((PERF_SECONDS + 3)) >"$WORK/rude.out" 2>&1 &
    rude=$!
    for _ in $(seq 100); do grep -q '^ready' "$WORK/rude.out" 2>/dev/null && break; sleep 0.1; done
    measure_iscsi_perf "$1"
    wait "$rude" || { echo "bench: rudeclient failed: $(cat "$WORK/rude.out")" >&2; return 1; }
    grep -q '^not-closed 0$' "$WORK/rude.out" || echo "bench: serve left bad connections open: $(grep '^not-closed' "$WORK/rude.out")" >&2
}

# The light load client (issue 11): N sessions logged in from one process, R of them (all by
# default) each reading its own region 256 KiB at a time for PERF_SECONDS, the others idle; the
# aggregate MiB/s. $1 portal, $2 target, $3 LUN, $4 "N" or "N:R".
measure_sessions() {
    local out sessions=${4%%:*} readers=${4#*:}
    out=$("$BIN/loadclient" "$1" "$2" --lun "$3" --sessions "$sessions" --readers "$readers" \
        --seconds "$PERF_SECONDS" --logins-at-once 128 2>&1) || { echo "bench: loadclient: $out" >&2; return 1; }
    grep -q '^login-failures 0$' <<<"$out" && grep -q '^read-errors 0$' <<<"$out" ||
        echo "bench: loadclient with $4 sessions: $(grep -E '^(sessions|login-failure|read-error)' <<<"$out" | head -5 | tr '\n' ' ')" >&2
    sed -n 's/^mib-per-second //p' <<<"$out"
}
serve_sessions() { measure_sessions "$SERVE_PORTAL" "$SERVE_IQN" 0 "$1"; }
tgtd_sessions() { measure_sessions "$PORTAL" "$IQN" "$LUN" "$1"; }
# Memory per idle session of a target process, KiB: N sessions logged in and idle a second.
# $1 portal, $2 target, $3 LUN, $4 sessions, $5 the target's pid.
idle_kib() {
    "$BIN/loadclient" "$1" "$2" --lun "$3" --sessions "$4" --readers 0 --seconds 0 \
        --logins-at-once 128 --server-pid "$5" 2>&1 | sed -n 's/^server-kib-per-idle-session //p'
}
# The pid of the process listening on a portal's port (tgtd is started by the harness).
listener_pid() { ss -Hltnp "sport = :${1##*:}" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1; }
# Each on a fresh target: memory that earlier rows made a process take is not given back, and
# would hide what sessions cost. $1 sessions.
measure_serve_idle() {
    local pid portal
    "$BIN/isomount" serve "$WORK/served/disk.img" --listen 127.0.0.1:0 >"$WORK/idle-serve.out" 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do grep -q '^listening on' "$WORK/idle-serve.out" 2>/dev/null && break; sleep 0.1; done
    portal=$(sed -n 's/^listening on //p' "$WORK/idle-serve.out")
    idle_kib "$portal" "$SERVE_IQN" 0 "$1" "$pid"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
measure_tgtd_idle() {
    local harness portal lun
    rm -f "$WORK/idle-tgtd.in" "$WORK/idle-tgtd.out" && mkfifo "$WORK/idle-tgtd.in"
    "$BIN/harness-target" tgtd "$IQN" "$WORK/disk.img" <"$WORK/idle-tgtd.in" >"$WORK/idle-tgtd.out" 2>/dev/null &
    harness=$!
    exec 5>"$WORK/idle-tgtd.in"
    for _ in $(seq 300); do [ -s "$WORK/idle-tgtd.out" ] && break; sleep 0.1; done
    read -r portal lun <"$WORK/idle-tgtd.out"
    idle_kib "$portal" "$IQN" "$lun" "$1" "$(listener_pid "$portal")"
    exec 5>&-                             # harness-target stops its tgtd
    wait "$harness" 2>/dev/null || true
}

# A tree of 1,000 images under `serve --root`: ms to serve them at start, and ms of the rescan
# that finds one more image added (serve's own log lines say both).
duration_ms() {
    awk '{ v = $0; u = v; sub(/[0-9.]+/, "", u); sub(/[^0-9.].*/, "", v)
           m = (u == "s") ? 1000 : (u == "ms") ? 1 : (u == "µs") ? 0.001 : (u == "ns") ? 1e-6 : -1
           printf "%.1f\n", v * m }'
}
measure_tree_rescan() {
    local tree=$WORK/tree1000 log=$WORK/tree1000.err pid i
    rm -rf "$tree" && mkdir -p "$tree"
    for i in $(seq -w 0 999); do truncate -s 1M "$tree/img$i.img"; done
    "$BIN/isomount" -v serve --root "$tree" --listen 127.0.0.1:0 --settle 0 >"$WORK/tree1000.out" 2>"$log" &
    pid=$!
    for _ in $(seq 300); do grep -q '^listening on' "$WORK/tree1000.out" 2>/dev/null && break; sleep 0.1; done
    truncate -s 1M "$tree/added.img"
    kill -HUP "$pid"                      # the watch may not be up yet; SIGHUP rescans
    for _ in $(seq 100); do grep -q '1001 images served' "$log" && break; sleep 0.1; done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '%s %s\n' \
        "$(sed -n 's/.*: 1000 images served in \([^ ,]*\).*/\1/p' "$log" | head -1 | duration_ms)" \
        "$(sed -n 's/.*: 1001 images served (.*) in \([^ ,]*\).*/\1/p' "$log" | head -1 | duration_ms)"
}

# --- reporting ---------------------------------------------------------------------------------

# publish --root (issue 11): a tree of 16 images hashed over every core, beside sha256sum run over
# every core (xargs -P), the files in the page cache: both are bound by hashing.
mkdir "$WORK/tree"
split -n 16 -d --additional-suffix=.img "$WORK/disk.img" "$WORK/tree/part-"
cat "$WORK/tree"/*.img >/dev/null
seconds_to_mibs() { awk -v s="$1" -v e="$2" -v m="$SIZE_MIB" 'BEGIN { printf "%.0f\n", m / (e - s) }'; }
measure_sha256sum_tree() {
    local start
    start=$(date +%s.%N)
    find "$1" -name '*.img' -print0 | xargs -0 -P "$(nproc)" -n 1 sha256sum >/dev/null
    seconds_to_mibs "$start" "$(date +%s.%N)"
}
measure_publish_tree() {
    local start
    start=$(date +%s.%N)
    "$BIN/isomount" -q publish --root "$1" --portal 127.0.0.1 -o "$WORK/tree-catalog/mirror.toml" \
        --rehash 2>/dev/null
    seconds_to_mibs "$start" "$(date +%s.%N)"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# runs FUNCTION ARGS... RUNS times and prints the median
measured() {
    local i
    for i in $(seq "$RUNS"); do "$@"; done | median
}

# row LABEL PEER_FUNCTION PEER_ARG -- OUR_FUNCTION OUR_ARG
# The peer's runs and ours alternate: run back to back, all of one and then all of the other,
# the two halves met different machines (a host still writing back what earlier rows wrote read
# the peer's cold file at 1,440-1,800 MiB/s in a full run and 2,200-2,290 in a rerun of the row).
row() {
    local label=$1 peer ours i peers=() ourss=()
    if [ -n "${ONLY:-}" ] && ! grep -Eq "$ONLY" <<<"$label"; then return 0; fi
    for i in $(seq "$RUNS"); do
        peers+=("$("$2" "$3")")
        ourss+=("$("$5" "$6")")
    done
    peer=$(printf '%s\n' "${peers[@]}" | median)
    ours=$(printf '%s\n' "${ourss[@]}" | median)
    printf '%-34s %12s %12s %8s\n' "$label" "$peer" "$ours" \
        "$(awk -v a="$ours" -v b="$peer" 'BEGIN { printf "%.2f", a / b }')"
}

echo "isomount benchmark: ${SIZE_MIB} MiB disk LUN on tgtd, median of $RUNS runs, MiB/s"
echo "iscsi-perf: -m $PERF_REQUESTS -b $PERF_BLOCKS, ${PERF_SECONDS}s sequential; proxy: +${LATENCY_MS} ms each way"
printf '%-34s %12s %12s %8s\n' "row (peer vs ours)" "peer" "ours" "ratio"
row "loopback: iscsi-perf vs cat" measure_iscsi_perf "iscsi://$PORTAL/$IQN/$LUN" \
    -- measure_isomount_cat "iscsi://$PORTAL/$IQN/$LUN"
row "+${LATENCY_MS}ms/way: iscsi-perf vs cat" measure_iscsi_perf "iscsi://$SLOW_PORTAL/$IQN/$LUN" \
    -- measure_isomount_cat "iscsi://$SLOW_PORTAL/$IQN/$LUN"
command -v curl >/dev/null || { echo "bench: curl is missing" >&2; exit 1; }
row "web: curl vs cat NAME" measure_curl "$WEB_URL" -- measure_web_cat_cold web
row "web +${LATENCY_MS}ms/way: curl vs cat NAME" measure_curl "$SLOW_WEB_URL" \
    -- measure_web_cat_cold web-slow
row "web: curl vs cat NAME (blake3 manifest)" measure_curl "$WEB_URL" -- measure_web_cat_cold web-blake3
row "web +${LATENCY_MS}ms/way: curl vs cat NAME (blake3 manifest)" measure_curl "$SLOW_WEB_URL" \
    -- measure_web_cat_cold web-slow-blake3
row "ref: web +${LATENCY_MS}ms/way: curl vs curl | sha256" measure_curl "$SLOW_WEB_URL" \
    -- measure_curl_sha256 "$SLOW_WEB_URL"
row "target: tgtd vs serve, iscsi-perf" measure_iscsi_perf "iscsi://$PORTAL/$IQN/$LUN" \
    -- measure_iscsi_perf "$SERVE_URL"
row "target: tgtd vs serve, 4 KiB reads" measure_iscsi_perf_small "iscsi://$PORTAL/$IQN/$LUN" \
    -- measure_iscsi_perf_small "$SERVE_URL"
row "serve under attack: alone vs attacked" measure_iscsi_perf "$SERVE_URL" \
    -- measure_attacked "$SERVE_URL"
row "publish --root: sha256sum -P vs" measure_sha256sum_tree "$WORK/tree" \
    -- measure_publish_tree "$WORK/tree"
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$MNT"
    "$BIN/isomount" publish "$WORK/disk.img" --name bench --target "$IQN" --lun "$LUN" \
        --portal "$PORTAL" -o "$WORK/catalog.toml" >/dev/null 2>"$WORK/publish.err" ||
        { cat "$WORK/publish.err" >&2; exit 1; }
    # The same LUN published with BLAKE3 chunk hashes, also as `bench`, in a catalog of its own.
    "$BIN/isomount" publish "$WORK/disk.img" --name bench --hash blake3 --target "$IQN" --lun "$LUN" \
        --portal "$PORTAL" -o "$WORK/catalog-blake3.toml" --manifest "$WORK/bench-blake3.manifest" \
        >/dev/null 2>"$WORK/publish.err" || { cat "$WORK/publish.err" >&2; exit 1; }
    row "mount: iscsi-perf vs cold dd" measure_iscsi_perf "iscsi://$PORTAL/$IQN/$LUN" \
        -- measure_mount_cold "$MNT"
    sed "s|\"$PORTAL\"|\"$SLOW_PORTAL\"|" "$WORK/catalog.toml" >"$WORK/catalog-slow.toml"
    row "mount +${LATENCY_MS}ms/way: iscsi-perf vs cold dd" \
        measure_iscsi_perf "iscsi://$SLOW_PORTAL/$IQN/$LUN" -- measure_mount_cold_slow "$MNT"
    mount_bench "$WORK/cache-warm" && cat "$MNT/bench.img" >/dev/null && unmount_bench
    row "mount: file vs cache, cold pages" measure_file_cold "$WORK/disk.img" \
        -- measure_mount_cached "$WORK/cache-warm"
    row "mount: file vs 2nd read" measure_file_again "$WORK/disk.img" \
        -- measure_mount_again "$WORK/cache-warm"
    row "ref: file vs file read twice" measure_file_cold "$WORK/disk.img" \
        -- measure_file_twice "$WORK/disk.img"
    row "web mount: curl vs cold dd" measure_curl "$WEB_URL" -- measure_web_mount_cold web
    row "web mount +${LATENCY_MS}ms/way: curl vs cold dd" measure_curl "$SLOW_WEB_URL" \
        -- measure_web_mount_cold web-slow
    row "cat NAME: iscsi-perf vs cold" measure_iscsi_perf "iscsi://$PORTAL/$IQN/$LUN" \
        -- measure_cat_name_cold -
    "$BIN/isomount" --catalog "$WORK/catalog.toml" --cache-dir "$WORK/cache-cat" -q fetch bench
    row "cat NAME: file vs cache, cold pages" measure_file_cold "$WORK/disk.img" \
        -- measure_cat_name_cached "$WORK/cache-cat"
    row "ref: cat NAME, binaries loaded first" measure_file_cold_warm_binary "$WORK/disk.img" \
        -- measure_cat_name_cached_warm_binary "$WORK/cache-cat"
    row "cold CPU s/GiB: sha256 vs cat NAME" measure_sha256_cpu "$WORK/disk.img" \
        -- measure_cat_name_cold_cpu "$WORK/catalog.toml"
    row "cold CPU s/GiB: sha256 vs mount+dd" measure_sha256_cpu "$WORK/disk.img" \
        -- measure_mount_cold_cpu "$WORK/catalog.toml"
    # The floor stays `openssl dgst -sha256` of the same bytes (the cost the issue names); ours
    # verifies with BLAKE3.
    row "cold CPU s/GiB: sha256 vs cat NAME (blake3 manifest)" measure_sha256_cpu "$WORK/disk.img" \
        -- measure_cat_name_cold_cpu "$WORK/catalog-blake3.toml"
    row "cold CPU s/GiB: sha256 vs mount+dd (blake3 manifest)" measure_sha256_cpu "$WORK/disk.img" \
        -- measure_mount_cold_cpu "$WORK/catalog-blake3.toml"
else
    echo "mount rows skipped: they need root (drop_caches)"
fi

# Many sessions (issue 11): serve and tgtd, each beside its own 16 sessions. loadclient and serve
# raise their soft descriptor limits to the hard ones; with a hard limit too low, the rows say so.
SCALE_SESSIONS=${SCALE_SESSIONS:-4096}
TGTD_SESSIONS=${TGTD_SESSIONS:-256}
echo
echo "many sessions (loadclient: N sessions logged in, the reading ones each on its own region, 256 KiB at a time,"
echo "one command at a time, the data taken off the socket unseen; the others idle, answering pings), aggregate MiB/s, median of $RUNS runs"
hard=$(ulimit -Hn)
echo "file descriptors: soft $(ulimit -Sn), hard $hard (serve and loadclient raise the soft limit to the hard one)"
printf '%-34s %12s %12s %8s\n' "row (16 sessions vs many)" "16" "many" "ratio"
if [ "$hard" != unlimited ] && [ "$hard" -lt $((SCALE_SESSIONS + 512)) ]; then
    echo "serve: 16 vs $SCALE_SESSIONS sessions skipped: the hard file descriptor limit $hard is too low (ulimit -Hn)"
else
    row "serve: 16 vs $SCALE_SESSIONS, 16 reading" serve_sessions 16 -- serve_sessions "$SCALE_SESSIONS:16"
    row "serve: 16 vs $SCALE_SESSIONS, 256 reading" serve_sessions 16 -- serve_sessions "$SCALE_SESSIONS:256"
    row "serve: 16 vs $SCALE_SESSIONS, all reading" serve_sessions 16 -- serve_sessions "$SCALE_SESSIONS"
fi
row "serve: 16 vs $TGTD_SESSIONS sessions" serve_sessions 16 -- serve_sessions "$TGTD_SESSIONS"
row "tgtd: 16 vs $TGTD_SESSIONS sessions" tgtd_sessions 16 -- tgtd_sessions "$TGTD_SESSIONS"
if [ -z "${ONLY:-}" ] || grep -Eq "$ONLY" <<<"idle session memory"; then
    printf '%-42s %10s %10s\n' "idle session memory, KiB each (RSS), fresh" "tgtd" "serve"
    printf '%-42s %10s %10s\n' "$TGTD_SESSIONS sessions" "$(measured measure_tgtd_idle "$TGTD_SESSIONS")" \
        "$(measured measure_serve_idle "$TGTD_SESSIONS")"
    if [ "$hard" = unlimited ] || [ "$hard" -ge $((SCALE_SESSIONS + 512)) ]; then
        printf '%-42s %10s %10s\n' "$SCALE_SESSIONS sessions (target ≤ 64)" "-" \
            "$(measured measure_serve_idle "$SCALE_SESSIONS")"
    fi
fi
if [ -z "${ONLY:-}" ] || grep -Eq "$ONLY" <<<"tree of 1000 images"; then
    runs=$(for i in $(seq "$RUNS"); do measure_tree_rescan; done)
    printf '%-42s %10s %10s\n' "serve --root, tree of 1000 images, ms" "at start" "rescan"
    printf '%-42s %10s %10s\n' "(rescan target < 1000 ms)" "$(awk '{ print $1 }' <<<"$runs" | median)" \
        "$(awk '{ print $2 }' <<<"$runs" | median)"
fi

# connect_row LABEL FUNCTION: medians of the ms and round-trip columns of RUNS runs
connect_row() {
    local label=$1 runs
    if [ -n "${ONLY:-}" ] && ! grep -Eq "$ONLY" <<<"$label"; then return 0; fi
    runs=$(for i in $(seq "$RUNS"); do "$2"; done)
    printf '%-42s %10s %12s\n' "$label" "$(awk '{ print $1 }' <<<"$runs" | median)" \
        "$(awk '{ print $2 }' <<<"$runs" | median)"
}

if [ "$(id -u)" = 0 ]; then
    echo
    echo "connecting through the proxy (+${LATENCY_MS} ms each way, round trip $((2 * LATENCY_MS)) ms), median of $RUNS runs"
    printf '%-42s %10s %12s\n' "row" "ms" "round trips"
    sed "s|\"$PORTAL\"|\"$SLOW_PORTAL\"|" "$WORK/catalog.toml" >"$WORK/catalog-slow.toml"
    connect_row "iscsi-inq (login, INQUIRY, logout)" measure_connect_inq
    connect_row "isomount NAME MNT, until usable" measure_connect_mount
    if [ -s "$WORK/connect.stats" ]; then echo "last mount's info/stats: $(cat "$WORK/connect.stats")"; fi
else
    echo "connect rows skipped: they mount (root)"
fi
