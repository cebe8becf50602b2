#!/bin/sh
# Runs every fuzz target for SECONDS (default 600) and prints how many
# inputs each ran; crashes land in fuzz/artifacts/TARGET/.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -eu
cd "$(dirname "$0")"
secs=${1:-600}
targets=${TARGETS:-"herd_yml requirement worker_protocol webhook junit"}
mkdir -p logs
for t in $targets; do
    cargo +nightly fuzz run -O "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 \
        >"logs/$t.log" 2>&1 || { echo "$t: FAILED, see fuzz/logs/$t.log"; tail -40 "logs/$t.log"; exit 1; }
    printf '%s: %s\n' "$t" "$(grep -E '^Done [0-9]+ runs' "logs/$t.log" | tail -1)"
done
