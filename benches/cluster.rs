//! Redis Cluster against a single Redis, as deployed: the real `tsmigrate run` during
//! dual-write, driven from outside by `wrk` (benches/load/ingest.lua, 50 events per request),
//! once with `REDIS_URL` naming the shared single server and once naming one node of a
//! private 3-master cluster (3 replicas, started here, no Docker): ingest p50/p99 at a
//! moderate rate, events/s at saturation, and the relay's catch-up rate (a backlog built with
//! the relay off, then `tsmigrate relay --once`). The failover, resharding and add-node cases
//! are the `cluster::` integration tests; `./scripts/bench.sh cluster` runs them after this and
//! prints their table.

#[path = "support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../tests/it/redis_cluster.rs"]
mod redis_cluster;

use std::time::{Duration, Instant};

use support::*;
use tsmigrate::config::SecretUrl;

fn target_rows(env: &BenchEnv) -> u64 {
    env.psql("SELECT count(*) FROM analytics_events_ts").trim().parse().unwrap_or(0)
}

fn main() {
    drop_leftovers("cluster");
    let mode = *storage_modes().last().expect("a storage mode");
    let seconds = env_number("TSMIGRATE_BENCH_SECONDS", 10) as u64;
    let moderate = Load { name: "moderate (~100 req/s)", threads: 2, connections: 4, delay_ms: 40, seconds };
    let saturation = Load { name: "saturation", threads: 2, connections: 8, delay_ms: 0, seconds };
    let cluster = redis_cluster::RedisCluster::start();
    let mut rows = Vec::new();
    for (name, url) in [("single Redis", base_redis()), ("Redis Cluster, 3 masters", cluster.url())] {
        let mut env = BenchEnv::new("cluster");
        env.settings.redis.url = SecretUrl::new(url);
        env.run(&["prepare", "--mode", mode]);
        env.run(&["dual-write", "start"]);
        let port = free_port();
        let server = start_daemon(&env, port, &[]);
        std::thread::sleep(Duration::from_secs(2));
        let m = wrk(port, &moderate, "cl-moderate");
        let s = wrk(port, &saturation, "cl-saturation");
        stop(server);
        // What the first daemon left unrelayed is drained first, so the backlog below is
        // only what the relay-less daemon accepted; then the relay alone catches it up.
        env.run(&["relay", "--once"]);
        let server = start_daemon(&env, port, &["--no-relay"]);
        let backlog = wrk(port, &saturation, "cl-backlog");
        stop(server);
        let before = target_rows(&env);
        let started = Instant::now();
        env.run(&["relay", "--once"]);
        let took = started.elapsed();
        let relayed = target_rows(&env) - before;
        let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
        rows.push(vec![
            name.to_string(),
            ms(m.p50_us),
            ms(m.p99_us),
            format!("{:.0}", s.events_per_second()),
            ms(s.p99_us),
            // wrk stops with requests in flight that the daemon still accepts: the relay
            // may carry a few batches more than wrk saw answered.
            format!("{relayed} (wrk saw {} accepted)", backlog.accepted * EVENTS_PER_REQUEST),
            format!("{:.0} events/s", relayed as f64 / took.as_secs_f64().max(0.001)),
        ]);
    }
    print_table(
        &format!(
            "Ingest during dual-write into `tsmigrate run` ({mode} target), wrk, {EVENTS_PER_REQUEST} events per request; relay catch-up with `relay --once`"
        ),
        &["redis", "p50 (moderate)", "p99 (moderate)", "events/s (saturation)", "p99 (saturation)", "backlog relayed", "relay catch-up"],
        &rows,
    );
}
