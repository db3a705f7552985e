#!/usr/bin/env bash
# Regenerate the small ISO 9660 seeds of the iso9660 fuzz target (needs xorriso): images cut
# from their first volume descriptor (sector 16) on, the system area before it being what the
# target puts back. The seed `sample` (fixtures/sample.iso) is written by the replay test
# (UPDATE_SEEDS=1); these cover what it lacks: relocated deep directories (Rock Ridge CL/PL/RE),
# continuation areas, absolute and relative symlinks, a name over 200 bytes, an empty file,
# and volumes with Joliet only and with plain level-1 names only.
# Usage: fuzz/seeds/make-iso-seeds.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/iso9660"
export SOURCE_DATE_EPOCH=1767225600 # 2026-01-01 00:00:00 UTC
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 022

rr="$work/rr"
mkdir -p "$rr/d1/d2/d3/d4/d5/d6/d7/d8/d9" "$rr/docs"
echo hi >"$rr/README.TXT"
head -c 300 /dev/zero | tr '\0' x >"$rr/docs/a-rather-long-rock-ridge-file-name-that-is-longer-than-the-iso-level-one-limit-and-even-longer-than-joliet-allows-so-it-needs-more-bytes.txt"
echo deep >"$rr/d1/d2/d3/d4/d5/d6/d7/d8/d9/deep.txt"
: >"$rr/empty"
ln -s docs/../README.TXT "$rr/link"
ln -s /abs/path/../x "$rr/absl"

small="$work/small"
mkdir -p "$small/sub"
echo a >"$small/sub/A.TXT"
echo b >"$small/B.TXT"

find "$work" -exec touch -h -t 202601010000.00 {} +

iso() { # NAME SOURCE XORRISO-ARGS...
    local name="$1" src="$2"
    shift 2
    xorriso -no_rc -report_about FAILURE "$@" -no-pad -o "$work/$name.iso" "$src" >/dev/null 2>&1
    tail -c +$((16 * 2048 + 1)) "$work/$name.iso" >"$out/$name"
    echo "wrote $out/$name ($(stat -c %s "$out/$name") bytes)"
}
iso rock-ridge-relocated "$rr" -compliance deep_paths_off -as mkisofs -R -J -rr_reloc_dir RR_MOVED -V SEED
iso joliet-only "$small" -as mkisofs -J --norock -V SEEDJ
iso plain-level1 "$small" -as mkisofs -iso-level 1 --norock -V SEED1
