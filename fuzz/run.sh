#!/usr/bin/env bash
# Run isomount's fuzz targets with libFuzzer (cargo-fuzz), one after another, each for a fixed
# time from its shipped seeds (seeds/NAME/) and with its max_len (seeds/NAME.options), and print
# the coverage each reached. New inputs go to fuzz/corpus/NAME/ (not committed); a crash or a
# hang stops that target and leaves its input in fuzz/artifacts/NAME/.
# Usage: fuzz/run.sh [-t SECONDS] [--no-seeds] [TARGET...]   (default: 60 s, every target)
#   --no-seeds   start from an empty corpus with libFuzzer's default max_len (the "before" figure)
# Needs cargo-fuzz (`cargo install cargo-fuzz`); nightly Rust, or stable with RUSTC_BOOTSTRAP=1
# (set here). Runs at nice 19: the targets are run one at a time, on one core.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
usage() { sed -n '2,10p' "$here/run.sh"; }
cd "$here/.."
seconds=60
seeds=1
targets=()
while (($#)); do
    case "$1" in
    -t) seconds="$2"; shift 2 ;;
    --no-seeds) seeds=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) targets+=("$1"); shift ;;
    esac
done
if ((${#targets[@]} == 0)); then
    targets=(pdu text catalog manifest cache_index iso9660 target_session scsi_response url
        send_targets cdb susp)
fi
export RUSTC_BOOTSTRAP=1
nice -n 19 cargo fuzz build -O >/dev/null
for t in "${targets[@]}"; do
    log="$(mktemp)"
    if ((seeds)); then
        max_len="$(sed -n 's/^max_len *= *//p' "fuzz/seeds/$t.options")"
        mkdir -p "fuzz/corpus/$t"
        dirs=("fuzz/corpus/$t" "fuzz/seeds/$t")
        opts=("-max_len=$max_len")
    else
        empty="$(mktemp -d)"
        dirs=("$empty")
        opts=()
    fi
    status=0
    nice -n 19 cargo fuzz run -O "$t" "${dirs[@]}" -- "${opts[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    final="$(grep -E '^#[0-9]+' "$log" | tail -1)"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    printf '%-15s %s  (runs %s%s)\n' "$t" "$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' <<<"$final")" \
        "${runs:-?}" "$( ((status)) && echo ", FAILED: see $log" || true)"
    ((status)) || rm -f "$log"
    [ -z "${empty:-}" ] || rm -rf "$empty"
done
