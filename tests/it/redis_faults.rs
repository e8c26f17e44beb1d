//! Redis faults that leave a connection open with nothing behind it — a server that stops
//! answering (SIGSTOP), a network that silently drops an established connection — and a
//! Redis that refuses writes (OOM). `tsmigrate run` must answer within its deadlines, say in
//! a 503 only what it knows, replace the dead connection, tell the truth on `/ready` and
//! `/metrics` while it lasts, and a tracker that retries with the same ids must end with every
//! event once in the target.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::servers::{Daemon, RedisOptions, RedisServer};
use crate::support::{eventually, TestEnv};

/// The Redis command deadline of these tests' daemons; a request must be answered within
/// twice that, or the client gives up and the test fails.
const DEADLINE_MS: u64 = 1500;

fn config(env: &TestEnv) -> std::path::PathBuf {
    env.write_file(
        "redis-deadlines.toml",
        &format!("[redis]\nresponse_timeout_ms = {DEADLINE_MS}\nconnect_timeout_ms = 500\nrelay_block_ms = 200\n[migration]\ndual_write_check_secs = 1\n"),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_millis(2 * DEADLINE_MS)).build().unwrap()
}

/// A batch as a tracker keeps it to resend: events with an id and a timestamp, and (the same
/// count) events with a timestamp and no id, whose identity is their content.
fn batch(name: &str, n: usize) -> (Vec<String>, Value) {
    let now = chrono::Utc::now().timestamp_millis();
    let ids: Vec<String> = (0..n).map(|i| format!("{name}-{i}")).collect();
    let mut events: Vec<Value> =
        ids.iter().map(|id| json!({"id": id, "event_name": "page_view", "category": "navigation", "timestamp": now, "properties": {"batch": name}})).collect();
    events.extend((0..n).map(|i| json!({"event_name": "download", "category": "asset", "timestamp": now, "properties": {"batch": name, "n": i}})));
    (ids, json!({ "events": events }))
}

/// `None`: no answer within the client's deadline.
async fn post(client: &reqwest::Client, daemon: &Daemon, body: &Value) -> Option<(u16, Value)> {
    let reply = client.post(daemon.url("/api/v1/analytics")).header("content-type", "application/json").body(body.to_string()).send().await.ok()?;
    let status = reply.status().as_u16();
    Some((status, serde_json::from_str(&reply.text().await.ok()?).unwrap_or_default()))
}

async fn get(client: &reqwest::Client, daemon: &Daemon, path: &str) -> Option<(u16, String)> {
    let reply = client.get(daemon.url(path)).send().await.ok()?;
    Some((reply.status().as_u16(), reply.text().await.ok()?))
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// Rows in the target for these batches: (rows, distinct (event_id, time), events with an id).
async fn rows(env: &TestEnv, names: &[&str]) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT (event_id, time)) FROM analytics_events_ts WHERE properties->>'batch' = ANY($1)")
        .bind(names)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

fn says_unknown(body: &Value) -> bool {
    body["outcome"] == "unknown" && body["error"].as_str().is_some_and(|e| e.contains("retrying with the same ids is safe"))
}

fn says_nothing_written(body: &Value) -> bool {
    body["outcome"].is_null() && body["error"].as_str().is_some_and(|e| e.contains("nothing was written"))
}

/// A tracker resending `body` until it is accepted, for at most `within`; returns the 503
/// bodies it got and when it was accepted.
async fn resend_until_accepted(client: &reqwest::Client, daemon: &Daemon, body: &Value, within: Duration) -> (Vec<Value>, Instant) {
    let deadline = Instant::now() + within;
    let mut refused = Vec::new();
    loop {
        match post(client, daemon, body).await {
            Some((202, _)) => return (refused, Instant::now()),
            Some((503, reply)) => refused.push(reply),
            other => panic!("a request is answered within its deadline, with 202 or 503: {other:?}"),
        }
        assert!(Instant::now() < deadline, "not accepted within {within:?}: {refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prepared, dual-writing, `tsmigrate run` started, and a first batch of 20 events relayed.
async fn dual_writing_with_a_first_batch(env: &TestEnv, over: &[(&str, &str)], name: &str) -> (Daemon, reqwest::Client) {
    env.cli_with_env(&["prepare", "--mode", "postgres"], over).expect_success();
    env.cli_with_env(&["dual-write", "start"], over).expect_success();
    let daemon = Daemon::start(env, Some(&config(env)), over);
    let client = client();
    let (_, first) = batch(name, 10);
    assert_eq!(post(&client, &daemon, &first).await.map(|r| r.0), Some(202));
    eventually("the first batch in the target", Duration::from_secs(30), || async { (rows(env, &[name]).await.0 == 20).then_some(()) }).await;
    (daemon, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_gets_answers_within_the_deadline_and_a_resent_batch_lands_once() {
    let env = TestEnv::new().await;
    let mut redis = RedisServer::start(RedisOptions::default());
    let url = redis.url();
    let over = [("REDIS_URL", url.as_str())];
    let (daemon, client) = dual_writing_with_a_first_batch(&env, &over, "stopa").await;

    redis.pause();
    // While it hangs: the request is answered (503) within the deadline, saying what it knows.
    let (_, second) = batch("stopb", 10);
    let (status, refused) = post(&client, &daemon, &second).await.expect("answered within twice the command deadline while Redis hangs");
    assert_eq!(status, 503, "{refused}");
    assert!(says_unknown(&refused) || says_nothing_written(&refused), "{refused}");
    let (ready, why) = get(&client, &daemon, "/ready").await.expect("/ready answers while Redis hangs");
    assert_eq!(ready, 503, "{why}");
    let why: Value = serde_json::from_str(&why).unwrap();
    assert_eq!((why["redis"].clone(), why["target"].clone()), (json!(false), json!(true)), "{why}");
    assert!(why["reasons"][0].as_str().is_some_and(|r| r.starts_with("Redis d")), "the reason names Redis: {why}");
    // `status` from another terminal: failing, naming Redis (it cannot connect in time).
    let status = env.cli_with_env(&["status", "--check", "--json"], &over);
    status.expect_code(2);
    let verdict = status.json()["details"].clone();
    assert_eq!(verdict["verdict"], "failing", "{verdict}");
    assert!(verdict["verdict_reason"].as_str().unwrap().starts_with("Redis is unreachable"), "{verdict}");
    let timeouts = eventually("the timeouts in the metrics", Duration::from_secs(15), || async {
        let text = get(&client, &daemon, "/metrics").await?.1;
        let shared = metric(&text, r#"tsmigrate_redis_command_timeouts_total{connection="shared"}"#)?;
        let relay = metric(&text, r#"tsmigrate_relay_errors_total{kind="redis"}"#)?;
        (shared >= 1.0 && relay >= 1.0).then_some((shared, relay))
    })
    .await;

    redis.resume();
    let resumed = Instant::now();
    // What the 503 said is what happened: "nothing was written" means none of it reached
    // Redis; "unknown" may have, now that the server reads what was sent before it stopped.
    let mut direct = env.settings.redis.clone();
    direct.url = tsmigrate::config::SecretUrl::new(&url);
    let mut conn = tsmigrate::connect::redis(&direct, tsmigrate::connect::RedisTimeouts::from_settings(&direct)).await.unwrap();
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let member = second["events"][0].to_string();
    let events_key = env.keys().events;
    let members: Vec<String> = conn.zrange(&events_key, 0, -1).await.unwrap();
    let reached_later = members.iter().filter(|m| m.contains(r#""batch":"stopb""#)).count();
    if says_nothing_written(&refused) {
        assert_eq!(reached_later, 0, "a 503 that said nothing was written: {member}");
    }

    let (retried, accepted_at) = resend_until_accepted(&client, &daemon, &second, Duration::from_secs(15)).await;
    let recovery = accepted_at - resumed;
    eventually("both batches in the target", Duration::from_secs(30), || async { (rows(&env, &["stopa", "stopb"]).await.0 >= 40).then_some(()) }).await;
    let (landed, distinct) = rows(&env, &["stopa", "stopb"]).await;
    let in_redis: Vec<String> = conn.zrange(&events_key, 0, -1).await.unwrap();
    // The legacy counters count every batch Redis ran: a resend of one that arrived again.
    let counted: Option<i64> = conn.hget(env.keys().event_counters, "page_view").await.unwrap();
    println!(
        "SIGSTOP: 2 batches of 20 events sent, 503 while stopped ({}), {reached_later} of the refused batch's events reached Redis after SIGCONT, \
         accepted on resend {} ms after SIGCONT ({} more 503s); landed {landed}, distinct {distinct}, in Redis {}; \
         legacy page_view counter {counted:?} for 20 such events; timeouts {timeouts:?}",
        if says_unknown(&refused) { "outcome unknown" } else { "nothing written" },
        recovery.as_millis(),
        retried.len(),
        in_redis.len()
    );
    assert_eq!((landed, distinct), (40, 40), "every event once, none lost, none doubled");
    assert_eq!(in_redis.len(), 40, "one member per event in Redis too");
    let (ready, why) = get(&client, &daemon, "/ready").await.unwrap();
    assert_eq!(ready, 200, "{why}");
    assert_eq!(daemon.stop(), 0);
}

/// A TCP forwarder that can silently stop forwarding on the connections open at that
/// moment (no RST, sockets stay open: a NAT or load balancer that dropped them), while new
/// connections pass.
struct Freezer {
    addr: std::net::SocketAddr,
    /// Connections numbered up to this one are frozen.
    frozen_up_to: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Freezer {
    async fn start(upstream: std::net::SocketAddr) -> Freezer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen_up_to, opened) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (frozen, counter) = (frozen_up_to.clone(), opened.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, number, frozen.clone()));
                tokio::spawn(pump(server_read, client_write, number, frozen.clone()));
            }
        });
        Freezer { addr, frozen_up_to, opened, accept }
    }

    /// From now on, bytes on every connection opened so far go nowhere.
    fn freeze_existing(&self) -> u64 {
        let open = self.opened.load(Ordering::SeqCst);
        self.frozen_up_to.store(open, Ordering::SeqCst);
        open
    }

    fn connections(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies bytes until either side closes; on a frozen connection reads and drops them.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, number: u64, frozen_up_to: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if number <= frozen_up_to.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dropped_redis_connection_is_replaced_and_a_resent_batch_lands_once() {
    let env = TestEnv::new().await;
    let upstream = url::Url::parse(crate::support::redis_url().expose()).unwrap();
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], upstream.port().unwrap_or(6379)));
    let freezer = Freezer::start(upstream).await;
    let mut through = url::Url::parse(crate::support::redis_url().expose()).unwrap();
    through.set_port(Some(freezer.addr.port())).unwrap();
    let through = through.to_string();
    let over = [("REDIS_URL", through.as_str())];
    let (daemon, client) = dual_writing_with_a_first_batch(&env, &over, "hunga").await;

    let frozen = freezer.freeze_existing();
    let dropped = Instant::now();
    // The tracker resends its batch until accepted: the first tries find the dead connection
    // (503 within the deadline, outcome unknown), then the daemon connects afresh.
    let (second_ids, second) = batch("hungb", 10);
    let (refused, accepted_at) = resend_until_accepted(&client, &daemon, &second, Duration::from_secs(20)).await;
    let recovery = accepted_at - dropped;
    assert!(refused.iter().all(|r| says_unknown(r) || says_nothing_written(r)), "{refused:?}");
    assert!(!refused.is_empty(), "the first try met the dropped connection");
    let (_, third) = batch("hungc", 10);
    assert_eq!(post(&client, &daemon, &third).await.map(|r| r.0), Some(202), "later requests go through the new connection");
    // The relay's connection was dropped too; it is replaced and the batches land, once.
    eventually("all batches in the target", Duration::from_secs(30), || async { (rows(&env, &["hunga", "hungb", "hungc"]).await.0 >= 60).then_some(()) }).await;
    let (landed, distinct) = rows(&env, &["hunga", "hungb", "hungc"]).await;
    let text = get(&client, &daemon, "/metrics").await.unwrap().1;
    let replaced_shared = metric(&text, r#"tsmigrate_redis_connections_replaced_total{connection="shared"}"#).unwrap();
    let replaced_relay = metric(&text, r#"tsmigrate_redis_connections_replaced_total{connection="relay"}"#).unwrap();
    let timeouts = metric(&text, r#"tsmigrate_redis_command_timeouts_total{connection="shared"}"#).unwrap();
    println!(
        "hung connection: {frozen} connections frozen; 3 batches of 20 events sent, {} 503s before the resend was accepted {} ms after the drop ({} unknown outcome); landed {landed}, distinct {distinct} of {}; replaced shared {replaced_shared}, relay {replaced_relay}; shared timeouts {timeouts}; {} connections through the proxy",
        refused.len(),
        recovery.as_millis(),
        refused.iter().filter(|r| says_unknown(r)).count(),
        second_ids.len() * 6,
        freezer.connections()
    );
    assert_eq!((landed, distinct), (60, 60), "every event once: none lost, none doubled");
    assert!(replaced_shared >= 1.0 && replaced_relay >= 1.0 && timeouts >= 1.0, "{text}");
    let (ready, why) = get(&client, &daemon, "/ready").await.unwrap();
    assert_eq!(ready, 200, "{why}");
    let (_, health) = get(&client, &daemon, "/health").await.unwrap();
    assert!(health.contains("\"redis_connections_replaced\":"), "{health}");
    assert_eq!(daemon.stop(), 0);
}

/// A Redis at `maxmemory` with `noeviction` answers PING and refuses every write: `/ready`
/// says so, and ingest's 503 says that nothing was written (Redis refused the `MULTI`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_out_of_memory_is_not_ready_and_ingest_says_nothing_was_written() {
    let env = TestEnv::new().await;
    let server = RedisServer::start(RedisOptions::default());
    let mut settings = env.settings.clone();
    settings.redis.url = tsmigrate::config::SecretUrl::new(server.url());
    let mut redis = tsmigrate::db::redis(&settings).await.unwrap();
    let state = tsmigrate::http::AppState::ingest_only(settings, redis.clone()).unwrap();
    let app = tsmigrate::http::app(state);
    let call = |request: axum::http::Request<axum::body::Body>| {
        let app = app.clone();
        async move {
            let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
            let status = response.status().as_u16();
            let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap_or_default())
        }
    };
    let ready = || axum::http::Request::get("/ready").body(axum::body::Body::empty()).unwrap();
    let (_, body) = batch("oom", 5);
    let ingest =
        || axum::http::Request::post("/api/v1/analytics").header("content-type", "application/json").body(axum::body::Body::from(body.to_string())).unwrap();
    assert_eq!(call(ready()).await.0, 200);

    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1").query_async(&mut redis).await.unwrap();
    let (status, why) = call(ready()).await;
    assert_eq!(status, 503, "{why}");
    assert!(why["reasons"][0].as_str().unwrap().contains("out of memory"), "{why}");
    let (status, reply) = call(ingest()).await;
    assert_eq!(status, 503, "{reply}");
    assert!(says_nothing_written(&reply), "{reply}");
    let stored: u64 = redis.zcard(env.keys().events).await.unwrap();
    assert_eq!(stored, 0, "and nothing was");
    let url = server.url();
    let status = env.cli_with_env(&["status", "--check", "--json"], &[("REDIS_URL", url.as_str())]);
    status.expect_code(2);
    let reason = status.json()["details"]["verdict_reason"].as_str().unwrap().to_string();
    assert!(reason.contains("refuses writes"), "status names the full Redis: {reason}");

    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0").query_async(&mut redis).await.unwrap();
    assert_eq!(call(ready()).await.0, 200);
    assert_eq!(call(ingest()).await.0, 202);
}

/// Ingest batches the eviction test sends at most (it stops at the first eviction).
const BATCHES: usize = 1000;

/// An evicting Redis (`allkeys-lru` with a `maxmemory`) under the outbox: `dual-write start`
/// refuses it unless forced (audited), `status` is failing while it lasts, evictions during
/// dual-write are recorded as a possible loss with their window, a copy that cannot read the
/// evicted events does not close it, and only an audited acceptance does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_refused_reported_failing_and_its_losses_stay_open_until_accepted() {
    let env = TestEnv::new().await;
    let server = RedisServer::start(RedisOptions::default());
    let url = server.url();
    let over = [("REDIS_URL", url.as_str())];
    let mut direct = env.settings.redis.clone();
    direct.url = tsmigrate::config::SecretUrl::new(&url);
    let mut redis = tsmigrate::connect::redis(&direct, tsmigrate::connect::RedisTimeouts::from_settings(&direct)).await.unwrap();
    let info: redis::InfoDict = redis::cmd("INFO").arg("memory").query_async(&mut redis).await.unwrap();
    let baseline: u64 = info.get("used_memory").unwrap();
    // Room for the clients' buffers and a few hundred batches, then evictions.
    let limit = baseline + 4 * 1024 * 1024;
    for (name, value) in [("maxmemory-policy", "allkeys-lru".to_string()), ("maxmemory", limit.to_string())] {
        let _: () = redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query_async(&mut redis).await.unwrap();
    }

    env.cli_with_env(&["prepare", "--mode", "postgres"], &over).expect_success();
    let refused = env.cli_with_env(&["dual-write", "start", "--json"], &over);
    refused.expect_code(3);
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("evicts any key"), "{}", refused.stdout);
    let forced = env.cli_with_env(&["dual-write", "start", "--force", "--reason", "test: accepting an evicting Redis", "--json"], &over);
    forced.expect_success();
    let audit: Vec<(String, bool, Option<String>)> =
        sqlx::query_as("SELECT outcome, forced, reason FROM tsmigrate.audit_log WHERE command = 'dual-write start' ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(audit.iter().map(|a| (a.0.as_str(), a.1)).collect::<Vec<_>>(), [("refused", false), ("done", true)], "{audit:?}");
    assert_eq!(audit[1].2.as_deref(), Some("test: accepting an evicting Redis"));
    let status = env.cli_with_env(&["status", "--check", "--json"], &over);
    status.expect_code(2);
    assert_eq!(status.json()["details"]["verdict"], "failing", "{}", status.stdout);
    assert!(status.json()["details"]["verdict_reason"].as_str().unwrap().contains("evicts any key"), "{}", status.stdout);

    // The relay is behind (not running): ingest fills Redis until it evicts.
    let daemon = Daemon::start_with(&env, Some(&config(&env)), &["--no-relay"], &over);
    let client = client();
    let (mut sent, mut accepted, mut first_eviction) = (0, 0, None);
    for n in 0..BATCHES {
        let (_, body) = batch(&format!("evict{n}"), 25);
        sent += 50;
        match post(&client, &daemon, &body).await {
            Some((202, _)) => accepted += 50,
            other => panic!("an evicting Redis takes every write: {other:?}"),
        }
        let stats: redis::InfoDict = redis::cmd("INFO").arg("stats").query_async(&mut redis).await.unwrap();
        // Past the first eviction, as much again: what a tracker keeps sending meanwhile.
        if stats.get::<u64>("evicted_keys").unwrap_or(0) > 0 {
            first_eviction.get_or_insert(n);
        }
        if first_eviction.is_some_and(|first| n >= 2 * first) {
            break;
        }
    }
    let stats: redis::InfoDict = redis::cmd("INFO").arg("stats").query_async(&mut redis).await.unwrap();
    let evicted: u64 = stats.get("evicted_keys").unwrap();
    assert!(evicted > 0, "Redis evicted keys after {sent} events");
    // The daemon records the evictions as a possible loss, with their window.
    let (gap_id, cause, keys): (i64, String, Option<i64>) = eventually("the evictions recorded as a possible loss", Duration::from_secs(45), || async {
        sqlx::query_as("SELECT id, cause, evicted_keys FROM tsmigrate.outbox_gaps WHERE cause = 'evicted'").fetch_optional(&env.pool).await.unwrap()
    })
    .await;
    assert_eq!(cause, "evicted");
    let text = get(&client, &daemon, "/metrics").await.unwrap().1;
    assert_eq!(metric(&text, "tsmigrate_redis_evicting "), Some(1.0), "{text}");
    assert!(metric(&text, "tsmigrate_redis_evicted_keys ").is_some_and(|n| n > 0.0), "{text}");
    assert_eq!(daemon.stop(), 0);

    // What Redis still holds reaches the target; the evicted events cannot.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0").query_async(&mut redis).await.unwrap();
    env.cli_with_env(&["relay", "--once"], &over).expect_success();
    let window: (Option<chrono::DateTime<chrono::Utc>>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT window_from, window_to FROM tsmigrate.outbox_gaps WHERE id = $1").bind(gap_id).fetch_one(&env.pool).await.unwrap();
    let from = window.0.unwrap_or(window.1) - chrono::Duration::seconds(1);
    let to = window.1 + chrono::Duration::seconds(1);
    let (from, to) = (from.to_rfc3339(), to.to_rfc3339());
    let copy = env.cli_with_env(&["backfill", "--from", &from, "--to", &to, "--json"], &over);
    let copied = copy.expect_success().details();
    // (A gap the relay recorded for the evicted consumer group is repaired when Redis holds
    // events of its window; the eviction's is not: evicted events cannot be read back.)
    assert!(copied["gaps_lost"].as_array().unwrap().contains(&json!(gap_id)), "evicted events cannot be read back: {copied}");
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tsmigrate.outbox_gaps WHERE id = $1 AND repaired_at IS NULL").bind(gap_id).fetch_one(&env.pool).await.unwrap();
    assert_eq!(open, 1, "the copy did not close the loss");
    let text = env.cli_with_env(&["backfill", "--from", &from, "--to", &to], &over).expect_success().stdout.clone();
    assert!(text.contains("LOSS: recorded gap(s)"), "{text}");

    let names: Vec<String> = (0..BATCHES).map(|n| format!("evict{n}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (landed, distinct) = rows(&env, &names).await;
    let lost = accepted as i64 - distinct;
    println!(
        "eviction: {sent} events sent, {accepted} accepted, {evicted} keys evicted, {landed} landed ({distinct} distinct), {lost} lost, {} doubled; \
         recorded possible loss #{gap_id} ({keys:?} keys)",
        landed - distinct
    );
    assert_eq!(landed, distinct, "nothing doubled");

    let accepted_loss = env.cli_with_env(&["backfill", "--from", &from, "--to", &to, "--accept-loss", "test: the tracker cannot resend", "--json"], &over);
    let closed = accepted_loss.expect_success().details();
    assert!(closed["gaps_accepted_as_lost"].as_array().unwrap().contains(&json!(gap_id)), "{closed}");
    let reason: Option<String> =
        sqlx::query_scalar("SELECT acknowledged_reason FROM tsmigrate.outbox_gaps WHERE id = $1").bind(gap_id).fetch_one(&env.pool).await.unwrap();
    assert_eq!(reason.as_deref(), Some("test: the tracker cannot resend"));
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log WHERE details->>'accept_loss_reason' = 'test: the tracker cannot resend'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(audited, 1);
    // The full backfill says that Redis evicted keys it could not read.
    let full = env.cli_with_env(&["backfill", "--no-history", "--json"], &over).expect_success().json();
    let warnings = full["details"]["run"]["warnings"].to_string();
    assert!(warnings.contains("evicted"), "{full}");
}
