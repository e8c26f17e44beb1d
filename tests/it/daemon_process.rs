//! The shipped service, `tsmigrate run`, as a process of its own with its defaults (HTTP,
//! relay and scheduled jobs in one process), driven over HTTP and stopped with SIGTERM:
//! it starts while the target is down, loses and doubles nothing across a shutdown under
//! load, counts exactly in its own `/metrics`, guards ingest and admin with the token, and
//! exports shadow-read mismatches as a Prometheus series.
//!
//! Every child process dies with its test ([`Daemon`] kills it on drop).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::fault::{pg_addr, Outage};
use crate::scenario::{prepare_and_dual_write, redis_snapshot, target_counts, Mode};
use crate::servers::Daemon;
use crate::support::{field, TestEnv};

/// How long anything the service does in the background may take before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running `tsmigrate run` child process ([`Daemon`]) and an HTTP client for it.
pub struct Service {
    /// `None` once it was stopped.
    daemon: Option<Daemon>,
    pub addr: SocketAddr,
    http: reqwest::Client,
}

impl Service {
    /// Starts `tsmigrate run <run_options>` in `env` (with `vars` on top of its environment)
    /// and waits until it answers `/health`.
    pub async fn start(env: &TestEnv, run_options: &[&str], vars: &[(&str, &str)]) -> Service {
        // Blocks this thread until the process listens (a moment).
        let daemon = Daemon::start_with(env, None, run_options, vars);
        let service = Service { addr: daemon.addr, daemon: Some(daemon), http: reqwest::Client::new() };
        let s = &service;
        eventually(s, "answered /health", move || async move { s.get("/health", None).await.0 == 200 }).await;
        service
    }

    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::logs).unwrap_or_default()
    }

    /// SIGTERM, then the exit code once it has ended (the runtime keeps serving meanwhile).
    pub async fn terminate(&mut self) -> i32 {
        let daemon = self.daemon.take().expect("the service is running");
        tokio::task::spawn_blocking(move || daemon.stop()).await.expect("wait for tsmigrate run")
    }

    /// SIGTERM: the exit code and everything the process logged, to its last line.
    pub async fn terminate_and_read_log(&mut self) -> (i32, String) {
        let daemon = self.daemon.take().expect("the service is running");
        tokio::task::spawn_blocking(move || daemon.stop_and_read_log()).await.expect("wait for tsmigrate run")
    }

    /// GET `path`: (status, body); status 0 when the request failed.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut request = self.http.get(format!("http://{}{path}", self.addr));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// POST a batch to the ingest endpoint: (status, JSON body).
    pub async fn ingest(&self, body: &str, token: Option<&str>) -> (u16, Value) {
        post_batch(&self.http, self.addr, body, token).await.unwrap_or_else(|e| panic!("ingest request failed: {e}\n{}", self.log()))
    }

    pub async fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics", None).await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        text
    }
}

/// Polls `check` until it holds, failing after [`PATIENCE`] with the service's log.
pub async fn eventually<Fut: std::future::Future<Output = bool>>(service: &Service, what: &str, mut check: impl FnMut() -> Fut) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < PATIENCE, "the service never {what} within {PATIENCE:?}\n--- its stderr ---\n{}", service.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn post_batch(http: &reqwest::Client, addr: SocketAddr, body: &str, token: Option<&str>) -> reqwest::Result<(u16, Value)> {
    let mut request = http.post(format!("http://{addr}/api/v1/analytics")).header("content-type", "application/json").body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// A batch of `n` events with fresh UUID ids (kept as the target's `event_id`), and the ids.
pub fn batch(n: usize) -> (String, Vec<Uuid>) {
    let now = chrono::Utc::now().timestamp_millis();
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let events: Vec<Value> =
        ids.iter().map(|id| json!({"id": id.to_string(), "event_name": "page_view", "category": "navigation", "user_id": "u1", "timestamp": now})).collect();
    (json!({ "events": events }).to_string(), ids)
}

/// The value of one Prometheus series (`name` or `name{labels}`) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|value| value.trim().parse().unwrap_or_else(|e| panic!("{series} has no number ({e}): {value:?}")))
}

/// Clients posting batches of fresh events in a loop until a request is not accepted.
struct Clients {
    accepted: Arc<Mutex<Vec<Uuid>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    fn start(addr: SocketAddr, workers: usize) -> Clients {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::new();
        let tasks = (0..workers)
            .map(|_| {
                let (http, accepted) = (http.clone(), accepted.clone());
                tokio::spawn(async move {
                    loop {
                        let (body, ids) = batch(10);
                        match post_batch(&http, addr, &body, None).await {
                            Ok((202, reply)) => {
                                assert_eq!(reply["dual_write"], Value::Bool(true), "dual-write is on: {reply}");
                                accepted.lock().unwrap().extend(ids);
                            }
                            _ => return,
                        }
                        // A steady stream, not a flood: the test is about shutdown, not throughput.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Clients { accepted, tasks }
    }

    fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    fn all_posting(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }

    /// Waits for every client to stop; returns the ids of every accepted event.
    async fn finish(self) -> Vec<Uuid> {
        for task in self.tasks {
            tokio::time::timeout(PATIENCE, task).await.expect("clients stop once the service is gone").expect("client task");
        }
        let mut ids = self.accepted.lock().unwrap().clone();
        ids.sort();
        ids
    }
}

/// The ids of the members of the events sorted set, read with serde_json alone.
async fn redis_event_ids(env: &TestEnv) -> Vec<Uuid> {
    let mut redis = env.redis().await;
    let members: Vec<String> = redis.zrange(env.keys().events, 0, -1).await.unwrap();
    let mut ids: Vec<Uuid> = members
        .iter()
        .map(|m| {
            let value: Value = serde_json::from_str(m).unwrap_or_else(|e| panic!("member is not JSON ({e}): {m}"));
            value["id"].as_str().and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("member without a UUID id: {m}"))
        })
        .collect();
    ids.sort();
    ids
}

async fn target_event_ids(env: &TestEnv) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM analytics_events_ts ORDER BY event_id").fetch_all(&env.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_starts_without_the_target_and_sigterm_under_load_loses_nothing() {
    let env = TestEnv::new().await;
    // Room for every event the clients send: the cap must not trim any of them.
    env.write_file("tsmigrate.toml", "[redis]\nevent_cap = 10000000\n");
    prepare_and_dual_write(&env, Mode::Postgres);
    let proxy = Outage::start(pg_addr(env.settings.database.url.expose())).await;
    proxy.take_down();
    let through_proxy = proxy.url_through(env.settings.database.url.expose());
    let mut service = Service::start(&env, &[], &[("DATABASE_URL", &through_proxy)]).await;
    assert_eq!(service.get("/ready", None).await.0, 503, "not ready while the target is down");

    // Ingest needs only Redis: batches are accepted while the target is unreachable.
    let clients = Clients::start(service.addr, 4);
    let (s, c, e) = (&service, &clients, &env);
    eventually(s, "accepted 200 events during the outage", move || async move { c.accepted() >= 200 }).await;
    assert_eq!(target_counts(&env).await.0, 0, "nothing reaches the target while it is down");
    let mut redis = env.redis().await;
    // One outbox entry per accepted batch of 10.
    let waiting: u64 = redis.xlen(env.keys().outbox).await.unwrap();
    assert!(waiting * 10 >= 200, "the outbox holds what the target could not take: {waiting} batches");
    let during_outage = clients.accepted();

    // The target returns: the relay in the service catches up by itself.
    proxy.bring_back().await;
    eventually(s, "became ready after the target returned", move || async move { s.get("/ready", None).await.0 == 200 }).await;
    eventually(s, "relayed the events of the outage", move || async move { target_counts(e).await.0 >= during_outage as i64 }).await;

    // SIGTERM while every client is still posting.
    assert!(clients.all_posting(), "every client is still posting when SIGTERM is sent");
    let before_sigterm = clients.accepted();
    let log = service.log();
    let code = service.terminate().await;
    assert_eq!(code, 0, "tsmigrate run exits 0 on SIGTERM\n--- its stderr ---\n{log}");
    let accepted = clients.finish().await;
    let relayed_by_service = target_counts(&env).await.0;

    // Every acknowledged event is in Redis once, and nothing that was not acknowledged.
    assert_eq!(redis_event_ids(&env).await, accepted, "Redis holds exactly the accepted events");
    // The relay finished its batch in flight; what it had not read yet waits in the outbox.
    let drained = env.cli(&["relay", "--once", "--json"]).expect_success().details();
    assert_eq!(target_event_ids(&env).await, accepted, "the target holds every accepted event exactly once");
    let left: u64 = redis.xlen(env.keys().outbox).await.unwrap();
    assert_eq!(left, 0, "the outbox is drained");
    eprintln!(
        "figures: {} events accepted ({during_outage} during the outage, {before_sigterm} before SIGTERM); \
         {relayed_by_service} relayed by the service before it exited, {} by relay --once afterwards",
        accepted.len(),
        field(&drained, "inserted")
    );
    drop(proxy);
}

/// A sole replica that stops lets the jobs lease go on purpose: its log says so, and does
/// not warn of a lost lease (which would send an operator looking for another replica).
#[tokio::test]
async fn a_clean_shutdown_releases_the_jobs_lease_without_warning_of_a_loss() {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let mut service = Service::start(&env, &[], &[("RUST_LOG", "info")]).await;
    let s = &service;
    eventually(s, "took the jobs lease", move || async move { s.log().contains("holds the jobs lease") }).await;

    let (code, log) = service.terminate_and_read_log().await;
    assert_eq!(code, 0, "tsmigrate run exits 0 on SIGTERM\n--- its stderr ---\n{log}");
    assert!(log.contains("released the jobs lease on shutdown"), "the release is logged\n--- its stderr ---\n{log}");
    assert!(!log.contains("lost the jobs lease"), "a clean shutdown is not a lost lease\n--- its stderr ---\n{log}");
    assert!(!log.contains("WARN"), "a clean shutdown of a sole replica warns of nothing\n--- its stderr ---\n{log}");
}

#[tokio::test]
async fn the_services_metrics_count_exactly_what_it_did() {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let service = Service::start(&env, &[], &[]).await;
    const BATCHES: usize = 7;
    const EVENTS_PER_BATCH: usize = 13;
    const EVENTS: usize = BATCHES * EVENTS_PER_BATCH;
    for _ in 0..BATCHES {
        let (body, _) = batch(EVENTS_PER_BATCH);
        assert_eq!(service.ingest(&body, None).await.0, 202);
    }
    // A rejected batch is not counted.
    let (status, _) = service.ingest(r#"{"events":[{"event_name":"click"}]}"#, None).await;
    assert_eq!(status, 400);

    let s = &service;
    eventually(s, "relayed every event", move || async move { metric(&s.metrics().await, "tsmigrate_relay_events_total") == Some(EVENTS as f64) }).await;
    let text = service.metrics().await;
    assert_eq!(metric(&text, "tsmigrate_ingest_events_total"), Some(EVENTS as f64), "{text}");
    assert_eq!(metric(&text, r#"tsmigrate_write_seconds_count{system="redis"}"#), Some(BATCHES as f64), "one Redis write per accepted batch: {text}");
    let target_writes = metric(&text, r#"tsmigrate_write_seconds_count{system="target"}"#).unwrap_or(0.0);
    assert!((1.0..=BATCHES as f64).contains(&target_writes), "the relay wrote in 1..={BATCHES} transactions, not {target_writes}: {text}");
    for kind in ["data", "connection"] {
        assert_eq!(metric(&text, &format!(r#"tsmigrate_relay_errors_total{{kind="{kind}"}}"#)), Some(0.0), "present from the start, and 0: {text}");
    }
    assert_eq!(target_counts(&env).await, (EVENTS as i64, EVENTS as i64));
}

#[tokio::test]
async fn the_api_token_guards_ingest_and_admin_but_not_probes_or_metrics() {
    const TOKEN: &str = "s3cret-token";
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    // Only the HTTP API: no relay or job touches Redis between the snapshots below.
    let service = Service::start(&env, &["--no-relay", "--no-jobs"], &[("TSMIGRATE_API_TOKEN", TOKEN)]).await;
    let (body, _) = batch(3);
    assert_eq!(service.ingest(&body, Some(TOKEN)).await.0, 202, "the right token is accepted");

    let before: BTreeMap<String, Vec<u8>> = redis_snapshot(&env).await;
    assert!(!before.is_empty(), "the accepted batch wrote the legacy keys");
    for token in [None, Some("wrong"), Some("s3cret-token-but-longer")] {
        let (body, _) = batch(5);
        let (status, reply) = service.ingest(&body, token).await;
        assert_eq!(status, 401, "token {token:?}: {reply}");
    }
    assert_eq!(redis_snapshot(&env).await, before, "a refused batch leaves every Redis key as it was");

    for token in [None, Some("wrong")] {
        assert_eq!(service.get("/api/v1/admin/status", token).await.0, 401, "admin status with token {token:?}");
    }
    let (status, text) = service.get("/api/v1/admin/status", Some(TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    let admin: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(field(&admin, "phase"), "prepared");

    // Probes and scrapers need no token.
    assert_eq!(service.get("/health", None).await.0, 200);
    assert_eq!(service.get("/ready", None).await.0, 200);
    let metrics = service.metrics().await;
    assert_eq!(metric(&metrics, "tsmigrate_ingest_events_total"), Some(3.0), "only the authorized batch counted: {metrics}");
}

#[tokio::test]
async fn shadow_mismatches_are_exported_as_a_prometheus_series() {
    let env = TestEnv::new().await;
    // Every shadow read computes the other side afresh.
    env.write_file("tsmigrate.toml", "[http]\ncache_ttl_secs = 0\n");
    let end = tsmigrate::calendar::hour_floor(chrono::Utc::now(), chrono_tz::Tz::UTC);
    env.cli(&["seed", "--events", "1500", "--days", "1", "--users", "40", "--end", &end.to_rfc3339()]).expect_success();
    prepare_and_dual_write(&env, Mode::Postgres);
    env.cli(&["backfill"]).expect_success();
    env.cli(&["shadow", "on"]).expect_success();
    let service = Service::start(&env, &[], &[]).await;
    let window =
        format!("/api/v1/analytics/summary?from={}&to={}", tsmigrate::reads::wire_time(end - chrono::Duration::hours(6)), tsmigrate::reads::wire_time(end));
    let s = &service;
    let comparisons = |n: f64| move || async move { metric(&s.metrics().await, r#"tsmigrate_shadow_comparisons_total{endpoint="summary"}"#) == Some(n) };

    let (status, text) = service.get(&window, None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["source"], "legacy");
    eventually(s, "compared the first answer", comparisons(1.0)).await;
    let clean = service.metrics().await;
    assert_eq!(metric(&clean, r#"tsmigrate_shadow_mismatches_total{endpoint="summary"}"#).unwrap_or(0.0), 0.0, "identical data: {clean}");

    // The target loses the window's three newest events behind the migration's back: the
    // last hours of a window are read raw (they are not settled into the aggregate yet), so
    // the answer must change whatever the time of day.
    let deleted = sqlx::query(
        "DELETE FROM analytics_events_ts WHERE (event_id, time) IN
            (SELECT event_id, time FROM analytics_events_ts WHERE time >= $1 AND time < $2 ORDER BY time DESC LIMIT 3)",
    )
    .bind(end - chrono::Duration::hours(6))
    .bind(end)
    .execute(&env.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(deleted, 3);
    assert_eq!(service.get(&window, None).await.0, 200);
    eventually(s, "compared the second answer", comparisons(2.0)).await;
    let text = service.metrics().await;
    assert_eq!(metric(&text, r#"tsmigrate_shadow_mismatches_total{endpoint="summary"}"#), Some(1.0), "{text}");
}
