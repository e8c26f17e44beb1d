//! `tsmigrate seed`: deterministic legacy traffic, and the messy shapes real data has.

use serde_json::Value;

use crate::support::{field, TestEnv};

const END: &str = "2025-03-10T12:00:00Z";

async fn members_with_scores(env: &TestEnv) -> Vec<(Vec<u8>, f64)> {
    let mut redis = env.redis().await;
    redis::cmd("ZRANGE").arg(env.keys().events).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut redis).await.unwrap()
}

fn seed_args<'a>(events: &'a str, seed: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["seed", "--events", events, "--days", "2", "--users", "30", "--seed", seed, "--end", END, "--json"];
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn the_same_seed_and_end_give_identical_sorted_sets() {
    let (a, b, c) = (TestEnv::new().await, TestEnv::new().await, TestEnv::new().await);
    a.cli(&seed_args("400", "11", &[])).expect_success();
    b.cli(&seed_args("400", "11", &[])).expect_success();
    c.cli(&seed_args("400", "12", &[])).expect_success();
    let (in_a, in_b, in_c) = (members_with_scores(&a).await, members_with_scores(&b).await, members_with_scores(&c).await);
    assert_eq!(in_a.len(), 400);
    assert!(in_a == in_b, "same --seed and --end, different sorted sets");
    assert_ne!(in_a, in_c, "a different --seed must give different traffic");

    // The legacy tables are deterministic too.
    let hourly = "SELECT hour, event_name, category, event_count, unique_users FROM analytics_events ORDER BY 1, 2, 3";
    type Row = (chrono::DateTime<chrono::Utc>, String, String, i64, i64);
    let rows_a: Vec<Row> = sqlx::query_as(hourly).fetch_all(&a.pool).await.unwrap();
    let rows_b: Vec<Row> = sqlx::query_as(hourly).fetch_all(&b.pool).await.unwrap();
    assert!(!rows_a.is_empty());
    assert_eq!(rows_a, rows_b);

    // Every event lies in [end - days, end).
    let end_ms = chrono::DateTime::parse_from_rfc3339(END).unwrap().timestamp_millis() as f64;
    let start_ms = end_ms - 2.0 * 86_400_000.0;
    assert!(in_a.iter().all(|(_, s)| *s >= start_ms && *s < end_ms));
}

#[tokio::test]
async fn messy_traffic_has_non_json_members_and_members_without_id() {
    let env = TestEnv::new().await;
    let outcome = env.cli(&seed_args("3000", "3", &["--messy"])).expect_success().details();
    let reported_not_json = field(&outcome, "not_json").as_u64().unwrap();
    let reported_without_id = field(&outcome, "without_id").as_u64().unwrap();
    assert!(reported_not_json > 0 && reported_without_id > 0, "{outcome}");
    assert!(field(&outcome, "identical_resends").as_u64().unwrap() > 0, "{outcome}");

    let members = members_with_scores(&env).await;
    let parsed: Vec<Option<Value>> = members.iter().map(|(m, _)| serde_json::from_slice::<Value>(m).ok()).collect();
    let not_json = parsed.iter().filter(|p| p.is_none()).count();
    let without_id = parsed.iter().flatten().filter(|v| v.get("id").is_none()).count();
    let epoch_timestamps = parsed.iter().flatten().filter(|v| v["timestamp"].is_number()).count();
    assert!(not_json > 0, "expected members that are not JSON");
    assert!(not_json as u64 <= reported_not_json);
    assert!(without_id > 0, "expected members without an id");
    assert!(epoch_timestamps > 0, "expected epoch-number timestamps");
    // Identical resends are stored once: every id appears once.
    let mut ids: Vec<&str> = parsed.iter().flatten().filter_map(|v| v["id"].as_str()).collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "an identical member is stored once");
}
