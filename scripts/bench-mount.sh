#!/usr/bin/env bash
# Issue 4's benchmark rows: the FUSE mount against its peers, measured in the same run.
#   1. cold sequential dd bs=1M of a mounted 256 MiB image   vs  iscsi-perf (1 MiB reads) on the LUN
#   2. after a remount and drop_caches (persistent cache)      vs  dd of the source file after drop_caches
#   3. a second read (page cache)                              vs  dd of the source file from the page cache
# Needs root (tgtd, drop_caches, mount), tgt, libiscsi-bin, fuse3. Usage: scripts/bench-mount.sh [MiB]
set -euo pipefail
cd "$(dirname "$0")/.."

mib="${1:-256}"
cargo build --release --quiet
bin="$PWD/target/release/isomount"
work="$(mktemp -d /tmp/isomount-bench.XXXXXX)"
mnt="$work/mnt"
mkdir -p "$mnt"
iqn="iqn.2026-11.org.isomount.bench:mount"
control=$((20000 + RANDOM % 10000))
port=$((40000 + RANDOM % 20000))
tgtd_pid=""

cleanup() {
    if mountpoint -q "$mnt"; then "$bin" unmount "$mnt" || umount -l "$mnt" || true; fi
    if [ -n "$tgtd_pid" ]; then kill -9 "$tgtd_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# MB/s of `dd if=$1 bs=1M` (dd's own figure, in MB/s).
dd_rate() {
    LC_ALL=C dd if="$1" of=/dev/null bs=1M 2>&1 | awk '/copied/ {
        for (i = 1; i <= NF; i++) if ($i == "s,") secs = $(i - 1);
        bytes = $1; printf "%.0f", bytes / secs / 1e6 }'
}

row() { # name ours peer
    awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN {
        printf "%-44s %8s MB/s  %8s MB/s  ratio %.2f\n", n, a, b, (b > 0 ? a / b : 0) }'
}

head -c "$((mib << 20))" /dev/urandom >"$work/bench.img"

tgtd -f -C "$control" --iscsi "portal=127.0.0.1:$port" >"$work/tgtd.log" 2>&1 &
tgtd_pid=$!
for _ in $(seq 50); do
    tgtadm -C "$control" --lld iscsi --mode target --op show >/dev/null 2>&1 && break
    sleep 0.1
done
tgtadm -C "$control" --lld iscsi --mode target --op new --tid 1 --targetname "$iqn"
tgtadm -C "$control" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 -b "$work/bench.img"
tgtadm -C "$control" --lld iscsi --mode target --op bind --tid 1 -I ALL

"$bin" publish "$work/bench.img" --name bench --target "$iqn" --lun 1 \
    --portal "127.0.0.1:$port" -o "$work/catalog.toml" >/dev/null
mount_bench() { "$bin" --catalog "$work/catalog.toml" --cache-dir "$work/cache" bench "$mnt" "$@"; }

echo "isomount mount benchmark: ${mib} MiB image, tgtd on loopback, $(nproc) cores"
printf "%-44s %13s  %13s\n" "" "isomount" "peer"

# 1. Cold: empty cache, nothing in the page cache.
mount_bench
drop_caches
cold=$(dd_rate "$mnt/bench.img")
"$bin" unmount "$mnt"
peer=$(timeout 120 iscsi-perf -t 10 -b 2048 -m 8 "iscsi://127.0.0.1:$port/$iqn/1" 2>&1 |
    tr '\r' '\n' | awk '/iops average/ { v = $(NF - 1); gsub(/[(]/, "", v) } END { print v + 0 }')
row "cold dd bs=1M vs iscsi-perf -b 2048" "$cold" "$peer"

# 2. From the persistent cache, page cache dropped.
mount_bench
drop_caches
warm=$(dd_rate "$mnt/bench.img")
drop_caches
file=$(dd_rate "$work/bench.img")
row "remount + drop_caches vs dd source file" "$warm" "$file"

# 3. Second read: the kernel page cache kept across opens.
dd_rate "$mnt/bench.img" >/dev/null
dd_rate "$work/bench.img" >/dev/null
again=$(dd_rate "$mnt/bench.img")
file=$(dd_rate "$work/bench.img")
row "second read vs dd source from page cache" "$again" "$file"
"$bin" unmount "$mnt"
