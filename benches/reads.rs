//! Read API latency as users run it: the real `tsmigrate run` with its defaults (HTTP,
//! relay and jobs in process; the `user_sets` job builds the sets) driven from outside over
//! HTTP, cache off (`--config` with `http.cache_ttl_secs = 0`, so every request computes its
//! answer), after cutover (reads from the target). For 3 000 000 and 10 000 000 events over
//! 30 days from 50 000 users, every read endpoint: the first request after `/ready` says 200
//! (after a start), then p50/p99 of the 30-day summary, the 30-day comparison (both
//! periods), 30 days of popular asset types, hourly rows over 7 days and over 24 hours for
//! one event type, intervals of 10 minutes over 24 hours and of an hour over 7 days. The
//! raw-row route (the answers before user sets: aggregates and raw rows) is not something
//! the API offers, so it is measured through the library (`reads::Route::RawRows`) against
//! the same database in the same run, and its answers are checked to equal the sets' field
//! for field.
//!
//! Events are loaded with SQL straight into `analytics_events_ts` (the write path is not
//! what is measured here), aggregates refreshed, chunks older than 7 days in the
//! columnstore as the policy would have done. Also reported: the set build time per day
//! of events (`tsmigrate user-sets build`, timed), the sets' bytes per day, the daemon's
//! peak memory.
//!
//! With `TSMIGRATE_BENCH_READ_URL` (a hot standby of the server in
//! `TSMIGRATE_TEST_DATABASE_URL`; `TSMIGRATE_BENCH_REPLICA=1 ./scripts/bench.sh reads` starts a
//! private primary and standby, `scripts/pg-replica.sh`), the same requests are measured in the
//! same run on a second daemon whose `database.read_url` is the standby, once it has caught up,
//! and its answers are checked to equal the primary's.
//!
//! `./scripts/bench.sh reads` or `cargo bench --bench reads`. TSMIGRATE_BENCH_EVENTS=N
//! measures one size instead of both; TSMIGRATE_BENCH_SAMPLES (default 200) and
//! TSMIGRATE_BENCH_RAW_SAMPLES (default 3) set the sample counts.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use support::*;
use tsmigrate::reads::{self, ReadContext, ReadSource, Request, Route};

const DAYS: i64 = 30;
const USERS: i64 = 50_000;
const CHUNK_ROWS: i64 = 1_000_000;
/// Requests per endpoint before measuring: every pooled connection has prepared its
/// statements (a long-running daemon's steady state).
const WARMUP: usize = 150;

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

/// The target with `events` loaded, its aggregates refreshed, old chunks compressed.
async fn loaded(mode: &str, events: i64) -> (BenchEnv, PgPool) {
    let env = BenchEnv::new("reads");
    println!("[{mode}, {events} events] preparing {}", env.name);
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
    let storage = tsmigrate::store::StorageMode::parse(mode).expect("mode");
    let store = tsmigrate::store::open(storage, pool.clone());
    tsmigrate::store::aggregates::refresh(&*store, end - chrono::Duration::days(DAYS + 1), end, chrono_tz::Tz::UTC, 90).await.expect("refresh");
    let compressed = store.compress_older_than(7).await.expect("compress");
    sqlx::query("ANALYZE").execute(&pool).await.expect("analyze");
    println!("[{mode}] loaded, aggregates refreshed, {compressed} chunks compressed in {:.0}s", started.elapsed().as_secs_f64());
    env.psql("UPDATE tsmigrate.migration_state SET read_source = 'target'");
    (env, pool)
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn p(&self, p: f64) -> String {
        ms(percentile(&self.0, p))
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `from=…&to=…` for the `days` days before `now`.
fn wire_window(now: DateTime<Utc>, days: i64) -> String {
    format!("from={}&to={}", reads::wire_time(now - chrono::Duration::days(days)), reads::wire_time(now))
}

async fn over_http(client: &reqwest::Client, url: &str, samples: usize) -> (Latencies, Value) {
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
    assert_eq!(last["cached"], false, "cold means computed: {last}");
    latencies.sort();
    (Latencies(latencies), last)
}

async fn in_process(ctx: &ReadContext, request: &Request, samples: usize) -> (Latencies, reads::Answer) {
    let mut latencies = Vec::with_capacity(samples);
    let mut last = None;
    for _ in 0..samples {
        let started = Instant::now();
        last = Some(ReadSource::Target.answer(ctx, request).await.expect("raw-row answer"));
        latencies.push(started.elapsed());
    }
    latencies.sort();
    (Latencies(latencies), last.expect("at least one sample"))
}

async fn context(env: &BenchEnv, pool: &PgPool, now: DateTime<Utc>, route: Route) -> ReadContext {
    let redis = tsmigrate::db::redis(&env.settings).await.expect("redis");
    ReadContext::new(tsmigrate::context::Context::with_target(Arc::new(env.settings.clone()), pool.clone()), redis, now, route)
}

/// One size: its table rows, the summary p99 over HTTP, and the report lines.
struct SizeMeasured {
    rows: Vec<Vec<String>>,
    summary_p99: Duration,
    notes: Vec<String>,
}

// Long: one run end to end (load, build, serve, measure both routes, check them equal),
// kept in one place so the order of what is measured stays visible.
async fn measure_size(mode: &str, events: i64, samples: usize, raw_samples: usize) -> SizeMeasured {
    let (env, pool) = loaded(mode, events).await;
    let build = support::measure(env.command(&["user-sets", "build", "--json"]));
    let envelope: Value = serde_json::from_str(&build.stdout).expect("build report");
    let built = &envelope["details"];
    let status = tsmigrate::store::user_sets::report::status(&pool, Utc::now()).await.expect("status");
    let config = std::env::temp_dir().join(format!("{}.toml", env.name));
    std::fs::write(&config, "[http]\ncache_ttl_secs = 0\n").expect("config");
    let port = free_port();
    let daemon = start_daemon(&env, port, &["--config", config.to_str().expect("path")]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/v1/analytics");
    let now = reads::minute_floor(Utc::now());
    let window = reads::TimeRange { from: now - chrono::Duration::days(DAYS), to: now };
    let (week, day) = (wire_window(now, 7), wire_window(now, 1));
    let urls = [
        ("summary 30d", format!("{base}/summary?{}", wire_window(now, DAYS))),
        ("comparison 30d vs the 30d before", format!("{base}/comparison?period=30d")),
        ("popular-asset-types 30d", format!("{base}/popular-asset-types?days=30")),
        ("hourly 7d", format!("{base}/hourly?{week}")),
        ("hourly 24h, one event type", format!("{base}/hourly?{day}&event_name=click&category=interaction")),
        ("intervals 10m over 24h", format!("{base}/intervals?bucket=10m&since=24h")),
        ("intervals 1h over 7d", format!("{base}/intervals?bucket=1h&since=7d")),
    ];
    // The first request of each endpoint after `/ready` says 200: what a user meets after a
    // deploy or a restart.
    let ready = wait_until(Duration::from_secs(60), || http_get_ok(port, "/ready"));
    assert!(ready.is_some(), "tsmigrate run did not become ready");
    let mut first = Vec::new();
    for (_, url) in &urls {
        let (latency, _) = over_http(&client, url, 1).await;
        first.push(latency.p(1.0));
    }
    let mut rows = Vec::new();
    let mut summary_p99 = Duration::ZERO;
    let mut http_answers = Vec::new();
    for ((name, url), first) in urls.iter().zip(first) {
        over_http(&client, url, WARMUP).await;
        let (latencies, answer) = over_http(&client, url, samples).await;
        if *name == "summary 30d" {
            summary_p99 = percentile(&latencies.0, 0.99);
        }
        rows.push(vec![
            events.to_string(),
            name.to_string(),
            "user sets (HTTP, tsmigrate run)".into(),
            samples.to_string(),
            first,
            latencies.p(0.5),
            latencies.p(0.99),
        ]);
        http_answers.push(answer);
    }
    let peak = peak_rss_kib(daemon.id()).unwrap_or(0);
    stop(daemon);
    let mut notes = Vec::new();
    if let Ok(read_base) = std::env::var("TSMIGRATE_BENCH_READ_URL") {
        let read_url = tsmigrate::config::SecretUrl::new(read_base).with_database(&env.name);
        let vars = [("DATABASE_READ_URL", read_url.expose())];
        let caught_up = wait_until(Duration::from_secs(300), || {
            let out = env.command(&["status", "--json"]).envs(vars.iter().copied()).output().expect("status");
            let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            status["details"]["read_replica"]["why"] == "within_limit"
        });
        assert!(caught_up.is_some(), "the standby did not catch up");
        let port = free_port();
        let daemon = start_daemon_with(&env, port, &["--config", config.to_str().expect("path")], &vars);
        let replica_base = format!("http://127.0.0.1:{port}/api/v1/analytics");
        let replica_urls: Vec<String> = urls.iter().map(|(_, url)| url.replacen(&base, &replica_base, 1)).collect();
        let mut same = true;
        for (((name, _), url), primary_answer) in urls.iter().zip(&replica_urls).zip(&http_answers) {
            over_http(&client, url, WARMUP).await;
            let (latencies, answer) = over_http(&client, url, samples).await;
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    for k in ["as_of", "fresh_until", "cached"] {
                        o.remove(k);
                    }
                }
                v
            };
            same &= strip(&answer) == strip(primary_answer);
            rows.push(vec![
                events.to_string(),
                name.to_string(),
                "user sets (HTTP), read replica".into(),
                samples.to_string(),
                "-".into(),
                latencies.p(0.5),
                latencies.p(0.99),
            ]);
        }
        let metrics = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.expect("metrics").text().await.expect("metrics text");
        let on_replica = metrics.lines().find(|l| l.starts_with(r#"tsmigrate_reads_total{database="replica""#)).unwrap_or("-").to_string();
        stop(daemon);
        notes.push(format!("{events} events: read replica answers equal the primary's (as_of aside): {same}; {on_replica}"));
    }
    // The same questions as the HTTP rows of the same names.
    let requests = [
        ("summary 30d", Request::Summary(window)),
        ("comparison 30d vs the 30d before", Request::comparison(chrono::Duration::days(DAYS), now).expect("period")),
        ("popular-asset-types 30d", Request::popular(30, now).expect("days")),
        ("hourly 7d", Request::Hourly { range: reads::TimeRange { from: now - chrono::Duration::days(7), to: now }, filter: Default::default() }),
        ("intervals 10m over 24h", Request::intervals(chrono::Duration::minutes(10), chrono::Duration::hours(24), now).expect("intervals")),
    ];
    let (by_sets, by_rows) = (context(&env, &pool, now, Route::Sets).await, context(&env, &pool, now, Route::RawRows).await);
    let mut identical = true;
    for (name, request) in &requests {
        let (latencies, raw_answer) = in_process(&by_rows, request, raw_samples).await;
        identical &= ReadSource::Target.answer(&by_sets, request).await.expect("sets answer") == raw_answer;
        rows.push(vec![
            events.to_string(),
            name.to_string(),
            "raw rows (library, same run)".into(),
            raw_samples.to_string(),
            "-".into(),
            latencies.p(0.5),
            latencies.p(0.99),
        ]);
    }
    let days = built["built"]["days"].as_f64().unwrap_or(0.0).max(1.0);
    notes.extend([
        format!(
            "{events} events: sets built in {:.1}s = {:.2}s per day of events ({} minutes, {} hours, {} days; peak RSS of the build {}); {} per day of events in sets",
            build.wall.as_secs_f64(),
            build.wall.as_secs_f64() / days,
            built["built"]["minutes"],
            built["built"]["hours"],
            built["built"]["days"],
            mib(build.peak_rss_kib),
            status.bytes_per_day.map(|b| format!("{:.0} KiB", b as f64 / 1024.0)).unwrap_or_else(|| "-".into())
        ),
        format!("{events} events: daemon peak RSS {}; sets and raw-row answers identical field for field: {identical}", mib(peak)),
        format!("{events} events: HTTP answers: summary {} users exact={}", http_answers[0]["unique_users"], http_answers[0]["unique_users_exact"]),
    ]);
    drop(pool);
    let _ = std::fs::remove_file(config);
    SizeMeasured { rows, summary_p99, notes }
}

fn main() {
    drop_leftovers("reads");
    let sizes: Vec<i64> = match std::env::var("TSMIGRATE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()) {
        Some(n) => vec![n],
        None => vec![3_000_000, 10_000_000],
    };
    let samples = env_number("TSMIGRATE_BENCH_SAMPLES", 200);
    let raw_samples = env_number("TSMIGRATE_BENCH_RAW_SAMPLES", 3);
    let mode = *storage_modes().last().expect("a storage mode");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let measured: Vec<SizeMeasured> = runtime.block_on(async {
        let mut out = Vec::new();
        for events in &sizes {
            out.push(measure_size(mode, *events, samples, raw_samples).await);
        }
        out
    });
    let rows: Vec<Vec<String>> = measured.iter().flat_map(|m| m.rows.clone()).collect();
    print_table(
        &format!("Read API, cold (cache off), {mode} target, {DAYS} days, {USERS} users (target: every endpoint p99 < 10 ms at 3M and 10M events, the first requests included; latency flat in the event count)"),
        &["events", "request", "route", "samples", "first after start", "p50", "p99"],
        &rows,
    );
    for m in &measured {
        for note in &m.notes {
            println!("{note}");
        }
    }
    if let [small, large] = &measured[..] {
        println!("summary p99, 10M / 3M: {:.2}x", large.summary_p99.as_secs_f64() / small.summary_p99.as_secs_f64().max(1e-9));
    }
}
