//! A Redis blip must not become an outage: `tsmigrate run` (a real process) under steady
//! ingest while its Redis is killed and restarted; deadlines on every call to a server that
//! is down; half-sent requests are cut off after the read timeout.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tsmigrate::http::{self, AppState};

use crate::servers::{Daemon, RedisOptions, RedisServer};
use crate::support::TestEnv;

/// Events per ingest request.
const BATCH: usize = 10;

/// One ingest request as the tracker saw it.
#[derive(Debug, Clone)]
struct Sent {
    started: Instant,
    elapsed: Duration,
    /// `None`: no answer (connection error or client timeout).
    status: Option<u16>,
    ids: Vec<String>,
}

impl Sent {
    fn finished(&self) -> Instant {
        self.started + self.elapsed
    }
}

/// Tracker traffic: `workers` loops posting batches of unique events until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        // Far above every server-side deadline: a request that hangs shows as `None`.
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        let tasks = (0..workers)
            .map(|worker| {
                let (url, stop, sent, client) = (url.clone(), stop.clone(), sent.clone(), client.clone());
                tokio::spawn(async move {
                    for n in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let ids: Vec<String> = (0..BATCH).map(|i| format!("blip-w{worker}-b{n}-e{i}")).collect();
                        let now = chrono::Utc::now().timestamp_millis();
                        let events: Vec<_> =
                            ids.iter().map(|id| json!({"id": id, "event_name": "page_view", "category": "navigation", "timestamp": now})).collect();
                        let started = Instant::now();
                        let reply = client.post(&url).header("content-type", "application/json").body(json!({ "events": events }).to_string()).send().await;
                        let status = reply.ok().map(|r| r.status().as_u16());
                        sent.lock().unwrap().push(Sent { started, elapsed: started.elapsed(), status, ids });
                        // Steady traffic, not a flood: this machine also runs the servers.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Load { stop, sent, tasks }
    }

    fn snapshot(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    async fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let sent = self.sent.lock().unwrap().clone();
        sent
    }
}

async fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many of `ids` are in the target, and how many rows they have.
async fn landed(env: &TestEnv, ids: &[String]) -> (i64, i64) {
    let event_ids: Vec<uuid::Uuid> = ids.iter().map(|id| tsmigrate::event::id_from_string(id)).collect();
    sqlx::query_as("SELECT count(DISTINCT event_id), count(*) FROM analytics_events_ts WHERE event_id = ANY($1)")
        .bind(&event_ids)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_ingest_costs_seconds_not_minutes() {
    let env = TestEnv::new().await;
    // AOF with fsync on every write: an acknowledged event survives the kill, so any loss
    // would be the service's fault.
    let mut redis = RedisServer::start(RedisOptions { aof: true, ..Default::default() });
    let redis_url = redis.url();
    let over = [("REDIS_URL", redis_url.as_str())];
    env.cli_with_env(&["prepare", "--mode", "postgres"], &over).expect_success();
    env.cli_with_env(&["dual-write", "start"], &over).expect_success();
    let daemon = Daemon::start(&env, None, &over);
    let load = Load::start(daemon.url("/api/v1/analytics"), 4);
    wait_for("steady ingest", Duration::from_secs(30), || load.snapshot().iter().filter(|s| s.status == Some(202)).count() >= 20).await;

    redis.kill();
    // Taken once the process is gone: a request started before it may still have been served.
    let killed = Instant::now();
    // A hung probe shows as `None` (the client gives up long after every server deadline).
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut ready_probes = Vec::new();
    // Down until the load has seen it (a number of requests started and answered since the
    // kill) and /ready has been asked a few times: conditions, not a fixed time.
    const REQUESTS_WHILE_DOWN: usize = 12;
    const READY_PROBES: usize = 4;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = Instant::now();
        let status = client.get(daemon.url("/ready")).send().await.ok().map(|r| r.status().as_u16());
        ready_probes.push((status, started.elapsed()));
        let seen = load.snapshot().iter().filter(|s| s.started >= killed).count();
        if seen >= REQUESTS_WHILE_DOWN && ready_probes.len() >= READY_PROBES {
            break;
        }
        assert!(Instant::now() < deadline, "the load made {seen} requests in 60 s while Redis was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarting = Instant::now();
    // The helper waits for the server synchronously: keep the runtime's workers serving the load.
    tokio::task::block_in_place(|| redis.restart());
    let back = Instant::now();
    wait_for("ingest to answer 202 again", Duration::from_secs(30), || load.snapshot().iter().any(|s| s.started >= back && s.status == Some(202))).await;
    // Steady again: a few more accepted requests after the first one.
    wait_for("ingest to stay up", Duration::from_secs(30), || load.snapshot().iter().filter(|s| s.started >= back && s.status == Some(202)).count() >= 8).await;
    let sent = load.finish().await;

    let accepted: Vec<String> = sent.iter().filter(|s| s.status == Some(202)).flat_map(|s| s.ids.clone()).collect();
    let all: Vec<String> = sent.iter().flat_map(|s| s.ids.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while landed(&env, &accepted).await.0 < accepted.len() as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (landed_accepted, _) = landed(&env, &accepted).await;
    let (landed_all, rows_all) = landed(&env, &all).await;

    // Wholly inside the outage: started after the kill and answered before the restart began.
    // A request that straddles the restart may be served by the new server (on a busy machine
    // the daemon may not even read it before Redis is back), so either answer is right for it.
    let while_down: Vec<&Sent> = sent.iter().filter(|s| s.started >= killed && s.finished() <= restarting).collect();
    let straddling: Vec<&Sent> = sent.iter().filter(|s| s.started >= killed && s.started < restarting && s.finished() > restarting).collect();
    let first_back = sent.iter().filter(|s| s.started >= back && s.status == Some(202)).map(Sent::finished).min().unwrap();
    let last_before = sent.iter().filter(|s| s.status == Some(202) && s.finished() <= killed).map(Sent::finished).max().unwrap();
    let slowest_failure = while_down.iter().map(|s| s.elapsed).max().unwrap_or_default();
    let slowest_ready = ready_probes.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let accepted_set: HashSet<&String> = accepted.iter().collect();
    let unacknowledged_but_landed = landed_all - landed_accepted;
    println!(
        "redis blip: down {:.2}s; ingest unavailable {:.2}s (last 202 before the kill to first 202 after); 202 again {:.2}s after Redis was back; \
         {} requests while down, slowest answer {} ms; /ready while down: {:?}, slowest {} ms",
        (back - killed).as_secs_f64(),
        (first_back - last_before).as_secs_f64(),
        (first_back - back).as_secs_f64(),
        while_down.len(),
        slowest_failure.as_millis(),
        ready_probes.iter().map(|(s, _)| s.unwrap_or(0)).collect::<HashSet<_>>(),
        slowest_ready.as_millis(),
    );
    println!(
        "redis blip: events sent {}, accepted {}, landed {} (+{} answered 503 but written), lost {}, doubled {}",
        all.len(),
        accepted_set.len(),
        landed_accepted,
        unacknowledged_but_landed,
        accepted_set.len() as i64 - landed_accepted,
        rows_all - landed_all
    );

    assert!(!while_down.is_empty(), "the load ran while Redis was down");
    for s in &while_down {
        assert_eq!(
            s.status,
            Some(503),
            "a request while Redis is down is refused with 503, not hung: {s:?}, started {:?} after the kill, answered {:?} before the restart began",
            s.started - killed,
            restarting - s.finished()
        );
    }
    // A request that straddles the restart is answered either way, but answered: one that
    // hung until the client gave up would show here (`None`), not in `while_down`.
    for s in &straddling {
        assert!(matches!(s.status, Some(202 | 503)), "a request across the restart is answered with 202 or 503, not hung: {s:?}");
    }
    // Answered, not hung (a hang shows as `None`: the client gave up after 20 s); how fast is
    // printed above, not asserted.
    assert!(ready_probes.iter().all(|(s, _)| *s == Some(503)), "/ready says 503 while Redis is down: {ready_probes:?}");
    assert_eq!(landed_accepted, accepted_set.len() as i64, "every accepted event reaches the target");
    assert_eq!(rows_all, landed_all, "no event is doubled");
    assert_eq!(daemon.stop(), 0);
}

/// A server whose port accepts connections and never answers (a hung or partitioned host).
async fn black_hole() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

async fn get(router: axum::Router, path: &str) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let response = tower::ServiceExt::oneshot(router, axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default(), started.elapsed())
}

#[tokio::test]
async fn a_hung_or_missing_target_gets_503_within_deadlines() {
    let env = TestEnv::new().await;
    let hole = black_hole().await;
    let mut hung = env.settings.clone();
    hung.database.url = tsmigrate::config::SecretUrl::new(format!("postgres://postgres@{hole}/none"));
    hung.database.connect_timeout_secs = 1;
    let pool = tsmigrate::db::target_pool_lazy(&hung).unwrap();
    let state = AppState::new(tsmigrate::context::Context::with_target(std::sync::Arc::new(hung.clone()), pool), env.redis().await);
    // The probe has a deadline: it answers (within a bound far above it), and says what is down.
    let (status, body, took) = tokio::time::timeout(Duration::from_secs(30), get(http::app(state.clone()), "/ready")).await.expect("/ready answers");
    println!("/ready with a hung target: {status} in {} ms", took.as_millis());
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["target"], false, "{body}");
    assert_eq!(body["redis"], true, "{body}");

    // Admin status says what is down instead of answering 500.
    for url in [format!("postgres://postgres@{hole}/none"), "postgres://postgres@127.0.0.1:1/none".to_string()] {
        let mut down = hung.clone();
        down.database.url = tsmigrate::config::SecretUrl::new(url);
        let state = AppState::ingest_only(down.clone(), env.redis().await).unwrap();
        let (status, body, took) = get(http::app(state), "/api/v1/admin/status").await;
        println!("admin status with the target down: {status} in {} ms: {body}", took.as_millis());
        assert_eq!(status, 503, "{body}");
        assert!(body["error"].as_str().unwrap().contains("PostgreSQL"), "{body}");
        assert_eq!(body["retry"], true, "{body}");
    }
    // Redis down: 503 too, with what could be read.
    let mut no_redis = env.settings.clone();
    no_redis.redis.url = tsmigrate::config::SecretUrl::new("redis://127.0.0.1:1");
    let state = AppState::ingest_only(no_redis, env.redis().await).unwrap();
    let (status, body, _) = get(http::app(state), "/api/v1/admin/status").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("Redis is unreachable"), "{body}");
    assert_eq!(body["phase"], "new", "the rest of the status is there: {body}");
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn until_closed(mut socket: tokio::net::TcpStream, opened: Instant) -> (String, Duration) {
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the server kept a half-sent request open for 30 s");
    (String::from_utf8_lossy(&received).into_owned(), opened.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_cut_off_after_the_read_timeout() {
    let env = TestEnv::with_settings(|s| s.http.read_timeout_secs = 1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::ingest_only(env.settings.clone(), env.redis().await).unwrap();
    let server = tokio::spawn(http::serve(listener, state, async {
        let _ = stop_rx.await;
    }));
    let timeout = env.settings.http.read_timeout();

    const HALF_SENT_BODIES: usize = 300;
    let mut pending = Vec::new();
    for i in 0..HALF_SENT_BODIES + 2 {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let opened = Instant::now();
        match i {
            // Headers, and 10 of the 100 body bytes they announce.
            i if i < HALF_SENT_BODIES => {
                let head = "POST /api/v1/analytics HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"events\":";
                socket.write_all(head.as_bytes()).await.unwrap();
            }
            // Half a header.
            i if i == HALF_SENT_BODIES => socket.write_all(b"POST /api/v1/analytics HTTP/1.1\r\nHost: t\r\n").await.unwrap(),
            // Nothing at all.
            _ => {}
        }
        pending.push(tokio::spawn(until_closed(socket, opened)));
    }
    let mut closed = Vec::new();
    for task in pending {
        closed.push(task.await.unwrap());
    }
    let times: Vec<Duration> = closed.iter().map(|(_, t)| *t).collect();
    let (earliest, latest) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    println!(
        "half-sent requests: {} connections closed {} ms .. {} ms after opening (read timeout {} ms)",
        closed.len(),
        earliest.as_millis(),
        latest.as_millis(),
        timeout.as_millis()
    );
    for (reply, _) in &closed[..HALF_SENT_BODIES] {
        assert!(reply.starts_with("HTTP/1.1 408"), "a body that stops half way gets 408: {reply:?}");
    }
    // Not before the timeout (a slow client is not cut early: load can only make it later);
    // that every one was closed at all, `until_closed` asserts within its bound.
    assert!(*earliest >= timeout.mul_f64(0.9), "closed too early: {earliest:?}");

    // The server still serves complete requests.
    let body = json!({"events": [{"event_name": "click", "category": "ui"}]}).to_string();
    let reply =
        reqwest::Client::new().post(format!("http://{addr}/api/v1/analytics")).header("content-type", "application/json").body(body).send().await.unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops promptly").unwrap().unwrap();
}
