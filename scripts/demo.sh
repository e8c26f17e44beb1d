#!/usr/bin/env bash
# The demo: a legacy Redis analytics pipeline with a week of traffic, migrated step by step.
#
#   ./scripts/demo.sh
#
# Starts PostgreSQL and Redis (scripts/services.sh), builds tsmigrate (release), recreates
# the database `tsmigrate_demo` and clears the Redis keys under `demo:`, then runs the
# steps below in order. Each step prints a header and the command it runs.
#
# Overrides: DEMO_DATABASE (tsmigrate_demo), DEMO_REDIS_PREFIX (demo:), DEMO_EVENTS (50000),
# DEMO_PG_URL (postgres://postgres@127.0.0.1:5432), REDIS_URL (redis://127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEMO_DATABASE="${DEMO_DATABASE:-tsmigrate_demo}"
DEMO_PG_URL="${DEMO_PG_URL:-postgres://postgres@127.0.0.1:5432}"
DEMO_REDIS_PREFIX="${DEMO_REDIS_PREFIX:-demo:}"
DEMO_EVENTS="${DEMO_EVENTS:-50000}"

export DATABASE_URL="$DEMO_PG_URL/$DEMO_DATABASE"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export TSMIGRATE_REDIS_PREFIX="$DEMO_REDIS_PREFIX"
# The demo is configured by the environment only: ignore any tsmigrate.toml lying around.
unset TSMIGRATE_CONFIG LEGACY_DATABASE_URL
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$PWD/$target_dir"
TSMIGRATE="$target_dir/release/tsmigrate"

step_number=0
# step "<title>" <command...>: prints a header, the command, then runs it.
step() {
    local title="$1"
    shift
    step_number=$((step_number + 1))
    echo
    echo "=== Step $step_number: $title"
    echo "\$ $*"
    "$@"
}

tsmigrate() {
    # Run from an empty directory so no stray ./tsmigrate.toml is read.
    (cd "${TMPDIR:-/tmp}" && "$TSMIGRATE" "$@")
}

reset_demo_data() {
    psql -w -X -q "$DEMO_PG_URL/postgres" -v ON_ERROR_STOP=1 \
        -c "DROP DATABASE IF EXISTS \"$DEMO_DATABASE\" WITH (FORCE)" \
        -c "CREATE DATABASE \"$DEMO_DATABASE\""
    redis-cli -u "$REDIS_URL" --scan --pattern "${DEMO_REDIS_PREFIX}*" | xargs -r -d '\n' redis-cli -u "$REDIS_URL" DEL >/dev/null
    echo "database $DEMO_DATABASE recreated; Redis keys ${DEMO_REDIS_PREFIX}* cleared"
}

# --- setup ----------------------------------------------------------------------------------
step "Start PostgreSQL and Redis" bash scripts/services.sh
step "Build tsmigrate (release)" cargo build --release --locked
step "Fresh demo database and Redis prefix" reset_demo_data

# --- the legacy system ---------------------------------------------------------------------
step "Seed a week of legacy traffic (Redis + the hourly flush into the legacy tables)" \
    tsmigrate seed --events "$DEMO_EVENTS" --days 7 --users 800 --messy

# --- the migration, phase by phase ----------------------------------------------------------
step "Prepare the target (TimescaleDB when the server has it, plain PostgreSQL otherwise)" \
    tsmigrate prepare
step "Where the migration stands" tsmigrate status

# Later phases are appended here as they land:
#   dual-write start, backfill, validate, cutover, retire-flush, optimize, complete.

echo
echo "Demo finished. Explore it with:"
echo "  DATABASE_URL=$DATABASE_URL TSMIGRATE_REDIS_PREFIX=$TSMIGRATE_REDIS_PREFIX $TSMIGRATE status"
