//! `tsmigrate status --json`: its shape (scripts depend on it) and its counts.

use serde_json::Value;

use crate::support::{field, TestEnv};

const TOP_LEVEL_KEYS: &[&str] = &[
    "phase",
    "storage_mode",
    "read_source",
    "server_version",
    "timescaledb",
    "objects",
    "policies",
    "redis",
    "legacy",
    "target",
    "last_validation",
    "next_steps",
];

#[track_caller]
fn assert_shape(status: &Value) {
    for key in TOP_LEVEL_KEYS {
        field(status, key);
    }
    let ts = field(status, "timescaledb");
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
    let target = field(status, "target");
    for key in ["events", "hourly_rows", "dead_letters", "chunks"] {
        field(target, key);
    }
    assert!(field(status, "server_version").as_str().is_some_and(|v| !v.is_empty()));
    let next = field(status, "next_steps").as_array().expect("next_steps is an array");
    assert!(!next.is_empty() && next.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty())), "{next:?}");
}

#[tokio::test]
async fn status_of_a_new_target_points_at_prepare() {
    let env = TestEnv::new().await;
    let status = env.cli(&["status", "--json"]).expect_success().json();
    assert_shape(&status);
    assert_eq!(field(&status, "phase"), "new");
    assert_eq!(field(&status, "read_source"), "legacy");
    assert_eq!(field(&status, "last_validation"), &Value::Null);
    assert!(field(&status, "next_steps")[0].as_str().unwrap().starts_with("tsmigrate prepare"));
    let redis = field(&status, "redis");
    assert_eq!(redis["reachable"], Value::Bool(true));
    assert_eq!(redis["events"], 0);
    // No legacy tables yet: reported, not fatal.
    assert_eq!(field(&status, "legacy")["reachable"], Value::Bool(false));

    let text = env.cli(&["status"]).expect_success().stdout.clone();
    assert!(text.contains("phase:          new"), "{text}");
    assert!(text.contains("next:\n  tsmigrate prepare"), "{text}");
}

#[tokio::test]
async fn status_after_seed_and_prepare_counts_both_systems() {
    let env = TestEnv::new().await;
    let end = "2025-03-10T12:30:00Z";
    let seeded = env.cli(&["seed", "--events", "500", "--days", "1", "--users", "20", "--seed", "7", "--end", end, "--json"]).expect_success().json();
    assert_eq!(field(&seeded, "events_generated"), 500);
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();

    let status = env.cli(&["status", "--json"]).expect_success().json();
    assert_shape(&status);
    assert_eq!(field(&status, "phase"), "prepared");
    assert!(field(&status, "next_steps")[0].as_str().unwrap().contains("dual-write start"));
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
    let status = out.expect_code(2).json();
    assert_eq!(field(&status, "phase"), "new", "the rest is still reported");
    let redis = field(&status, "redis");
    assert_eq!(redis["reachable"], Value::Bool(false));
    assert!(redis["error"].as_str().unwrap().contains("Redis"), "{redis}");
    assert!(out.stderr.contains("status is incomplete: Redis is unreachable"), "{}", out.stderr);
    let text = env.cli_with_env(&["status"], &[("REDIS_URL", "redis://127.0.0.1:1")]);
    text.expect_code(2);
    assert!(text.stdout.contains("redis:          UNREACHABLE"), "{}", text.stdout);
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
    let status = env.cli_with_env(&["status", "--json"], &over).expect_success().json();
    let durability = &field(&status, "redis")["durability"];
    assert_eq!(durability["aof"], false, "{durability}");
    assert_eq!(durability["rdb_save"], "", "{durability}");
    let warnings: Vec<&str> = field(&status, "warnings").as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(warnings.iter().any(|w| w.contains("no persistence")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("of maxmemory")), "{warnings:?}");
    let text = env.cli_with_env(&["status"], &over).expect_success().stdout.clone();
    assert!(text.contains("WARNING: Redis has no persistence"), "{text}");
    // The shared test Redis may or may not persist; a persisting one gets no such warning.
    let shared = env.cli(&["status", "--json"]).expect_success().json();
    let shared_durability = &field(&shared, "redis")["durability"];
    let persists = shared_durability["aof"] == true || shared_durability["rdb_save"].as_str().is_some_and(|s| !s.is_empty());
    let warned = field(&shared, "warnings").as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("no persistence"));
    assert_eq!(warned, !persists, "{shared_durability}");
}
