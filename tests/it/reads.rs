//! The read API: the same questions get the same answers from the legacy path and from the
//! target after seed + prepare + dual-write start + backfill (including ranges older than
//! the Redis horizon, answered from hourly history); cache keys name the source; bad
//! parameters get 400 with a message; shadow mode counts mismatches; reads from the target
//! meet every fault of its server.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Duration as Span, Utc};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tsmigrate::http::{app, AppState};
use tsmigrate::reads::{minute_floor, wire_time, ReadSource, RoutingCache, ROUTING_REFRESH};

use crate::support::{field, scan_keys, TestEnv};

/// Redis keeps this many events, fewer than the seed writes: older hours exist only in the
/// legacy hourly table (and, after backfill, in the target's history tables).
const EVENT_CAP: u64 = 2_500;

/// A migrated system: seeded legacy data (messy), the target prepared in `mode`,
/// dual-write on, backfill done (with history import). Returns the env and the seed's end.
async fn migrated(mode: &str) -> (TestEnv, DateTime<Utc>) {
    let env = TestEnv::with_settings(|s| {
        s.redis.event_cap = EVENT_CAP;
        // Fresh for the whole test: a second question is answered from the cache, always.
        s.http.cache_ttl_secs = 3600;
    })
    .await;
    // The CLI reads ./tsmigrate.toml from its working directory: give it the same cap.
    env.write_file("tsmigrate.toml", &format!("[redis]\nevent_cap = {EVENT_CAP}\n"));
    let end = tsmigrate::calendar::hour_floor(Utc::now(), chrono_tz::Tz::UTC);
    env.cli(&["seed", "--events", "6000", "--days", "3", "--users", "150", "--messy", "--end", &end.to_rfc3339()]).expect_success();
    env.cli(&["prepare", "--mode", mode]).expect_success();
    env.cli(&["dual-write", "start"]).expect_success();
    env.cli(&["backfill"]).expect_success();
    (env, end)
}

async fn state(env: &TestEnv) -> AppState {
    let pool = tsmigrate::db::target_pool(&env.settings).await.expect("target pool");
    AppState::new(tsmigrate::context::Context::with_target(std::sync::Arc::new(env.settings.clone()), pool), env.redis().await)
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    let response = router.clone().oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap()).await.expect("router answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())))
}

#[track_caller]
fn ok(answer: &(StatusCode, Value)) -> &Value {
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    &answer.1
}

/// Asks until the answers come from `source` (the server re-reads the read source every
/// second). The probe is none of [`questions`], so their cache entries stay untouched.
async fn serving_from(router: &Router, source: &str) {
    let started = std::time::Instant::now();
    loop {
        let (status, answer) = get(router, "/api/v1/analytics/popular-asset-types?days=1").await;
        if status == StatusCode::OK && answer["source"] == source {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "reads never came from {source}: {status} {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_read_source(env: &TestEnv, source: &str, shadow: bool) {
    sqlx::query("UPDATE tsmigrate.migration_state SET read_source = $1, shadow = $2").bind(source).bind(shadow).execute(&env.pool).await.unwrap();
}

fn without_wire_extras(answer: &Value) -> Value {
    let mut answer = answer.clone();
    let obj = answer.as_object_mut().expect("answers are objects");
    obj.remove("source");
    obj.remove("cached");
    answer
}

/// The questions both sources must answer alike: long ranges crossing the Redis horizon,
/// raw-only ranges, edges inside hours, filters, relative windows.
fn questions(end: DateTime<Utc>) -> Vec<String> {
    let at = |d: Span| wire_time(end + d);
    vec![
        format!("/api/v1/analytics/summary?from={}&to={}", at(-Span::days(4)), at(Span::zero())),
        format!("/api/v1/analytics/summary?from={}&to={}", at(-Span::hours(6)), at(Span::zero())),
        format!("/api/v1/analytics/summary?from={}&to={}", at(-Span::hours(50) + Span::minutes(17)), at(-Span::hours(2) + Span::minutes(41))),
        format!("/api/v1/analytics/hourly?from={}&to={}", at(-Span::days(4)), at(Span::zero())),
        format!("/api/v1/analytics/hourly?from={}&to={}&event_name=click&category=interaction", at(-Span::days(2)), at(-Span::minutes(30))),
        "/api/v1/analytics/intervals?bucket=10m&since=24h".into(),
        "/api/v1/analytics/intervals?bucket=1h&since=4d".into(),
        "/api/v1/analytics/intervals?bucket=1d&since=5d".into(),
        "/api/v1/analytics/popular-asset-types?days=7".into(),
        "/api/v1/analytics/popular-asset-types?days=2".into(),
        "/api/v1/analytics/comparison?period=1d".into(),
        "/api/v1/analytics/comparison?period=36h".into(),
    ]
}

async fn both_sources_answer_alike(mode: &str) {
    let (env, end) = migrated(mode).await;
    let history_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.history_hourly").fetch_one(&env.pool).await.unwrap();
    assert!(history_rows > 0, "the seed must leave hours only the hourly history holds");
    let state = state(&env).await;
    let router = app(state);
    let questions = questions(end);

    // Relative windows resolve against the request's minute: both passes must share it.
    let (legacy, target) = 'attempt: {
        for _ in 0..5 {
            set_read_source(&env, "legacy", false).await;
            serving_from(&router, "legacy").await;
            // Both passes must fall in one minute: on a busy machine they can take tens of
            // seconds, so an attempt starts early in a minute (waiting for the next one if
            // this one is well under way).
            let into_minute = Utc::now() - minute_floor(Utc::now());
            if into_minute > Span::seconds(15) {
                let wait = Span::seconds(60) - into_minute + Span::milliseconds(100);
                tokio::time::sleep(wait.to_std().unwrap_or_default()).await;
            }
            let minute = minute_floor(Utc::now());
            let mut legacy = Vec::new();
            for q in &questions {
                legacy.push(ok(&get(&router, q).await).clone());
            }
            // Flipped with SQL; the server notices within its one-second refresh.
            set_read_source(&env, "target", false).await;
            serving_from(&router, "target").await;
            let mut target = Vec::new();
            for q in &questions {
                target.push(ok(&get(&router, q).await).clone());
            }
            // `as_of` is the settle boundary, which need not turn with the wall-clock minute.
            let same_as_of = legacy.iter().zip(&target).all(|(l, t)| field(l, "as_of") == field(t, "as_of"));
            if minute_floor(Utc::now()) == minute && same_as_of {
                break 'attempt (legacy, target);
            }
        }
        panic!("could not ask both sources within one minute");
    };
    for ((q, l), t) in questions.iter().zip(&legacy).zip(&target) {
        assert_eq!(field(l, "source"), "legacy", "{q}");
        assert_eq!(field(t, "source"), "target", "{q}");
        assert_eq!(without_wire_extras(l), without_wire_extras(t), "legacy and target disagree on {q}");
    }

    // The answers are about real data, not two empty agreements.
    let long = &legacy[0];
    let legacy_table_total: i64 = sqlx::query_scalar("SELECT sum(event_count)::bigint FROM analytics_events").fetch_one(&env.pool).await.unwrap();
    assert_eq!(field(long, "total_events").as_i64(), Some(legacy_table_total), "the 4-day summary covers every event the legacy system counted");
    assert_eq!(field(long, "unique_users_exact"), false, "{long}");
    let recent = &legacy[1];
    assert!(field(recent, "total_events").as_i64().unwrap() > 0, "{recent}");
    assert_eq!(field(recent, "unique_users_exact"), true, "raw covers the last 6 hours: {recent}");
    let by_type: i64 = field(long, "events_by_type").as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(by_type, legacy_table_total);
    let hourly_total: i64 = field(&legacy[3], "rows").as_array().unwrap().iter().map(|r| r["event_count"].as_i64().unwrap()).sum();
    assert_eq!(hourly_total, legacy_table_total, "hourly rows add up to the summary");
    let filtered = field(&legacy[4], "rows").as_array().unwrap();
    assert!(!filtered.is_empty() && filtered.iter().all(|r| r["event_name"] == "click" && r["category"] == "interaction"));
    let buckets = field(&legacy[5], "buckets").as_array().unwrap();
    assert!(buckets.len() >= 144 && buckets.len() <= 145, "24h of 10m buckets, zero buckets included: {}", buckets.len());
    assert!(field(&legacy[6], "total_events").as_i64().unwrap() > field(&legacy[5], "total_events").as_i64().unwrap());
    assert!(!field(&legacy[8], "asset_types").as_array().unwrap().is_empty());
    assert!(field(&legacy[10], "current").as_i64().unwrap() > 0);

    // Cache keys name the source: both passes left their own entries.
    let mut redis = env.redis().await;
    let keys = scan_keys(&mut redis, &format!("{}analytics:cache:", env.prefix)).await.unwrap();
    for source in ["legacy", "target"] {
        for endpoint in ["summary", "hourly", "intervals", "popular-asset-types", "comparison"] {
            let tag = format!(":{source}:{endpoint}:");
            assert!(keys.iter().any(|k| k.contains(&tag)), "no cache key with {tag} in {keys:?}");
        }
    }
    // Asked again, the target's answer comes from the cache, unchanged, while it is fresh.
    let again = get(&router, &questions[0]).await;
    let fresh_until = chrono::DateTime::parse_from_rfc3339(field(&target[0], "fresh_until").as_str().unwrap()).unwrap();
    assert!(Utc::now() < fresh_until, "the cache lasts the test (cache_ttl_secs = 3600): {fresh_until}");
    assert_eq!(field(ok(&again), "cached"), true, "{}", again.1);
    assert_eq!(field(&target[0], "cached"), false);
    assert_eq!(without_wire_extras(&again.1), without_wire_extras(&target[0]));
}

#[tokio::test]
async fn both_sources_answer_alike_in_plain_mode() {
    both_sources_answer_alike("postgres").await;
}

#[tokio::test]
async fn both_sources_answer_alike_in_timescaledb_mode() {
    let probe = TestEnv::new().await;
    require_timescaledb_or_skip!(probe);
    drop(probe);
    both_sources_answer_alike("timescaledb").await;
}

#[tokio::test]
async fn bad_parameters_get_400_with_a_message() {
    let env = TestEnv::new().await;
    let router = app(state(&env).await);
    let cases = [
        ("/api/v1/analytics/summary", "from is required"),
        ("/api/v1/analytics/summary?from=2025-01-01", "to is required"),
        ("/api/v1/analytics/summary?from=yesterday&to=2025-01-01", "is not a time"),
        ("/api/v1/analytics/summary?from=2025-01-02&to=2025-01-01", "must be after"),
        ("/api/v1/analytics/summary?from=2025-01-01T00:00:00Z&to=2025-01-01T00:00:00Z", "must be after"),
        ("/api/v1/analytics/summary?from=2020-01-01&to=2025-01-01", "400 days"),
        ("/api/v1/analytics/summary?from=2025-01-01&to=2025-01-02&limit=5", "unknown field"),
        ("/api/v1/analytics/hourly?from=2025-01-01&to=2025-01-02&event_name=", "event_name must not be empty"),
        ("/api/v1/analytics/hourly?to=2025-01-02", "from is required"),
        ("/api/v1/analytics/popular-asset-types?days=0", "between 1 and 3650"),
        ("/api/v1/analytics/popular-asset-types?days=3651", "between 1 and 3650"),
        ("/api/v1/analytics/popular-asset-types?days=many", "whole number"),
        ("/api/v1/analytics/comparison?period=soon", "not a duration"),
        ("/api/v1/analytics/comparison?period=0d", "between 1m"),
        ("/api/v1/analytics/comparison?period=500d", "between 1m"),
        ("/api/v1/analytics/comparison?period=99999999999999999d", "too long"),
        ("/api/v1/analytics/intervals?bucket=10x&since=24h", "bucket"),
        ("/api/v1/analytics/intervals?bucket=1m&since=30d", "more than 10000"),
        ("/api/v1/analytics/intervals?bucket=10m&since=0h", "since must be a positive"),
        ("/api/v1/analytics/intervals?bucket=10m&since=forever", "since"),
        ("/api/v1/analytics/intervals?bucket=0m", "at least 1s"),
    ];
    for (uri, message) in cases {
        let (status, body) = get(&router, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{uri}: no error message in {body}"));
        assert!(error.contains(message), "{uri}: expected {message:?} in {error:?}");
    }
}

#[tokio::test]
async fn shadow_mode_counts_a_mismatch_when_the_target_differs() {
    let (env, end) = migrated("postgres").await;
    set_read_source(&env, "legacy", true).await;
    // No cache: every shadow read computes the other side afresh.
    let mut settings = env.settings.clone();
    settings.http.cache_ttl_secs = 0;
    let pool = tsmigrate::db::target_pool(&settings).await.unwrap();
    let state = AppState::new(tsmigrate::context::Context::with_target(std::sync::Arc::new(settings), pool), env.redis().await);
    let router = app(state.clone());
    let window = format!("/api/v1/analytics/summary?from={}&to={}", wire_time(end - Span::hours(6)), wire_time(end));

    let served = get(&router, &window).await;
    assert_eq!(field(ok(&served), "source"), "legacy");
    wait_for(|| state.shadow.comparisons() >= 1).await;
    assert_eq!((state.shadow.mismatches(), state.shadow.errors()), (0, 0), "identical data must compare clean");

    // Alter the target behind the migration's back: events of the last hour disappear.
    let deleted = sqlx::query(
        "DELETE FROM analytics_events_ts WHERE (event_id, time) IN (SELECT event_id, time FROM analytics_events_ts WHERE time >= $1 AND time < $2 LIMIT 3)",
    )
    .bind(end - Span::hours(1))
    .bind(end)
    .execute(&env.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(deleted, 3);
    let served = get(&router, &window).await;
    assert_eq!(field(ok(&served), "source"), "legacy", "shadow mode serves the read source");
    wait_for(|| state.shadow.comparisons() >= 2).await;
    assert_eq!(state.shadow.mismatches(), 1);
}

async fn wait_for(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for the shadow comparison");
}

#[tokio::test]
async fn the_read_source_survives_an_unreachable_target() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let routing = RoutingCache::default();
    assert_eq!(routing.current(Some(&env.pool)).await.source, ReadSource::Legacy);
    set_read_source(&env, "target", true).await;
    let started = std::time::Instant::now();
    let learned = loop {
        let now = routing.current(Some(&env.pool)).await;
        if now.source == ReadSource::Target {
            break now;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the routing never saw the new read source");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(learned.shadow);
    let learned_at = std::time::Instant::now();
    // The target goes away: the last known routing stays. Asked until the remembered value
    // has certainly expired, so the later answers come from failed re-reads.
    let unreachable =
        sqlx::postgres::PgPoolOptions::new().acquire_timeout(Duration::from_millis(200)).connect_lazy("postgres://postgres@127.0.0.1:1/none").unwrap();
    while learned_at.elapsed() < ROUTING_REFRESH * 2 {
        assert_eq!(routing.current(Some(&unreachable)).await.source, ReadSource::Target);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(routing.current(Some(&unreachable)).await.source, ReadSource::Target);
    // Never known: legacy.
    assert_eq!(RoutingCache::default().current(Some(&unreachable)).await.source, ReadSource::Legacy);
}

/// Reads, the HTTP state and admin status share the state's one `Context` (no second copy of
/// the settings or pools); a server started for ingest only answers reads with 503 saying the
/// databases are not configured for reads, even though its settings name a working target.
#[tokio::test]
async fn reads_use_the_states_context_and_an_ingest_only_server_does_not_read() {
    let env = TestEnv::new().await;
    let full = state(&env).await;
    let reads = full.reads_at(minute_floor(Utc::now()));
    assert!(std::sync::Arc::ptr_eq(&full.ctx.settings, &reads.shared.settings), "a read holds the state's settings, not a copy");
    assert!(std::sync::Arc::ptr_eq(&full.ctx.keys, &reads.shared.keys), "and its key layout");
    assert!(full.target().is_some());

    let ingest_only = AppState::ingest_only(env.settings.clone(), env.redis().await).unwrap();
    assert!(ingest_only.target().is_none());
    let to = minute_floor(Utc::now());
    let (status, body) = get(&app(ingest_only), &format!("/api/v1/analytics/summary?from={}&to={}", wire_time(to - Span::hours(1)), wire_time(to))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not configured for reads"), "{body}");
    env.cleanup().await;
}

/// The faults a fault proxy puts in front of a server, all of them.
fn every_proxy_fault() -> Vec<crate::proxy::Fault> {
    use crate::proxy::Fault;
    vec![
        Fault::Refuse,
        Fault::Reset,
        Fault::BlackholeExisting,
        Fault::BlackholeNew,
        Fault::Blackhole,
        Fault::Latency(Duration::from_millis(150)),
        Fault::Bandwidth(20_000),
    ]
}

/// Asks every question at once while `fault` holds; each answer must pass `judge` (given the
/// status and body) and come before the request deadline (`hung_after` bounds a hang only).
/// Then, the fault cleared, every question must be answered 200 again, without a restart.
async fn through_fault(
    router: &Router,
    proxy: &crate::proxy::FaultProxy,
    fault: crate::proxy::Fault,
    end: DateTime<Utc>,
    judge: impl Fn(&str, StatusCode, &Value),
) {
    let hung_after = Duration::from_secs(30);
    proxy.set(fault);
    let answers = futures::future::join_all(questions(end).into_iter().map(|q| {
        let router = router.clone();
        async move { (tokio::time::timeout(hung_after, get(&router, &q)).await, q) }
    }))
    .await;
    for (answer, q) in answers {
        let (status, body) = answer.unwrap_or_else(|_| panic!("{}: {q} hung", fault.name()));
        judge(&format!("{}: {q}", fault.name()), status, &body);
    }
    proxy.set(crate::proxy::Fault::Pass);
    for q in questions(end) {
        let started = std::time::Instant::now();
        loop {
            let (status, body) = get(router, &q).await;
            if status == StatusCode::OK {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{}: {q} never answered 200 again: {status} {body}", fault.name());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Reads flipped to the target, each server behind a fault proxy: the target's
/// (`database.url`) and Redis's (the read cache's; the answers are cached for an hour).
async fn target_reads_behind_proxies(env: &TestEnv, cache_ttl_secs: u64) -> (Router, crate::proxy::FaultProxy, crate::proxy::FaultProxy) {
    use crate::proxy::FaultProxy;
    set_read_source(env, "target", false).await;
    let pg_proxy = FaultProxy::start(crate::fault::pg_addr(env.settings.database.url.expose()));
    let redis_proxy =
        FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], url::Url::parse(env.settings.redis.url.expose()).unwrap().port().unwrap_or(6379))));
    let mut settings = env.settings.clone();
    settings.database.url = tsmigrate::config::SecretUrl::new(pg_proxy.url_through(env.settings.database.url.expose()));
    settings.database.connect_timeout_secs = 2;
    settings.redis.url = tsmigrate::config::SecretUrl::new(redis_proxy.url_through(env.settings.redis.url.expose()));
    settings.redis.response_timeout_ms = 1000;
    settings.http.cache_ttl_secs = cache_ttl_secs;
    settings.http.request_timeout_secs = 3;
    // The pool `tsmigrate run` serves from: kept full, each connection primed when it opens.
    let pool = tsmigrate::db::serving_pool_lazy(&settings, tsmigrate::reads::READ_RELATIONS).expect("target pool");
    let redis = tsmigrate::db::redis(&settings).await.expect("Redis through the proxy");
    let router = app(AppState::new(tsmigrate::context::Context::with_target(std::sync::Arc::new(settings), pool), redis));
    serving_from(&router, "target").await;
    (router, pg_proxy, redis_proxy)
}

/// The target's read path meets every fault of the target's server: refused, reset, hung on
/// its open connections, on new ones or on both, slow and starved of bandwidth. Every read
/// endpoint (cache off) answers each question with 200 or with a 503 that names the target
/// database or the request deadline — never another status, never a hang — and answers 200
/// again once the fault clears, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_read_meets_every_fault_of_the_target() {
    let (env, end) = migrated("postgres").await;
    let (router, pg_proxy, _redis_proxy) = target_reads_behind_proxies(&env, 0).await;
    for fault in every_proxy_fault() {
        through_fault(&router, &pg_proxy, fault, end, |what, status, body| match status {
            StatusCode::OK => assert_eq!(body["source"], "target", "{what}"),
            StatusCode::SERVICE_UNAVAILABLE => {
                let error = body["error"].as_str().unwrap_or_default();
                // The server that failed, or the deadline that ran out.
                assert!(error.contains("target database") || error.starts_with("no answer within"), "{what}: a 503 says what is wrong: {body}");
            }
            other => panic!("{what} answered {other}: {body}"),
        })
        .await;
    }
    env.cleanup().await;
}

/// Reads from the target keep answering, all of them 200, whatever Redis (which holds only
/// their cache) does: a cache that is refused, reset, hung, slow or starved is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_reads_answer_whatever_the_cache_server_does() {
    let (env, end) = migrated("postgres").await;
    let (router, _pg_proxy, redis_proxy) = target_reads_behind_proxies(&env, 3600).await;
    for fault in every_proxy_fault() {
        through_fault(&router, &redis_proxy, fault, end, |what, status, body| {
            assert_eq!((status, &body["source"]), (StatusCode::OK, &Value::from("target")), "{what}: {body}");
        })
        .await;
    }
    env.cleanup().await;
}
