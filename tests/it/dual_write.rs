//! Dual-write: the ingest endpoint (400s for bad batches), the outbox relay through a
//! target outage, redelivery, a dead relay's entries, identical members, tail mode.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use redis::AsyncCommands;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;
use tsmigrate::dual_write::relay::{Relay, RelayOptions, RelayOutcome};
use tsmigrate::dual_write::tail::{Tail, TailOutcome};
use tsmigrate::http::{app, AppState};
use tsmigrate::store::writer::TargetWriter;
use tsmigrate::store::StorageMode;

use crate::fault::{pg_addr, Outage};
use crate::scenario::{prepare_and_dual_write, target_counts, Mode};
use crate::support::TestEnv;

pub async fn post(router: &axum::Router, body: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::post("/api/v1/analytics").header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = router.clone().oneshot(request.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub async fn router(env: &TestEnv) -> axum::Router {
    app(AppState::ingest_only(env.settings.clone(), env.redis().await).unwrap())
}

fn batch(n: usize, offset: usize) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"id": uuid::Uuid::new_v4().to_string(), "event_name": "click", "category": "interaction", "user_id": format!("u{}", (i + offset) % 7), "timestamp": now - (i + offset) as i64}))
        .collect();
    json!({ "events": events }).to_string()
}

pub fn relay_for(env: &TestEnv, redis: tsmigrate::connect::RedisConn, pool: sqlx::PgPool, mode: StorageMode, claim_idle: Duration) -> Relay {
    let options = RelayOptions { block: Duration::from_millis(50), claim_idle, ..RelayOptions::new(&env.settings.redis.outbox_group) };
    Relay::new(redis, Arc::new(TargetWriter::new(pool, mode)), Arc::new(env.keys()), options)
}

pub async fn drain(relay: &mut Relay) -> u64 {
    let mut inserted = 0;
    for _ in 0..100 {
        match relay.step().await.unwrap() {
            RelayOutcome::Relayed { inserted: n, .. } => inserted += n,
            RelayOutcome::Idle => return inserted,
            RelayOutcome::TargetUnavailable { error } => panic!("target unavailable: {error}"),
            RelayOutcome::GroupRecreated { gap } => panic!("the consumer group vanished: {gap:?}"),
        }
    }
    panic!("the relay did not drain the outbox");
}

#[tokio::test]
async fn overlong_urls_are_rejected_like_overlong_names() {
    let env = TestEnv::new().await;
    let router = router(&env).await;
    let url = format!("https://example.com/p?{}", "q=1&".repeat(600));
    let body = json!({"events": [
        {"event_name": "view", "category": "nav", "page_url": "https://example.com/ok"},
        {"event_name": "view", "category": "nav", "page_url": url},
        {"event_name": "view", "category": "nav", "referrer": url},
    ]});
    let (status, body) = post(&router, &body.to_string(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.iter().map(|r| r["index"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2], "{body}");
    assert!(rejected[0]["problems"][0].as_str().unwrap().contains("page_url is longer than 2048"), "{body}");
    assert!(rejected[1]["problems"][0].as_str().unwrap().contains("referrer is longer than 2048"), "{body}");
    let mut redis = env.redis().await;
    let stored: i64 = redis.zcard(env.keys().events).await.unwrap();
    assert_eq!(stored, 0, "nothing was written");
}

#[tokio::test]
async fn bad_batches_get_400_naming_each_bad_event_and_nothing_is_written() {
    let env = TestEnv::new().await;
    let router = router(&env).await;
    let (status, body) =
        post(&router, r#"{"events":[{"event_name":"click","category":"ui"},{"event_name":"x"},{"category":"c","timestamp":"soon"}]}"#, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.iter().map(|r| r["index"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    assert!(rejected[0]["problems"][0].as_str().unwrap().contains("category is required"), "{body}");
    assert!(rejected[1]["problems"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("timestamp")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("nothing was written"));

    let too_many = batch(51, 0);
    let (status, body) = post(&router, &too_many, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("limit is 50"), "{body}");
    for bad in [
        "not json",
        r#"{"events": []}"#,
        r#"{"events": "x"}"#,
        r#"{"events":[{"event_name":"a","category":"b","properties":[1]}]}"#,
        r#"{"events":[{"event_name":"a","category":"b","timestamp":"1999-01-01T00:00:00Z"}]}"#,
    ] {
        let (status, body) = post(&router, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} -> {body}");
        assert!(body["error"].is_string(), "{bad} -> {body}");
    }
    let mut redis = env.redis().await;
    let stored: u64 = redis.zcard(env.keys().events).await.unwrap();
    assert_eq!(stored, 0, "a partly bad batch writes nothing");

    let (status, body) = post(&router, &batch(3, 0), None).await;
    assert_eq!((status, body["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(3)));
    assert_eq!(body["dual_write"], Value::Bool(false));
}

#[tokio::test]
async fn ingest_needs_the_bearer_token_when_one_is_configured() {
    let env = TestEnv::with_settings(|s| s.http.api_token = Some(tsmigrate::config::SecretToken::new("s3cret"))).await;
    let router = router(&env).await;
    assert_eq!(post(&router, &batch(1, 0), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(post(&router, &batch(1, 0), Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(post(&router, &batch(1, 0), Some("s3cret")).await.0, StatusCode::ACCEPTED);
    let admin = router.clone().oneshot(Request::get("/api/v1/admin/status").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(admin.status(), StatusCode::UNAUTHORIZED);
    // Health and metrics stay open for probes and scrapers.
    let health = router.clone().oneshot(Request::get("/health").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

async fn outage_loses_and_doubles_nothing(mode: Mode) {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, mode);
    let storage = if mode == Mode::Postgres { StorageMode::Postgres } else { StorageMode::Timescaledb };
    let router = router(&env).await;
    let proxy = Outage::start(pg_addr(env.settings.database.url.expose())).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&proxy.url_through(env.settings.database.url.expose()))
        .unwrap();
    let mut relay = relay_for(&env, env.redis().await, pool, storage, Duration::from_secs(60));
    relay.ensure_group().await.unwrap();

    let mut accepted = 0;
    let (status, body) = post(&router, &batch(10, 0), None).await;
    assert_eq!((status, body["dual_write"].clone()), (StatusCode::ACCEPTED, Value::Bool(true)));
    accepted += 10;
    // One batch is one outbox entry, relayed in one transaction.
    assert_eq!(relay.step().await.unwrap(), RelayOutcome::Relayed { entries: 1, events: 10, inserted: 10, dead_letters: 0 });
    assert_eq!(drain(&mut relay).await, 0);

    proxy.take_down();
    for i in 1..=3 {
        let (status, _) = post(&router, &batch(20, i * 100), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "ingest keeps accepting while the target is down");
        accepted += 20;
    }
    for _ in 0..2 {
        match relay.step().await.unwrap() {
            RelayOutcome::TargetUnavailable { .. } => {}
            other => panic!("expected the target to be unavailable, got {other:?}"),
        }
    }
    let mut redis = env.redis().await;
    let waiting: u64 = redis.xlen(env.keys().outbox).await.unwrap();
    assert_eq!(waiting, 3, "the outbox holds what the target could not take: three batches of 20 events");
    assert_eq!(target_counts(&env).await.0, 10);

    proxy.bring_back().await;
    assert_eq!(drain(&mut relay).await, 60);
    assert_eq!(target_counts(&env).await, (accepted, accepted));
    let stored: i64 = redis.zcard(env.keys().events).await.unwrap();
    assert_eq!(stored, accepted);
    let left: u64 = redis.xlen(env.keys().outbox).await.unwrap();
    assert_eq!(left, 0, "acknowledged entries are deleted");

    // Redelivery (a crash between commit and acknowledgement) changes nothing.
    let members: Vec<(String, f64)> = redis.zrange_withscores(env.keys().events, 0, 9).await.unwrap();
    for (member, score) in &members {
        let _: String = redis.xadd(env.keys().outbox, "*", &[("m", member.clone()), ("s", (*score as i64).to_string())]).await.unwrap();
    }
    assert_eq!(drain(&mut relay).await, 0, "redelivered entries insert nothing");
    assert_eq!(target_counts(&env).await, (accepted, accepted));
}

#[tokio::test]
async fn target_outage_during_dual_write_plain() {
    outage_loses_and_doubles_nothing(Mode::Postgres).await;
}

#[tokio::test]
async fn target_outage_during_dual_write_timescaledb() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    outage_loses_and_doubles_nothing(Mode::Timescaledb).await;
}

#[tokio::test]
async fn entries_of_a_dead_relay_are_claimed_by_another() {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let router = router(&env).await;
    post(&router, &batch(15, 0), None).await;
    // The first relay takes the entries but "dies" before writing them: its target is unreachable.
    let dead_pool = PgPoolOptions::new().acquire_timeout(Duration::from_millis(300)).connect_lazy("postgres://postgres@127.0.0.1:1/none").unwrap();
    let mut dead = relay_for(&env, env.redis().await, dead_pool, StorageMode::Postgres, Duration::from_secs(600));
    dead.ensure_group().await.unwrap();
    assert!(matches!(dead.step().await.unwrap(), RelayOutcome::TargetUnavailable { .. }));
    drop(dead);
    // The survivor claims entries idle for 20 ms: wait until the dead relay's entry is.
    let (outbox, group) = (env.keys().outbox, env.settings.redis.outbox_group.clone());
    let watcher = env.redis().await;
    crate::support::eventually("the dead relay's entry idle past the claim time", Duration::from_secs(10), || {
        let (outbox, group, mut redis) = (outbox.clone(), group.clone(), watcher.clone());
        async move {
            let idle: Vec<redis::Value> =
                redis::cmd("XPENDING").arg(&outbox).arg(&group).arg("IDLE").arg(20).arg("-").arg("+").arg(10).query_async(&mut redis).await.unwrap();
            (idle.len() == 1).then_some(())
        }
    })
    .await;
    let mut survivor = relay_for(&env, env.redis().await, env.pool.clone(), StorageMode::Postgres, Duration::from_millis(20));
    assert_eq!(drain(&mut survivor).await, 15);
    assert_eq!(target_counts(&env).await, (15, 15));
}

#[tokio::test]
async fn identical_members_are_stored_once_in_both_systems() {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let router = router(&env).await;
    // Timestamps of now: ingest's rules on an event's age apply whenever the test runs.
    let now = chrono::Utc::now().timestamp_millis();
    let with_id = format!(r#"{{"events":[{{"id":"evt-1","event_name":"click","category":"ui","timestamp":{now}}}]}}"#);
    let without_id = format!(r#"{{"events":[{{"event_name":"search","category":"discovery","user_id":"u1","timestamp":{}}}]}}"#, now + 500);
    for body in [&with_id, &with_id, &without_id, &without_id] {
        assert_eq!(post(&router, body, None).await.0, StatusCode::ACCEPTED);
    }
    let mut redis = env.redis().await;
    let members: i64 = redis.zcard(env.keys().events).await.unwrap();
    let outbox: i64 = redis.xlen(env.keys().outbox).await.unwrap();
    assert_eq!((members, outbox), (2, 4), "Redis keeps one copy of an identical member; the outbox saw each write");
    let mut relay = relay_for(&env, env.redis().await, env.pool.clone(), StorageMode::Postgres, Duration::from_secs(60));
    assert_eq!(drain(&mut relay).await, 2);
    assert_eq!(target_counts(&env).await, (2, 2));
}

#[tokio::test]
async fn tail_mode_follows_the_sorted_set_and_picks_up_late_events() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let mut redis = env.redis().await;
    let keys = env.keys();
    let now = chrono::Utc::now().timestamp_millis();
    // The application writes the sorted set itself (no outbox).
    for i in 0..30 {
        let member = json!({"id": format!("t{i}"), "event_name": "page_view", "category": "navigation"}).to_string();
        let _: () = redis.zadd(&keys.events, member, now - 60_000 + i * 1000).await.unwrap();
    }
    let writer = Arc::new(TargetWriter::new(env.pool.clone(), StorageMode::Postgres));
    let mut tail = Tail::new(env.redis().await, writer, Arc::new(keys.clone()), Duration::from_secs(600), (now - 120_000) as f64);
    tail.page = 7;
    assert_eq!(tail.step(false).await.unwrap(), TailOutcome::Copied { read: 30, inserted: 30, dead_letters: 0 });
    // A late event, scored before what was already copied, and a new one.
    let late = json!({"id": "late", "event_name": "click", "category": "interaction"}).to_string();
    let _: () = redis.zadd(&keys.events, late, now - 59_500).await.unwrap();
    let fresh = json!({"id": "fresh", "event_name": "click", "category": "interaction"}).to_string();
    let _: () = redis.zadd(&keys.events, fresh, now + 1000).await.unwrap();
    match tail.step(false).await.unwrap() {
        TailOutcome::Copied { inserted, .. } => assert_eq!(inserted, 1, "a plain step takes only what scored after the position"),
        other => panic!("{other:?}"),
    }
    match tail.step(true).await.unwrap() {
        TailOutcome::Copied { inserted, .. } => assert_eq!(inserted, 1, "the sweep re-reads the lookback and finds the late event"),
        other => panic!("{other:?}"),
    }
    assert_eq!(target_counts(&env).await, (32, 32));
}

#[tokio::test]
async fn dual_write_stop_undoes_start() {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let first_point: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT completion_point FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
    assert!(first_point.is_some());
    let (status, body) = post(&router(&env).await, &batch(2, 0), None).await;
    assert_eq!((status, body["dual_write"].clone()), (StatusCode::ACCEPTED, Value::Bool(true)));

    let stopped = env.cli(&["dual-write", "stop", "--json"]).expect_success().details();
    assert_eq!((stopped["run"]["phase_before"].as_str(), stopped["run"]["phase_after"].as_str()), (Some("dual_writing"), Some("prepared")));
    let (phase, point): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT phase, completion_point FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
    assert_eq!((phase.as_str(), point), ("prepared", None), "the completion point is forgotten");
    let mut redis = env.redis().await;
    let flag: Option<String> = redis.get(env.keys().dual_write_flag).await.unwrap();
    assert_eq!(flag.as_deref(), Some("0"), "an explicit off");
    // Ingest goes on with the legacy write alone (a fresh server: no remembered flag).
    let (status, body) = post(&router(&env).await, &batch(3, 10), None).await;
    assert_eq!((status, body["dual_write"].clone()), (StatusCode::ACCEPTED, Value::Bool(false)));
    let (members, outbox): (u64, u64) = (redis.zcard(env.keys().events).await.unwrap(), redis.xlen(env.keys().outbox).await.unwrap());
    assert_eq!((members, outbox), (5, 1), "the outbox got only the dual-written batch (one entry)");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log WHERE command = 'dual-write stop' AND outcome = 'done'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(audited, 1);
    // And it can start again, with a new completion point.
    env.cli(&["dual-write", "start"]).expect_success();
    let second_point: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT completion_point FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
    assert!(second_point > first_point, "{second_point:?} after {first_point:?}");
}

#[tokio::test]
async fn a_missing_flag_follows_the_migration_state_and_stop_is_an_explicit_off() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let mut redis = env.redis().await;
    let flag = env.keys().dual_write_flag;
    let dual_write = |body: Value| body["dual_write"].as_bool().unwrap();

    // No flag and nothing known about the state: off.
    let (status, body) = post(&router(&env).await, &batch(1, 0), None).await;
    assert_eq!((status, dual_write(body)), (StatusCode::ACCEPTED, false));
    // No flag (Redis lost it) while the state says on: still on.
    let state = AppState::ingest_only(env.settings.clone(), env.redis().await).unwrap();
    state.dual_write.set_state_view(true);
    let (_, body) = post(&app(state), &batch(1, 1), None).await;
    assert!(dual_write(body), "a lost flag does not turn dual-write off");

    env.cli(&["dual-write", "start"]).expect_success();
    env.cli(&["dual-write", "stop"]).expect_success();
    let value: Option<String> = redis.get(&flag).await.unwrap();
    assert_eq!(value.as_deref(), Some("0"), "stop writes an explicit off");
    let state = AppState::ingest_only(env.settings.clone(), env.redis().await).unwrap();
    state.dual_write.set_state_view(true);
    let (_, body) = post(&app(state), &batch(1, 2), None).await;
    assert!(!dual_write(body), "an explicit off wins over a stale view of the state");

    // The daemon's check restores a lost flag only while the state says dual-write is on.
    use tsmigrate::dual_write::flag::{check, FlagCheck};
    let _: () = redis.del(&flag).await.unwrap();
    assert_eq!(settled_flag_check(&env, &mut redis).await, FlagCheck::InPlace { on: false });
    env.cli(&["dual-write", "start"]).expect_success();
    let _: () = redis.del(&flag).await.unwrap();
    let restored = settled_flag_check(&env, &mut redis).await;
    assert!(matches!(restored, FlagCheck::Restored { found: None, .. }), "{restored:?}");
    let value: Option<String> = redis.get(&flag).await.unwrap();
    assert_eq!(value.as_deref(), Some("1"));
    assert_eq!(check(&env.pool, &mut redis, &env.keys()).await.unwrap(), FlagCheck::InPlace { on: true });
    // Never while a phase command holds the lock (it may be turning dual-write on or off).
    let _: () = redis.del(&flag).await.unwrap();
    let guard = tsmigrate::phase::state::PhaseGuard::acquire(&env.settings.database.url, "test").await.unwrap();
    assert_eq!(check(&env.pool, &mut redis, &env.keys()).await.unwrap(), FlagCheck::Busy { on: true });
    drop(guard);
}

/// The daemon's flag check once no phase command holds the lock: a CLI's backend releases it
/// a moment after the process exits, and until then the check says Busy (the daemon tries
/// again on its next tick).
async fn settled_flag_check(env: &TestEnv, redis: &mut tsmigrate::connect::RedisConn) -> tsmigrate::dual_write::flag::FlagCheck {
    use tsmigrate::dual_write::flag::{check, FlagCheck};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = check(&env.pool, redis, &env.keys()).await.unwrap();
        if !matches!(found, FlagCheck::Busy { .. }) || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
