//! The legacy system the migration starts from: the writer (sorted set, counters,
//! sessions, cap) and the hourly flush worker (hourly and asset-popularity tables).

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};
use tsmigrate::event::{AcceptedEvent, IncomingEvent, IngestLimits};
use tsmigrate::legacy::{flush, schema, writer};

use crate::support::TestEnv;

fn at(h: u32, m: u32, s: u32, ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, h, m, s).unwrap() + chrono::Duration::milliseconds(ms)
}

/// One event as the tracker would send it, validated by the ingest rules.
fn event(id: &str, name: &str, category: &str, user: Value, session: Option<&str>, properties: Value, time: DateTime<Utc>) -> AcceptedEvent {
    IncomingEvent {
        id: Some(id.into()),
        event_name: Some(name.into()),
        category: Some(category.into()),
        user_id: Some(user),
        session_id: session.map(str::to_string),
        properties: Some(properties),
        device_info: Some(json!({"browser": "firefox"})),
        page_url: Some("https://app.example.com/create".into()),
        referrer: None,
        timestamp: Some(json!(time.to_rfc3339())),
    }
    .validate(Utc::now(), IngestLimits::default())
    .expect("hand-built events are valid")
}

fn page_view(id: &str, user: &str, session: &str, time: DateTime<Utc>) -> AcceptedEvent {
    event(id, "page_view", "navigation", json!(user), Some(session), json!({"path": "/create"}), time)
}

fn asset(id: &str, user: &str, asset_type: Option<&str>, time: DateTime<Utc>) -> AcceptedEvent {
    let properties = match asset_type {
        Some(t) => json!({"asset_type": t, "model": "v4"}),
        None => json!({"model": "v4"}),
    };
    event(id, "asset_generated", "creation", json!(user), None, properties, time)
}

type HourlyRow = (DateTime<Utc>, String, String, i64, i64);

async fn hourly_rows(env: &TestEnv) -> Vec<HourlyRow> {
    sqlx::query_as("SELECT hour, event_name, category, event_count, unique_users FROM analytics_events ORDER BY 1, 2, 3").fetch_all(&env.pool).await.unwrap()
}

async fn asset_rows(env: &TestEnv) -> Vec<(NaiveDate, String, i64, i64)> {
    sqlx::query_as("SELECT day, asset_type, generation_count, unique_creators FROM analytics_asset_popularity ORDER BY 1, 2")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

fn row(hour: DateTime<Utc>, name: &str, category: &str, count: i64, users: i64) -> HourlyRow {
    (hour, name.into(), category.into(), count, users)
}

#[tokio::test]
async fn writer_and_flush_produce_the_exact_hourly_and_asset_rows() {
    let env = TestEnv::new().await;
    let keys = env.keys();
    let mut redis = env.redis().await;
    schema::ensure(&env.pool, &env.settings.legacy).await.unwrap();

    let click = event("e08", "click", "interaction", json!("u3"), None, json!({"element": "button"}), at(10, 30, 0, 0));
    // Old bugs wrote members that are not events; the worker skips them and counts them nowhere.
    let garbage = AcceptedEvent {
        member: "event:click|user:7".into(),
        time_ms: at(10, 45, 0, 0).timestamp_millis(),
        event_name: String::new(),
        category: String::new(),
        session_id: None,
    };
    let first_batch = vec![
        // Before the flushed range: no hourly row, but the asset table is daily, so it counts there.
        asset("e01", "u4", Some("video"), at(9, 30, 0, 0)),
        page_view("e02", "u1", "s_u1", at(10, 5, 0, 0)),
        page_view("e03", "u2", "s_u2", at(10, 10, 0, 0)),
        asset("e05", "u1", Some("image"), at(10, 15, 0, 0)),
        page_view("e04", "u1", "s_u1", at(10, 20, 0, 0)),
        asset("e06", "u2", Some("image"), at(10, 25, 0, 0)),
        click.clone(),
        asset("e07", "u1", Some("logo"), at(10, 35, 0, 0)),
        // No user: counted as an event, not as a user.
        event("e09", "click", "interaction", Value::Null, None, json!({}), at(10, 40, 0, 0)),
        garbage,
        // Old trackers sent numeric user ids: 42 and "42" are the same user.
        event("e16", "purchase", "commerce", json!(42), None, json!({"plan": "pro"}), at(10, 50, 0, 0)),
        event("e17", "purchase", "commerce", json!("42"), None, json!({"plan": "team"}), at(10, 55, 0, 0)),
    ];
    let second_batch = vec![
        // The tracker retried: the identical member again. Redis keeps one; it counts once.
        click,
        // Hour boundaries: 11:00:00.000 belongs to 11:00, 11:59:59.999 too, 12:00:00.000 does not.
        page_view("e10", "u3", "s_u3", at(11, 0, 0, 0)),
        asset("e12", "u3", Some("image"), at(11, 5, 0, 0)),
        asset("e13", "u2", None, at(11, 45, 0, 0)),
        page_view("e11", "u3", "s_u3", at(11, 59, 59, 999)),
        page_view("e14", "u1", "s_u1", at(12, 0, 0, 0)),
        asset("e15", "u5", Some("image"), at(12, 30, 0, 0)),
    ];
    let cap = env.settings.redis.event_cap;
    writer::write_batch(&mut redis, &keys, cap, &first_batch, false).await.unwrap();
    writer::write_batch(&mut redis, &keys, cap, &second_batch, false).await.unwrap();

    // Redis: 19 writes, 18 distinct members.
    let zcard: u64 = redis::cmd("ZCARD").arg(&keys.events).query_async(&mut redis).await.unwrap();
    assert_eq!(zcard, 18);
    let page_views: i64 = redis::cmd("HGET").arg(&keys.event_counters).arg("page_view").query_async(&mut redis).await.unwrap();
    assert_eq!(page_views, 6);
    let u1_seen: f64 = redis::cmd("ZSCORE").arg(&keys.sessions).arg("s_u1").query_async(&mut redis).await.unwrap();
    assert_eq!(u1_seen as i64, at(12, 0, 0, 0).timestamp_millis(), "a session's score is its latest event");
    let outbox: u64 = redis::cmd("EXISTS").arg(&keys.outbox).query_async(&mut redis).await.unwrap();
    assert_eq!(outbox, 0, "no outbox entries before dual-write");

    let tz = env.settings.target.timezone();
    let outcome = flush::flush_range(&mut redis, &env.pool, &keys, &env.settings.legacy, tz, at(10, 0, 0, 0), at(12, 0, 0, 0)).await.unwrap();
    assert_eq!((outcome.hours, outcome.events_read, outcome.skipped_members), (2, 14, 1), "{outcome:?}");

    let expected_hourly = vec![
        row(at(10, 0, 0, 0), "asset_generated", "creation", 3, 2),
        row(at(10, 0, 0, 0), "click", "interaction", 2, 1),
        row(at(10, 0, 0, 0), "page_view", "navigation", 3, 2),
        row(at(10, 0, 0, 0), "purchase", "commerce", 2, 1),
        row(at(11, 0, 0, 0), "asset_generated", "creation", 2, 2),
        row(at(11, 0, 0, 0), "page_view", "navigation", 2, 1),
    ];
    assert_eq!(hourly_rows(&env).await, expected_hourly);
    let day = NaiveDate::from_ymd_opt(2025, 3, 10).unwrap();
    let expected_assets = vec![
        (day, "image".to_string(), 3, 3),
        (day, "logo".to_string(), 1, 1),
        (day, flush::UNKNOWN_ASSET_TYPE.to_string(), 1, 1),
        (day, "video".to_string(), 1, 1),
    ];
    assert_eq!(asset_rows(&env).await, expected_assets);

    // The reporting function reads the asset table.
    let popular: Vec<(String, i64, i64)> = sqlx::query_as("SELECT * FROM get_popular_asset_types(100000)").fetch_all(&env.pool).await.unwrap();
    assert_eq!(popular.first(), Some(&("image".to_string(), 3, 3)));
    assert_eq!(popular.len(), 4);

    // The worker re-flushes hours after restarts: a second run changes nothing. And the
    // command line's `legacy flush --from --to` rebuilds the same rows from scratch.
    flush::flush_range(&mut redis, &env.pool, &keys, &env.settings.legacy, tz, at(10, 0, 0, 0), at(12, 0, 0, 0)).await.unwrap();
    assert_eq!(hourly_rows(&env).await, expected_hourly);
    assert_eq!(asset_rows(&env).await, expected_assets);
    sqlx::raw_sql("DELETE FROM analytics_events; DELETE FROM analytics_asset_popularity").execute(&env.pool).await.unwrap();
    env.cli(&["legacy", "flush", "--from", "2025-03-10T10:00:00Z", "--to", "2025-03-10T12:00:00Z"]).expect_success();
    assert_eq!(hourly_rows(&env).await, expected_hourly);
    assert_eq!(asset_rows(&env).await, expected_assets);
}

#[tokio::test]
async fn the_cap_keeps_the_newest_members() {
    let env = TestEnv::with_settings(|s| s.redis.event_cap = 5).await;
    let keys = env.keys();
    let mut redis = env.redis().await;
    let times: Vec<DateTime<Utc>> = (0..8).map(|i| at(10, i, 0, 0)).collect();
    let events: Vec<AcceptedEvent> = times.iter().enumerate().map(|(i, t)| page_view(&format!("c{i}"), "u1", "s1", *t)).collect();
    // Trimming happens after every write, as the legacy writer did it.
    for batch in events.chunks(3) {
        writer::write_batch(&mut redis, &keys, env.settings.redis.event_cap, batch, false).await.unwrap();
    }
    let zcard: u64 = redis::cmd("ZCARD").arg(&keys.events).query_async(&mut redis).await.unwrap();
    assert_eq!(zcard, 5);
    let kept: Vec<(String, f64)> = redis::cmd("ZRANGE").arg(&keys.events).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut redis).await.unwrap();
    let kept_scores: Vec<i64> = kept.iter().map(|(_, s)| *s as i64).collect();
    let newest: Vec<i64> = times[3..].iter().map(|t| t.timestamp_millis()).collect();
    assert_eq!(kept_scores, newest);
    let kept_members: Vec<&str> = kept.iter().map(|(m, _)| m.as_str()).collect();
    let expected_members: Vec<&str> = events[3..].iter().map(|e| e.member.as_str()).collect();
    assert_eq!(kept_members, expected_members);
    // The counters are all-time counts: trimming does not touch them.
    let page_views: i64 = redis::cmd("HGET").arg(&keys.event_counters).arg("page_view").query_async(&mut redis).await.unwrap();
    assert_eq!(page_views, 8);
}
