#!/usr/bin/env bash
# The whole test suite: makes sure PostgreSQL and Redis are running (scripts/services.sh),
# then runs every test — unit tests and the integration tests in tests/it/ — with
# `cargo test --locked`. Extra arguments go to cargo test (e.g. `scripts/test.sh --test it prepare`).
#
# The TimescaleDB tier (tests/it/timescaledb.rs) needs a server with the timescaledb
# package installed and in shared_preload_libraries. Without it those tests skip, and this
# script says so in a banner. TSMIGRATE_REQUIRE_TIMESCALEDB=1 turns the skip into a failure.
# cargo counts a skipped test as passed, so every skipped test also appends its name to the
# file $TSMIGRATE_TIER_SKIP_LOG names, and the closing lines list them and their number.
#
# Servers: TSMIGRATE_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# and TSMIGRATE_TEST_REDIS_URL (default redis://127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
bash scripts/services.sh

admin_url="${TSMIGRATE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
require_ts="${TSMIGRATE_REQUIRE_TIMESCALEDB:-0}"

# Same rule as the tests' support::timescaledb_support: packaged AND preloaded.
ts_probe="$(psql -w -X "$admin_url" -Atq -F ' ' -c "
    SELECT coalesce((SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'), '-'),
           'timescaledb' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))")" || {
    echo "test.sh: error: cannot query the test PostgreSQL server to detect TimescaleDB" >&2
    exit 1
}
read -r ts_packaged ts_preloaded <<<"$ts_probe"
ts_version=""
ts_why="the timescaledb package is not installed on the server"
if [[ "$ts_packaged" != "-" && "$ts_preloaded" == "t" ]]; then
    ts_version="$ts_packaged"
elif [[ "$ts_packaged" != "-" ]]; then
    ts_why="timescaledb $ts_packaged is installed but not in shared_preload_libraries"
fi

banner() {
    local line="================================================================================"
    echo "$line"
    echo "  $1"
    [[ -n "${2:-}" ]] && echo "  $2"
    echo "$line"
}

tier_ok=1
if [[ -n "$ts_version" ]]; then
    ts_summary="TimescaleDB tier: RAN (TimescaleDB $ts_version available on the test server)"
else
    ts_summary="TimescaleDB tier SKIPPED: extension not available on this server"
    if [[ "$require_ts" == "1" ]]; then
        tier_ok=0
        ts_summary="TimescaleDB tier FAILED: TSMIGRATE_REQUIRE_TIMESCALEDB=1 but the extension is not available on this server"
    fi
    banner "$ts_summary" "($ts_why)"
fi

skip_log="$(mktemp -t tsmigrate-tier-skips.XXXXXX)"
trap 'rm -f "$skip_log"' EXIT
set +e
TSMIGRATE_TIER_SKIP_LOG="$skip_log" cargo test --locked --no-fail-fast "$@"
tests_status=$?
set -e

# The closing line: how many TimescaleDB-tier tests did not run, and which.
tier_report() {
    local skipped count
    skipped="$(sort -u "$skip_log")"
    count=0
    [[ -n "$skipped" ]] && count="$(wc -l <<<"$skipped")"
    if ((tier_ok == 0)); then
        echo "TimescaleDB tier: FAILED, required (TSMIGRATE_REQUIRE_TIMESCALEDB=1) but unavailable ($ts_why)"
    elif ((count > 0)); then
        echo "TimescaleDB tier tests skipped:"
        sed 's/^/  /' <<<"$skipped"
        local noun=tests
        ((count == 1)) && noun=test
        echo "TimescaleDB tier: $count $noun skipped (${ts_why:-see above}); they count as passed in cargo's summary"
    elif [[ -n "$ts_version" ]]; then
        echo "TimescaleDB tier: 0 tests skipped (ran against TimescaleDB $ts_version)"
    else
        echo "TimescaleDB tier: 0 tests skipped (none of the selected tests needs TimescaleDB)"
    fi
}

elapsed=$((SECONDS - started))
echo
if [[ -n "$ts_version" ]]; then
    echo "$ts_summary"
else
    banner "$ts_summary" "($ts_why)"
fi
if ((tests_status != 0)); then
    echo "tests: FAILED (cargo test exit code $tests_status) after ${elapsed}s"
    tier_report
    exit "$tests_status"
fi
if ((tier_ok == 0)); then
    echo "tests: FAILED (TimescaleDB tier required but unavailable) after ${elapsed}s"
    tier_report
    exit 1
fi
echo "tests: PASSED in ${elapsed}s"
tier_report
