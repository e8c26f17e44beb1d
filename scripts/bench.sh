#!/usr/bin/env bash
# Runs the benchmarks and prints one table per area. Figures are for this machine, in
# this run; compare the ratios within a table, not absolute times across machines.
#   TSMIGRATE_BENCH_EVENTS=100000 ./scripts/bench.sh      # quicker, smaller run
#   ./scripts/bench.sh ingest                              # one area
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# The ingest benchmark drives the daemon from outside with wrk.
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench.sh: installing wrk (Debian package) for the ingest benchmark"
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null; }
fi
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  benches=()
  for f in benches/*.rs; do benches+=("$(basename "$f" .rs)"); done
fi
for bench in "${benches[@]}"; do
  echo "=== benchmark: $bench ==="
  cargo bench --locked --bench "$bench"
done
