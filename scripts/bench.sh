#!/usr/bin/env bash
# Runs the benchmarks and prints one table per area. Figures are for this machine, in
# this run; compare the ratios within a table, not absolute times across machines.
#   TSMIGRATE_BENCH_EVENTS=100000 ./scripts/bench.sh      # quicker, smaller run
#   ./scripts/bench.sh ingest                              # one area
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  benches=()
  for f in benches/*.rs; do benches+=("$(basename "$f" .rs)"); done
fi
for bench in "${benches[@]}"; do
  echo "=== benchmark: $bench ==="
  cargo bench --locked --bench "$bench"
done
