//! Shared by the benchmarks: an isolated database and Redis prefix, child processes with
//! their peak memory, the real `tsmigrate run` started and stopped from outside, HTTP
//! polling, percentiles, and table printing.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tsmigrate::config::{SecretUrl, Settings};

pub const BIN: &str = env!("CARGO_BIN_EXE_tsmigrate");

pub fn base_pg() -> String {
    std::env::var("TSMIGRATE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn base_redis() -> String {
    std::env::var("TSMIGRATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// How many events a benchmark uses (TSMIGRATE_BENCH_EVENTS scales it down for a quick run).
pub fn bench_events(default: u64) -> u64 {
    std::env::var("TSMIGRATE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A database and Redis prefix of its own; dropped with the value.
pub struct BenchEnv {
    pub name: String,
    pub settings: Settings,
}

impl BenchEnv {
    pub fn new(label: &str) -> BenchEnv {
        let name = format!("tsm_bench_{label}_{:08x}", rand::random::<u32>());
        psql_admin(&format!("CREATE DATABASE {name}"));
        let mut settings = Settings::default();
        settings.database.url = SecretUrl::new(base_pg()).with_database(&name);
        settings.redis.url = SecretUrl::new(base_redis());
        settings.redis.key_prefix = format!("{name}:");
        settings.redis.event_cap = 5_000_000;
        BenchEnv { name, settings }
    }

    /// The environment a `tsmigrate` child needs to work on this database and prefix.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("DATABASE_URL", self.settings.database.url.expose())
            .env("REDIS_URL", self.settings.redis.url.expose())
            .env("TSMIGRATE_REDIS_PREFIX", &self.settings.redis.key_prefix)
            .env_remove("TSMIGRATE_CONFIG")
            .current_dir(std::env::temp_dir());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run tsmigrate");
        assert!(out.status.success(), "tsmigrate {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn psql(&self, sql: &str) -> String {
        psql_on(&self.name, sql)
    }
}

impl Drop for BenchEnv {
    fn drop(&mut self) {
        // TSMIGRATE_BENCH_KEEP=1 leaves the database and keys for a look afterwards (the
        // next run of the same benchmark removes them).
        if std::env::var("TSMIGRATE_BENCH_KEEP").is_ok_and(|v| v == "1") {
            println!("kept database {} and Redis keys {}*", self.name, self.settings.redis.key_prefix);
            return;
        }
        psql_admin(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        let client = redis::Client::open(base_redis()).expect("redis url");
        if let Ok(mut conn) = client.get_connection() {
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}*", self.settings.redis.key_prefix)).query(&mut conn).unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
        }
    }
}

/// Removes what an interrupted run of a benchmark labelled `label` left behind (databases
/// `tsm_bench_<label>_*` and their Redis keys). Call before creating new environments.
pub fn drop_leftovers(label: &str) {
    let pattern = format!("tsm_bench_{label}_%");
    let stale = psql_admin(&format!("SELECT datname FROM pg_database WHERE datname LIKE '{pattern}'"));
    let client = redis::Client::open(base_redis()).expect("redis url");
    let mut conn = client.get_connection().ok();
    for name in stale.lines().filter(|l| !l.is_empty()) {
        println!("removing {name}, left behind by an interrupted run");
        psql_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        if let Some(conn) = conn.as_mut() {
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{name}:*")).query(conn).unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(conn);
            }
        }
    }
}

fn pg_host_args() -> Vec<String> {
    let url = url::Url::parse(&base_pg()).expect("pg url");
    vec![
        "-h".into(),
        url.host_str().unwrap_or("127.0.0.1").into(),
        "-p".into(),
        url.port().unwrap_or(5432).to_string(),
        "-U".into(),
        if url.username().is_empty() { "postgres".into() } else { url.username().into() },
    ]
}

pub fn psql_admin(sql: &str) -> String {
    psql_on("postgres", sql)
}

pub fn psql_on(db: &str, sql: &str) -> String {
    let out = Command::new("psql").args(pg_host_args()).args(["-d", db, "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().expect("psql");
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn psql_command(db: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(pg_host_args()).args(["-d", db, "-XqAt", "-v", "ON_ERROR_STOP=1"]);
    cmd
}

/// Runs a child to completion, sampling its peak resident memory (VmHWM) as it goes.
pub struct Measured {
    pub wall: Duration,
    pub peak_rss_kib: u64,
    pub stdout: String,
}

pub fn measure(cmd: Command) -> Measured {
    let (measured, status) = measure_any(cmd);
    assert!(status.success(), "the measured command failed with {status}");
    measured
}

/// Like [`measure`], for a child whose non-zero exit is an expected outcome.
pub fn measure_any(mut cmd: Command) -> (Measured, std::process::ExitStatus) {
    let started = Instant::now();
    let mut child: Child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let mut peak = 0;
    let status = loop {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (Measured { wall: started.elapsed(), peak_rss_kib: peak, stdout: reader.join().unwrap_or_default() }, status)
}

/// The storage modes this server can measure: plain PostgreSQL, and TimescaleDB when
/// available; TSMIGRATE_BENCH_MODES (e.g. `timescaledb`) keeps only those it names.
pub fn storage_modes() -> Vec<&'static str> {
    let mut modes = vec!["postgres"];
    if timescaledb_available() {
        modes.push("timescaledb");
    } else {
        println!("TimescaleDB not available on this server: measuring plain PostgreSQL mode only");
    }
    if let Ok(only) = std::env::var("TSMIGRATE_BENCH_MODES") {
        modes.retain(|m| only.split(',').any(|o| o.trim() == *m));
    }
    modes
}

/// VmHWM of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A whole-number setting from the environment, for sample counts and the like.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn timescaledb_available() -> bool {
    psql_admin("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'") == "1"
        && psql_admin("SHOW shared_preload_libraries").contains("timescaledb")
}

pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len()).map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    println!("\n{title}");
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect();
        println!("| {} |", parts.join(" | "));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for row in rows {
        line(row.clone());
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// Polls until `done` or `limit`; returns how long it took, or `None` on timeout.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A free port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

/// Starts the real `tsmigrate run <extra>` with its defaults (relay and jobs in process) on
/// `port`, and waits until it answers `/health`.
pub fn start_daemon(env: &BenchEnv, port: u16, extra: &[&str]) -> Child {
    start_daemon_with(env, port, extra, &[])
}

/// [`start_daemon`] with environment variables of its own (`DATABASE_READ_URL`...).
pub fn start_daemon_with(env: &BenchEnv, port: u16, extra: &[&str], vars: &[(&str, &str)]) -> Child {
    let bind = format!("127.0.0.1:{port}");
    let mut args = vec!["run", "--bind", &bind];
    args.extend_from_slice(extra);
    // Its log (JSON lines) is kept for a look at what the daemon did beside the measured requests.
    let log = std::env::temp_dir().join(format!("{}.{port}.daemon.log", env.name));
    let stderr = std::fs::File::create(&log).map(Stdio::from).unwrap_or_else(|_| Stdio::null());
    let server = env.command(&args).envs(vars.iter().copied()).stdout(Stdio::null()).stderr(stderr).spawn().expect("start tsmigrate run");
    println!("daemon log: {}", log.display());
    let healthy = wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && http_get_ok(port, "/health"));
    assert!(healthy.is_some(), "tsmigrate run did not become healthy");
    server
}

pub fn http_get_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

/// SIGTERM, then waits for the daemon to exit.
pub fn stop(mut server: Child) {
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
}

/// Events per request of `benches/load/ingest.lua`.
pub const EVENTS_PER_REQUEST: u64 = 50;

/// One wrk run's shape.
pub struct Load {
    pub name: &'static str,
    pub threads: u32,
    pub connections: u32,
    /// Pause after each response on a connection (wrk's `delay()`), ms; 0 = saturation.
    pub delay_ms: u32,
    pub seconds: u64,
}

/// What wrk reported (the `WRKJSON` line of the Lua script).
#[derive(serde::Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub accepted: u64,
    pub duration_us: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl WrkResult {
    pub fn events_per_second(&self) -> f64 {
        (self.accepted * EVENTS_PER_REQUEST) as f64 / (self.duration_us as f64 / 1e6)
    }
}

/// Runs wrk with `benches/load/ingest.lua` against the daemon on `port`.
pub fn wrk(port: u16, load: &Load, tag: &str) -> WrkResult {
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
