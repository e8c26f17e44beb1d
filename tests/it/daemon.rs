//! `tsmigrate run` in-process: graceful shutdown loses nothing, readiness, the scheduled jobs' work.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Duration as ChronoDuration, NaiveDate, Utc};
use redis::AsyncCommands;
use serde_json::json;
use tsmigrate::context::Context;
use tsmigrate::daemon::jobs::{run_job, JobContext, JobName, JobOutcome};
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
    // Under load: shut down once requests have been flowing (and the relay working) for a while.
    crate::support::eventually("20 batches accepted", Duration::from_secs(60), || async { (accepted.load(Ordering::SeqCst) >= 400).then_some(()) }).await;
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
    // Whatever the relay had not written before shutdown is still in the outbox: relay --once
    // writes exactly the rest.
    let (relayed_by_the_service, _) = target_counts(&env).await;
    let out = env.cli(&["relay", "--once", "--json"]).expect_success().details();
    println!("shutdown under load: {accepted} accepted, {relayed_by_the_service} relayed by the service, the rest by relay --once: {out}");
    assert_eq!(out["inserted"].as_i64(), Some(accepted - relayed_by_the_service), "{out}");
    assert_eq!(target_counts(&env).await, (accepted, accepted), "and in the target exactly once");
}

/// Readiness only: the service's metrics are asserted exactly on a process of their own
/// (`daemon_process`), since this test binary's metrics recorder is shared by every test.
#[tokio::test]
async fn readiness_follows_both_servers() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon::run(env.settings.clone(), listener, DaemonOptions { relay: false, jobs: false }, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    // Ready once it listens and its read path is warm (a moment after it starts).
    let mut ready = None;
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("http://{addr}/ready")).send().await {
            ready = Some(r.status().as_u16());
            if ready == Some(200) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, Some(200));
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();

    // A fresh process is not ready until every read endpoint has answered once from the
    // target (its pool's connections opened, their statements prepared), then it is.
    sqlx::query("UPDATE tsmigrate.migration_state SET read_source = 'target'").execute(&env.pool).await.unwrap();
    let target = tsmigrate::db::target_pool(&env.settings).await.unwrap();
    let state = tsmigrate::http::AppState::new(Context::with_target(Arc::new(env.settings.clone()), target.clone()), env.redis().await).cold();
    let (status, why) = ready_now(state.clone()).await;
    assert_eq!(status, 503, "{why}");
    assert_eq!(why["warm"], false, "{why}");
    assert!(why["reasons"].to_string().contains("warming up the read path"), "{why}");
    tsmigrate::http::warm::warm_up(state.clone()).await;
    let (status, why) = ready_now(state).await;
    assert_eq!((status, &why["warm"]), (200, &json!(true)), "{why}");
    assert_eq!(target.size(), env.settings.database.max_connections, "the warm-up opened every connection the pool may hold");

    // Not ready when the target cannot be reached.
    let mut broken = env.settings.clone();
    broken.database.url = tsmigrate::config::SecretUrl::new("postgres://postgres@127.0.0.1:1/none");
    let state = tsmigrate::http::AppState::new(tsmigrate::context::Context::lazy(broken.clone()).unwrap(), env.redis().await);
    let response =
        tower::ServiceExt::oneshot(tsmigrate::http::app(state), axum::http::Request::get("/ready").body(axum::body::Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
}

/// The pool `tsmigrate run` serves from primes each new connection (its first plan over
/// every read relation made before any request could be the one to pay for it), and the
/// warm-up opens every connection the pool may hold before `/ready` says 200.
#[tokio::test]
async fn a_serving_pool_primes_every_connection_it_opens() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let pool = tsmigrate::db::serving_pool_lazy(&env.settings, tsmigrate::reads::READ_RELATIONS).unwrap();
    let max = env.settings.database.max_connections as usize;
    // What the warm-up does first.
    let held = futures::future::try_join_all((0..max).map(|_| pool.acquire())).await.unwrap();
    drop(held);
    let priming = tsmigrate::connect::priming_statement(tsmigrate::reads::READ_RELATIONS);
    let mut last: Vec<String> = vec![];
    for _ in 0..100 {
        last =
            sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tsmigrate' AND state = 'idle'")
                .fetch_all(&env.pool)
                .await
                .unwrap();
        if last.len() == max {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.len(), max, "{last:?}");
    assert!(last.iter().all(|q| *q == priming), "every connection ran the priming and nothing else: {last:?}");
    // The priming skips a relation that does not exist: every one it names must, once the
    // target is prepared, or a renamed table would go unprimed without a word.
    let missing: Vec<String> = sqlx::query_scalar("SELECT r FROM unnest($1::text[]) r WHERE to_regclass(r) IS NULL")
        .bind(tsmigrate::reads::READ_RELATIONS)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(missing.is_empty(), "read relations a prepared target lacks: {missing:?}");
    pool.close().await;
}

/// `GET /ready` of a server on `state`: its status and JSON body.
async fn ready_now(state: tsmigrate::http::AppState) -> (u16, serde_json::Value) {
    let response =
        tower::ServiceExt::oneshot(tsmigrate::http::app(state), axum::http::Request::get("/ready").body(axum::body::Body::empty()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
}

/// The warm-up meets the target's faults: refused, reset, and hung on the connections it
/// already holds. Each time it ends by itself (within its deadline), `/ready` then names the
/// target and not the warm-up, and is 200 again once the target is back, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_warm_up_that_meets_a_target_fault_ends_and_readiness_comes_back_by_itself() {
    use crate::proxy::{Fault, FaultProxy};
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    sqlx::query("UPDATE tsmigrate.migration_state SET read_source = 'target'").execute(&env.pool).await.unwrap();
    let proxy = FaultProxy::start(crate::fault::pg_addr(env.settings.database.url.expose()));
    let mut settings = env.settings.clone();
    settings.database.url = tsmigrate::config::SecretUrl::new(proxy.url_through(env.settings.database.url.expose()));
    settings.database.connect_timeout_secs = 2;
    let redis = env.redis().await;
    // Bounds a hang only: the warm-up's own deadline and a wide margin.
    let ends_within = tsmigrate::http::warm::WARM_UP_DEADLINE + Duration::from_secs(60);
    for fault in [Fault::Refuse, Fault::Reset, Fault::Blackhole] {
        // A fresh process each time; for the blackhole, one whose pool already holds
        // connections (opened by a first warm-up), which the fault then leaves hanging with
        // every new one.
        // On the pool `tsmigrate run` serves from (kept full, each connection primed).
        let pool = tsmigrate::db::serving_pool_lazy(&settings, tsmigrate::reads::READ_RELATIONS).unwrap();
        let state = tsmigrate::http::AppState::new(Context::with_target(Arc::new(settings.clone()), pool), redis.clone()).cold();
        if fault == Fault::Blackhole {
            tsmigrate::http::warm::warm_up(state.clone()).await;
        }
        let state = state.cold();
        proxy.set(fault);
        tokio::time::timeout(ends_within, tsmigrate::http::warm::warm_up(state.clone())).await.unwrap_or_else(|_| panic!("{fault:?}: the warm-up never ended"));
        let (status, why) = ready_now(state.clone()).await;
        assert_eq!((status, &why["warm"], &why["target"]), (503, &json!(true), &json!(false)), "{fault:?}: {why}");
        proxy.set(Fault::Pass);
        let mut back = None;
        for _ in 0..600 {
            let (status, why) = ready_now(state.clone()).await;
            if status == 200 {
                back = Some(why);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back.is_some(), "{fault:?}: /ready never said 200 again after the target came back");
    }
}

#[tokio::test]
async fn scheduled_jobs_do_their_work_and_are_recorded() {
    // "Today" is computed here and by the jobs: not across a UTC midnight.
    clear_of_utc_midnight().await;
    let env = TestEnv::new().await;
    seed(&env, 800, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    env.cli(&["backfill"]).expect_success();
    let ctx = JobContext {
        ctx: Context::with_target(Arc::new(env.settings.clone()), env.pool.clone()).with_legacy(env.pool.clone()).with_redis(env.redis().await),
        lease: tsmigrate::daemon::leader::Lease::sole(),
    };
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
    partition_upkeep_creates_the_days_ahead(&ctx).await;
    raw_retention_drops_exactly_the_days_past_retention(&ctx).await;
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

/// Returns once the next UTC midnight is more than two minutes away (waits past it when it
/// is nearer), so a test that computes "today" apart from the code under test runs on one day.
async fn clear_of_utc_midnight() {
    let now = Utc::now();
    let midnight = (now.date_naive() + ChronoDuration::days(1)).and_hms_opt(0, 0, 0).unwrap().and_utc();
    let left = midnight - now;
    if left < ChronoDuration::minutes(2) {
        tokio::time::sleep((left + ChronoDuration::seconds(1)).to_std().unwrap()).await;
    }
}

/// The daily partitions of `analytics_events_ts`, by name.
async fn partitions(pool: &sqlx::PgPool) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'analytics_events_ts'::regclass")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn partition_name(day: NaiveDate) -> String {
    format!("analytics_events_ts_p{}", day.format("%Y%m%d"))
}

/// Upkeep creates the partitions of yesterday through `partitions_ahead_days` ahead, and only those.
async fn partition_upkeep_creates_the_days_ahead(ctx: &JobContext) {
    let before = partitions(&ctx.ctx.target).await;
    let today = Utc::now().date_naive();
    let ahead = i64::from(ctx.ctx.settings.target.partitions_ahead_days);
    let JobOutcome::Done(done) = run_job(ctx, JobName::PartitionUpkeep).await else { panic!("partition upkeep failed") };
    let after = partitions(&ctx.ctx.target).await;
    // The days touching [now - 1 day, now + ahead days): yesterday through today + ahead.
    let wanted: BTreeSet<String> = (-1..=ahead).map(|d| partition_name(today + ChronoDuration::days(d))).collect();
    let created: BTreeSet<String> = after.difference(&before).cloned().collect();
    assert_eq!(created, wanted.difference(&before).cloned().collect(), "upkeep creates exactly the missing days");
    assert!(after.is_superset(&wanted), "{after:?}");
    assert_eq!(done["created"], created.len(), "{done}");
    let again = run_job(ctx, JobName::PartitionUpkeep).await;
    assert_eq!(again, JobOutcome::Done(serde_json::json!({"created": 0})), "a second run finds nothing to create");
}

/// Retention drops the partitions wholly older than `raw_retention_days`, rows and all, and keeps the rest.
async fn raw_retention_drops_exactly_the_days_past_retention(ctx: &JobContext) {
    let today = Utc::now().date_naive();
    let retention = i64::from(ctx.ctx.settings.target.raw_retention_days);
    // Days around the edge: the two older ones end before now - retention, the other two do not.
    let days: Vec<NaiveDate> = [retention + 2, retention + 1, retention, retention - 1].iter().map(|d| today - ChronoDuration::days(*d)).collect();
    let midnight = |day: NaiveDate| day.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let created: i32 = sqlx::query_scalar("SELECT tsmigrate.ensure_partitions($1, $2)")
        .bind(midnight(days[0]))
        .bind(midnight(days[3]))
        .fetch_one(&ctx.ctx.target)
        .await
        .unwrap();
    assert_eq!(created, 4);
    for day in &days {
        sqlx::query(
            "INSERT INTO analytics_events_ts (time, event_id, event_name, category) VALUES ($1 + interval '12 hours', gen_random_uuid(), 'old', 'test')",
        )
        .bind(midnight(*day))
        .execute(&ctx.ctx.target)
        .await
        .unwrap();
    }
    let before = partitions(&ctx.ctx.target).await;
    assert_eq!(run_job(ctx, JobName::RawRetention).await, JobOutcome::Done(serde_json::json!({"dropped": 2})));
    let dropped: BTreeSet<String> = before.difference(&partitions(&ctx.ctx.target).await).cloned().collect();
    assert_eq!(dropped, days[..2].iter().map(|d| partition_name(*d)).collect(), "only the days wholly past retention");
    let old_rows: Vec<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT time FROM analytics_events_ts WHERE event_name = 'old' ORDER BY time").fetch_all(&ctx.ctx.target).await.unwrap();
    assert_eq!(old_rows, days[2..].iter().map(|d| midnight(*d) + ChronoDuration::hours(12)).collect::<Vec<_>>());
}
