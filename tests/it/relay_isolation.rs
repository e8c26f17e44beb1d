//! The relay's blocking read never delays anyone else: `tsmigrate run` as deployed (HTTP,
//! relay and jobs in one process), with the relay's read wait set long, answers ingest and
//! cached reads long before one wait has passed, in every phase.
//!
//! No timing threshold on the fast path: the bound is a fraction of the configured wait,
//! which a request queued behind the blocking read would have to sit out.

use std::time::{Duration, Instant};

use serde_json::json;
use tsmigrate::daemon::{self, DaemonOptions};

use crate::scenario::seed;
use crate::support::TestEnv;

/// Long enough that a request stuck behind the read is unmistakable.
const RELAY_BLOCK: Duration = Duration::from_secs(20);

struct Daemon {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    async fn start(env: &TestEnv) -> Daemon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = DaemonOptions { relay: true, jobs: true };
        let task = tokio::spawn(daemon::run(env.settings.clone(), listener, options, async {
            let _ = stopped.await;
        }));
        Daemon { addr, stop: Some(stop), task }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        // The relay finishes its read first: at most one wait.
        tokio::time::timeout(RELAY_BLOCK * 2, self.task).await.expect("the daemon stops within one relay wait").unwrap().unwrap();
    }
}

/// Runs the CLI without stalling the runtime's workers, so the in-process daemon keeps serving.
fn cli(env: &TestEnv, args: &[&str]) {
    tokio::task::block_in_place(|| {
        env.cli(args).expect_success();
    });
}

/// Waits until the relay has joined the consumer group: from then on, whenever the outbox
/// is empty, it sits in `XREADGROUP … BLOCK`.
async fn wait_for_relay_reading(env: &TestEnv) {
    let mut redis = env.redis().await;
    let (outbox, group) = (env.keys().outbox, env.settings.redis.outbox_group.clone());
    for _ in 0..200 {
        let consumers: redis::RedisResult<redis::Value> = redis::cmd("XINFO").arg("CONSUMERS").arg(&outbox).arg(&group).query_async(&mut redis).await;
        if matches!(consumers, Ok(redis::Value::Array(ref c)) if !c.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the relay never started reading the outbox");
}

/// A few ingest requests and a read answered twice (the second from the cache), each awaited
/// for half the relay's read wait at most: a request queued behind that read could not be
/// answered in time. Times are printed, not asserted. Returns the ids of the events it ingested.
async fn requests_do_not_wait_for_the_relay(addr: std::net::SocketAddr, phase: &str) -> Vec<String> {
    let client = reqwest::Client::builder().timeout(RELAY_BLOCK / 2).build().unwrap();
    let now = chrono::Utc::now();
    let summary = format!(
        "http://{addr}/api/v1/analytics/summary?from={}&to={}",
        (now - chrono::Duration::days(3)).format("%Y-%m-%dT%H:00:00Z"),
        now.format("%Y-%m-%dT%H:00:00Z")
    );
    let mut ids = Vec::new();
    for attempt in 0..3 {
        let id = format!("{phase}-{attempt}");
        let body = json!({"events": [{"id": id, "event_name": "page_view", "category": "navigation", "user_id": "u1"}]});
        ids.push(id);
        let started = Instant::now();
        let response = client
            .post(format!("http://{addr}/api/v1/analytics"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{phase}: ingest request {attempt} not answered, as if queued behind the relay's {RELAY_BLOCK:?} read: {e}"));
        println!("{phase}: ingest request {attempt} answered in {:?}", started.elapsed());
        assert_eq!(response.status().as_u16(), 202, "{phase}: ingest");
    }
    for pass in ["uncached", "cached"] {
        let started = Instant::now();
        let response = client
            .get(&summary)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{phase}: {pass} summary not answered, as if queued behind the relay's {RELAY_BLOCK:?} read: {e}"));
        println!("{phase}: {pass} summary answered in {:?}", started.elapsed());
        assert_eq!(response.status().as_u16(), 200, "{phase}: {pass} summary: {}", response.text().await.unwrap_or_default());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_cached_reads_never_wait_behind_the_relays_blocking_read() {
    let env = TestEnv::with_settings(|s| s.redis.relay_block_ms = RELAY_BLOCK.as_millis() as u64).await;
    seed(&env, 300, false);
    let daemon = Daemon::start(&env).await;
    let steps: &[(&str, &[&str])] = &[
        ("prepared", &["prepare", "--mode", "postgres"]),
        ("dual_writing", &["dual-write", "start"]),
        ("backfilled", &["backfill"]),
        ("validated", &["validate"]),
        ("reads_switched", &["cutover"]),
        ("flush_retired", &["retire-flush", "--force", "--reason", "relay isolation test"]),
        ("completed", &["complete", "--yes"]),
    ];
    let mut dual_written = Vec::new();
    for (phase, command) in steps {
        cli(&env, command);
        let state: String = sqlx::query_scalar("SELECT phase FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
        assert_eq!(&state, phase);
        wait_for_relay_reading(&env).await;
        let ids = requests_do_not_wait_for_the_relay(daemon.addr, phase).await;
        if !matches!(*phase, "prepared" | "completed") {
            dual_written.extend(ids);
        }
    }
    daemon.stop().await;
    // The relay was really at work beside the requests: every event ingested during
    // dual-write is in the target once (what it had not reached yet is still in the outbox).
    cli(&env, &["relay", "--once"]);
    let ids: Vec<uuid::Uuid> = dual_written.iter().map(|id| tsmigrate::event::id_from_string(id)).collect();
    let landed: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_events_ts WHERE event_id = ANY($1)").bind(&ids).fetch_one(&env.pool).await.unwrap();
    assert_eq!(landed, ids.len() as i64);
}
