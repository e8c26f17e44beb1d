#!/usr/bin/env bash
# The demo: a legacy Redis analytics pipeline with a week of traffic, assessed, then migrated step by step.
#
#   ./scripts/demo.sh
#
# Starts PostgreSQL and Redis (scripts/services.sh), builds tsmigrate (release), recreates
# the database `tsmigrate_demo` and clears the Redis keys under `demo:`, then runs the
# steps below in order. Each step prints a header and the command it runs.
#
# Overrides: DEMO_DATABASE (tsmigrate_demo), DEMO_REDIS_PREFIX (demo:), DEMO_EVENTS (50000),
# DEMO_PG_URL (postgres://postgres@127.0.0.1:5432), REDIS_URL (redis://127.0.0.1:6379),
# DEMO_PORT (18080), DEMO_PROFILE (release; `debug` uses a debug build).
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
DEMO_PROFILE="${DEMO_PROFILE:-release}"
TSMIGRATE="$target_dir/$DEMO_PROFILE/tsmigrate"

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
if [[ "$DEMO_PROFILE" == release ]]; then
    step "Build tsmigrate (release)" cargo build --release --locked
else
    step "Build tsmigrate ($DEMO_PROFILE)" cargo build --locked
fi
step "Fresh demo database and Redis prefix" reset_demo_data

# --- the legacy system ---------------------------------------------------------------------
# Ten days, so that some of the data is older than the columnstore's 7 days and
# `optimize --compress-now` has chunks to compress (in TimescaleDB mode).
step "Seed ten days of legacy traffic (Redis + the hourly flush into the legacy tables)" \
    tsmigrate seed --events "$DEMO_EVENTS" --days 10 --users 800 --messy

# --- before migrating: whether, when and how (read-only) -----------------------------------
step "Assess the live system: measured figures, the target projected, a verdict (reads only)" \
    tsmigrate assess --days 10

# --- the migration, phase by phase, with live traffic ---------------------------------------
DEMO_PORT="${DEMO_PORT:-18080}"
API="http://127.0.0.1:$DEMO_PORT/api/v1/analytics"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Live traffic: a batch of 10 events every 0.2 s through the ingest endpoint, all along.
live_traffic() {
    local n=0
    while true; do
        local now events=""
        now=$(date +%s%3N)
        for i in 0 1 2 3 4 5 6 7 8 9; do
            events+="{\"event_name\":\"page_view\",\"category\":\"navigation\",\"user_id\":\"live_$((n % 37))\",\"session_id\":\"live_s$((n % 11))\",\"properties\":{\"path\":\"/live\"},\"timestamp\":$((now - i))},"
            n=$((n + 1))
        done
        curl -s -o /dev/null -X POST "$API" -H 'content-type: application/json' -d "{\"events\":[${events%,}]}" || true
        sleep 0.2
    done
}

start_service() {
    TSMIGRATE_BIND="127.0.0.1:$DEMO_PORT" "$TSMIGRATE" run >"${TMPDIR:-/tmp}/tsmigrate-demo-run.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 50); do
        curl -sf "http://127.0.0.1:$DEMO_PORT/health" >/dev/null && { echo "tsmigrate run is up (pid ${pids[-1]}, log ${TMPDIR:-/tmp}/tsmigrate-demo-run.log)"; return 0; }
        sleep 0.2
    done
    echo "tsmigrate run did not come up; see ${TMPDIR:-/tmp}/tsmigrate-demo-run.log" >&2
    return 1
}

start_traffic() {
    live_traffic &
    pids+=($!)
    echo "live traffic: 50 events/s into $API"
}

wait_for_relay() {
    for _ in $(seq 1 50); do
        local lag
        lag=$(tsmigrate status --json | python3 -c 'import json,sys; r=json.load(sys.stdin)["details"]["redis"]; print(r["outbox_entries"])')
        [[ "$lag" -le 20 ]] && { echo "relay caught up (outbox: $lag entries)"; return 0; }
        sleep 0.2
    done
    echo "relay is behind"; return 0
}

# Three events deleted, one altered and one added in the target, among the backfilled ones
# (older than the relay's recent writes, inside the window validation compares).
plant_differences() {
    psql -X -q "$DATABASE_URL" -v ON_ERROR_STOP=1 <<'SQL'
WITH old AS (SELECT event_id, time FROM analytics_events_ts WHERE time < now() - interval '2 hours' ORDER BY time DESC LIMIT 5)
, gone AS (DELETE FROM analytics_events_ts e USING (SELECT * FROM old LIMIT 3) o WHERE e.event_id = o.event_id AND e.time = o.time RETURNING e.event_id)
, changed AS (UPDATE analytics_events_ts e SET properties = properties || '{"planted": true}'
              FROM (SELECT * FROM old OFFSET 3 LIMIT 1) o WHERE e.event_id = o.event_id AND e.time = o.time RETURNING e.event_id)
INSERT INTO analytics_events_ts (time, event_id, event_name, category, user_id, properties, device_info)
SELECT time + interval '1 second', '00000000-0000-4000-8000-0000000000de', event_name, category, user_id, properties, device_info
FROM analytics_events_ts WHERE (event_id, time) IN (SELECT event_id, time FROM old OFFSET 4 LIMIT 1);
SQL
    echo "planted: 3 deleted, 1 altered, 1 extra"
}

# Runs a command that must exit with the given code (a validation that finds differences exits 1).
expect_exit() {
    local want="$1" code=0
    shift
    "$@" || code=$?
    [[ "$code" == "$want" ]] || { echo "expected exit $want, got $code" >&2; return 1; }
}

# The read API re-reads the read source every second: wait (bounded) until it answers from
# the expected source, then show the answer.
read_summary_from() {
    local want="$1" answer=""
    for _ in $(seq 1 50); do
        answer=$(read_summary)
        [[ "$answer" == *"\"source\": \"$want\""* ]] && { echo "$answer"; return 0; }
        sleep 0.2
    done
    echo "$answer"
    echo "the read API still answers from another source than $want" >&2
    return 1
}

read_summary() {
    local from to
    from=$(date -u -d '-6 days' +%Y-%m-%dT00:00:00Z)
    to=$(date -u -d '-1 day' +%Y-%m-%dT00:00:00Z)
    curl -s "$API/summary?from=$from&to=$to" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d[k] for k in d if k in ("source","total_events","unique_users","unique_users_exact")}))'
}

step "Prepare the target (TimescaleDB when the server has it, plain PostgreSQL otherwise)" \
    tsmigrate prepare
step "Start the service: ingest, read API, relay, scheduled jobs" start_service
step "Live traffic from the application" start_traffic
step "Dual-write: every new event to Redis and, through the outbox, to the target" \
    tsmigrate dual-write start
step "Backfill what Redis already holds (resumable; dead letters for what is not an event)" \
    tsmigrate backfill
step "Let the relay catch up" wait_for_relay
step "Validate Redis and the legacy tables against the target" \
    tsmigrate validate --depth events
step "Plant differences behind the migration's back: 3 events lost, 1 altered, 1 that Redis never had" \
    plant_differences
step "Validate again: the differences are found, event by event (exit 1)" \
    expect_exit 1 tsmigrate validate --depth events
step "What the repair would do" tsmigrate repair --delete-extra --dry-run
step "Repair exactly what the validation found, from Redis" tsmigrate repair --delete-extra
step "Validate: clean again" tsmigrate validate --depth events
step "Reads still come from the legacy path" read_summary_from legacy
step "Cut reads over to the target" tsmigrate cutover
step "The same question, answered by the target (once the service has seen the switch)" read_summary_from target
step "Validate again after the switch (the retire gate needs it)" \
    tsmigrate validate --depth events
step "Retire the legacy hourly flush (demo: soak shortened to 0s; recorded in the audit log)" \
    tsmigrate retire-flush --soak 0s
step "Optimize: retention, asset popularity, columnstore report (plain PostgreSQL: nothing to compress, and it says so)" \
    tsmigrate optimize --compress-now
# The service's user_sets job catches up every 15 s; building now shows the final state
# without waiting for it (what the backfill marked is rebuilt).
step "Build whatever user sets the service's job (every 15 s) has not built yet" tsmigrate user-sets build
step "Complete the migration (the legacy keys get an expiry; no way back, hence --yes)" \
    tsmigrate complete --yes
step "Where the migration stands" tsmigrate status

echo
echo "Demo finished: the migration is complete; reads come from the target, the legacy flush is retired"
echo "and the legacy Redis keys expire. Redis holds more members than the target has rows: the"
echo "difference is the members that are not events (dead letters, counted in the status line)."
echo "Explore it with:"
echo "  DATABASE_URL=$DATABASE_URL TSMIGRATE_REDIS_PREFIX=$TSMIGRATE_REDIS_PREFIX $TSMIGRATE status"
echo "  psql $DATABASE_URL -c 'SELECT at, actor, command, from_phase, to_phase, outcome FROM tsmigrate.audit_log ORDER BY id'"
