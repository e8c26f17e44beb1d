//! Redis Cluster as the source, on a private cluster the test starts (`servers::RedisCluster`:
//! 3 masters, 3 replicas, node timeout 1 s): every path with `REDIS_URL` naming one node, a
//! list of seed nodes, and what a failover, a slot migration and a new node cost under steady
//! ingest during dual-write. Each case prints its figures (unavailability window, sent,
//! accepted, refused, landed, lost, doubled).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::daemon_process::{batch, post_batch};
use crate::redis_cluster::RedisCluster;
use crate::scenario::{prepare_and_dual_write, Mode};
use crate::servers::Daemon;
use crate::support::{eventually, field, TestEnv};
use tsmigrate::config::SecretUrl;

const PATIENCE: Duration = Duration::from_secs(90);

/// A test env whose Redis is `url` (a node of the private cluster, or a list of seeds).
async fn env_on(url: &str) -> TestEnv {
    let mut env = TestEnv::new().await;
    env.settings.redis.url = SecretUrl::new(url);
    env
}

async fn start_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start).await.expect("start the private cluster")
}

/// Target rows per event id.
async fn rows_per_id(env: &TestEnv) -> HashMap<Uuid, i64> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as("SELECT event_id, count(*) FROM analytics_events_ts GROUP BY event_id").fetch_all(&env.pool).await.unwrap();
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_path_works_against_a_cluster_named_by_one_node() {
    let cluster = start_cluster().await;
    let env = env_on(&cluster.url()).await;
    let keys = env.keys();
    // The application's keys are spread over the cluster; tsmigrate's own are in the events slot.
    let events_master = cluster.master_of(tsmigrate::connect::slot_of(&keys.events));
    for key in keys.in_events_slot() {
        assert_eq!(cluster.master_of(tsmigrate::connect::slot_of(key)), events_master, "{key}");
    }

    // Seed through the legacy write path, then the legacy flush.
    crate::scenario::seed(&env, 3000, false);
    let mut redis = env.redis().await;
    assert!(redis.is_cluster(), "a cluster node is detected as one");
    let members: u64 = redis::cmd("ZCARD").arg(&keys.events).query_async(&mut redis).await.unwrap();
    assert_eq!(members, 3000);
    let counted: HashMap<String, i64> = redis::cmd("HGETALL").arg(&keys.event_counters).query_async(&mut redis).await.unwrap();
    assert_eq!(counted.values().sum::<i64>(), 3000, "the counters in their own slots were written after the events");
    env.cli(&["legacy", "flush", "--json"]).expect_success();

    prepare_and_dual_write(&env, Mode::Postgres);
    let flag: Option<String> = redis::cmd("GET").arg(&keys.dual_write_flag).query_async(&mut redis).await.unwrap();
    assert_eq!(flag.as_deref(), Some("1"), "the dual-write flag is set in the events slot");

    // Ingest over HTTP and the relay, through a daemon.
    let daemon = Daemon::start(&env, None, &[]);
    let http = reqwest::Client::new();
    let mut sent = Vec::new();
    for _ in 0..20 {
        let (body, ids) = batch(10);
        let (status, reply) = post_batch(&http, daemon.addr, &body, None).await.unwrap();
        assert_eq!(status, 202, "{reply}");
        assert_eq!(reply["dual_write"], Value::Bool(true), "{reply}");
        sent.extend(ids);
    }
    let landed = eventually("the relay copies the ingested events", PATIENCE, || async {
        let rows = rows_per_id(&env).await;
        sent.iter().all(|id| rows.contains_key(id)).then_some(rows)
    })
    .await;
    assert!(sent.iter().all(|id| landed[id] == 1), "each ingested event once");

    // Backfill, validate, a difference repaired.
    env.cli(&["backfill"]).expect_success();
    let validated = env.cli(&["validate", "--json"]);
    assert_eq!(field(&validated.details(), "result"), "clean", "{}", validated.stdout);
    let deleted = sqlx::query("DELETE FROM analytics_events_ts WHERE (event_id, time) IN (SELECT event_id, time FROM analytics_events_ts WHERE time < now() - interval '3 hours' ORDER BY time LIMIT 3)")
        .execute(&env.pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 3);
    env.cli(&["validate"]).expect_code(1);
    env.cli(&["repair", "--json"]).expect_success();
    let again = env.cli(&["validate", "--json"]);
    assert_eq!(field(&again.details(), "result"), "clean", "{}", again.stdout);

    // Status: reachable, every master's persistence and memory.
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "redis.reachable"), true, "{status}");
    let masters = field(&status, "redis.durability.masters").as_array().expect("masters").clone();
    assert_eq!(masters.len(), 3, "every master: {status}");
    assert!(masters.iter().all(|m| m["used_memory"].as_u64().unwrap_or(0) > 0), "{status}");
    let text = env.cli(&["status", "-v"]).expect_success().stdout.clone();
    assert_eq!(text.matches("  master 127.0.0.1:").count(), 3, "{text}");

    // Reads (twice: the second from the cache), user sets, tail, assess.
    let end = chrono::Utc::now();
    let window =
        format!("/api/v1/analytics/summary?from={}&to={}", tsmigrate::reads::wire_time(end - chrono::Duration::hours(6)), tsmigrate::reads::wire_time(end));
    for _ in 0..2 {
        let response = http.get(daemon.url(&window)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{}", response.text().await.unwrap());
    }
    env.cli(&["user-sets", "build"]).expect_success();
    env.cli(&["relay", "--tail", "--once"]).expect_success();
    env.cli(&["assess", "--json"]).expect_success();
    assert_eq!(daemon.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_of_seed_nodes_reaches_the_cluster() {
    let cluster = start_cluster().await;
    let env = env_on(&cluster.seed_urls()).await;
    let shown = env.cli(&["config", "show", "--json"]).expect_success().details();
    assert!(shown.to_string().contains(&cluster.seed_urls()), "the list is shown as given: {shown}");
    env.cli(&["config", "check", "--connect"]).expect_success();
    crate::scenario::seed(&env, 500, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "redis.reachable"), true, "{status}");
    assert_eq!(field(&status, "redis.dual_write_flag"), true, "{status}");
    // A list that mixes schemes is refused before connecting.
    let mixed = env.cli_with_env(&["status"], &[("REDIS_URL", "redis://127.0.0.1:1,rediss://127.0.0.1:2")]);
    mixed.expect_code(2);
    assert!(mixed.stderr.contains("different schemes"), "{}", mixed.stderr);
}

/// What one disruption did to a steady stream of ingest batches.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    accepted: usize,
    refused: usize,
    unknown: usize,
    /// The longest stretch without a 202.
    unavailable: Duration,
    /// The first answer that was not a 202, for the report.
    first_failure: Option<String>,
}

/// Clients posting batches of fresh events in a loop until told to stop.
struct Load {
    last_ok: Arc<Mutex<Instant>>,
    accepted: Arc<Mutex<Vec<Uuid>>>,
    unknown: Arc<Mutex<Vec<Uuid>>>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, workers: usize) -> Load {
        let load = Load {
            last_ok: Arc::new(Mutex::new(Instant::now())),
            accepted: Arc::default(),
            unknown: Arc::default(),
            tally: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let last_ok = load.last_ok.clone();
        let tasks = (0..workers)
            .map(|_| {
                let (http, accepted, unknown, tally, stop, last_ok) =
                    (http.clone(), load.accepted.clone(), load.unknown.clone(), load.tally.clone(), load.stop.clone(), last_ok.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let (body, ids) = batch(5);
                        let answer = post_batch(&http, addr, &body, None).await;
                        {
                            let mut t = tally.lock().unwrap();
                            t.sent += ids.len();
                            match answer {
                                Ok((202, _)) => {
                                    t.accepted += ids.len();
                                    let mut last = last_ok.lock().unwrap();
                                    t.unavailable = t.unavailable.max(last.elapsed());
                                    *last = Instant::now();
                                    accepted.lock().unwrap().extend(ids);
                                }
                                Ok((503, reply)) if reply.to_string().contains("unknown") => {
                                    t.unknown += ids.len();
                                    t.first_failure.get_or_insert_with(|| reply.to_string());
                                    unknown.lock().unwrap().extend(ids);
                                }
                                other => {
                                    t.refused += ids.len();
                                    t.first_failure.get_or_insert_with(|| format!("{other:?}"));
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    async fn finish(self) -> (Tally, Vec<Uuid>, Vec<Uuid>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let mut tally = std::mem::take(&mut *self.tally.lock().unwrap());
        // A stretch without a 202 that lasted to the end counts too.
        tally.unavailable = tally.unavailable.max(self.last_ok.lock().unwrap().elapsed());
        let accepted = self.accepted.lock().unwrap().clone();
        let unknown = self.unknown.lock().unwrap().clone();
        (tally, accepted, unknown)
    }
}

/// Ids of the members of the events sorted set.
async fn redis_ids(env: &TestEnv) -> std::collections::HashSet<Uuid> {
    let mut redis = env.redis().await;
    let members: Vec<String> = redis::cmd("ZRANGE").arg(env.keys().events).arg(0).arg(-1).query_async(&mut redis).await.unwrap();
    members.iter().filter_map(|m| serde_json::from_str::<Value>(m).ok()).filter_map(|v| v["id"].as_str().and_then(|id| id.parse().ok())).collect()
}

/// The figures of one case, printed as a row of the report table.
fn report(case: &str, tally: &Tally, accepted: &[Uuid], rows: &HashMap<Uuid, i64>) -> (usize, usize) {
    let landed = accepted.iter().filter(|id| rows.contains_key(id)).count();
    let lost = accepted.len() - landed;
    let doubled = rows.values().filter(|n| **n > 1).count();
    eprintln!(
        "cluster case | {case:<28} | unavailable {:>6} ms | sent {:>5} | accepted {:>5} | refused {:>4} | unknown {:>4} | landed {:>5} | lost {:>3} | doubled {:>3}",
        tally.unavailable.as_millis(),
        tally.sent,
        tally.accepted,
        tally.refused,
        tally.unknown,
        landed,
        lost,
        doubled
    );
    if let Some(failure) = &tally.first_failure {
        eprintln!("cluster case | {case:<28} | first failure: {failure}");
    }
    (lost, doubled)
}

/// Prepared, dual-writing, a daemon serving ingest; returns it with the env.
async fn dual_writing(url: &str, extra_env: &[(&str, &str)]) -> (TestEnv, Daemon) {
    let env = env_on(url).await;
    crate::scenario::seed(&env, 300, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    let daemon = Daemon::start(&env, None, extra_env);
    (env, daemon)
}

/// Waits until the relay has copied every event Redis holds of `accepted`.
async fn settle(env: &TestEnv, accepted: &[Uuid]) -> HashMap<Uuid, i64> {
    let held = redis_ids(env).await;
    eventually("the relay catches up", PATIENCE, || async {
        let rows = rows_per_id(env).await;
        accepted.iter().filter(|id| held.contains(id)).all(|id| rows.contains_key(id)).then_some(rows)
    })
    .await
}

/// Polls (without blocking the runtime) until `done` holds; false when it did not within PATIENCE.
#[must_use]
async fn until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Kill -9 the master that owns the events slot under steady ingest during dual-write, with
/// and without `redis.wait_replicas`: no event doubled in the target, every accepted event
/// Redis still holds is relayed, the change of master is recorded as a possible gap, and
/// validate then repair recover what the legacy side holds. With `wait_replicas = 1` no
/// acknowledged event is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_events_master_during_dual_write() {
    for wait_replicas in ["0", "1"] {
        let mut cluster = start_cluster().await;
        // Every member as a seed: the node a single URL names may be the one killed.
        let (env, daemon) = dual_writing(&cluster.seed_urls(), &[("TSMIGRATE_REDIS_WAIT_REPLICAS", wait_replicas)]).await;
        let slot = tsmigrate::connect::slot_of(&env.keys().events);
        let killed = cluster.master_of(slot);
        // The observer's first look at the masters, before the failover.
        eventually("the daemon records the masters", PATIENCE, || async {
            let seen: Option<i64> =
                sqlx::query_scalar("SELECT 1::bigint FROM tsmigrate.checkpoints WHERE name = 'redis:masters'").fetch_optional(&env.pool).await.unwrap();
            seen
        })
        .await;
        let load = Load::start(daemon.addr, 4);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.kill(killed);
        if !until(|| cluster.serving(slot).is_ok_and(|m| m != killed)).await {
            panic!("no replica took over the events slot within {PATIENCE:?}:\n{}", cluster.diagnosis());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (tally, accepted, _unknown) = load.finish().await;
        assert_eq!(tally.sent, tally.accepted + tally.refused + tally.unknown);
        let rows = settle(&env, &accepted).await;
        let (lost, doubled) = report(&format!("failover, wait_replicas={wait_replicas}"), &tally, &accepted, &rows);
        assert_eq!(doubled, 0, "no event twice in the target");
        if wait_replicas == "1" {
            assert_eq!(lost, 0, "every event acknowledged by a replica survives the failover");
        }
        // A possible gap, with its window, from the observer (every 15 s).
        let gap = eventually("the failover is recorded as a possible gap", PATIENCE, || async {
            let status = env.cli(&["status", "--json"]).details();
            let gaps = status["outbox_gaps"].as_array().cloned().unwrap_or_default();
            gaps.into_iter().find(|g| g["cause"] == "failover")
        })
        .await;
        assert!(!gap["window_to"].is_null(), "{gap}");
        // Validate, repair: the target ends up with what Redis holds.
        env.cli(&["backfill"]).expect_success();
        let validated = env.cli(&["validate", "--json"]);
        if validated.code == 1 {
            env.cli(&["repair", "--json"]).expect_success();
            let again = env.cli(&["validate", "--json"]);
            assert_eq!(field(&again.details(), "result"), "clean", "{}", again.stdout);
        } else {
            assert_eq!(field(&validated.details(), "result"), "clean", "{}", validated.stdout);
        }
        let held = redis_ids(&env).await;
        let rows = rows_per_id(&env).await;
        assert!(held.iter().all(|id| rows.get(id) == Some(&1)), "every event Redis holds is in the target once");
        daemon.stop();
        env.cleanup().await;
    }
}

/// Moving the events slot to another master, then adding a node and moving it there, under
/// steady ingest during dual-write: no loss, no doubles.
#[tokio::test(flavor = "multi_thread")]
async fn resharding_the_events_slot_and_adding_a_node() {
    let cluster = start_cluster().await;
    let (env, daemon) = dual_writing(&cluster.url(), &[]).await;
    let slot = tsmigrate::connect::slot_of(&env.keys().events);
    let cluster = Arc::new(cluster);
    for case in ["slot moved to another master", "node added, slot moved to it"] {
        let load = Load::start(daemon.addr, 4);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c = cluster.clone();
        let case_owned = case.to_string();
        tokio::task::spawn_blocking(move || {
            let from = c.master_of(slot);
            let to = if case_owned.starts_with("node added") {
                c.add_spare()
            } else {
                [0u16, 8000, 16000].into_iter().map(|s| c.master_of(s)).find(|m| *m != from).expect("another master")
            };
            c.wait_ok();
            c.move_slot(slot, to);
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (tally, accepted, unknown) = load.finish().await;
        let rows = settle(&env, &accepted).await;
        let (lost, doubled) = report(case, &tally, &accepted, &rows);
        assert_eq!((lost, doubled), (0, 0), "{case}: nothing lost, nothing doubled");
        assert!(unknown.iter().all(|id| rows.get(id).is_none_or(|n| *n == 1)), "{case}");
    }
    daemon.stop();
}
