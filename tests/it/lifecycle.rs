//! The read-switch half of the state machine: gates, forcing, reverse, retire, optimize,
//! complete, abort — through the CLI, as an operator runs them.

use redis::AsyncCommands;
use serde_json::Value;

use crate::scenario::{prepare_and_dual_write, seed, target_counts, Mode};
use crate::support::{field, TestEnv};

/// Records a validation run as `tsmigrate validate` does (result, finished `hours_ago`).
async fn record_validation(env: &TestEnv, result: &str, hours_ago: i64) {
    sqlx::query(
        "INSERT INTO tsmigrate.validation_runs (started_at, finished_at, depth, result, duration_ms)
         VALUES (now() - make_interval(hours => $2::int), now() - make_interval(hours => $2::int), 'events', $1, 5)",
    )
    .bind(result)
    .bind(hours_ago as i32)
    .execute(&env.pool)
    .await
    .unwrap();
}

async fn set_phase(env: &TestEnv, phase: &str) {
    sqlx::query("UPDATE tsmigrate.migration_state SET phase = $1").bind(phase).execute(&env.pool).await.unwrap();
}

fn phase(env: &TestEnv) -> String {
    env.cli(&["status", "--json"]).expect_success().details()["phase"].as_str().unwrap().to_string()
}

/// Seeded, prepared, dual-writing and backfilled.
async fn backfilled(env: &TestEnv, mode: Mode) {
    seed(env, 1500, false);
    prepare_and_dual_write(env, mode);
    env.cli(&["backfill"]).expect_success();
}

#[tokio::test]
async fn out_of_order_commands_are_refused_with_the_next_step() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    for (args, needs) in [
        (vec!["cutover"], "needs phase validated"),
        (vec!["retire-flush"], "needs phase reads_switched"),
        (vec!["complete"], "needs phase flush_retired"),
        (vec!["reverse"], "needs phase reads_switched or flush_retired"),
        (vec!["optimize"], "once the legacy flush is retired"),
    ] {
        let out = env.cli(&args);
        out.expect_code(3);
        assert!(out.stderr.contains(needs), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("next: tsmigrate dual-write start"), "{args:?}: {}", out.stderr);
    }
    assert_eq!(phase(&env), "prepared", "refusals change nothing");
}

#[tokio::test]
async fn cutover_needs_a_fresh_clean_validation_unless_forced_with_a_reason() {
    let env = TestEnv::new().await;
    backfilled(&env, Mode::Postgres).await;
    set_phase(&env, "validated").await;
    record_validation(&env, "clean", 30).await;
    let out = env.cli(&["cutover"]);
    out.expect_code(3);
    assert!(out.stderr.contains("30h ago"), "{}", out.stderr);
    record_validation(&env, "differences", 1).await;
    let out = env.cli(&["cutover"]);
    out.expect_code(3);
    assert!(out.stderr.contains("found differences"), "{}", out.stderr);
    env.cli(&["cutover", "--force"]).expect_code(2); // --force needs --reason (a usage error)

    let dry = env.cli(&["cutover", "--dry-run", "--force", "--reason", "checked by hand", "--json"]).expect_success().details();
    assert_eq!(field(&dry, "run.dry_run"), &Value::Bool(true));
    assert_eq!(phase(&env), "validated");
    let done = env.cli(&["cutover", "--force", "--reason", "checked by hand", "--json"]).expect_success().details();
    assert_eq!(field(&done, "run.phase_after"), "reads_switched");
    assert_eq!(field(&done, "run.forced"), &Value::Bool(true));
    let (forced, reason): (bool, Option<String>) =
        sqlx::query_as("SELECT forced, reason FROM tsmigrate.audit_log WHERE command = 'cutover' AND outcome = 'done'").fetch_one(&env.pool).await.unwrap();
    assert!(forced);
    assert_eq!(reason.as_deref(), Some("checked by hand"));
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "read_source"), "target");
}

#[tokio::test]
async fn retire_then_reverse_restores_legacy_reads_and_the_flush() {
    let env = TestEnv::new().await;
    backfilled(&env, Mode::Postgres).await;
    set_phase(&env, "validated").await;
    record_validation(&env, "clean", 0).await;
    env.cli(&["cutover"]).expect_success();
    let out = env.cli(&["retire-flush"]);
    out.expect_code(3);
    assert!(out.stderr.contains("soak period"), "{}", out.stderr);
    let out = env.cli(&["retire-flush", "--soak", "0s"]);
    out.expect_code(3);
    assert!(out.stderr.contains("no validation has run since reads were switched"), "{}", out.stderr);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    record_validation(&env, "clean", 0).await;
    env.cli(&["retire-flush", "--soak", "0s"]).expect_success();

    let mut redis = env.redis().await;
    let retired: Option<String> = redis.get(env.keys().flush_retired).await.unwrap();
    assert_eq!(retired.as_deref(), Some("1"), "the control key external workers check");
    let out = env.cli(&["legacy", "flush"]);
    out.expect_code(3);
    assert!(out.stderr.contains("retired"), "{}", out.stderr);

    let reversed = env.cli(&["reverse", "--json"]).expect_success().details();
    assert_eq!(field(&reversed, "run.phase_after"), "validated");
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "read_source"), "legacy");
    let retired: Option<String> = redis.get(env.keys().flush_retired).await.unwrap();
    assert_eq!(retired, None);
    env.cli(&["legacy", "flush"]).expect_success();
}

#[tokio::test]
async fn optimize_and_complete_finish_the_migration() {
    let env = TestEnv::new().await;
    backfilled(&env, Mode::Postgres).await;
    set_phase(&env, "validated").await;
    record_validation(&env, "clean", 0).await;
    env.cli(&["cutover"]).expect_success();
    env.cli(&["retire-flush", "--force", "--reason", "test"]).expect_success();
    let report = env.cli(&["optimize", "--json"]).expect_success().details();
    assert_eq!(field(&report, "mode"), "postgres");
    let partitions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'analytics_events_ts'::regclass").fetch_one(&env.pool).await.unwrap();
    assert!(partitions > 0);
    assert_eq!(field(&report, "chunks").as_i64(), Some(partitions), "one chunk per daily partition: {report}");
    assert!(field(&report, "asset_popularity_rows").as_i64().unwrap() > 0, "{report}");
    assert_eq!(field(&report, "retention")["raw_days"], 90);
    env.cli(&["complete"]).expect_code(3);
    assert_eq!(phase(&env), "flush_retired", "complete needs --yes");
    env.cli(&["complete", "--yes"]).expect_success();
    assert_eq!(phase(&env), "completed");
    let mut redis = env.redis().await;
    let ttl: i64 = redis.ttl(env.keys().events).await.unwrap();
    assert!(ttl > 6 * 86_400 && ttl <= 7 * 86_400, "the legacy keys expire after 7 days, ttl {ttl}");
    env.cli(&["reverse"]).expect_code(3);
    env.cli(&["abort", "--yes"]).expect_code(3);
}

#[tokio::test]
async fn optimize_reports_the_compression_ratio_in_timescaledb_mode() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    let config = env.write_file("columnstore.toml", "[target]\ncolumnstore_after_days = 1\n");
    let config = config.to_str().unwrap();
    env.cli(&["--config", config, "seed", "--events", "3000", "--days", "3", "--users", "30", "--end=-1h"]).expect_success();
    env.cli(&["--config", config, "prepare", "--mode", "timescaledb"]).expect_success();
    env.cli(&["--config", config, "dual-write", "start"]).expect_success();
    env.cli(&["--config", config, "backfill"]).expect_success();
    set_phase(&env, "flush_retired").await;
    let report = env.cli(&["--config", config, "optimize", "--compress-now", "--json"]).expect_success().details();
    assert!(field(&report, "compressed_now").as_i64().unwrap() >= 1, "{report}");
    let ratio = field(&report, "compression_ratio").as_f64().expect("a ratio once chunks are compressed");
    assert!(ratio > 1.0, "{report}");
    assert_eq!(target_counts(&env).await.0, 3000, "compression keeps every row");
}

#[tokio::test]
async fn abort_removes_what_prepare_created_and_keeps_the_audit_log() {
    let env = TestEnv::new().await;
    backfilled(&env, Mode::Postgres).await;
    let out = env.cli(&["abort"]);
    out.expect_code(3);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    let dry = env.cli(&["abort", "--dry-run", "--json"]).expect_success().details();
    let drops: Vec<&str> = field(&dry, "drops").as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    for relation in ["analytics_events_ts", "analytics_hourly", "tsmigrate.migration_state", "tsmigrate.dead_letter", "tsmigrate.schema_history"] {
        assert_eq!(drops.iter().filter(|d| d.contains(&format!(" IF EXISTS {relation}"))).count(), 1, "one drop of {relation}: {drops:?}");
    }
    assert!(!drops.iter().any(|d| d.contains("audit_log")), "the audit log is kept: {drops:?}");
    env.cli(&["abort", "--yes"]).expect_success();

    for relation in ["analytics_events_ts", "analytics_hourly", "tsmigrate.migration_state", "tsmigrate.dead_letter", "tsmigrate.schema_history"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(relation).fetch_one(&env.pool).await.unwrap();
        assert!(!exists, "{relation} should be gone");
    }
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT command FROM tsmigrate.audit_log WHERE outcome = 'done' ORDER BY id").fetch_all(&env.pool).await.unwrap();
    assert_eq!(audit, vec!["prepare", "dual-write start", "backfill", "abort"]);
    let mut redis = env.redis().await;
    let flag: Option<String> = redis.get(env.keys().dual_write_flag).await.unwrap();
    assert_eq!(flag, None, "dual-write is off");
    let events: i64 = redis.zcard(env.keys().events).await.unwrap();
    assert_eq!(events, 1500, "the legacy data is untouched");
    assert_eq!(phase(&env), "new");
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    assert_eq!(phase(&env), "prepared");
}

#[tokio::test]
async fn reverse_right_after_cutover_sends_reads_back_and_cutover_can_follow_again() {
    let env = TestEnv::new().await;
    backfilled(&env, Mode::Postgres).await;
    set_phase(&env, "validated").await;
    record_validation(&env, "clean", 0).await;
    env.cli(&["cutover"]).expect_success();
    assert_eq!(field(&env.cli(&["status", "--json"]).expect_success().details(), "read_source"), "target");

    let reversed = env.cli(&["reverse", "--json"]).expect_success().details();
    assert_eq!((field(&reversed, "run.phase_before"), field(&reversed, "run.phase_after")), (&Value::from("reads_switched"), &Value::from("validated")));
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!((field(&status, "phase"), field(&status, "read_source")), (&Value::from("validated"), &Value::from("legacy")));
    let (switched_at, source): (Option<chrono::DateTime<chrono::Utc>>, String) =
        sqlx::query_as("SELECT reads_switched_at, read_source FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
    assert_eq!((switched_at, source.as_str()), (None, "legacy"));
    let audited: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT command, from_phase, to_phase FROM tsmigrate.audit_log WHERE outcome = 'done' AND command IN ('cutover', 'reverse') ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let expected = [("cutover", "validated", "reads_switched"), ("reverse", "reads_switched", "validated")];
    assert_eq!(audited, expected.map(|(c, f, t)| (c.to_string(), f.to_string(), t.to_string())).to_vec());
    // The flush was never retired: it runs as before.
    env.cli(&["legacy", "flush"]).expect_success();
    // Reversible both ways: the clean validation still opens the gate.
    env.cli(&["cutover"]).expect_success();
    assert_eq!(phase(&env), "reads_switched");
}

/// Holds the phase advisory lock the way a running phase command does (see
/// `tsmigrate::phase::state::PhaseGuard`); returns the connection and its backend pid.
async fn hold_migration_lock(env: &TestEnv) -> (sqlx::PgConnection, i32) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(env.settings.database.url.expose()).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await.unwrap();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('tsmigrate.phase'))").fetch_one(&mut conn).await.unwrap();
    assert!(got, "nothing else holds the migration lock of a fresh test database");
    (conn, pid)
}

#[tokio::test]
async fn a_held_migration_lock_refuses_phase_commands_with_exit_3_and_audits_them() {
    let env = TestEnv::new().await;
    backfilled(&env, Mode::Postgres).await;
    record_validation(&env, "clean", 0).await;
    let (mut holder, pid) = hold_migration_lock(&env).await;
    let refused_by_the_lock = |args: &[&str]| {
        let out = env.cli(args);
        out.expect_code(3);
        assert!(out.stderr.contains("another tsmigrate phase command holds the migration lock"), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(&format!("PostgreSQL backend pid {pid}")), "{args:?} names the holder: {}", out.stderr);
    };
    // Each runs where its gate is open, so only the lock can refuse it.
    refused_by_the_lock(&["backfill"]); // a re-run from backfilled
    assert_eq!(phase(&env), "backfilled");
    set_phase(&env, "validated").await;
    refused_by_the_lock(&["cutover"]); // validated, with a fresh clean validation
    assert_eq!(phase(&env), "validated");

    let refused: Vec<(String, String, String, Value)> =
        sqlx::query_as("SELECT command, from_phase, reason, details FROM tsmigrate.audit_log WHERE outcome = 'refused' ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let audited: Vec<(&str, &str)> = refused.iter().map(|(c, f, _, _)| (c.as_str(), f.as_str())).collect();
    assert_eq!(audited, vec![("backfill", "backfilled"), ("cutover", "validated")], "{refused:?}");
    for (_, _, reason, details) in &refused {
        assert!(reason.contains("holds the migration lock") && reason.contains(&pid.to_string()), "{reason}");
        assert_eq!(details["lock_holder_pid"], pid, "{details}");
    }

    // Released, the same command runs.
    let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock(hashtext('tsmigrate.phase'))").fetch_one(&mut holder).await.unwrap();
    env.cli(&["cutover"]).expect_success();
    assert_eq!(phase(&env), "reads_switched");
}
