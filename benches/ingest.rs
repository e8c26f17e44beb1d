//! Ingest as deployed: the real `tsmigrate run` with its defaults (HTTP, relay and jobs in
//! one process), driven from outside by `wrk` (benches/load/ingest.lua: 50 distinct events
//! per request) at an idle rate (1 request/s), a moderate one (about 100/s) and saturation;
//! before dual-write (phase `prepared`, relay idle in its blocking read) and during it, with
//! the relay caught up and behind; then the relay's catch-up rate inside the same daemon.
//!
//! `./scripts/bench.sh ingest` (installs wrk when missing). TSMIGRATE_BENCH_SECONDS sets the
//! length of the moderate and saturated runs (default 10; the idle run is twice as long).

#[path = "support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const EVENTS_PER_REQUEST: u64 = 50;

/// One wrk run's shape.
struct Load {
    name: &'static str,
    threads: u32,
    connections: u32,
    /// Pause after each response on a connection (wrk's `delay()`), ms; 0 = saturation.
    delay_ms: u32,
    seconds: u64,
}

fn loads() -> [Load; 3] {
    let seconds = env_number("TSMIGRATE_BENCH_SECONDS", 10) as u64;
    [
        Load { name: "idle (1 req/s)", threads: 1, connections: 1, delay_ms: 1000, seconds: seconds * 2 },
        Load { name: "moderate (~100 req/s)", threads: 2, connections: 4, delay_ms: 40, seconds },
        Load { name: "saturation", threads: 2, connections: 8, delay_ms: 0, seconds },
    ]
}

/// What wrk reported (the `WRKJSON` line of the Lua script).
#[derive(serde::Deserialize)]
struct WrkResult {
    requests: u64,
    accepted: u64,
    duration_us: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
}

impl WrkResult {
    fn events_per_second(&self) -> f64 {
        (self.accepted * EVENTS_PER_REQUEST) as f64 / (self.duration_us as f64 / 1e6)
    }
}

fn wrk(port: u16, load: &Load, tag: &str) -> WrkResult {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/load/ingest.lua");
    let out = Command::new("wrk")
        .args(["-t", &load.threads.to_string(), "-c", &load.connections.to_string(), "-d", &format!("{}s", load.seconds), "--timeout", "10s"])
        .args(["-s", script, &format!("http://127.0.0.1:{port}"), "--", tag, &load.delay_ms.to_string()])
        .output()
        .expect("run wrk (apt-get install wrk)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("WRKJSON ")).unwrap_or_else(|| panic!("wrk printed no result:\n{stdout}"));
    serde_json::from_str(line).expect("wrk result JSON")
}

fn outbox_len(redis: &mut redis::Connection, env: &BenchEnv) -> u64 {
    redis::cmd("XLEN").arg(format!("{}analytics:outbox", env.settings.redis.key_prefix)).query(redis).unwrap_or(0)
}

/// Polls until `done` or `limit`; returns how long it took, or `None` on timeout.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn start_daemon(env: &BenchEnv, port: u16, extra: &[&str]) -> Child {
    let bind = format!("127.0.0.1:{port}");
    let mut args = vec!["run", "--bind", &bind];
    args.extend_from_slice(extra);
    let server = env.command(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start tsmigrate run");
    let healthy = wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && http_get_ok(port, "/health"));
    assert!(healthy.is_some(), "tsmigrate run did not become healthy");
    server
}

fn http_get_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

/// The relay has joined the consumer group (and so waits in its blocking read when idle).
fn relay_reading(redis: &mut redis::Connection, env: &BenchEnv) -> bool {
    let consumers: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(format!("{}analytics:outbox", env.settings.redis.key_prefix))
        .arg(&env.settings.redis.outbox_group)
        .query(redis);
    matches!(consumers, Ok(redis::Value::Array(ref c)) if !c.is_empty())
}

fn stop(mut server: Child) {
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
}

/// Ingest's own cost of dual-write: saturation with the relay out of the process, legacy and
/// dual-write alternating (dual-write stop/start between runs). Returns dual / legacy cost.
fn ingest_only_cost(env: &BenchEnv, port: u16) -> f64 {
    let server = start_daemon(env, port, &["--no-relay"]);
    let saturation = &loads()[2];
    let (mut legacy, mut dual) = (0.0, 0.0);
    for round in 0..2 {
        env.run(&["dual-write", "stop"]);
        legacy += wrk(port, saturation, &format!("only-legacy-{round}")).events_per_second();
        env.run(&["dual-write", "start"]);
        dual += wrk(port, saturation, &format!("only-dual-{round}")).events_per_second();
    }
    stop(server);
    legacy / dual
}

fn row(phase: &str, load: &str, r: &WrkResult) -> Vec<String> {
    vec![
        phase.to_string(),
        load.to_string(),
        r.requests.to_string(),
        format!("{}", r.errors),
        format!("{:.0}", r.accepted as f64 / (r.duration_us as f64 / 1e6)),
        format!("{:.0}", r.events_per_second()),
        format!("{:.2} ms", r.p50_us as f64 / 1000.0),
        format!("{:.2} ms", r.p99_us as f64 / 1000.0),
    ]
}

fn main() {
    drop_leftovers("ingest");
    let mode = *storage_modes().last().expect("a storage mode");
    let env = BenchEnv::new("ingest");
    env.run(&["prepare", "--mode", mode]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let server = start_daemon(&env, port, &[]);
    let mut redis = redis::Client::open(base_redis()).expect("redis").get_connection().expect("redis conn");
    assert!(wait_until(Duration::from_secs(30), || relay_reading(&mut redis, &env)).is_some(), "the daemon's relay never started");
    let loads = loads();
    let mut rows = Vec::new();
    let mut saturated = Vec::new();
    for load in &loads {
        let r = wrk(port, load, "legacy");
        rows.push(row("prepared (legacy write; relay idle)", load.name, &r));
        if load.delay_ms == 0 {
            saturated.push(r.events_per_second());
        }
    }
    env.run(&["dual-write", "start"]);
    for load in &loads {
        assert!(wait_until(Duration::from_secs(300), || outbox_len(&mut redis, &env) == 0).is_some(), "the relay did not catch up");
        let r = wrk(port, load, &format!("dw-{}", load.delay_ms));
        rows.push(row("dual_writing (relay caught up)", load.name, &r));
        if load.delay_ms == 0 {
            saturated.push(r.events_per_second());
        }
    }
    // Saturation left a backlog: the same moderate load while the relay works it off.
    let backlog = outbox_len(&mut redis, &env);
    let r = wrk(port, &loads[1], "behind");
    rows.push(row(&format!("dual_writing (relay behind by {backlog} events)"), loads[1].name, &r));
    let remaining = outbox_len(&mut redis, &env);
    let caught_up = wait_until(Duration::from_secs(600), || outbox_len(&mut redis, &env) == 0);
    let peak = peak_rss_kib(server.id()).unwrap_or(0);
    stop(server);
    let ingest_only = ingest_only_cost(&env, port);

    print_table(
        &format!(
            "Ingest into `tsmigrate run` (defaults: relay and jobs in process; {mode} target), driven by wrk, {EVENTS_PER_REQUEST} events per request \
             (targets: p99 < 5 ms at 1/s and 100/s; >= 50000 events/s at saturation; dual-write cost <= 1.1x legacy)"
        ),
        &["phase", "load", "requests", "errors", "req/s", "events/s", "p50", "p99"],
        &rows,
    );
    if let [legacy, dual] = saturated[..] {
        println!("dual-write cost per event / legacy cost per event at saturation, relay in process (as deployed): {:.2}x", legacy / dual);
    }
    println!(
        "the same ratio for ingest alone (`run --no-relay`, legacy and dual-write alternating twice, relay elsewhere): {ingest_only:.2}x \
         (as deployed, the relay's writes and the target's inserts share these 2 cores with ingest)"
    );
    match caught_up {
        Some(took) => println!(
            "relay catch-up inside the daemon (no ingest): {remaining} outbox entries in {:.1}s = {:.0} events/s",
            took.as_secs_f64(),
            remaining as f64 / took.as_secs_f64().max(0.001)
        ),
        None => println!("relay catch-up: not caught up within 600 s ({} entries left)", outbox_len(&mut redis, &env)),
    }
    println!("daemon peak RSS: {}", mib(peak));
}
