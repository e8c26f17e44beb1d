//! Backfill: gates, kill -9 and resume with no gap and no duplicate, dead letters,
//! idempotent re-runs, history import — in both storage modes.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::scenario::{dead_letters, prepare_and_dual_write, seed, target_counts, Mode};
use crate::support::{field, ChildGuard, TestEnv};

#[tokio::test]
async fn phase_gates_refuse_out_of_order_steps() {
    let env = TestEnv::new().await;
    let out = env.cli(&["dual-write", "start"]);
    out.expect_code(3);
    assert!(out.stderr.contains("phase new") && out.stderr.contains("tsmigrate prepare"), "{}", out.stderr);
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let out = env.cli(&["backfill"]);
    out.expect_code(3);
    assert!(out.stderr.contains("needs phase dual_writing"), "{}", out.stderr);
    assert!(out.stderr.contains("dual-write start"), "{}", out.stderr);
    env.cli(&["dual-write", "start"]).expect_success();
    // Again while on: a repair of what Redis may have lost, never a second completion point.
    let again = env.cli(&["dual-write", "start", "--json"]).expect_success().details();
    assert_eq!(field(&again, "dual_write"), "already on", "{again}");
    assert_eq!(field(&again, "run.phase_after"), "dual_writing");
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log WHERE outcome = 'refused'").fetch_one(&env.pool).await.unwrap();
    assert_eq!(refused, 1, "refusals after prepare are audited");
    let starts: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log WHERE command = 'dual-write start' AND outcome = 'done'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(starts, 1, "the completion point was recorded once");
}

/// The checkpoints holding the copy's positions: the backfill's own while it copies in one
/// stream, each stream's (`backfill.part<i>`) while it copies in several.
const COPY_POSITIONS: &str =
    "FROM tsmigrate.checkpoints WHERE name LIKE 'backfill.part%' OR (name = 'backfill' AND coalesce((position->>'parts')::int, 0) = 0)";

/// Stops the running backfill at a page boundary: waits until its checkpoints show at least
/// `pages` committed pages (all streams together) and then keeps every checkpoint row of the
/// copy locked, so no stream's next page can commit. Returns the open transaction holding
/// the locks.
async fn hold_backfill_after(env: &TestEnv, pages: i64) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let started = Instant::now();
    loop {
        let mut tx = env.pool.begin().await.unwrap();
        // Observation and locks in one statement: once seen, no further page can commit.
        let seen: Option<i64> =
            sqlx::query_scalar(&format!("SELECT sum(pages)::bigint FROM (SELECT (position->>'pages')::bigint AS pages {COPY_POSITIONS} FOR UPDATE) AS c"))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        if seen.unwrap_or(0) >= pages {
            return tx;
        }
        tx.rollback().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(60), "the backfill made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No tsmigrate backend is left on the test database (a killed process's backends end
/// once they notice the closed connection).
async fn wait_until_no_tsmigrate_backend(env: &TestEnv) {
    let started = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tsmigrate'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if left == 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{left} backends of the killed backfill are still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn kill_and_resume(mode: Mode, streams: &str) {
    let env = TestEnv::new().await;
    seed(&env, 6000, false);
    prepare_and_dual_write(&env, mode);
    let mut command = env.clean_command(&["backfill", "--page-size", "100", "--max-rate", "1000", "--streams", streams, "--json"], &[]);
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = ChildGuard::spawn(command);
    // The child is stopped in the middle of a page (rows copied, checkpoint not committed)
    // and killed there: no timing decides where it dies.
    let checkpoint_lock = hold_backfill_after(&env, 5).await;
    env.wait_until_tsmigrate_waits_for_a_lock("the backfill's next checkpoint").await;
    child.child().kill().unwrap(); // SIGKILL: no chance to clean up
    child.child().wait().unwrap();
    checkpoint_lock.rollback().await.unwrap();
    wait_until_no_tsmigrate_backend(&env).await;
    let (rows, distinct) = target_counts(&env).await;
    let (read, pages, parts): (i64, i64, i64) =
        sqlx::query_as(&format!("SELECT sum((position->>'read')::bigint)::bigint, sum((position->>'pages')::bigint)::bigint, count(*) {COPY_POSITIONS}"))
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let expected_parts = if streams == "1" { 1 } else { streams.parse::<i64>().unwrap() };
    assert_eq!(parts, expected_parts, "one checkpoint per stream");
    assert!(pages >= 5 && rows > 0 && rows < 6000, "killed mid-way: {rows} rows in {pages} pages");
    assert_eq!((rows, distinct), (read, read), "the checkpoint covers exactly the committed rows, not the killed page's");
    assert_eq!(read, pages * 100, "whole pages of 100");
    eprintln!("figures: {streams} stream(s) killed at held checkpoints after {pages} committed pages ({rows} rows); the pages in flight were rolled back");
    // Every stream's rows are a contiguous prefix of its range: what each checkpoint covers is
    // exactly what is stored, so the resume leaves no gap between its cursor and its rows.
    let ahead: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM analytics_events_ts e JOIN (SELECT (position->'cursor'->>'score')::float8 AS cursor, (position->>'until')::float8 AS until {COPY_POSITIONS}) p
           ON extract(epoch FROM e.time) * 1000 > p.cursor + 0.5 AND extract(epoch FROM e.time) * 1000 <= p.until"
    ))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(ahead, 0, "no stored row lies past its stream's committed position");

    let report = env.cli(&["backfill", "--json"]).expect_success().details();
    assert_eq!(field(&report, "resumed"), &Value::Bool(true));
    assert_eq!(field(&report, "run.phase_after"), "backfilled");
    assert_eq!(target_counts(&env).await, (6000, 6000), "no gap, no duplicate");
    assert_eq!(field(&report, "read").as_i64(), Some(6000));
    assert_eq!(field(&report, "inserted").as_i64(), Some(6000));

    // A re-run is a second pass over what Redis holds up to T: idempotent, nothing doubled.
    let again = env.cli(&["backfill", "--json"]).expect_success().details();
    assert_eq!(
        (field(&again, "read").as_i64(), field(&again, "inserted").as_i64(), field(&again, "already_present").as_i64()),
        (Some(6000), Some(0), Some(6000))
    );
    assert_eq!(field(&again, "run.phase_after"), "backfilled");
    assert_eq!(target_counts(&env).await, (6000, 6000));
    let hourly: i64 = sqlx::query_scalar("SELECT coalesce(sum(event_count), 0)::bigint FROM analytics_hourly").fetch_one(&env.pool).await.unwrap();
    assert_eq!(hourly, 6000, "the aggregates were refreshed over the backfilled range");
}

#[tokio::test]
async fn killed_backfill_resumes_without_gap_or_duplicate_plain() {
    kill_and_resume(Mode::Postgres, "1").await;
}

#[tokio::test]
async fn killed_backfill_resumes_without_gap_or_duplicate_timescaledb() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    kill_and_resume(Mode::Timescaledb, "1").await;
}

#[tokio::test]
async fn killed_parallel_backfill_resumes_without_gap_or_duplicate_plain() {
    kill_and_resume(Mode::Postgres, "3").await;
}

#[tokio::test]
async fn killed_parallel_backfill_resumes_without_gap_or_duplicate_timescaledb() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    kill_and_resume(Mode::Timescaledb, "3").await;
}

/// The messy seed's own tally of what it wrote decides the expectations, not the member
/// parser under test: every generated event that is still an event is copied once
/// (identical resends collapse), and the members it made unparseable become dead letters.
async fn messy_data_goes_to_dead_letters(mode: Mode) {
    const EVENTS: i64 = 4000;
    let env = TestEnv::new().await;
    let seeded = seed(&env, EVENTS as u64, true);
    let tally = |key: &str| field(&seeded, key).as_i64().unwrap();
    let not_json = tally("not_json");
    assert!(not_json > 0 && tally("identical_resends") > 0 && tally("without_id") > 0, "the messy seed makes every kind of mess: {seeded}");
    // Two garbage members may happen to be equal (Redis keeps one): count what is stored.
    let mut redis = env.redis().await;
    let members: Vec<Vec<u8>> = redis::AsyncCommands::zrange(&mut redis, env.keys().events, 0, -1).await.unwrap();
    let garbage = members.iter().filter(|m| serde_json::from_slice::<Value>(m).is_err()).count() as i64;
    assert!(garbage > 0 && garbage <= not_json, "{garbage} stored non-JSON members of {not_json} written");
    assert_eq!(members.len() as i64, EVENTS - not_json + garbage, "one member per generated event; identical resends collapse");

    prepare_and_dual_write(&env, mode);
    let report = env.cli(&["backfill", "--json"]).expect_success().details();
    assert_eq!(target_counts(&env).await, (EVENTS - not_json, EVENTS - not_json), "every generated event once");
    assert_eq!(dead_letters(&env).await, garbage, "every stored non-JSON member is a dead letter");
    assert_eq!(field(&report, "read").as_i64(), Some(members.len() as i64));
    assert_eq!(field(&report, "dead_letters").as_i64(), Some(garbage));
    let reasons = field(&report, "dead_letter_reasons").as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!((reasons[0]["reason_code"].as_str(), reasons[0]["count"].as_i64()), (Some("not_json"), Some(garbage)), "{reasons:?}");
    let raw_kept: bool = sqlx::query_scalar("SELECT bool_and(length(raw) > 0 AND reason <> '') FROM tsmigrate.dead_letter").fetch_one(&env.pool).await.unwrap();
    assert!(raw_kept, "raw bytes and reason are kept");
}

#[tokio::test]
async fn messy_members_become_dead_letters_plain() {
    messy_data_goes_to_dead_letters(Mode::Postgres).await;
}

#[tokio::test]
async fn messy_members_become_dead_letters_timescaledb() {
    let probe = TestEnv::new().await;
    require_timescaledb_or_skip!(probe);
    drop(probe);
    messy_data_goes_to_dead_letters(Mode::Timescaledb).await;
}

#[tokio::test]
async fn history_older_than_the_redis_horizon_is_imported() {
    // A small cap: Redis keeps only the newest events; the legacy tables kept every hour.
    let env = TestEnv::with_settings(|s| s.redis.event_cap = 1000).await;
    let path = env.write_file("small-cap.toml", "[redis]\nevent_cap = 1000\n");
    let path = path.to_str().unwrap();
    env.cli(&["--config", path, "seed", "--events", "5000", "--days", "2", "--users", "40", "--end", "-1h"]).expect_success();
    env.cli(&["--config", path, "prepare", "--mode", "postgres"]).expect_success();
    env.cli(&["--config", path, "dual-write", "start"]).expect_success();
    let report = env.cli(&["--config", path, "backfill", "--json"]).expect_success().details();
    let history = field(&report, "history");
    let horizon: chrono::DateTime<chrono::Utc> = serde_json::from_value(field(history, "horizon").clone()).unwrap();
    assert!(field(history, "hourly_rows").as_i64().unwrap() > 0, "{history}");
    let (imported, newest): (i64, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT count(*), max(hour) FROM tsmigrate.history_hourly").fetch_one(&env.pool).await.unwrap();
    assert_eq!(newest, Some(horizon), "hours up to the one holding the oldest Redis event (which the cap may have cut)");
    let legacy_older: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_events WHERE hour <= $1").bind(horizon).fetch_one(&env.pool).await.unwrap();
    assert_eq!(imported, legacy_older);
    // Row for row, value for value, both ways.
    for (what, differing) in [
        (
            "hourly rows",
            "(SELECT hour, event_name, category, event_count, unique_users FROM analytics_events WHERE hour <= $1
              EXCEPT SELECT hour, event_name, category, event_count, unique_users FROM tsmigrate.history_hourly)
             UNION ALL
             (SELECT hour, event_name, category, event_count, unique_users FROM tsmigrate.history_hourly
              EXCEPT SELECT hour, event_name, category, event_count, unique_users FROM analytics_events WHERE hour <= $1)",
        ),
        (
            "asset rows",
            "(SELECT day, asset_type, generation_count, unique_creators FROM analytics_asset_popularity WHERE day <= ($1 AT TIME ZONE 'UTC')::date
              EXCEPT SELECT day, asset_type, generation_count, unique_creators FROM tsmigrate.history_asset_popularity)
             UNION ALL
             (SELECT day, asset_type, generation_count, unique_creators FROM tsmigrate.history_asset_popularity
              EXCEPT SELECT day, asset_type, generation_count, unique_creators FROM analytics_asset_popularity WHERE day <= ($1 AT TIME ZONE 'UTC')::date)",
        ),
    ] {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({differing}) d")).bind(horizon).fetch_one(&env.pool).await.unwrap();
        assert_eq!(count, 0, "imported {what} differ from the legacy table's");
    }
    let (events, assets): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(event_count), 0)::bigint FROM tsmigrate.history_hourly), (SELECT count(*) FROM tsmigrate.history_asset_popularity)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(events > 1000 && assets > 0, "the history is about real data: {events} events, {assets} asset rows");

    // `import-history` alone does the same, idempotently.
    sqlx::query("DELETE FROM tsmigrate.history_hourly WHERE hour = $1").bind(horizon).execute(&env.pool).await.unwrap();
    let alone = env.cli(&["--config", path, "import-history", "--json"]).expect_success().details();
    assert_eq!(field(&alone, "hourly_rows").as_i64(), Some(imported), "{alone}");
    let again: (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(event_count), 0)::bigint FROM tsmigrate.history_hourly").fetch_one(&env.pool).await.unwrap();
    assert_eq!(again, (imported, events));
    assert_eq!(target_counts(&env).await.0, 1000, "the backfill copies what Redis still holds");
}
