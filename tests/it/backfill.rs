//! Backfill: gates, kill -9 and resume with no gap and no duplicate, dead letters,
//! idempotent re-runs, history import — in both storage modes.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::scenario::{dead_letters, prepare_and_dual_write, redis_members, seed, target_counts, Mode};
use crate::support::{field, TestEnv};

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
    let again = env.cli(&["dual-write", "start", "--json"]).expect_success().json();
    assert_eq!(field(&again, "details")["dual_write"], "already on", "{again}");
    assert_eq!(field(&again, "phase_after"), "dual_writing");
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log WHERE outcome = 'refused'").fetch_one(&env.pool).await.unwrap();
    assert_eq!(refused, 1, "refusals after prepare are audited");
    let starts: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log WHERE command = 'dual-write start' AND outcome = 'done'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(starts, 1, "the completion point was recorded once");
}

async fn kill_and_resume(mode: Mode) {
    let env = TestEnv::new().await;
    seed(&env, 6000, false);
    prepare_and_dual_write(&env, mode);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tsmigrate"))
        .args(["backfill", "--page-size", "100", "--max-rate", "3000", "--json"])
        .env("DATABASE_URL", env.settings.database.url.expose())
        .env("REDIS_URL", env.settings.redis.url.expose())
        .env("TSMIGRATE_REDIS_PREFIX", &env.prefix)
        .env_remove("TSMIGRATE_CONFIG")
        .current_dir(env.dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let pages: Option<i64> = sqlx::query_scalar("SELECT (position->>'pages')::bigint FROM tsmigrate.checkpoints WHERE name = 'backfill'")
            .fetch_optional(&env.pool)
            .await
            .unwrap();
        if pages.unwrap_or(0) >= 5 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the backfill made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let (rows, distinct) = target_counts(&env).await;
    let read: i64 =
        sqlx::query_scalar("SELECT (position->>'read')::bigint FROM tsmigrate.checkpoints WHERE name = 'backfill'").fetch_one(&env.pool).await.unwrap();
    assert!(rows > 0 && rows < 6000, "killed mid-way, {rows} rows");
    assert_eq!((rows, distinct), (read, read), "the checkpoint covers exactly the committed rows");

    let report = env.cli(&["backfill", "--json"]).expect_success().json();
    assert_eq!(field(&report, "resumed"), &Value::Bool(true));
    assert_eq!(field(&report, "phase_after"), "backfilled");
    assert_eq!(target_counts(&env).await, (6000, 6000), "no gap, no duplicate");
    assert_eq!(field(&report, "read").as_i64(), Some(6000));
    assert_eq!(field(&report, "inserted").as_i64(), Some(6000));

    // A re-run is idempotent and says the backfill is complete.
    let again = env.cli(&["backfill", "--json"]).expect_success().json();
    assert_eq!(field(&again, "remaining_estimate").as_i64(), Some(0));
    assert_eq!(target_counts(&env).await, (6000, 6000));
    let hourly: i64 = sqlx::query_scalar("SELECT coalesce(sum(event_count), 0)::bigint FROM analytics_hourly").fetch_one(&env.pool).await.unwrap();
    assert_eq!(hourly, 6000, "the aggregates were refreshed over the backfilled range");
}

#[tokio::test]
async fn killed_backfill_resumes_without_gap_or_duplicate_plain() {
    kill_and_resume(Mode::Postgres).await;
}

#[tokio::test]
async fn killed_backfill_resumes_without_gap_or_duplicate_timescaledb() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    kill_and_resume(Mode::Timescaledb).await;
}

async fn messy_data_goes_to_dead_letters(mode: Mode) -> (i64, i64) {
    let env = TestEnv::new().await;
    let seeded = seed(&env, 4000, true);
    assert!(field(&seeded, "not_json").as_u64().unwrap() > 0, "the messy seed writes members that are not JSON");
    prepare_and_dual_write(&env, mode);
    let report = env.cli(&["backfill", "--json"]).expect_success().json();
    let (members, valid) = redis_members(&env).await;
    let (rows, distinct) = target_counts(&env).await;
    assert_eq!((rows, distinct), (valid as i64, valid as i64), "every valid member once");
    assert_eq!(dead_letters(&env).await, (members - valid) as i64, "every invalid member is a dead letter");
    assert_eq!(field(&report, "dead_letters").as_i64(), Some((members - valid) as i64));
    let reasons = field(&report, "dead_letter_reasons").as_array().unwrap();
    assert!(reasons.iter().any(|r| r["reason_code"] == "not_json"), "{reasons:?}");
    let raw_kept: bool = sqlx::query_scalar("SELECT bool_and(length(raw) > 0 AND reason <> '') FROM tsmigrate.dead_letter").fetch_one(&env.pool).await.unwrap();
    assert!(raw_kept, "raw bytes and reason are kept");
    (rows, dead_letters(&env).await)
}

#[tokio::test]
async fn messy_members_become_dead_letters_and_both_modes_agree() {
    let plain = messy_data_goes_to_dead_letters(Mode::Postgres).await;
    let probe = TestEnv::new().await;
    if crate::support::ts_tier(&probe).await {
        let timescale = messy_data_goes_to_dead_letters(Mode::Timescaledb).await;
        assert_eq!(plain, timescale, "the same seed gives the same rows and dead letters in both modes");
    }
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
    let report = env.cli(&["--config", path, "backfill", "--json"]).expect_success().json();
    let history = field(&report, "history");
    let horizon: chrono::DateTime<chrono::Utc> = serde_json::from_value(field(history, "horizon").clone()).unwrap();
    assert!(field(history, "hourly_rows").as_i64().unwrap() > 0, "{history}");
    let (imported, newest): (i64, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT count(*), max(hour) FROM tsmigrate.history_hourly").fetch_one(&env.pool).await.unwrap();
    assert_eq!(newest, Some(horizon), "hours up to the one holding the oldest Redis event (which the cap may have cut)");
    let legacy_older: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_events WHERE hour <= $1").bind(horizon).fetch_one(&env.pool).await.unwrap();
    assert_eq!(imported, legacy_older);
    assert_eq!(target_counts(&env).await.0, 1000, "the backfill copies what Redis still holds");
}
