//! Ingest as deployed: the real `tsmigrate run` with its defaults (HTTP, relay and jobs in
//! one process), driven from outside by `wrk` (benches/load/ingest.lua: 50 distinct events
//! per request) at an idle rate (1 request/s), a moderate one (about 100/s) and saturation;
//! before dual-write (phase `prepared`, relay idle in its blocking read) and during it, with
//! the relay caught up and behind; then the relay's catch-up rate inside the same daemon.
//! The cost of dual-write is CPU per event at one fixed rate in both phases, split between
//! the daemon's request threads, redis-server, the relay's thread and PostgreSQL, and
//! counted until the relay has written everything the run sent.
//!
//! `./scripts/bench.sh ingest` (installs wrk when missing). TSMIGRATE_BENCH_SECONDS sets the
//! length of the moderate and saturated runs (default 10; the idle run is twice as long).

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

fn loads() -> [Load; 3] {
    let seconds = env_number("TSMIGRATE_BENCH_SECONDS", 10) as u64;
    [
        Load { name: "idle (1 req/s)", threads: 1, connections: 1, delay_ms: 1000, seconds: seconds * 2 },
        Load { name: "moderate (~100 req/s)", threads: 2, connections: 4, delay_ms: 40, seconds },
        Load { name: "saturation", threads: 2, connections: 8, delay_ms: 0, seconds },
    ]
}

/// Events waiting in the outbox: every entry is one request of the load script.
fn outbox_events(redis: &mut redis::Connection, env: &BenchEnv) -> u64 {
    let entries: u64 = redis::cmd("XLEN").arg(tsmigrate::legacy::LegacyKeys::from_settings(&env.settings).outbox).query(redis).unwrap_or(0);
    entries * EVENTS_PER_REQUEST
}

/// CPU seconds used so far by the daemon's threads (the relay's thread apart), by
/// redis-server, and by every PostgreSQL process (the machine is otherwise quiet).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    daemon: f64,
    relay: f64,
    redis: f64,
    postgres: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu { daemon: self.daemon - o.daemon, relay: self.relay - o.relay, redis: self.redis - o.redis, postgres: self.postgres - o.postgres }
    }
}

/// utime + stime of a `/proc/.../stat` file, in seconds (fields 14 and 15, counted after the
/// command name, which may hold spaces).
fn stat_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else { return 0.0 };
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok();
        out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
    })
}

fn comm(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

fn cpu_now(daemon: u32, redis_pid: u32) -> Cpu {
    let mut cpu = Cpu { redis: stat_seconds(&format!("/proc/{redis_pid}/stat")), ..Cpu::default() };
    for task in std::fs::read_dir(format!("/proc/{daemon}/task")).into_iter().flatten().flatten() {
        let dir = task.path().display().to_string();
        let used = stat_seconds(&format!("{dir}/stat"));
        if comm(&format!("{dir}/comm")) == tsmigrate::daemon::RELAY_THREAD {
            cpu.relay += used;
        } else {
            cpu.daemon += used;
        }
    }
    for process in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = process.path().display().to_string();
        if comm(&format!("{dir}/comm")) == "postgres" {
            cpu.postgres += stat_seconds(&format!("{dir}/stat"));
        }
    }
    cpu
}

fn redis_pid(redis: &mut redis::Connection) -> u32 {
    let info: String = redis::cmd("INFO").arg("server").query(redis).expect("INFO server");
    info.lines().find_map(|l| l.strip_prefix("process_id:")).and_then(|p| p.trim().parse().ok()).expect("process_id in INFO server")
}

/// The relay has joined the consumer group (and so waits in its blocking read when idle).
fn relay_reading(redis: &mut redis::Connection, env: &BenchEnv) -> bool {
    let consumers: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(tsmigrate::legacy::LegacyKeys::from_settings(&env.settings).outbox)
        .arg(&env.settings.redis.outbox_group)
        .query(redis);
    matches!(consumers, Ok(redis::Value::Array(ref c)) if !c.is_empty())
}

/// A fixed rate below saturation, where legacy and dual-write carry the same load, so their
/// CPU per event compares like with like.
fn cost_load() -> Load {
    Load { name: "fixed (~25k events/s)", threads: 2, connections: 8, delay_ms: 12, seconds: env_number("TSMIGRATE_BENCH_SECONDS", 10) as u64 }
}

/// CPU per event of one run at the fixed rate, counted until the relay has written
/// everything the run sent (work the relay defers is still the run's work).
fn cost_run(port: u16, daemon: u32, redis: &mut redis::Connection, env: &BenchEnv, tag: &str) -> (WrkResult, Cpu) {
    let before = cpu_now(daemon, redis_pid(redis));
    let r = wrk(port, &cost_load(), tag);
    assert!(wait_until(Duration::from_secs(300), || outbox_events(redis, env) == 0).is_some(), "the relay did not catch up");
    let used = cpu_now(daemon, redis_pid(redis)) - before;
    (r, used)
}

fn cost_row(phase: &str, r: &WrkResult, cpu: Cpu) -> Vec<String> {
    let events = (r.accepted * EVENTS_PER_REQUEST) as f64;
    let us = |seconds: f64| format!("{:.1}", seconds * 1e6 / events);
    vec![
        phase.to_string(),
        format!("{:.0}", r.events_per_second()),
        us(cpu.daemon),
        us(cpu.redis),
        us(cpu.relay),
        us(cpu.postgres),
        us(cpu.daemon + cpu.redis + cpu.relay + cpu.postgres),
    ]
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
    let port = free_port();
    let server = start_daemon(&env, port, &[]);
    let daemon = server.id();
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
    let (legacy_fixed, legacy_cpu) = cost_run(port, daemon, &mut redis, &env, "cost-legacy");
    env.run(&["dual-write", "start"]);
    // Idle and moderate first: the fixed-rate run writes a few hundred thousand events that
    // the relay and the user-set builder then work through, which is not the idle system.
    let mut dual_cost = None;
    for load in &loads {
        if load.delay_ms == 0 {
            dual_cost = Some(cost_run(port, daemon, &mut redis, &env, "cost-dual"));
        }
        assert!(wait_until(Duration::from_secs(300), || outbox_events(&mut redis, &env) == 0).is_some(), "the relay did not catch up");
        let r = wrk(port, load, &format!("dw-{}", load.delay_ms));
        rows.push(row("dual_writing (relay caught up)", load.name, &r));
        if load.delay_ms == 0 {
            saturated.push(r.events_per_second());
        }
    }
    let (dual_fixed, dual_cpu) = dual_cost.expect("the loads end with saturation");
    // Saturation left a backlog: the same moderate load while the relay works it off.
    let backlog = outbox_events(&mut redis, &env);
    let r = wrk(port, &loads[1], "behind");
    rows.push(row(&format!("dual_writing (relay behind by {backlog} events)"), loads[1].name, &r));
    let remaining = outbox_events(&mut redis, &env);
    let caught_up = wait_until(Duration::from_secs(600), || outbox_events(&mut redis, &env) == 0);
    let peak = peak_rss_kib(daemon).unwrap_or(0);
    stop(server);

    print_table(
        &format!(
            "Ingest into `tsmigrate run` (defaults: relay and jobs in process; {mode} target), driven by wrk, {EVENTS_PER_REQUEST} events per request \
             (targets: p99 < 5 ms at 1/s and 100/s; >= 50000 events/s at saturation; dual-write cost <= 1.1x legacy)"
        ),
        &["phase", "load", "requests", "errors", "req/s", "events/s", "p50", "p99"],
        &rows,
    );
    let cost_rows = vec![cost_row("prepared (legacy write)", &legacy_fixed, legacy_cpu), cost_row("dual_writing (relay in process)", &dual_fixed, dual_cpu)];
    print_table(
        &format!("CPU per event at the same fixed rate ({}), counted until the relay had written the run's events (microseconds per event)", cost_load().name),
        &["phase", "events/s", "daemon (HTTP, ingest, jobs)", "redis-server", "relay thread", "PostgreSQL", "total"],
        &cost_rows,
    );
    let per_event = |r: &WrkResult, seconds: f64| seconds / (r.accepted * EVENTS_PER_REQUEST) as f64;
    let write_path = |r: &WrkResult, c: Cpu| per_event(r, c.daemon + c.redis);
    let everything = |r: &WrkResult, c: Cpu| per_event(r, c.daemon + c.redis + c.relay + c.postgres);
    println!(
        "dual-write cost of the write path (daemon + Redis per event, dual-write / legacy): {:.2}x",
        write_path(&dual_fixed, dual_cpu) / write_path(&legacy_fixed, legacy_cpu)
    );
    println!(
        "everything it takes to have each event in the target too (+ relay + PostgreSQL, dual-write / legacy): {:.2}x",
        everything(&dual_fixed, dual_cpu) / everything(&legacy_fixed, legacy_cpu)
    );
    if let [legacy, dual] = saturated[..] {
        println!("saturation throughput, legacy / dual-write, relay in process (as deployed): {:.2}x", legacy / dual);
    }
    match caught_up {
        Some(took) => println!(
            "relay catch-up inside the daemon (no ingest): {remaining} events in {:.1}s = {:.0} events/s",
            took.as_secs_f64(),
            remaining as f64 / took.as_secs_f64().max(0.001)
        ),
        None => println!("relay catch-up: not caught up within 600 s ({} events left)", outbox_events(&mut redis, &env)),
    }
    println!("daemon peak RSS: {}", mib(peak));
}
