//! `tsmigrate run` in-process: graceful shutdown loses nothing, metrics, readiness, jobs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;
use tsmigrate::context::Context;
use tsmigrate::daemon::jobs::{run_job, JobName, JobOutcome};
use tsmigrate::daemon::{self, DaemonOptions};

use crate::scenario::{prepare_and_dual_write, seed, target_counts, Mode};
use crate::support::TestEnv;

fn batch(worker: u64, n: u64) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    let events: Vec<_> =
        (0..20).map(|i| json!({"id": format!("w{worker}-b{n}-e{i}"), "event_name": "page_view", "category": "navigation", "timestamp": now})).collect();
    json!({ "events": events }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_loses_nothing() {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon::run(env.settings.clone(), listener, DaemonOptions { relay: true, jobs: false }, async {
        let _ = stop_rx.await;
    }));
    let accepted = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let mut clients = Vec::new();
    for worker in 0..4 {
        let (client, accepted) = (client.clone(), accepted.clone());
        clients.push(tokio::spawn(async move {
            for n in 0.. {
                let sent =
                    client.post(format!("http://{addr}/api/v1/analytics")).header("content-type", "application/json").body(batch(worker, n)).send().await;
                match sent {
                    Ok(r) if r.status().as_u16() == 202 => {
                        accepted.fetch_add(20, Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server).await.expect("shuts down promptly").unwrap().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let accepted = accepted.load(Ordering::SeqCst) as i64;
    assert!(accepted > 0);
    let mut redis = env.redis().await;
    let stored: i64 = redis.zcard(env.keys().events).await.unwrap();
    assert_eq!(stored, accepted, "every acknowledged batch is in Redis");
    // Whatever the relay had not written before shutdown is still in the outbox.
    let out = env.cli(&["relay", "--once", "--json"]).expect_success().json();
    assert!(out["entries"].as_i64().is_some());
    assert_eq!(target_counts(&env).await, (accepted, accepted), "and in the target exactly once");
}

#[tokio::test]
async fn metrics_and_readiness_are_served() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon::run(env.settings.clone(), listener, DaemonOptions { relay: false, jobs: false }, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let mut ready = None;
    for _ in 0..50 {
        if let Ok(r) = client.get(format!("http://{addr}/ready")).send().await {
            ready = Some(r.status().as_u16());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, Some(200));
    let r = client.post(format!("http://{addr}/api/v1/analytics")).body(batch(0, 0)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let metrics = client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tsmigrate_ingest_events_total"), "{metrics}");
    assert!(metrics.contains("tsmigrate_write_seconds"), "{metrics}");
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();

    // Not ready when the target cannot be reached.
    let mut broken = env.settings.clone();
    broken.database.url = tsmigrate::config::SecretUrl::new("postgres://postgres@127.0.0.1:1/none");
    let state = tsmigrate::http::AppState::new(broken.clone(), env.redis().await, Some(tsmigrate::db::target_pool_lazy(&broken).unwrap()), None);
    let response =
        tower::ServiceExt::oneshot(tsmigrate::http::app(state), axum::http::Request::get("/ready").body(axum::body::Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
}

#[tokio::test]
async fn scheduled_jobs_do_their_work_and_are_recorded() {
    let env = TestEnv::new().await;
    seed(&env, 800, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    env.cli(&["backfill"]).expect_success();
    let ctx = Context::with_target(Arc::new(env.settings.clone()), env.pool.clone()).with_legacy(env.pool.clone()).with_redis(env.redis().await);
    // New events arrive through the relay; the rollup job brings the hourly table up to date.
    sqlx::query(
        "INSERT INTO analytics_events_ts (time, event_id, event_name, category, user_id)
         VALUES (now() - interval '5 minutes', gen_random_uuid(), 'rollup_probe', 'test', 'u1')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    assert!(matches!(run_job(&ctx, JobName::RollupRefresh).await, JobOutcome::Done(_)));
    let probe: i64 = sqlx::query_scalar("SELECT coalesce(sum(event_count), 0)::bigint FROM analytics_hourly WHERE event_name = 'rollup_probe'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(probe, 1);
    assert!(matches!(run_job(&ctx, JobName::PartitionUpkeep).await, JobOutcome::Done(_)));
    assert!(matches!(run_job(&ctx, JobName::RawRetention).await, JobOutcome::Done(_)));
    assert!(matches!(run_job(&ctx, JobName::TimescaledbJobHealth).await, JobOutcome::Skipped(_)));
    assert!(matches!(run_job(&ctx, JobName::LegacyKeyExpiry).await, JobOutcome::Skipped(_)));
    assert!(matches!(run_job(&ctx, JobName::LegacyFlush).await, JobOutcome::Done(_)));
    let mut redis = env.redis().await;
    let _: () = redis.set(env.keys().flush_retired, "1").await.unwrap();
    assert!(matches!(run_job(&ctx, JobName::LegacyFlush).await, JobOutcome::Skipped(_)), "a retired flush does not run");
    let recorded: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT job, last_status, runs FROM tsmigrate.job_runs ORDER BY job").fetch_all(&env.pool).await.unwrap();
    assert!(recorded.contains(&("legacy_flush".into(), "skipped".into(), 2)), "{recorded:?}");
    assert!(recorded.contains(&("rollup_refresh".into(), "success".into(), 1)), "{recorded:?}");
}
