#!/usr/bin/env bash
# Runs every gracepool benchmark (P1–P6, the peers, the floors) and prints the Markdown table.
#   bash benches/run.sh                    # short criterion settings, as in RESULTS.md
#   bash benches/run.sh --measurement-time 5   # extra arguments go to every bench binary
# P2/P3: 5 rounds per pool, round-robin over the pools, GRACEPOOL_BENCH_ROUND_MS each (default 500); the fastest round is reported.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench -p gracepool-bench -- --warm-up-time 1 --measurement-time 2 "$@"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo run --release -q -p gracepool-bench --bin report
