//! Ingest while Redis is unreachable: 503 with "retry", nothing written, and ingest works
//! again when Redis returns. Redis is "down" behind the TCP forwarder of [`crate::fault`]
//! in front of the shared server, which is never touched.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use tsmigrate::config::SecretUrl;
use tsmigrate::http::{app, AppState};

use crate::fault::Outage;
use crate::scenario::{prepare_and_dual_write, redis_snapshot, Mode};
use crate::support::TestEnv;

async fn post(router: &axum::Router, body: &str) -> (StatusCode, Value) {
    let request = Request::post("/api/v1/analytics").header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn batch(tag: &str, n: usize) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    let events: Vec<Value> = (0..n).map(|i| json!({"id": format!("{tag}-{i}"), "event_name": "click", "category": "interaction", "timestamp": now})).collect();
    json!({ "events": events }).to_string()
}

fn socket_addr(url: &str) -> SocketAddr {
    let parsed = url::Url::parse(url).unwrap();
    let host = match parsed.host_str() {
        Some("localhost") | None => "127.0.0.1",
        Some(host) => host,
    };
    format!("{host}:{}", parsed.port().unwrap_or(6379)).parse().expect("numeric Redis host in the test URL")
}

#[tokio::test]
async fn ingest_answers_503_and_writes_nothing_while_redis_is_down() {
    let env = TestEnv::new().await;
    // During dual-write a batch touches the legacy keys and the outbox: none may change.
    prepare_and_dual_write(&env, Mode::Postgres);
    let proxy = Outage::start(socket_addr(env.settings.redis.url.expose())).await;
    let mut settings = env.settings.clone();
    settings.redis.url = SecretUrl::new(proxy.url_through(env.settings.redis.url.expose()));
    let redis = tsmigrate::db::redis(&settings).await.expect("Redis through the forwarder");
    let router = app(AppState::ingest_only(settings, redis).unwrap());

    let (status, reply) = post(&router, &batch("before", 4)).await;
    assert_eq!((status, reply["dual_write"].clone()), (StatusCode::ACCEPTED, Value::Bool(true)), "{reply}");
    let before = redis_snapshot(&env).await;

    proxy.take_down();
    // Twice: the first while the dual-write flag is still remembered, the second after.
    for attempt in ["down-1", "down-2"] {
        let asked = Instant::now();
        // A client must hear "retry" while retrying helps (a reconnect backoff once kept it
        // waiting 1-2 minutes): an answer is awaited for a bounded time, far above the
        // configured Redis deadlines, and the time it took is printed, not asserted.
        let bound = 3 * (env.settings.redis.connect_timeout() + env.settings.redis.response_timeout());
        let (status, reply) = tokio::time::timeout(bound, post(&router, &batch(attempt, 5)))
            .await
            .unwrap_or_else(|_| panic!("{attempt}: no answer within {bound:?} while Redis is down"));
        println!("{attempt}: 503 in {} ms", asked.elapsed().as_millis());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{attempt}: {reply}");
        assert_eq!(reply["retry"], Value::Bool(true), "{reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        // The first try sends the batch on the connection the forwarder just cut (the flag is
        // remembered, so nothing precedes it): the client cannot know whether it arrived. The
        // second finds no connection at all: nothing was sent.
        let honest = match attempt {
            "down-1" => error.contains("nothing was written") || (reply["outcome"] == "unknown" && error.contains("retrying with the same ids is safe")),
            _ => error.contains("nothing was written") && reply["outcome"].is_null(),
        };
        assert!(error.contains("Redis") && honest, "{attempt}: {reply}");
        tokio::time::sleep(tsmigrate::dual_write::flag::DUAL_WRITE_FLAG_REFRESH).await;
    }
    assert_eq!(redis_snapshot(&env).await, before, "a 503 batch changes no Redis key");

    // Redis is back: the client's retry is accepted.
    proxy.bring_back().await;
    let started = Instant::now();
    loop {
        let (status, reply) = post(&router, &batch("retried", 5)).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
        assert!(started.elapsed() < Duration::from_secs(60), "ingest never recovered after Redis returned: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut redis = env.redis().await;
    let members: Vec<String> = redis::cmd("ZRANGE").arg(env.keys().events).arg(0).arg(-1).query_async(&mut redis).await.unwrap();
    let mut tags: Vec<String> = members.iter().map(|m| serde_json::from_str::<Value>(m).unwrap()["id"].as_str().unwrap().to_string()).collect();
    tags.sort();
    let mut expected: Vec<String> = (0..4).map(|i| format!("before-{i}")).chain((0..5).map(|i| format!("retried-{i}"))).collect();
    expected.sort();
    assert_eq!(tags, expected, "exactly the accepted batches are stored");
}
