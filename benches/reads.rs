//! Read API latency: `GET /api/v1/analytics/summary` over the last 30 days, from each read
//! source, cold (cache disabled: every request computes) and warm (the same window again,
//! answered from the Redis cache), over HTTP against an in-process server.
//!
//! Target: `TSMIGRATE_BENCH_EVENTS` (default 10 000 000) events over 30 days loaded with
//! SQL straight into `analytics_events_ts` (the write path is not what is measured here),
//! aggregates refreshed, and in TimescaleDB mode the chunks older than 7 days moved to the
//! columnstore, as the policy would have done. Legacy: Redis holds its cap of newest events
//! (100 000, written through the legacy write path), and the legacy hourly table holds the
//! 30 days before (built from the same rows, as the flush worker would have).
//!
//! `cargo bench --bench reads` (TSMIGRATE_BENCH_EVENTS=1000000 for a quick run;
//! TSMIGRATE_BENCH_COLD_SAMPLES / TSMIGRATE_BENCH_WARM_SAMPLES change the sample counts).

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use support::*;
use tsmigrate::http::AppState;

const DAYS: i64 = 30;
const USERS: i64 = 20_000;
const LEGACY_CAP: u64 = 100_000;
const CHUNK_ROWS: i64 = 1_000_000;

/// `n` events spread evenly over the `DAYS` days before `end`, with the seed's event mix.
async fn load_target(pool: &PgPool, n: i64, end: DateTime<Utc>) {
    let step_us = DAYS * 86_400_000_000 / n.max(1);
    let mut first = 1;
    while first <= n {
        let last = (first + CHUNK_ROWS - 1).min(n);
        sqlx::query(
            "INSERT INTO analytics_events_ts (time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url)
             SELECT $3::timestamptz - (i * $4) * interval '1 microsecond',
                    md5('bench-' || i)::uuid,
                    CASE WHEN m < 40 THEN 'page_view' WHEN m < 60 THEN 'click' WHEN m < 70 THEN 'search'
                         WHEN m < 82 THEN 'asset_generated' WHEN m < 90 THEN 'download' WHEN m < 95 THEN 'login'
                         WHEN m < 97 THEN 'signup' ELSE 'purchase' END,
                    CASE WHEN m < 40 THEN 'navigation' WHEN m < 60 THEN 'interaction' WHEN m < 70 THEN 'discovery'
                         WHEN m < 90 THEN 'creation' WHEN m < 97 THEN 'account' ELSE 'commerce' END,
                    'user_' || u,
                    's_' || u || '_' || (i / 20000),
                    CASE WHEN m >= 70 AND m < 82
                         THEN jsonb_build_object('asset_type', (ARRAY['image','logo','video','text','audio','3d_model'])[1 + (i % 6)])
                         ELSE jsonb_build_object('path', '/create') END,
                    '{\"browser\": \"chrome\", \"os\": \"macos\"}'::jsonb,
                    'https://app.example.com/create'
             FROM (SELECT i, (i * 2654435761 % 100)::int AS m, (i * 40503 % $5)::bigint AS u
                   FROM generate_series($1::bigint, $2::bigint) i) s",
        )
        .bind(first)
        .bind(last)
        .bind(end)
        .bind(step_us)
        .bind(USERS)
        .execute(pool)
        .await
        .expect("load events");
        print!("\r  loaded {last}/{n} events");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        first = last + 1;
    }
    println!();
}

struct Measured {
    latencies: Vec<Duration>,
    last: Value,
}

async fn measure_requests(client: &reqwest::Client, url: &str, samples: usize) -> Measured {
    let mut latencies = Vec::with_capacity(samples);
    let mut last = Value::Null;
    for _ in 0..samples {
        let started = Instant::now();
        let response = client.get(url).send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        latencies.push(started.elapsed());
        assert!(status.is_success(), "{url}: {status} {text}");
        last = serde_json::from_str(&text).expect("json");
    }
    latencies.sort();
    Measured { latencies, last }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Serves `state` on a free port; returns the base URL.
async fn serve(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(tsmigrate::http::serve(listener, state, std::future::pending()));
    format!("http://127.0.0.1:{port}")
}

struct Setup {
    env: BenchEnv,
    cold: String,
    warm: String,
    window: String,
}

async fn setup(mode: &str, events: i64, with_legacy: bool) -> Setup {
    let mut env = BenchEnv::new("reads");
    env.settings.redis.event_cap = LEGACY_CAP;
    println!("[{mode}] preparing {}", env.name);
    env.run(&["prepare", "--mode", mode]);
    let pool = tsmigrate::db::target_pool(&env.settings).await.expect("pool");
    let end = Utc::now();
    if mode == "postgres" {
        sqlx::query("SELECT tsmigrate.ensure_partitions($1, $2)")
            .bind(end - chrono::Duration::days(DAYS + 1))
            .bind(end + chrono::Duration::days(2))
            .execute(&pool)
            .await
            .expect("partitions");
    }
    let started = Instant::now();
    load_target(&pool, events, end).await;
    println!("[{mode}] loaded in {:.0}s; refreshing aggregates", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let storage = tsmigrate::store::StorageMode::parse(mode).expect("mode");
    tsmigrate::store::aggregates::refresh(
        &*tsmigrate::store::open(storage, pool.clone()),
        end - chrono::Duration::days(DAYS + 1),
        end + chrono::Duration::hours(1),
        chrono_tz::Tz::UTC,
        90,
    )
    .await
    .expect("refresh");
    println!("[{mode}] aggregates refreshed in {:.0}s", started.elapsed().as_secs_f64());
    if mode == "timescaledb" {
        let started = Instant::now();
        let compressed: i64 =
            sqlx::query_scalar("SELECT count(compress_chunk(c, true)) FROM show_chunks('analytics_events_ts', older_than => INTERVAL '7 days') c")
                .fetch_one(&pool)
                .await
                .expect("compress");
        println!("[{mode}] {compressed} chunks older than 7 days moved to the columnstore in {:.0}s", started.elapsed().as_secs_f64());
    }
    sqlx::query("ANALYZE").execute(&pool).await.expect("analyze");

    if with_legacy {
        // The legacy side: the newest 100 000 events in Redis through the legacy write path, and
        // the hourly table for the hours before the Redis horizon, as the flush worker left them.
        tsmigrate::legacy::schema::ensure(&pool, &env.settings.legacy).await.expect("legacy tables");
        let mut redis = tsmigrate::db::redis(&env.settings).await.expect("redis");
        let options = tsmigrate::legacy::seed::SeedOptions { events: LEGACY_CAP, days: 1, users: USERS as u32, seed: 3, messy: false, end, flush: false };
        tsmigrate::legacy::seed::run(&mut redis, &pool, &env.settings, options, |_| {}).await.expect("seed redis");
        let keys = tsmigrate::legacy::LegacyKeys::from_settings(&env.settings);
        let horizon = tsmigrate::legacy::reader::redis_horizon(&mut redis, &keys).await.expect("horizon").expect("redis holds events");
        let rows = sqlx::query(
            "INSERT INTO analytics_events (hour, event_name, category, event_count, unique_users)
             SELECT bucket, event_name, category, event_count, unique_users FROM analytics_hourly WHERE bucket <= $1",
        )
        .bind(tsmigrate::calendar::hour_floor(horizon, chrono_tz::Tz::UTC))
        .execute(&pool)
        .await
        .expect("legacy hourly table")
        .rows_affected();
        println!("[{mode}] legacy: {LEGACY_CAP} events in Redis (horizon {horizon}), {rows} hourly rows before it");
    }

    let mut cold_settings = env.settings.clone();
    cold_settings.http.cache_ttl_secs = 0;
    let redis = tsmigrate::db::redis(&env.settings).await.expect("redis");
    let cold = serve(AppState::new(cold_settings, redis.clone(), Some(pool.clone()), Some(pool.clone()))).await;
    let warm = serve(AppState::new(env.settings.clone(), redis, Some(pool.clone()), Some(pool))).await;
    let now = tsmigrate::reads::minute_floor(Utc::now());
    let window = format!("from={}&to={}", tsmigrate::reads::wire_time(now - chrono::Duration::days(DAYS)), tsmigrate::reads::wire_time(now));
    Setup { env, cold, warm, window }
}

async fn set_source(env: &BenchEnv, source: &str) {
    env.psql(&format!("UPDATE tsmigrate.migration_state SET read_source = '{source}'"));
    // The server re-reads the migration state once a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
}

fn row(mode: &str, source: &str, what: &str, m: &Measured) -> Vec<String> {
    vec![
        mode.to_string(),
        source.to_string(),
        what.to_string(),
        m.latencies.len().to_string(),
        ms(percentile(&m.latencies, 0.50)),
        ms(percentile(&m.latencies, 0.99)),
        ms(*m.latencies.last().unwrap_or(&Duration::ZERO)),
        m.last["total_events"].as_i64().or(m.last["current"].as_i64()).map(|n| n.to_string()).unwrap_or_default(),
        m.last["unique_users_exact"].as_bool().map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
    ]
}

fn main() {
    let events = bench_events(10_000_000) as i64;
    let cold_samples = env_number("TSMIGRATE_BENCH_COLD_SAMPLES", 20);
    let warm_samples = env_number("TSMIGRATE_BENCH_WARM_SAMPLES", 1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let modes = storage_modes();
    let mut rows = Vec::new();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for (i, mode) in modes.iter().enumerate() {
            // The legacy side does not depend on the target's mode: measured once.
            let with_legacy = i == 0;
            let s = setup(mode, events, with_legacy).await;
            let summary = |base: &str| format!("{base}/api/v1/analytics/summary?{}", s.window);
            let comparison = |base: &str| format!("{base}/api/v1/analytics/comparison?period=30d");
            set_source(&s.env, "target").await;
            let cold = measure_requests(&client, &summary(&s.cold), cold_samples).await;
            rows.push(row(mode, "target", "summary 30d, cold (no cache)", &cold));
            measure_requests(&client, &summary(&s.warm), 1).await;
            let warm = measure_requests(&client, &summary(&s.warm), warm_samples).await;
            assert_eq!(warm.last["cached"], true);
            rows.push(row(mode, "target", "summary 30d, warm (cached)", &warm));
            let counts = measure_requests(&client, &comparison(&s.cold), cold_samples).await;
            rows.push(row(mode, "target", "comparison 30d vs 30d, cold (counts only)", &counts));
            if with_legacy {
                set_source(&s.env, "legacy").await;
                let cold = measure_requests(&client, &summary(&s.cold), cold_samples).await;
                rows.push(row("-", "legacy", "summary 30d, cold (no cache)", &cold));
                measure_requests(&client, &summary(&s.warm), 1).await;
                let warm = measure_requests(&client, &summary(&s.warm), warm_samples).await;
                assert_eq!(warm.last["cached"], true);
                rows.push(row("-", "legacy", "summary 30d, warm (cached)", &warm));
            }
        }
    });
    print_table(
        &format!("Read API latency over HTTP, {events} events over {DAYS} days (target: p99 < 10 ms from TimescaleDB)"),
        &["mode", "source", "request", "samples", "p50", "p99", "max", "events", "users exact"],
        &rows,
    );
    println!("warm = the same window again after one request filled the cache. cold = cache disabled: every request computes its answer.");
    println!("target summary = hourly aggregate for whole settled hours + raw for partial/recent hours + exact distinct users over raw (the dominant cost).");
}
