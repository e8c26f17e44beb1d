#!/usr/bin/env bash
# Runs the benchmarks and prints one table per area. Figures are for this machine, in
# this run; compare the ratios within a table, not absolute times across machines.
#   TSMIGRATE_BENCH_EVENTS=100000 ./scripts/bench.sh      # quicker, smaller run
#   ./scripts/bench.sh ingest                              # one area
#   TSMIGRATE_BENCH_EVENTS=3000000 ./scripts/bench.sh backfill
#   TSMIGRATE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5440/postgres ./scripts/bench.sh validate
#   TSMIGRATE_BENCH_REPLICA=1 ./scripts/bench.sh reads   # on a private primary + hot standby: replica vs primary
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
if [ "${TSMIGRATE_BENCH_REPLICA:-}" = 1 ]; then
  replica_dir=$(mktemp -d /tmp/tsm-bench-replica.XXXXXX)
  trap 'bash scripts/pg-replica.sh stop "$replica_dir"' EXIT
  eval "$(bash scripts/pg-replica.sh start "$replica_dir")"
  echo "bench.sh: private primary $TSMIGRATE_TEST_DATABASE_URL, standby $TSMIGRATE_BENCH_READ_URL"
fi
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
# The validation benchmark runs reladiff (PyPI) beside tsmigrate validate, from a
# virtual environment of its own under target/.
if [[ " ${benches[*]} " == *" validate "* ]] && [ ! -x target/reladiff-venv/bin/reladiff ]; then
  echo "bench.sh: installing reladiff into target/reladiff-venv for the validation benchmark"
  python3 -m venv target/reladiff-venv
  target/reladiff-venv/bin/pip install -q "reladiff[postgresql]"
fi
for bench in "${benches[@]}"; do
  echo "=== benchmark: $bench ==="
  cargo bench --locked --bench "$bench"
  if [ "$bench" = cluster ]; then
    # Failover, slot migration and an added node under steady ingest: the integration tests
    # on a private cluster print one row per case.
    echo "=== cluster cases (tests/it/cluster.rs): unavailability window, sent/accepted/landed/lost/doubled ==="
    cargo test --locked --test it -- cluster:: --nocapture --test-threads 1 2>&1 | grep -oE 'cluster case \|.*|test result.*' || true
  fi
done
