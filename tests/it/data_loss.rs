//! Redis losing its data must be loud and must not turn dual-write off: a Redis without
//! persistence restarts empty under `tsmigrate run`; the daemon restores the dual-write flag
//! from PostgreSQL's state, the relay recreates its consumer group and records the possible
//! gap, `status` shows it and the missing persistence, and later events reach the target.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::servers::{Daemon, RedisOptions, RedisServer};
use crate::support::{eventually, field, TestEnv};

async fn post(client: &reqwest::Client, daemon: &Daemon, ids: &[String]) -> (u16, Value) {
    let now = chrono::Utc::now().timestamp_millis();
    let events: Vec<Value> = ids.iter().map(|id| json!({"id": id, "event_name": "signup", "category": "account", "timestamp": now})).collect();
    let reply = client
        .post(daemon.url("/api/v1/analytics"))
        .header("content-type", "application/json")
        .body(json!({ "events": events }).to_string())
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    (status, serde_json::from_str(&reply.text().await.unwrap_or_default()).unwrap_or_default())
}

async fn landed(env: &TestEnv, ids: &[String]) -> i64 {
    let event_ids: Vec<uuid::Uuid> = ids.iter().map(|id| tsmigrate::event::id_from_string(id)).collect();
    sqlx::query_scalar("SELECT count(*) FROM analytics_events_ts WHERE event_id = ANY($1)").bind(&event_ids).fetch_one(&env.pool).await.unwrap()
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_restarts_empty_keeps_dual_write_on_and_reports_the_gap() {
    let env = TestEnv::new().await;
    let mut redis = RedisServer::start(RedisOptions::default());
    let redis_url = redis.url();
    let over = [("REDIS_URL", redis_url.as_str())];
    let config = env.write_file("fast-checks.toml", "[migration]\ndual_write_check_secs = 1\n");
    let config = config.to_str().unwrap();
    let prepared = env.cli_with_env(&["prepare", "--mode", "postgres"], &over);
    prepared.expect_success();
    assert!(prepared.stdout.contains("WARNING: Redis has no persistence"), "{}", prepared.stdout);
    let started = env.cli_with_env(&["dual-write", "start", "--json"], &over);
    let report = started.expect_success().details();
    assert!(field(&report, "run.warnings")[0].as_str().unwrap().contains("no persistence"), "{report}");

    let daemon = Daemon::start(&env, Some(std::path::Path::new(config)), &over);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let before = ids("before", 20);
    let (status, reply) = post(&client, &daemon, &before).await;
    assert_eq!((status, reply["dual_write"].clone()), (202, Value::Bool(true)), "{reply}");
    eventually("the first events in the target", Duration::from_secs(30), || async { (landed(&env, &before).await == 20).then_some(()) }).await;

    let lost_at = chrono::Utc::now();
    tokio::task::block_in_place(|| redis.restart());
    let restarted_at = chrono::Utc::now();
    let private = tsmigrate::config::RedisSettings { url: tsmigrate::config::SecretUrl::new(&redis_url), ..env.settings.redis.clone() };
    let mut conn = tsmigrate::connect::redis(&private, tsmigrate::connect::RedisTimeouts::from_settings(&private)).await.unwrap();
    let stream: bool = conn.exists(env.keys().outbox).await.unwrap();
    assert!(!stream, "the restart lost the outbox");

    // Ingest right after the loss still writes the outbox (the state says dual-write is on),
    // and the daemon puts the flag back within its check interval.
    let after = ids("after", 20);
    let (status, reply) = post(&client, &daemon, &after).await;
    assert_eq!((status, reply["dual_write"].clone()), (202, Value::Bool(true)), "{reply}");
    let restored = Instant::now();
    eventually("the flag back in Redis", Duration::from_secs(15), || {
        let mut conn = conn.clone();
        let key = env.keys().dual_write_flag;
        async move { (conn.get::<_, Option<String>>(key).await.unwrap().as_deref() == Some("1")).then_some(()) }
    })
    .await;
    println!("data loss: the dual-write flag was back {} ms after the restart", restored.elapsed().as_millis());
    let later = ids("later", 20);
    let (status, reply) = post(&client, &daemon, &later).await;
    assert_eq!((status, reply["dual_write"].clone()), (202, Value::Bool(true)), "{reply}");

    // The relay recreated its group, recorded the gap, and relays what came after the loss.
    let (from, to): (Option<chrono::DateTime<chrono::Utc>>, chrono::DateTime<chrono::Utc>) =
        eventually("the gap in tsmigrate.outbox_gaps", Duration::from_secs(30), || async {
            sqlx::query_as("SELECT window_from, window_to FROM tsmigrate.outbox_gaps").fetch_optional(&env.pool).await.unwrap()
        })
        .await;
    let from = from.expect("the window starts at the last relayed entry");
    println!("data loss: gap recorded from {from} to {to} (Redis lost its data between {lost_at} and {restarted_at})");
    assert!(from <= lost_at && to >= restarted_at, "the window covers the loss: {from} .. {to}");
    assert!(lost_at - from < chrono::Duration::seconds(60), "the window starts at the last relayed entry, not earlier: {from}");
    let all_after: Vec<String> = after.iter().chain(&later).cloned().collect();
    eventually("events after the restart in the target", Duration::from_secs(30), || async { (landed(&env, &all_after).await == 40).then_some(()) }).await;
    let logs = daemon.logs();
    assert!(logs.contains("consumer group was missing"), "the relay says so in its log:\n{logs}");
    assert!(logs.contains("tsmigrate backfill --from"), "the log names the repair:\n{logs}");
    assert_eq!(daemon.stop(), 0);

    check_status_and_repair(&env, &over).await;
}

/// `status` shows the gap and the missing persistence; `dual-write start` repairs instead of
/// refusing; `validate` names the repair; `backfill --from --to` closes the gap.
async fn check_status_and_repair(env: &TestEnv, over: &[(&str, &str)]) {
    let envelope = env.cli_with_env(&["status", "--json"], over).expect_success().json();
    assert_eq!(envelope["details"]["verdict"], "failing", "a possible gap: {envelope}");
    let status = envelope["details"].clone();
    let gaps = field(&status, "outbox_gaps").as_array().unwrap().clone();
    assert_eq!(gaps.len(), 1, "{status}");
    let warnings: Vec<&str> = field(&status, "warnings").as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert!(warnings.iter().any(|w| w.contains("possible gap")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("no persistence")), "{warnings:?}");
    let repair = envelope["next_steps"][0]["command"].as_str().unwrap().to_string();
    assert!(repair.starts_with("tsmigrate backfill --from "), "{repair}");
    let text = env.cli_with_env(&["status"], over).expect_success().stdout.clone();
    assert!(text.contains("WARNING: possible gap #"), "{text}");
    assert!(text.starts_with("verdict:    FAILING: 1 possible gap(s)"), "{text}");

    let private = tsmigrate::config::RedisSettings { url: tsmigrate::config::SecretUrl::new(over[0].1), ..env.settings.redis.clone() };
    let mut redis = tsmigrate::connect::redis(&private, tsmigrate::connect::RedisTimeouts::from_settings(&private)).await.unwrap();
    let _: () = redis.del(env.keys().dual_write_flag).await.unwrap();
    let started = env.cli_with_env(&["dual-write", "start", "--json"], over).expect_success().details();
    assert_eq!(field(&started, "run.phase_after"), "dual_writing");
    assert_eq!(field(&started, "flag_set"), true, "{started}");
    let flag: Option<String> = redis.get(env.keys().dual_write_flag).await.unwrap();
    assert_eq!(flag.as_deref(), Some("1"));

    // Validation needs whole past hours both systems hold: seed some into the (emptied) Redis
    // and backfill them.
    env.cli_with_env(&["seed", "--events", "300", "--days", "1", "--users", "20", "--seed", "5", "--end", "-2h", "--yes"], over).expect_success();
    env.cli_with_env(&["backfill", "--no-history"], over).expect_success();
    // The seeded hours are in both systems: the run finds no difference, and still advises
    // the gap's repair first.
    let validated = env.cli_with_env(&["validate", "--json"], over);
    validated.expect_success();
    assert_eq!(field(&validated.details(), "result"), "clean", "{}", validated.stdout);
    let advice = validated.json()["next_steps"][0]["command"].as_str().unwrap_or_default().to_string();
    assert!(advice.starts_with("tsmigrate backfill --from"), "validate names the repair: {advice}");

    // The copy closes the gap only if it read events of the gap's window: Redis restarted
    // empty, so it holds only what came after the restart; a window it holds nothing of stays
    // open until the loss is accepted.
    let gap_id = gaps[0]["id"].as_i64().unwrap();
    let ms = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().timestamp_millis();
    let (from, to) = (ms(if gaps[0]["window_from"].is_null() { &gaps[0]["window_to"] } else { &gaps[0]["window_from"] }), ms(&gaps[0]["window_to"]));
    let held: u64 = redis::cmd("ZCOUNT").arg(env.keys().events).arg(from).arg(to).query_async(&mut redis).await.unwrap();
    let args: Vec<&str> = repair.split_whitespace().skip(1).chain(["--json"]).collect();
    let repaired = env.cli_with_env(&args, over).expect_success().details();
    if held > 0 {
        assert_eq!(field(&repaired, "gaps_repaired"), 1, "Redis held {held} events of the window: {repaired}");
    } else {
        assert_eq!(field(&repaired, "gaps_repaired"), 0, "{repaired}");
        assert_eq!(field(&repaired, "gaps_lost"), &json!([gap_id]), "{repaired}");
        let args: Vec<&str> = repair.split_whitespace().skip(1).chain(["--accept-loss", "test: lost with the restart", "--json"]).collect();
        let accepted = env.cli_with_env(&args, over).expect_success().details();
        assert_eq!(field(&accepted, "gaps_accepted_as_lost"), &json!([gap_id]), "{accepted}");
    }
    println!("data loss: Redis held {held} events of the gap's window; the gap was {}", if held > 0 { "repaired" } else { "accepted as lost" });
    let status = env.cli_with_env(&["status", "--json"], over).expect_success().details();
    assert_eq!(field(&status, "outbox_gaps"), &Value::Array(vec![]), "{status}");
}
