//! `tsmigrate status --json`: its shape (scripts depend on it) and its counts.

use serde_json::Value;

use crate::support::{field, TestEnv};

const TOP_LEVEL_KEYS: &[&str] = &[
    "verdict",
    "verdict_reason",
    "phase",
    "storage_mode",
    "read_source",
    "lag_seconds",
    "objects",
    "policies",
    "redis",
    "legacy",
    "target",
    "last_validation",
    "jobs",
    "running",
    "warnings",
];

#[track_caller]
fn assert_shape(status: &Value) {
    for key in TOP_LEVEL_KEYS {
        field(status, key);
    }
    let target = field(status, "target");
    for key in ["url", "reachable", "server_version", "timescaledb", "events", "hourly_rows", "dead_letters", "chunks"] {
        field(target, key);
    }
    assert!(field(target, "server_version").as_str().is_some_and(|v| !v.is_empty()));
    let ts = field(target, "timescaledb");
    for key in ["available", "installed", "preloaded"] {
        field(ts, key);
    }
    assert!(ts["preloaded"].is_boolean());
    assert!(field(status, "objects").is_array());
    assert!(field(status, "policies").is_array());
    let redis = field(status, "redis");
    for key in ["reachable", "events", "oldest_event", "newest_event", "dual_write_flag", "outbox_entries", "outbox_pending", "flush_retired_flag"] {
        field(redis, key);
    }
    let legacy = field(status, "legacy");
    for key in ["reachable", "hourly_rows", "hourly_from", "hourly_to", "asset_rows"] {
        field(legacy, key);
    }
}

/// The envelope's first next step, as a command line.
#[track_caller]
fn first_step(envelope: &Value) -> String {
    envelope["next_steps"][0]["command"].as_str().unwrap_or_else(|| panic!("no command in {envelope}")).to_string()
}

#[tokio::test]
async fn status_of_a_new_target_points_at_prepare() {
    let env = TestEnv::new().await;
    let out = env.cli(&["status", "--json"]);
    let envelope = out.expect_success().json();
    let status = field(&envelope, "details");
    assert_shape(status);
    assert_eq!(field(status, "phase"), "new");
    assert_eq!(envelope["phase"], "new");
    assert_eq!(field(status, "verdict"), "healthy");
    assert_eq!(field(status, "read_source"), "legacy");
    assert_eq!(field(status, "last_validation"), &Value::Null);
    assert_eq!(first_step(&envelope), "tsmigrate prepare");
    let target = field(status, "target");
    assert!(field(target, "url").as_str().unwrap().contains(&env.db_name), "{target}");
    assert_eq!(field(target, "events"), &Value::Null, "not prepared: no figure, not 0");
    let redis = field(status, "redis");
    assert_eq!(redis["reachable"], Value::Bool(true));
    assert_eq!(redis["events"], 0);
    // No legacy tables yet: reported, not fatal.
    assert_eq!(field(status, "legacy")["reachable"], Value::Bool(false));

    let text = env.cli(&["status"]).expect_success().stdout.clone();
    assert!(text.starts_with("verdict:    healthy"), "the verdict comes first:\n{text}");
    assert!(text.contains("phase:      new"), "{text}");
    assert!(text.contains("next:\n  tsmigrate prepare"), "{text}");
    assert!(!text.contains("objects:"), "details only with -v:\n{text}");
    let verbose = env.cli(&["status", "-v"]).expect_success().stdout.clone();
    assert!(verbose.contains("objects:") && verbose.contains("storage:"), "{verbose}");
}

#[tokio::test]
async fn status_after_seed_and_prepare_counts_both_systems() {
    let env = TestEnv::new().await;
    let end = "2025-03-10T12:30:00Z";
    let seeded = env.cli(&["seed", "--events", "500", "--days", "1", "--users", "20", "--seed", "7", "--end", end, "--json"]).expect_success().details();
    assert_eq!(field(&seeded, "events_generated"), 500);
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();

    let envelope = env.cli(&["status", "--json"]).expect_success().json();
    let status = field(&envelope, "details").clone();
    assert_shape(&status);
    assert_eq!(field(&status, "phase"), "prepared");
    assert_eq!(first_step(&envelope), "tsmigrate dual-write start");
    let redis = field(&status, "redis");
    assert_eq!(redis["reachable"], Value::Bool(true));
    assert_eq!(redis["events"], 500, "not messy: every event is one distinct member");
    let oldest = redis["oldest_event"].as_str().unwrap();
    let newest = redis["newest_event"].as_str().unwrap();
    assert!(oldest >= "2025-03-09T12:30:00" && newest < "2025-03-10T12:30:00", "{oldest} .. {newest}");

    let legacy = field(&status, "legacy");
    assert_eq!(legacy["reachable"], Value::Bool(true));
    let hourly_rows = legacy["hourly_rows"].as_i64().unwrap();
    assert!(hourly_rows > 0, "{legacy}");
    assert!(legacy["asset_rows"].as_i64().unwrap() > 0, "{legacy}");

    // The flush ran for every closed hour: its counts add up to the events before the last hour start.
    let closed_until = chrono::DateTime::parse_from_rfc3339("2025-03-10T12:00:00Z").unwrap().timestamp_millis();
    let mut conn = env.redis().await;
    let closed_events: i64 = redis::cmd("ZCOUNT").arg(env.keys().events).arg("-inf").arg(format!("({closed_until}")).query_async(&mut conn).await.unwrap();
    let flushed: i64 = sqlx::query_scalar("SELECT sum(event_count)::bigint FROM analytics_events").fetch_one(&env.pool).await.unwrap();
    assert_eq!(flushed, closed_events);
    let hours: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT hour) FROM analytics_events WHERE hour < '2025-03-09T12:00:00Z' OR hour >= '2025-03-10T12:00:00Z'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(hours, 0, "only the closed hours of the seeded day are flushed");

    // Plain mode: the jobs `tsmigrate run` schedules are listed as policies.
    let policies = field(&status, "policies").as_array().unwrap();
    assert!(!policies.is_empty());
    assert!(policies.iter().all(|p| p["name"].is_string() && p["schedule"].is_string()), "{policies:?}");
    let target = field(&status, "target");
    assert_eq!(target["events"], 0, "nothing is copied to the target before backfill");
}

#[tokio::test]
async fn status_with_an_unreachable_redis_prints_what_it_could_read_and_exits_2() {
    let env = TestEnv::new().await;
    let out = env.cli_with_env(&["status", "--json"], &[("REDIS_URL", "redis://127.0.0.1:1")]);
    let envelope = out.expect_code(2).json();
    assert!(envelope["error"]["message"].as_str().unwrap().contains("Redis is unreachable"), "{envelope}");
    let status = field(&envelope, "details");
    assert_eq!(field(status, "phase"), "new", "the rest is still reported");
    assert_eq!(field(status, "verdict"), "failing");
    let redis = field(status, "redis");
    assert_eq!(redis["reachable"], Value::Bool(false));
    assert_eq!(redis["events"], Value::Null, "unknown is null, never 0");
    assert_eq!(redis["dual_write_flag"], Value::Null, "unknown is null, never false");
    assert!(redis["error"].as_str().unwrap().contains("Redis"), "{redis}");
    assert!(out.stderr.contains("status is incomplete: Redis is unreachable"), "{}", out.stderr);
    let text = env.cli_with_env(&["status"], &[("REDIS_URL", "redis://127.0.0.1:1")]);
    text.expect_code(2);
    assert!(text.stdout.starts_with("verdict:    FAILING: Redis is unreachable"), "{}", text.stdout);
    assert!(text.stdout.contains("lag:        unknown (Redis UNREACHABLE"), "{}", text.stdout);
}

#[tokio::test]
async fn status_with_the_target_down_still_answers_one_envelope_and_exits_2() {
    let env = TestEnv::new().await;
    let down = "postgres://postgres:secret@127.0.0.1:1/nowhere";
    let out = env.cli_with_env(&["status", "--json"], &[("DATABASE_URL", down)]);
    let envelope = out.expect_code(2).json();
    assert_eq!(envelope["phase"], Value::Null, "the phase could not be read");
    let status = field(&envelope, "details");
    assert_eq!(field(status, "verdict"), "failing");
    assert!(field(status, "verdict_reason").as_str().unwrap().contains("target database is unreachable"), "{status}");
    let target = field(status, "target");
    assert_eq!(target["reachable"], false);
    assert_eq!(target["url"], "postgres://postgres:***@127.0.0.1:1/nowhere", "which target, password redacted");
    assert_eq!(target["events"], Value::Null);
    assert_eq!(field(status, "redis")["reachable"], true, "Redis is still read");
    assert!(!out.stdout.contains("secret") && !out.stderr.contains("secret"));
}

#[tokio::test]
async fn status_check_exits_non_zero_unless_healthy_and_names_the_verdict() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    env.cli(&["status", "--check"]).expect_success();

    // Dirty validation in phase validated: blocked (3), and the next step is repair, not cutover.
    sqlx::query("UPDATE tsmigrate.migration_state SET phase = 'validated'").execute(&env.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO tsmigrate.validation_runs (started_at, finished_at, depth, result, duration_ms) VALUES (now(), now(), 'events', 'differences', 5)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let out = env.cli(&["status", "--check", "--json"]);
    let envelope = out.expect_code(3).json();
    assert_eq!(field(&envelope, "details")["verdict"], "blocked");
    assert!(envelope["error"]["message"].as_str().unwrap().starts_with("blocked: cutover gate closed"), "{envelope}");
    assert_eq!(first_step(&envelope), "tsmigrate repair");
    assert_eq!(env.cli(&["status"]).expect_success().code, 0, "without --check a readable status exits 0");

    // A scheduled job whose last run failed: failing (2), naming the job and its error.
    sqlx::query("INSERT INTO tsmigrate.job_runs (job, last_status, last_error, runs, failures) VALUES ('legacy_flush', 'failed', 'relation \"x\" does not exist', 3, 3)")
        .execute(&env.pool)
        .await
        .unwrap();
    let failing = env.cli(&["status", "--check"]);
    failing.expect_code(2);
    assert!(failing.stdout.starts_with("verdict:    FAILING: 1 job(s) failing, first legacy_flush"), "{}", failing.stdout);
    assert!(failing.stdout.contains("jobs:       0 ok, 1 FAILING: legacy_flush"), "{}", failing.stdout);
}

#[tokio::test]
async fn status_check_says_lagging_when_the_outbox_grows_old() {
    let env = TestEnv::new().await;
    env.cli(&["legacy", "setup"]).expect_success();
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    env.cli(&["dual-write", "start"]).expect_success();
    // An entry appended ten minutes ago that no relay has taken.
    let mut redis = env.redis().await;
    let id = format!("{}-0", chrono::Utc::now().timestamp_millis() - 600_000);
    let _: String = redis::cmd("XADD").arg(env.keys().outbox).arg(&id).arg("m").arg("{}").arg("s").arg(1).query_async(&mut redis).await.unwrap();
    let envelope = env.cli(&["status", "--check", "--json"]).expect_code(1).json();
    let status = field(&envelope, "details");
    assert_eq!(field(status, "verdict"), "lagging");
    assert!(field(status, "lag_seconds").as_f64().unwrap() >= 600.0, "{status}");
}

#[tokio::test]
async fn long_work_is_visible_from_any_terminal_and_a_dead_run_shows_as_not_running() {
    use tsmigrate::ledger::progress::Reporter;
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    // What a backfill in another process reports as it goes.
    let reporter = Reporter::start(&env.pool, "backfill", "events", ("tsmigrate backfill", tsmigrate::stop::Rerun::Resumes), 0, Some(1000)).await;
    reporter.set(450);
    let running = crate::support::eventually("the progress to be written", std::time::Duration::from_secs(30), || async {
        let status = env.cli(&["status", "--json"]).expect_success().details();
        let running = field(&status, "running").as_array().unwrap().clone();
        running.first().filter(|r| r["done"] == 450).cloned()
    })
    .await;
    assert_eq!((running["task"].as_str(), running["total"].as_i64(), running["running"].as_bool()), (Some("backfill"), Some(1000), Some(true)), "{running}");
    let text = env.cli(&["status"]).expect_success().stdout.clone();
    assert!(text.contains("running:    backfill: 45% (450 of 1,000 events)"), "{text}");
    reporter.finish(&env.pool, "backfill").await;
    let finished = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&finished, "running"), &Value::Array(vec![]), "a finished run is not running");

    // A run whose process died: its row is unfinished, and nothing holds its lock.
    sqlx::query("UPDATE tsmigrate.progress SET finished_at = NULL, done = 300").execute(&env.pool).await.unwrap();
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "verdict"), "blocked");
    assert!(field(&status, "verdict_reason").as_str().unwrap().starts_with("backfill stopped at 300 of 1000 events"), "{status}");
    let text = env.cli(&["status"]).expect_success().stdout.clone();
    assert!(text.contains("NOT RUNNING") && text.contains("`tsmigrate backfill` resumes it"), "{text}");
}

/// A validation does not resume: status names the command line it was given and says that
/// running it starts over. Each write keeps the one before it, the rate's sample.
#[tokio::test]
async fn a_stopped_validation_shows_the_command_line_that_starts_it_over() {
    use tsmigrate::ledger::progress::Reporter;
    use tsmigrate::stop::{Rerun, Stopped, Why};
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let line = "tsmigrate validate --from 2026-12-07T01:00:00Z --to 2026-12-07T03:00:00Z --limit 5";
    let reporter = Reporter::start(&env.pool, "validate", "events", (line, Rerun::StartsOver), 0, Some(1000)).await;
    let written = |done: i64| {
        let pool = env.pool.clone();
        async move {
            let row: Option<(i64, Option<i64>, bool)> =
                sqlx::query_as("SELECT done, sample_done, sample_at < updated_at FROM tsmigrate.progress WHERE task = 'validate'")
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            row.filter(|r| r.0 == done)
        }
    };
    reporter.set(200);
    crate::support::eventually("the first count to be written", std::time::Duration::from_secs(30), || written(200)).await;
    reporter.set(500);
    let (_, sample_done, sample_before) =
        crate::support::eventually("the second count to be written", std::time::Duration::from_secs(30), || written(500)).await;
    assert_eq!((sample_done, sample_before), (Some(200), true), "the write before is the rate's sample");
    let stopped =
        Stopped { command: "validate".into(), why: Why::Interrupted("SIGINT"), at: "while comparing".into(), resume: line.into(), rerun: Rerun::StartsOver };
    reporter.end(&env.pool, "validate", &Err::<(), _>(stopped.into())).await;

    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "verdict"), "blocked");
    let reason = field(&status, "verdict_reason").as_str().unwrap();
    assert!(reason.contains(&format!("`{line}` starts it over")) && !reason.contains("resumes"), "{status}");
    let task = &field(&status, "running")[0];
    assert_eq!((task["command"].as_str(), task["rerun"].as_str()), (Some(line), Some("starts_over")), "{task}");
    let text = env.cli(&["status"]).expect_success().stdout.clone();
    assert!(text.contains("NOT RUNNING") && text.contains(&format!("`{line}` starts it over")), "{text}");
}

#[tokio::test]
async fn status_warns_about_a_redis_that_cannot_keep_the_outbox() {
    use crate::servers::{RedisOptions, RedisServer};
    let env = TestEnv::new().await;
    let redis = RedisServer::start(RedisOptions::default());
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    // A limit just above what it uses now: 91% full.
    let info: redis::InfoDict = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    let used: u64 = info.get("used_memory").unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(used * 11 / 10).query_async(&mut conn).await.unwrap();
    let over = [("REDIS_URL", redis.url())];
    let over: Vec<(&str, &str)> = over.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let status = env.cli_with_env(&["status", "--json"], &over).expect_success().details();
    let durability = &field(&status, "redis")["durability"];
    assert_eq!(durability["aof"], false, "{durability}");
    assert_eq!(durability["rdb_save"], "", "{durability}");
    let warnings: Vec<&str> = field(&status, "warnings").as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(warnings.iter().any(|w| w.contains("no persistence")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("of maxmemory")), "{warnings:?}");
    let text = env.cli_with_env(&["status"], &over).expect_success().stdout.clone();
    assert!(text.contains("WARNING: Redis has no persistence"), "{text}");
    // The shared test Redis may or may not persist; a persisting one gets no such warning.
    let shared = env.cli(&["status", "--json"]).expect_success().details();
    let shared_durability = &field(&shared, "redis")["durability"];
    let persists = shared_durability["aof"] == true || shared_durability["rdb_save"].as_str().is_some_and(|s| !s.is_empty());
    let warned = field(&shared, "warnings").as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("no persistence"));
    assert_eq!(warned, !persists, "{shared_durability}");
}
