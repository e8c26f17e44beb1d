//! Running `tsmigrate run` as a service a team watches and scales: its `/metrics` describe
//! every series and have them from the start, the shipped dashboard and alert rules use only
//! metrics it exports, its logs suit a file or a log pipeline, and several replicas run the
//! scheduled jobs in exactly one of them, passing them on when that one is killed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon_process::{batch, eventually, metric, Service};
use crate::scenario::{prepare_and_dual_write, Mode};
use crate::servers::Daemon;
use crate::support::TestEnv;

/// Every `tsmigrate_*` name in the shipped dashboard and alert rules.
fn names_used_by_deploy() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dashboard = std::fs::read_to_string(root.join("grafana/dashboards/tsmigrate.json")).expect("the shipped dashboard");
    let dashboard: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut text: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("dashboard panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_string())
        .collect();
    text.push(std::fs::read_to_string(root.join("prometheus/alerts.yml")).expect("the shipped alert rules"));
    let mut names = BTreeSet::new();
    for chunk in text {
        let mut rest = chunk.as_str();
        while let Some(at) = rest.find("tsmigrate_") {
            let tail = &rest[at..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// The `# TYPE` names in a `/metrics` text, and whether each has its `# HELP`.
fn described(text: &str) -> (BTreeSet<String>, Vec<String>) {
    let typed: BTreeSet<String> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).map(String::from).collect();
    let without_help = typed.iter().filter(|name| !text.contains(&format!("# HELP {name} "))).cloned().collect();
    (typed, without_help)
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_exported_described_and_there_from_the_start() {
    let env = TestEnv::new().await;
    // The legacy read path needs the legacy tables the seed creates.
    env.cli(&["seed", "--events", "50", "--days", "1"]).expect_success();
    prepare_and_dual_write(&env, Mode::Postgres);
    let service = Service::start(&env, &[], &[]).await;

    // Before any event: counters and gauges with known labels are there, at 0.
    let first = service.metrics().await;
    for series in [
        r#"tsmigrate_job_failures_total{job="legacy_flush"}"#,
        r#"tsmigrate_job_runs_total{job="validation",status="failed"}"#,
        r#"tsmigrate_relay_errors_total{kind="data"}"#,
        r#"tsmigrate_relay_errors_total{kind="connection"}"#,
        r#"tsmigrate_dead_letter_rows{reason="not_json"}"#,
        r#"tsmigrate_shadow_mismatches_total{endpoint="summary"}"#,
        "tsmigrate_ingest_events_total",
        "tsmigrate_validation_differences",
    ] {
        assert_eq!(metric(&first, series), Some(0.0), "{series} is there from the start, at 0:\n{first}");
    }
    let version = format!(r#"tsmigrate_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(metric(&first, &version), Some(1.0), "{first}");

    // The histograms appear with their first sample: one ingest (Redis), its relay (target), one read.
    let (body, _) = batch(3);
    assert_eq!(service.ingest(&body, None).await.0, 202);
    let end = chrono::Utc::now();
    let summary =
        format!("/api/v1/analytics/summary?from={}&to={}", tsmigrate::reads::wire_time(end - chrono::Duration::hours(6)), tsmigrate::reads::wire_time(end));
    assert_eq!(service.get(&summary, None).await.0, 200);
    let s = &service;
    // One refresh of the server-side gauges reads the phase first and Redis last: wait for both.
    eventually(s, "relayed the batch and read the phase and Redis", move || async move {
        let text = s.metrics().await;
        metric(&text, "tsmigrate_relay_events_total") == Some(3.0)
            && metric(&text, r#"tsmigrate_phase{phase="dual_writing"}"#) == Some(1.0)
            && metric(&text, "tsmigrate_redis_memory_used_bytes").is_some_and(|b| b > 0.0)
    })
    .await;
    let text = service.metrics().await;
    assert_eq!(metric(&text, r#"tsmigrate_phase{phase="prepared"}"#), Some(0.0), "one phase at a time: {text}");
    assert_eq!(metric(&text, r#"tsmigrate_read_source{source="legacy"}"#), Some(1.0), "{text}");
    assert_eq!(metric(&text, "tsmigrate_leader"), Some(1.0), "a lone replica takes the jobs lease: {text}");
    assert!(metric(&text, "tsmigrate_redis_memory_used_bytes").is_some_and(|b| b > 0.0), "Redis memory is read: {text}");

    let (typed, without_help) = described(&text);
    assert!(without_help.is_empty(), "every metric has a # HELP line; these do not: {without_help:?}");
    let used = names_used_by_deploy();
    assert!(used.len() >= 20, "the dashboard and alerts use the metrics: {used:?}");
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| {
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).filter(|b| typed.contains(*b));
            !typed.contains(*name) && base.is_none()
        })
        .collect();
    assert!(missing.is_empty(), "the dashboard or alerts use metrics tsmigrate run does not export: {missing:?}\n{text}");
    eprintln!("figures: {} metrics exported with HELP; the dashboard and alerts use {} names, all exported", typed.len(), used.len());
}

/// Starts `tsmigrate run -v <options>` (stderr is a pipe) and waits for its first log line
/// from tracing (the jobs lease is taken at start).
fn logging_daemon(env: &TestEnv, options: &[&str]) -> Daemon {
    let mut args = vec!["-v"];
    args.extend_from_slice(options);
    let daemon = Daemon::start_with(env, None, &args, &[]);
    let started = Instant::now();
    while !daemon.logs().contains("jobs lease") {
        assert!(started.elapsed() < Duration::from_secs(60), "no log line about the jobs lease within 60s:\n{}", daemon.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

#[tokio::test]
async fn logs_to_a_pipe_have_no_colour_codes_and_json_logs_are_one_object_per_line() {
    let env = TestEnv::new().await;
    let text = logging_daemon(&env, &[]).logs();
    assert!(!text.contains('\u{1b}'), "a log written to a pipe carries no ANSI escape codes:\n{text:?}");
    assert!(text.lines().any(|l| l.contains("INFO") && l.contains("jobs lease")), "{text}");

    let json = logging_daemon(&env, &["--log-format", "json"]).logs();
    let lines: Vec<Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("a --log-format json line that is not JSON ({e}): {line:?}\n{json}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["fields"]["message"].is_string()), "{json}");
    assert!(lines.iter().any(|l| l["fields"]["message"].as_str().unwrap().contains("jobs lease")), "{json}");

    // The setting does the same, and a bad value is refused with a clear message.
    let from_env = env.cli_with_env(&["-v", "status"], &[("TSMIGRATE_LOG_FORMAT", "yaml")]);
    assert_eq!(from_env.code, 2, "{}", from_env.stderr);
    assert!(from_env.stderr.contains("TSMIGRATE_LOG_FORMAT \"yaml\" must be text or json"), "{}", from_env.stderr);
}

/// One row of `tsmigrate.job_run_log`: (job, replica, started_at).
type Run = (String, String, chrono::DateTime<chrono::Utc>);

async fn runs(env: &TestEnv) -> Vec<Run> {
    sqlx::query_as("SELECT job, replica, started_at FROM tsmigrate.job_run_log WHERE status <> 'failed' ORDER BY started_at, id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// Waits until `check` holds for the recorded runs; fails after a minute with them.
async fn runs_until(env: &TestEnv, what: &str, check: impl Fn(&[Run]) -> bool) -> Vec<Run> {
    let started = Instant::now();
    loop {
        let all = runs(env).await;
        if check(&all) {
            return all;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never {what} within 60s; runs: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn leader_gauge(daemon: &Daemon) -> Option<f64> {
    let text = reqwest::get(daemon.url("/metrics")).await.ok()?.text().await.ok()?;
    metric(&text, "tsmigrate_leader")
}

#[tokio::test]
async fn three_replicas_run_each_job_once_and_a_killed_leaders_jobs_move_within_the_lease() {
    let env = TestEnv::new().await;
    // Jobs every 2 s and a 1 s lease retry, so the test sees many runs and a quick takeover.
    env.write_file(
        "tsmigrate.toml",
        "[jobs]\nlease_retry_secs = 1\n\n[jobs.schedules]\nlegacy_flush = \"*/2 * * * * *\"\nrollup_refresh = \"*/2 * * * * *\"\n",
    );
    env.cli(&["seed", "--events", "300", "--days", "1"]).expect_success();
    prepare_and_dual_write(&env, Mode::Postgres);
    let mut replicas: Vec<(&str, Daemon)> =
        ["r1", "r2", "r3"].into_iter().map(|name| (name, Daemon::start_with(&env, None, &[], &[("TSMIGRATE_REPLICA", name)]))).collect();

    let flushes = |all: &[Run], n: usize| all.iter().filter(|r| r.0 == "legacy_flush").count() >= n;
    let before = runs_until(&env, "flushed three times", |all| flushes(all, 3)).await;
    let leader = before[0].1.clone();
    assert!(before.iter().all(|r| r.1 == leader), "one replica runs every job: {before:?}");
    let at = replicas.iter().position(|(name, _)| *name == leader).expect("the leader is one of ours");
    assert_eq!(leader_gauge(&replicas[at].1).await, Some(1.0));

    replicas[at].1.kill();
    let killed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&env.pool).await.unwrap();
    let after = runs_until(&env, "flushed and rolled up three times more on another replica", |all| {
        ["legacy_flush", "rollup_refresh"].iter().all(|job| all.iter().filter(|r| r.0 == *job && r.2 > killed_at).count() >= 3)
    })
    .await;
    let first_after = after.iter().find(|r| r.2 > killed_at).unwrap();
    let successor = first_after.1.clone();
    assert_ne!(successor, leader);
    // runs_until bounds the wait; the takeover time is a figure, not an assertion.
    let takeover = (first_after.2 - killed_at).to_std().unwrap();
    println!("jobs resumed {takeover:?} after the leader died (lease retry 1 s, jobs every 2 s)");

    for job in ["legacy_flush", "rollup_refresh"] {
        let of_job: Vec<&Run> = after.iter().filter(|r| r.0 == job).collect();
        let switches = of_job.windows(2).filter(|p| p[0].1 != p[1].1).count();
        assert_eq!(switches, 1, "{job} moved from one replica to another exactly once: {of_job:?}");
        assert!(of_job.iter().all(|r| r.1 == leader || r.1 == successor), "{of_job:?}");
        // Every run claimed its tick first (one claim per tick, the table's key), so more runs
        // than claimed ticks would be a tick run twice.
        let (slots, claimants): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT replica) FROM tsmigrate.job_slots WHERE job = $1").bind(job).fetch_one(&env.pool).await.unwrap();
        let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.job_run_log WHERE job = $1").bind(job).fetch_one(&env.pool).await.unwrap();
        assert!(runs <= slots, "{job}: {runs} runs for {slots} claimed ticks");
        assert_eq!(claimants, 2, "{job}: only the leader and its successor claimed ticks");
    }
    let recorded: String = sqlx::query_scalar("SELECT replica FROM tsmigrate.job_runs WHERE job = 'legacy_flush'").fetch_one(&env.pool).await.unwrap();
    assert_eq!(recorded, successor);
    for (name, daemon) in replicas.iter().filter(|(name, _)| *name != leader) {
        assert_eq!(leader_gauge(daemon).await, Some(f64::from(u8::from(*name == successor))), "tsmigrate_leader of {name}");
    }
    eprintln!(
        "figures: leader {leader} killed; {successor} ran the next job {takeover:?} later (lease retry 1 s, jobs every 2 s); {} runs in all, none twice",
        after.len()
    );
}
