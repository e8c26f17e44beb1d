//! README promises about the command line that no other test holds: `abort` after the read
//! switch, validation that could not run (an empty legacy table, one that does not cover the
//! window) and is not applicable after `retire-flush`, `backfill --max-rate`,
//! `user-sets build [--from --to]`, `relay --tail` (and its `conflicting_content`), several
//! `relay` processes sharing the consumer group, and `--log-format` over the environment.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::scenario::{prepare_and_dual_write, target_counts, Mode};
use crate::support::{eventually, field, ChildGuard, TestEnv};
use crate::validate::{migrate, seed_end};

async fn phase(env: &TestEnv) -> String {
    sqlx::query_scalar("SELECT phase FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap()
}

async fn latest_validation(env: &TestEnv) -> String {
    sqlx::query_scalar("SELECT result FROM tsmigrate.validation_runs ORDER BY id DESC LIMIT 1").fetch_one(&env.pool).await.unwrap()
}

/// Migrated, validated over the whole range, and reads switched to the target.
async fn reads_switched(env: &TestEnv) {
    migrate(env, "postgres", seed_end());
    env.cli(&["validate"]).expect_success();
    env.cli(&["cutover"]).expect_success();
    assert_eq!(phase(env).await, "reads_switched");
}

#[tokio::test]
async fn abort_is_refused_after_the_read_switch() {
    let env = TestEnv::new().await;
    reads_switched(&env).await;
    let out = env.cli(&["abort", "--yes"]);
    out.expect_code(3);
    assert!(out.stderr.contains("abort") && out.stderr.contains("reads_switched"), "the refusal names the phase: {}", out.stderr);
    assert_eq!(phase(&env).await, "reads_switched", "nothing moved");
    let (rows, _) = target_counts(&env).await;
    assert!(rows > 0, "nothing prepare created was dropped");
    let refused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log WHERE command = 'abort' AND outcome <> 'done'").fetch_one(&env.pool).await.unwrap();
    assert_eq!(refused, 1, "the refusal is audited");
    env.cleanup().await;
}

#[tokio::test]
async fn validation_after_retire_flush_says_the_legacy_checks_are_not_applicable() {
    let env = TestEnv::new().await;
    reads_switched(&env).await;
    env.cli(&["validate"]).expect_success();
    env.cli(&["retire-flush", "--soak", "0s"]).expect_success();
    // The legacy tables stop following the events once the flush is retired: emptying them
    // would make a legacy check fail or not run, so a clean run proves they were not read.
    sqlx::query("TRUNCATE analytics_events, analytics_asset_popularity").execute(&env.pool).await.unwrap();
    let details = env.cli(&["validate", "--json"]).expect_success().details();
    assert_eq!(field(&details, "result"), "clean", "{details}");
    for check in ["legacy_hourly", "asset_popularity"] {
        assert_eq!(field(&details, &format!("{check}.status")), "not_applicable", "{check}: {details}");
    }
    let text = env.cli(&["validate"]).expect_success().stdout.clone();
    assert!(text.contains("not applicable (the legacy flush is retired"), "{text}");
    assert_eq!(latest_validation(&env).await, "clean");
    env.cleanup().await;
}

/// Validates with the legacy tables as `break_legacy` left them: exit 2, recorded as
/// `error`, the phase does not move, and the output says `expected`, naming the table, the
/// database and the setting to fix.
async fn could_not_run(break_legacy: &str, expected: &str) {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    sqlx::raw_sql(break_legacy).execute(&env.pool).await.unwrap();
    let envelope = env.cli(&["validate", "--json"]).expect_code(2).json();
    let message = envelope["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(expected), "{envelope}");
    assert!(message.contains("analytics_events") && message.contains(&env.db_name), "the table and the database: {message}");
    let hint = envelope["error"]["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("legacy.hourly_table"), "the setting: {hint}");
    assert_eq!(field(&envelope, "details.legacy_hourly.status"), "could_not_run", "{envelope}");
    assert_eq!(latest_validation(&env).await, "error");
    assert_eq!(phase(&env).await, "backfilled", "a run that could not check everything moves no phase");
    env.cleanup().await;
}

#[tokio::test]
async fn validation_against_an_empty_legacy_table_could_not_run() {
    could_not_run("DELETE FROM analytics_events", "holds no rows").await;
}

#[tokio::test]
async fn validation_against_a_legacy_table_that_does_not_cover_the_window_could_not_run() {
    // The flush's rows moved to days before the first event: it covered nothing of the window.
    could_not_run("UPDATE analytics_events SET hour = hour - interval '10 days'", "covers hours only up to").await;
}

#[tokio::test]
async fn backfill_max_rate_is_respected() {
    // Unthrottled, a few hundred events take well under a second here: the bound below is
    // several times that, so a rate that is not applied shows.
    const EVENTS: u64 = 400;
    const PAGE: u64 = 25;
    const RATE: u64 = 100;
    let env = TestEnv::new().await;
    crate::scenario::seed(&env, EVENTS, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    let started = Instant::now();
    let report = env.cli(&["backfill", "--page-size", &PAGE.to_string(), "--max-rate", &RATE.to_string(), "--no-history", "--json"]).expect_success().details();
    let took = started.elapsed();
    assert_eq!(target_counts(&env).await, (EVENTS as i64, EVENTS as i64), "{report}");
    // The last page may follow its predecessor at once; every page before it had to wait
    // until the events copied so far fit the rate. A lower bound, whatever the machine's speed.
    let at_least = Duration::from_secs_f64((EVENTS - PAGE) as f64 / RATE as f64);
    println!("backfill --max-rate {RATE}: {EVENTS} events in {took:?} (at least {at_least:?})");
    assert!(took >= at_least, "{EVENTS} events at most {RATE}/s cannot take {took:?}: {report}");
    env.cleanup().await;
}

/// The event names the user set of `span` starting at `bucket` holds.
async fn set_names(env: &TestEnv, span: &str, bucket: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    sqlx::query_scalar("SELECT event_names FROM tsmigrate.user_sets WHERE span = $1 AND bucket = $2")
        .bind(span)
        .bind(bucket)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
        .unwrap_or_default()
}

#[tokio::test]
async fn user_sets_build_builds_the_closed_buckets_and_rebuilds_a_range_from_raw_rows() {
    let env = TestEnv::new().await;
    crate::scenario::seed(&env, 400, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    env.cli(&["backfill", "--no-history"]).expect_success();
    let built = env.cli(&["user-sets", "build", "--json"]).expect_success().details();
    assert!(field(&built, "built.minutes").as_u64().unwrap() > 0, "{built}");
    assert!(field(&built, "built.hours").as_u64().unwrap() > 0, "{built}");
    assert_eq!(field(&built, "marked_minutes"), 0, "{built}");

    // Rows changed with SQL, outside tsmigrate's write paths: no mark, so a plain build
    // leaves their sets as they were, and a build over their range rebuilds them.
    let minute: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT date_trunc('minute', min(time)) FROM analytics_events_ts").fetch_one(&env.pool).await.unwrap();
    let hour = tsmigrate::calendar::hour_floor(minute, chrono_tz::Tz::UTC);
    sqlx::query("UPDATE analytics_events_ts SET event_name = 'renamed_by_sql' WHERE time >= $1 AND time < $1 + interval '1 minute'")
        .bind(minute)
        .execute(&env.pool)
        .await
        .unwrap();
    env.cli(&["user-sets", "build"]).expect_success();
    assert!(!set_names(&env, "minute", minute).await.contains(&"renamed_by_sql".to_string()), "an unmarked change is not seen by a plain build");

    let (from, to) = (format!("--from={}", minute.to_rfc3339()), format!("--to={}", (minute + chrono::Duration::minutes(1)).to_rfc3339()));
    let rebuilt = env.cli(&["user-sets", "build", &from, &to, "--json"]).expect_success().details();
    assert_eq!(field(&rebuilt, "marked_minutes"), 1, "{rebuilt}");
    assert!(set_names(&env, "minute", minute).await.contains(&"renamed_by_sql".to_string()), "the minute is rebuilt from raw rows");
    assert!(set_names(&env, "hour", hour).await.contains(&"renamed_by_sql".to_string()), "and the hour above it");
    env.cleanup().await;
}

/// A member as an application writing the sorted set itself would write it.
fn member(id: &str, properties: Value) -> String {
    json!({"id": id, "event_name": "tail_probe", "category": "test", "properties": properties}).to_string()
}

/// Dual-write started (its completion point is where `relay --tail` starts following).
async fn following_the_sorted_set() -> (TestEnv, tsmigrate::connect::RedisConn, i64) {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let redis = env.redis().await;
    let start: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT completion_point FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
    (env, redis, start.timestamp_millis())
}

async fn tail_probes(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM analytics_events_ts WHERE event_name = 'tail_probe'").fetch_one(&env.pool).await.unwrap()
}

#[tokio::test]
async fn relay_tail_from_the_command_line_follows_the_sorted_set() {
    let (env, mut redis, start) = following_the_sorted_set().await;
    let events = env.keys().events;
    for i in 0..3 {
        let _: () = redis.zadd(&events, member(&format!("tail-once-{i}"), json!({})), start + 1000 + i).await.unwrap();
    }
    let once = env.cli(&["relay", "--tail", "--once", "--json"]).expect_success().details();
    assert_eq!((field(&once, "read"), field(&once, "inserted")), (&json!(3), &json!(3)), "{once}");

    // Without --once it keeps following: members added while it runs reach the target.
    let _relay = ChildGuard::spawn(env.command(&["relay", "--tail"], &[]));
    for i in 0..4 {
        let _: () = redis.zadd(&events, member(&format!("tail-follow-{i}"), json!({})), start + 2000 + i).await.unwrap();
    }
    eventually("the followed members in the target", Duration::from_secs(60), || async { (tail_probes(&env).await == 7).then_some(()) }).await;
    assert_eq!(target_counts(&env).await, (7, 7));
}

#[tokio::test]
async fn relay_tail_records_another_version_of_a_stored_event_as_conflicting_content() {
    let (env, mut redis, start) = following_the_sorted_set().await;
    let events = env.keys().events;
    let (first, other) = (member("tail-conflict", json!({"plan": "pro"})), member("tail-conflict", json!({"plan": "team"})));
    let _: () = redis.zadd(&events, &first, start + 1000).await.unwrap();
    env.cli(&["relay", "--tail", "--once"]).expect_success();
    // The same id at the same time with other content: the second version of the event.
    let _: () = redis.zadd(&events, &other, start + 1000).await.unwrap();
    let out = env.cli(&["relay", "--tail", "--once", "--json"]).expect_success().details();
    assert_eq!(field(&out, "inserted"), 0, "{out}");
    let stored: Value = sqlx::query_scalar("SELECT properties FROM analytics_events_ts").fetch_one(&env.pool).await.unwrap();
    assert_eq!(stored, json!({"plan": "pro"}), "the stored version stays");
    let letters: Vec<(String, Vec<u8>, String)> =
        sqlx::query_as("SELECT source, raw, reason FROM tsmigrate.dead_letter WHERE reason_code = 'conflicting_content'").fetch_all(&env.pool).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (source, raw, reason) = &letters[0];
    assert_eq!((source.as_str(), raw.as_slice()), ("tail", other.as_bytes()));
    assert!(reason.contains("properties") && reason.contains(r#""plan":"pro""#), "the differing field and the stored version: {reason}");
    env.cleanup().await;
}

#[tokio::test]
async fn several_relays_share_the_consumer_group_and_lose_or_double_nothing() {
    const ENTRIES: usize = 60;
    const PER_ENTRY: usize = 5;
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let router = crate::dual_write::router(&env).await;
    let mut ids = Vec::new();
    for _ in 0..ENTRIES {
        let (body, batch) = crate::daemon_process::batch(PER_ENTRY);
        assert_eq!(crate::dual_write::post(&router, &body, None).await.0.as_u16(), 202);
        ids.extend(batch);
    }
    // Three relays drain the same outbox at once; each entry is delivered to one of them.
    let relays: Vec<_> = (0..3).map(|_| env.command(&["relay", "--once", "--json"], &[]).stdout(std::process::Stdio::piped()).spawn().unwrap()).collect();
    let reports: Vec<Value> = relays
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice::<Value>(&out.stdout).unwrap()["details"].clone()
        })
        .collect();
    let total = |key: &str| reports.iter().map(|r| field(r, key).as_u64().unwrap()).sum::<u64>();
    println!("three relays: entries {:?}", reports.iter().map(|r| r["entries"].clone()).collect::<Vec<_>>());
    assert_eq!(total("entries"), ENTRIES as u64, "every entry delivered exactly once across the relays: {reports:?}");
    assert_eq!(total("inserted"), (ENTRIES * PER_ENTRY) as u64, "{reports:?}");
    let mut stored: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM analytics_events_ts").fetch_all(&env.pool).await.unwrap();
    stored.sort();
    ids.sort();
    assert_eq!(stored, ids, "every event once");
    let mut redis = env.redis().await;
    let pending: (u64, redis::Value, redis::Value, redis::Value) =
        redis::cmd("XPENDING").arg(env.keys().outbox).arg(&env.settings.redis.outbox_group).query_async(&mut redis).await.unwrap();
    assert_eq!(pending.0, 0, "everything acknowledged");
    env.cleanup().await;
}

/// The log lines of `tsmigrate run -v --log-format <flag>` started with
/// `TSMIGRATE_LOG_FORMAT=<setting>`, each as JSON or not: its first lines, up to the one
/// tracing writes when it takes the jobs lease.
async fn log_lines_as_json(env: &TestEnv, flag: &str, setting: &str) -> Vec<bool> {
    let daemon = crate::servers::Daemon::start_with(env, None, &["-v", "--no-relay", "--log-format", flag], &[("TSMIGRATE_LOG_FORMAT", setting)]);
    let logs = eventually("a log line about the jobs lease", Duration::from_secs(60), || async {
        let logs = daemon.logs();
        logs.contains("jobs lease").then_some(logs)
    })
    .await;
    drop(daemon);
    logs.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str::<Value>(l).is_ok()).collect()
}

#[tokio::test]
async fn the_log_format_flag_wins_over_the_environment() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    assert!(log_lines_as_json(&env, "text", "json").await.iter().all(|json| !json), "--log-format text wins over TSMIGRATE_LOG_FORMAT=json");
    assert!(log_lines_as_json(&env, "json", "text").await.iter().all(|json| *json), "--log-format json wins over TSMIGRATE_LOG_FORMAT=text");
    env.cleanup().await;
}
