//! The fault matrix: every fault production brings, against every path that talks to the
//! server it hits, with the same invariants in every cell:
//!
//! * no accepted event is lost or doubled (checked in both systems once the fault cleared);
//!   after a fault that costs Redis writes (an evicting policy), no accepted event is lost
//!   unrecorded: each is in the target once or was accepted before the end of a recorded loss
//!   window that is open or was accepted by an operator (audited), never "repaired";
//! * no answer claims what did not happen (a 503 "nothing was written" wrote nothing; an exit
//!   0 did the work; a status that could not see a server does not say healthy);
//! * an answer comes within its deadline while the fault lasts (no hang);
//! * the path works again within a bounded time of the fault clearing (the seconds it took are
//!   measured and printed; only the generous bound is asserted);
//! * `/ready` says 503 while ingest cannot write; `tsmigrate_relay_errors_total` grows while
//!   the relay cannot deliver; two replicas' jobs leases are never both confirmed;
//! * a phase command holding the migration lock when the fault hits finishes with exact
//!   counts or stops with a non-zero exit, never beside a second holder; a re-run completes.
//!
//! Data-driven: [`FAULTS`] × [`PATHS`]. A new path joins by one entry in [`PATHS`] (an async
//! "attempt" that says what it did, pushing any broken promise into the cell); a new fault by
//! one entry in [`FAULTS`]. Each fault gets one rig (a private `redis-server` behind a fault
//! proxy, the target behind another, `tsmigrate run` as a process, short deadlines), and the
//! paths take their turn in it: attempt (baseline), fault, attempt, clear, attempt until it
//! works again (a service that did not is started afresh for the next path). After a fault
//! that cost Redis writes, the rig repairs what an operator would before each attempt outside
//! the fault ([`Rig::heal`]): each cell starts from a healthy system. Cells in
//! [`KNOWN_FAILING`] run and show in the table but fail the test only with
//! `TSMIGRATE_FAULT_MATRIX_ALL=1`.
//!
//! The table is printed; `TSMIGRATE_FAULT_MATRIX_OUT=<file>` also writes it as markdown, from
//! which `scripts/fault-matrix.sh` regenerates README's reliability table.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tsmigrate::config::SecretUrl;

use crate::proxy::{Fault, FaultProxy};
use crate::servers::{Daemon, PgOptions, PgServer, RedisOptions, RedisServer};
use crate::support::{CliOutput, TestEnv};

/// The deadlines the rig configures: small, so a fault costs the matrix seconds.
const CONFIG: &str = r#"
[database]
connect_timeout_secs = 3
statement_timeout_secs = 5
max_connections = 4

[redis]
connect_timeout_ms = 2000
response_timeout_ms = 1000
relay_block_ms = 200
relay_linger_ms = 0

[http]
request_timeout_secs = 5
cache_ttl_secs = 0

[migration]
dual_write_check_secs = 1
# Validation leaves out the last 90 minutes: the seeded hours (up to 2 h ago) are compared,
# the matrix's own events are not, so an hour closing during a run (flushed by the flush
# path, not rolled up in the target: the rig runs no jobs) is no difference.
settle_secs = 5400
"#;

/// Longest an attempt may take before it counts as hung: well above every deadline above.
const HUNG_AFTER: Duration = Duration::from_secs(15);
/// How long a path may take to work again once the fault cleared (generous: recovery is
/// measured and printed, this bound only catches "never").
const RECOVERY_WITHIN: Duration = Duration::from_secs(20);
/// How long `/ready` may take to tell the truth about a fault ingest already sees.
const READY_TRUTH_WITHIN: Duration = Duration::from_secs(10);
/// Events per ingest request.
const BATCH: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Redis,
    Postgres,
}

/// How a fault is made and cleared.
#[derive(Clone, Copy, Debug)]
enum How {
    /// The proxy in front of the server switches to this fault; clearing switches back to pass.
    Proxy(Fault),
    /// The open connections go silent for good (a NAT or load balancer that dropped them
    /// without an RST); new ones pass. Nothing clears it: the service must replace them.
    ProxyForgets,
    /// Redis killed (AOF: nothing acknowledged is lost) and started again when cleared.
    RedisDown,
    /// SIGSTOP, SIGCONT when cleared.
    RedisStopped,
    /// maxmemory at what is used now, noeviction: every write is refused with OOM.
    RedisOutOfMemory,
    /// maxmemory at what is used now, allkeys-lru: Redis drops keys to take writes.
    RedisEvicting,
    /// `pg_ctl restart -m fast` of a private cluster: every session and its locks end.
    PgRestart,
}

struct FaultDef {
    name: &'static str,
    server: Server,
    how: How,
}

const FAULTS: &[FaultDef] = &[
    FaultDef { name: "refuse", server: Server::Redis, how: How::Proxy(Fault::Refuse) },
    FaultDef { name: "reset", server: Server::Redis, how: How::Proxy(Fault::Reset) },
    FaultDef { name: "blackhole-existing", server: Server::Redis, how: How::Proxy(Fault::BlackholeExisting) },
    FaultDef { name: "forgotten-connections", server: Server::Redis, how: How::ProxyForgets },
    FaultDef { name: "blackhole-new", server: Server::Redis, how: How::Proxy(Fault::BlackholeNew) },
    FaultDef { name: "latency-150ms", server: Server::Redis, how: How::Proxy(Fault::Latency(Duration::from_millis(150))) },
    FaultDef { name: "bandwidth-20kBps", server: Server::Redis, how: How::Proxy(Fault::Bandwidth(20_000)) },
    FaultDef { name: "down", server: Server::Redis, how: How::RedisDown },
    FaultDef { name: "sigstop", server: Server::Redis, how: How::RedisStopped },
    FaultDef { name: "oom", server: Server::Redis, how: How::RedisOutOfMemory },
    FaultDef { name: "evicting", server: Server::Redis, how: How::RedisEvicting },
    FaultDef { name: "refuse", server: Server::Postgres, how: How::Proxy(Fault::Refuse) },
    FaultDef { name: "reset", server: Server::Postgres, how: How::Proxy(Fault::Reset) },
    FaultDef { name: "blackhole-existing", server: Server::Postgres, how: How::Proxy(Fault::BlackholeExisting) },
    FaultDef { name: "forgotten-connections", server: Server::Postgres, how: How::ProxyForgets },
    FaultDef { name: "blackhole-new", server: Server::Postgres, how: How::Proxy(Fault::BlackholeNew) },
    FaultDef { name: "latency-40ms", server: Server::Postgres, how: How::Proxy(Fault::Latency(Duration::from_millis(40))) },
    FaultDef { name: "bandwidth-50kBps", server: Server::Postgres, how: How::Proxy(Fault::Bandwidth(50_000)) },
    FaultDef { name: "restart", server: Server::Postgres, how: How::PgRestart },
];

impl FaultDef {
    fn label(&self) -> String {
        let server = match self.server {
            Server::Redis => "redis",
            Server::Postgres => "postgres",
        };
        format!("{server} {}", self.name)
    }

    /// Whether a new connection to the server gets nothing done while the fault lasts: a
    /// command that connects afresh cannot have seen the server.
    fn blinds_new_connections(&self) -> bool {
        match self.how {
            How::Proxy(f) => matches!(f, Fault::Refuse | Fault::Reset | Fault::BlackholeNew | Fault::Blackhole),
            How::RedisDown | How::RedisStopped | How::PgRestart => true,
            How::ProxyForgets | How::RedisOutOfMemory | How::RedisEvicting => false,
        }
    }

    /// Whether the fault leaves the server unable to keep what ingest writes.
    fn loses_writes(&self) -> bool {
        matches!(self.how, How::RedisOutOfMemory | How::RedisEvicting)
    }
}

/// What one attempt of a path did.
#[derive(Debug, Clone)]
enum Attempt {
    /// It worked (and said what).
    Done(String),
    /// It said it could not, honestly (503, exit 2…).
    Refused(String),
}

impl Attempt {
    fn done(&self) -> bool {
        matches!(self, Attempt::Done(_))
    }

    fn short(&self) -> String {
        let (tag, text) = match self {
            Attempt::Done(t) => ("ok", t),
            Attempt::Refused(t) => ("refused", t),
        };
        let text: String = text.chars().take(70).collect();
        format!("{tag}: {}", text.replace(['\n', '|'], " "))
    }
}

/// When in a cell an attempt runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Baseline,
    During,
    Recovery,
}

type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Attempt> + Send + 'a>>;

struct PathDef {
    name: &'static str,
    servers: &'static [Server],
    attempt: for<'a> fn(&'a Rig, &'a Cell, Stage) -> AttemptFuture<'a>,
}

const BOTH: &[Server] = &[Server::Redis, Server::Postgres];

/// In the order they run in a rig: backfill before validate, validate before repair.
const PATHS: &[PathDef] = &[
    PathDef { name: "ingest", servers: BOTH, attempt: |rig, cell, stage| Box::pin(ingest(rig, cell, stage)) },
    PathDef { name: "relay", servers: BOTH, attempt: |rig, cell, stage| Box::pin(relay(rig, cell, stage)) },
    PathDef { name: "reads", servers: BOTH, attempt: |rig, cell, stage| Box::pin(reads(rig, cell, stage)) },
    PathDef { name: "tail", servers: BOTH, attempt: |rig, cell, _| Box::pin(cli_attempt(rig, cell, &["relay", "--tail", "--once", "--json"])) },
    PathDef { name: "flush", servers: BOTH, attempt: |rig, cell, _| Box::pin(cli_attempt(rig, cell, &["legacy", "flush", "--json"])) },
    PathDef { name: "status", servers: BOTH, attempt: |rig, cell, stage| Box::pin(status(rig, cell, stage)) },
    PathDef { name: "backfill", servers: BOTH, attempt: |rig, cell, stage| Box::pin(backfill(rig, cell, stage)) },
    PathDef { name: "validate", servers: BOTH, attempt: |rig, cell, stage| Box::pin(validate(rig, cell, stage)) },
    PathDef { name: "repair", servers: BOTH, attempt: |rig, cell, _| Box::pin(cli_attempt(rig, cell, &["repair", "--json"])) },
    // The user-set builder is the scheduled job that reads and writes the most (the target
    // only); run as the daemon's scheduler would, once.
    PathDef { name: "jobs", servers: &[Server::Postgres], attempt: |rig, cell, _| Box::pin(cli_attempt(rig, cell, &["user-sets", "build", "--json"])) },
    PathDef { name: "lease", servers: &[Server::Postgres], attempt: |rig, cell, _| Box::pin(lease(rig, cell)) },
    // A phase command holding the migration lock while the fault hits (started before it).
    PathDef { name: "lock", servers: &[Server::Postgres], attempt: |rig, cell, stage| Box::pin(lock(rig, cell, stage)) },
];

/// Cells that break a promise on this code for the reason named here; the fix is product
/// work, not a weaker invariant. They run and show in the table, but do not fail the test
/// unless `TSMIGRATE_FAULT_MATRIX_ALL=1`; one that holds again is named at the end, to be
/// taken off this list. (fault label, path or "(data)" for the rig's data check, why)
const KNOWN_FAILING: &[(&str, &str, &str)] = &[];

/// The reason the rig gives when it accepts a recorded loss (`backfill --accept-loss`).
const ACCEPTED_LOSS: &str = "fault matrix: the events Redis evicted are not resent";

fn known_failing(fault: &str, path: &str) -> Option<&'static str> {
    KNOWN_FAILING.iter().find(|(f, p, _)| *f == fault && *p == path).map(|(_, _, why)| *why)
}

/// One cell's record: the broken promises and what happened.
#[derive(Default)]
struct Cell {
    problems: Mutex<Vec<String>>,
}

impl Cell {
    fn problem(&self, text: impl Into<String>) {
        self.problems.lock().unwrap().push(text.into());
    }
}

/// A rig: private Redis (AOF: what was acknowledged survives a kill) behind a proxy, the
/// target behind another (on the shared server, or a private one for a restart), settings
/// with short deadlines, `tsmigrate run` talking through the proxies.
struct Rig {
    env: TestEnv,
    redis: Mutex<RedisServer>,
    pg: Option<PgServer>,
    redis_proxy: FaultProxy,
    pg_proxy: FaultProxy,
    /// `tsmigrate run`; started afresh after a cell it did not recover from, so the next
    /// cell starts clean.
    daemon: Mutex<Daemon>,
    config: std::path::PathBuf,
    http: reqwest::Client,
    /// Event ids answered 202 (or written to the outbox directly): each must land once.
    accepted: Mutex<Vec<String>>,
    /// Event ids answered "nothing was written": none may be anywhere.
    not_written: Mutex<Vec<String>>,
    batches: std::sync::atomic::AtomicU64,
    /// Events sent to ingest or written for the relay, whatever the answer.
    sent: std::sync::atomic::AtomicU64,
    /// `tsmigrate_relay_errors_total` when the last baseline attempt of the relay ended.
    relay_errors_mark: Mutex<f64>,
    /// Two replicas' jobs leases, held through the proxy (started by the lease path).
    leases: Mutex<Option<(tsmigrate::daemon::leader::Lease, tsmigrate::daemon::leader::Lease, tokio::sync::watch::Sender<bool>)>>,
    /// When each event the rig made was sent (epoch ms, its timestamp), by id.
    sent_at: Mutex<std::collections::HashMap<String, i64>>,
    /// The sorted set as seeded (member, score): what the rig puts back after a fault that
    /// evicted it, as the source resending its events would.
    seeded: Vec<(String, f64)>,
    /// The lock path's paced window copy, started before the fault (see [`lock`]).
    lock_run: Mutex<Option<crate::support::ChildGuard>>,
    /// The window the lock path copies: the oldest [`LOCK_EVENTS`] seeded events (RFC 3339).
    lock_window: (String, String),
}

impl Rig {
    async fn new(fault: &FaultDef) -> Rig {
        let redis = tokio::task::block_in_place(|| RedisServer::start(RedisOptions { aof: true, ..Default::default() }));
        let pg = matches!(fault.how, How::PgRestart).then(|| tokio::task::block_in_place(|| PgServer::start(PgOptions::default())));
        let admin = pg.as_ref().map(|pg| SecretUrl::new(pg.url("postgres"))).unwrap_or_else(crate::support::admin_database_url);
        let mut env = TestEnv::on_server(admin, |_| {}).await;
        env.settings.redis.url = SecretUrl::new(redis.url());
        let config = env.write_file("tsmigrate.toml", CONFIG);
        let redis_proxy = FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], redis.port())));
        let pg_proxy = FaultProxy::start(crate::fault::pg_addr(env.settings.database.url.expose()));
        // The setup talks to the servers directly, then everything under test through the proxies.
        tokio::task::block_in_place(|| {
            env.cli(&["legacy", "setup"]).expect_success();
            env.cli(&["seed", "--events", "300", "--days", "1", "--users", "20", "--seed", "7", "--end", "-2h"]).expect_success();
            env.cli(&["prepare", "--mode", "postgres"]).expect_success();
            env.cli(&["dual-write", "start"]).expect_success();
        });
        let overrides = Self::overrides_for(&config, &redis_proxy, &pg_proxy, &env);
        let pairs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let daemon = tokio::task::block_in_place(|| Daemon::start_with(&env, None, &["--no-jobs"], &pairs));
        let http = reqwest::Client::builder().timeout(HUNG_AFTER).build().unwrap();
        let mut redis_conn = env.redis().await;
        let seeded: Vec<(String, f64)> =
            redis::cmd("ZRANGE").arg(env.keys().events).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut redis_conn).await.unwrap();
        let at = |i: usize| {
            let ms = seeded[i.min(seeded.len() - 1)].1 as i64;
            chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let lock_window = (at(0), at(LOCK_EVENTS - 1));
        Rig {
            env,
            redis: Mutex::new(redis),
            pg,
            redis_proxy,
            pg_proxy,
            daemon: Mutex::new(daemon),
            config,
            http,
            accepted: Mutex::new(Vec::new()),
            not_written: Mutex::new(Vec::new()),
            batches: Default::default(),
            sent: Default::default(),
            relay_errors_mark: Mutex::new(0.0),
            leases: Mutex::new(None),
            sent_at: Mutex::new(Default::default()),
            seeded,
            lock_run: Mutex::new(None),
            lock_window,
        }
    }

    /// What an operator does after a fault that cost Redis writes (`loses_writes`), so the
    /// next cell starts from a healthy system: put back the events the source still has (the
    /// seeded ones; the rig's own are the loss under test), let the service record what Redis
    /// evicted (`wait_for_record`: until its eviction checkpoint reached Redis's
    /// `evicted_keys`), then copy the window of what was put back and accept the recorded
    /// losses with the audited command (`backfill --from --to --accept-loss`).
    async fn heal(&self, fault: &FaultDef, cell: &Cell, wait_for_record: bool) {
        if !fault.loses_writes() {
            return;
        }
        let Ok(mut redis) = tsmigrate::db::redis(&self.env.settings).await else { return };
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.env.keys().events);
        for (member, score) in &self.seeded {
            zadd.arg(*score).arg(member);
        }
        let Ok(restored) = zadd.query_async::<i64>(&mut redis).await else { return };
        if wait_for_record {
            let deadline = Instant::now() + RECOVERY_WITHIN;
            loop {
                let evicted = tokio::task::block_in_place(|| self.redis.lock().unwrap().info_number("evicted_keys")) as i64;
                let recorded: Option<i64> =
                    sqlx::query_scalar("SELECT (position->>'evicted_keys')::bigint FROM tsmigrate.checkpoints WHERE name = 'redis:evicted_keys'")
                        .fetch_optional(&self.env.pool)
                        .await
                        .ok()
                        .flatten();
                if evicted == 0 || recorded == Some(evicted) {
                    break;
                }
                if Instant::now() >= deadline {
                    cell.problem(format!("Redis evicted {evicted} key(s); the service recorded {recorded:?} within {RECOVERY_WITHIN:?}"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let open: (Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>) =
            sqlx::query_as("SELECT min(coalesce(window_from, window_to)), max(window_to) FROM tsmigrate.outbox_gaps WHERE repaired_at IS NULL")
                .fetch_one(&self.env.pool)
                .await
                .unwrap_or((None, None));
        // The events put back are copied into the target too (a backfill may have read the
        // sorted set while they were evicted), with the recorded losses' windows.
        let seeded = |i: usize| self.seeded.get(i).and_then(|(_, score)| chrono::DateTime::from_timestamp_millis(*score as i64));
        let seeded = (restored > 0).then(|| seeded(0).zip(seeded(self.seeded.len().saturating_sub(1)))).flatten();
        let windows = [open.0.zip(open.1), seeded];
        let Some(from) = windows.iter().flatten().map(|w| w.0).min() else { return };
        let Some(to) = windows.iter().flatten().map(|w| w.1).max() else { return };
        let secs = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (from, to) = (secs(from), secs(to + chrono::Duration::seconds(1)));
        let mut args = vec!["backfill", "--from", &from, "--to", &to, "--json"];
        if open.0.is_some() {
            args.extend(["--accept-loss", ACCEPTED_LOSS]);
        }
        match self.cli(&args).await {
            Some(out) if out.code == 0 => {}
            Some(out) => cell.problem(format!("accepting the recorded losses: `{}` exited {}: {}", args.join(" "), out.code, summary(&out))),
            None => cell.problem(format!("accepting the recorded losses: `{}` did not finish within {HUNG_AFTER:?}", args.join(" "))),
        }
    }

    fn overrides_for(config: &std::path::Path, redis: &FaultProxy, pg: &FaultProxy, env: &TestEnv) -> Vec<(&'static str, String)> {
        vec![
            ("TSMIGRATE_CONFIG", config.to_string_lossy().into_owned()),
            ("REDIS_URL", redis.url_through(env.settings.redis.url.expose())),
            ("DATABASE_URL", pg.url_through(env.settings.database.url.expose())),
        ]
    }

    fn url(&self, path: &str) -> String {
        self.daemon.lock().unwrap().url(path)
    }

    /// Kills `tsmigrate run` and starts another on the same settings.
    fn restart_daemon(&self) {
        let overrides = self.overrides();
        let pairs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut daemon = self.daemon.lock().unwrap();
        daemon.kill();
        *daemon = Daemon::start_with(&self.env, None, &["--no-jobs"], &pairs);
    }

    fn overrides(&self) -> Vec<(&'static str, String)> {
        Self::overrides_for(&self.config, &self.redis_proxy, &self.pg_proxy, &self.env)
    }

    fn apply(&self, fault: &FaultDef) {
        let proxy = match fault.server {
            Server::Redis => &self.redis_proxy,
            Server::Postgres => &self.pg_proxy,
        };
        match fault.how {
            How::Proxy(f) => proxy.set(f),
            How::ProxyForgets => {
                proxy.set(Fault::BlackholeExisting);
                proxy.abandon_held();
                proxy.set(Fault::Pass);
            }
            How::RedisDown => self.redis.lock().unwrap().kill(),
            How::RedisStopped => self.redis.lock().unwrap().pause(),
            How::RedisOutOfMemory => {
                let redis = self.redis.lock().unwrap();
                // Below what is used: every write is refused, however small.
                let used = redis.info_number("used_memory");
                redis.set_out_of_memory(used / 2);
            }
            How::RedisEvicting => {
                let redis = self.redis.lock().unwrap();
                let used = redis.info_number("used_memory");
                redis.set_evicting(used);
            }
            How::PgRestart => self.pg.as_ref().expect("a private PostgreSQL").stop(),
        }
    }

    fn clear(&self, fault: &FaultDef) {
        match fault.how {
            How::Proxy(_) | How::ProxyForgets => {
                self.redis_proxy.set(Fault::Pass);
                self.pg_proxy.set(Fault::Pass);
            }
            How::RedisDown => self.redis.lock().unwrap().restart(),
            How::RedisStopped => self.redis.lock().unwrap().resume(),
            How::RedisOutOfMemory | How::RedisEvicting => self.redis.lock().unwrap().clear_memory_limit(),
            How::PgRestart => self.pg.as_ref().expect("a private PostgreSQL").start_again(),
        }
    }

    /// `tsmigrate <args>` through the proxies, killed (and reported as hung) after [`HUNG_AFTER`].
    async fn cli(&self, args: &[&str]) -> Option<CliOutput> {
        let overrides = self.overrides();
        let pairs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut command = self.env.command(args, &pairs);
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let child = command.spawn().expect("run tsmigrate");
        let pid = child.id();
        let waited = tokio::time::timeout(HUNG_AFTER, tokio::task::spawn_blocking(move || child.wait_with_output())).await;
        match waited {
            Ok(output) => {
                let output = output.unwrap().unwrap();
                Some(CliOutput {
                    code: output.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                })
            }
            Err(_) => {
                // SAFETY: kill(2) on the child this function spawned.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                None
            }
        }
    }

    /// The sum of a counter's series on `/metrics` (None: no answer).
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.http.get(self.url("/metrics")).timeout(Duration::from_secs(5)).send().await.ok()?.text().await.ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    async fn ready(&self) -> Option<u16> {
        self.http.get(self.url("/ready")).timeout(Duration::from_secs(5)).send().await.ok().map(|r| r.status().as_u16())
    }

    fn new_batch(&self, tag: &str) -> (Vec<String>, Vec<Value>) {
        let n = self.batches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.sent.fetch_add(BATCH as u64, std::sync::atomic::Ordering::SeqCst);
        let now = chrono::Utc::now().timestamp_millis();
        let ids: Vec<String> = (0..BATCH).map(|i| format!("fm-{tag}-{n}-{i}")).collect();
        self.sent_at.lock().unwrap().extend(ids.iter().map(|id| (id.clone(), now)));
        let events = ids.iter().map(|id| json!({"id": id, "event_name": "matrix", "category": "fault", "timestamp": now})).collect();
        (ids, events)
    }

    /// How many of `ids` the target holds, and in how many rows ((0, 0) while the target
    /// cannot be read: a private one may be down).
    async fn in_target(&self, ids: &[String]) -> (i64, i64) {
        let event_ids: Vec<uuid::Uuid> = ids.iter().map(|id| tsmigrate::event::id_from_string(id)).collect();
        sqlx::query_as("SELECT count(DISTINCT event_id), count(*) FROM analytics_events_ts WHERE event_id = ANY($1)")
            .bind(&event_ids)
            .fetch_one(&self.env.pool)
            .await
            .unwrap_or((0, 0))
    }

    /// Of the `accepted` events the target does not hold, how many were accepted before the
    /// end of a recorded loss window still open, and how many before the end of one an
    /// operator accepted (audited); and how many windows are recorded.
    async fn lost(&self, accepted: &[String]) -> Lost {
        let event_ids: Vec<uuid::Uuid> = accepted.iter().map(|id| tsmigrate::event::id_from_string(id)).collect();
        let Ok(present) = sqlx::query_scalar::<_, uuid::Uuid>("SELECT DISTINCT event_id FROM analytics_events_ts WHERE event_id = ANY($1)")
            .bind(&event_ids)
            .fetch_all(&self.env.pool)
            .await
        else {
            return Lost::default();
        };
        let present: std::collections::HashSet<uuid::Uuid> = present.into_iter().collect();
        // (window end, still open): windows closed by a copy that read them are no loss record.
        let windows: Vec<(chrono::DateTime<chrono::Utc>, bool)> =
            sqlx::query_as("SELECT window_to, repaired_at IS NULL FROM tsmigrate.outbox_gaps WHERE repaired_at IS NULL OR acknowledged_reason IS NOT NULL")
                .fetch_all(&self.env.pool)
                .await
                .unwrap_or_default();
        let sent_at = self.sent_at.lock().unwrap().clone();
        let mut lost = Lost { windows: windows.len(), ..Lost::default() };
        for (id, event_id) in accepted.iter().zip(&event_ids) {
            if present.contains(event_id) {
                continue;
            }
            let at = sent_at.get(id).copied().unwrap_or(i64::MAX);
            let covering: Vec<bool> = windows.iter().filter(|(to, _)| to.timestamp_millis() >= at).map(|(_, open)| *open).collect();
            if covering.contains(&true) {
                lost.open += 1;
            } else if !covering.is_empty() {
                lost.accepted += 1;
            }
        }
        lost
    }

    /// Rows and distinct events of the target in `[from, to]` ((0, 0) while it cannot be read).
    async fn window_rows(&self, [from, to]: [&str; 2]) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), count(DISTINCT (event_id, time)) FROM analytics_events_ts WHERE time BETWEEN $1::timestamptz AND $2::timestamptz")
            .bind(from)
            .bind(to)
            .fetch_one(&self.env.pool)
            .await
            .unwrap_or((0, 0))
    }

    /// Events Redis's sorted set holds in `[from, to]`.
    async fn window_held(&self, [from, to]: [&str; 2]) -> i64 {
        let ms = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis();
        let mut redis = self.env.redis().await;
        redis::cmd("ZCOUNT").arg(self.env.keys().events).arg(ms(from)).arg(ms(to)).query_async(&mut redis).await.unwrap()
    }

    /// The `id`s of the events Redis's sorted set holds.
    async fn ids_in_redis(&self) -> std::collections::HashSet<String> {
        let mut redis = self.env.redis().await;
        let members: Vec<String> = redis::cmd("ZRANGE").arg(self.env.keys().events).arg(0).arg(-1).query_async(&mut redis).await.unwrap();
        members.iter().filter_map(|m| serde_json::from_str::<Value>(m).ok()).filter_map(|e| e["id"].as_str().map(String::from)).collect()
    }
}

/// Accepted events the target does not hold that a recorded loss window accounts for.
#[derive(Default, Debug)]
struct Lost {
    /// Accepted before the end of a window still open.
    open: usize,
    /// Accepted before the end of a window an operator accepted as lost (and of no open one).
    accepted: usize,
    /// Loss windows recorded (open or accepted).
    windows: usize,
}

/// POST one batch to `tsmigrate run`; 202 must mean it is kept, "nothing was written" that it is not.
async fn post_batch(rig: &Rig, cell: &Cell, tag: &str) -> Attempt {
    let (ids, events) = rig.new_batch(tag);
    let started = Instant::now();
    let sent =
        rig.http.post(rig.url("/api/v1/analytics")).header("content-type", "application/json").body(json!({ "events": events }).to_string()).send().await;
    let reply = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            cell.problem(format!("ingest: no answer within {HUNG_AFTER:?}"));
            return Attempt::Refused("hung".into());
        }
        Err(e) => return Attempt::Refused(format!("no answer: {e}")),
    };
    let status = reply.status().as_u16();
    let body = reply.text().await.unwrap_or_default();
    match status {
        202 => {
            rig.accepted.lock().unwrap().extend(ids);
            Attempt::Done(format!("202 in {} ms", started.elapsed().as_millis()))
        }
        503 => {
            if body.contains("nothing was written") {
                rig.not_written.lock().unwrap().extend(ids);
            }
            Attempt::Refused(format!("503 {body}"))
        }
        other => {
            cell.problem(format!("ingest answered {other}: {body}"));
            Attempt::Refused(format!("{other}"))
        }
    }
}

async fn ingest(rig: &Rig, cell: &Cell, stage: Stage) -> Attempt {
    let attempt = post_batch(rig, cell, "ingest").await;
    if stage == Stage::During && !attempt.done() {
        // Ingest cannot write: the readiness probe must say so while it lasts.
        let deadline = Instant::now() + READY_TRUTH_WITHIN;
        loop {
            let ready = rig.ready().await;
            if ready == Some(503) {
                break;
            }
            // Ready again because the service healed (a connection that missed its deadline
            // is replaced): then ingest must work now — /ready 200 while it cannot is the lie.
            if ready == Some(200) && post_batch(rig, cell, "ingest").await.done() {
                break;
            }
            if Instant::now() >= deadline {
                cell.problem(format!("/ready said {ready:?} while ingest was refused ({})", attempt.short()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    attempt
}

/// A batch written into Redis directly (not through the proxy: the relay is under test, not
/// ingest) must reach the target through the service's relay.
async fn relay(rig: &Rig, cell: &Cell, stage: Stage) -> Attempt {
    let (ids, events) = rig.new_batch("relay");
    let accepted: Vec<tsmigrate::event::AcceptedEvent> = events
        .iter()
        .map(|e| tsmigrate::event::AcceptedEvent {
            member: e.to_string(),
            time_ms: e["timestamp"].as_i64().unwrap(),
            event_name: "matrix".into(),
            category: "fault".into(),
            session_id: None,
        })
        .collect();
    let written = async {
        let client = redis::Client::open(rig.env.settings.redis.url.expose())?;
        let config = redis::aio::ConnectionManagerConfig::new().set_connection_timeout(Duration::from_secs(1)).set_response_timeout(Duration::from_secs(1));
        let mut conn = tokio::time::timeout(Duration::from_secs(2), redis::aio::ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out")))??;
        tsmigrate::legacy::writer::write_batch(&mut conn, &rig.env.keys(), rig.env.settings.redis.event_cap, &accepted, true).await
    }
    .await;
    if let Err(e) = written {
        return Attempt::Refused(format!("the batch could not be written to Redis: {e}"));
    }
    rig.accepted.lock().unwrap().extend(ids.clone());
    // While the fault lasts the relay may not deliver; afterwards it must.
    let wait = if stage == Stage::During { Duration::from_secs(3) } else { Duration::from_secs(5) };
    let deadline = Instant::now() + wait;
    let attempt = loop {
        let (landed, rows) = rig.in_target(&ids).await;
        if rows > landed {
            cell.problem(format!("relay: {} rows for {landed} events", rows));
        }
        if landed == ids.len() as i64 {
            break Attempt::Done("relayed".into());
        }
        if Instant::now() >= deadline {
            break Attempt::Refused(format!("{landed} of {} relayed within {wait:?}", ids.len()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match stage {
        Stage::Baseline => *rig.relay_errors_mark.lock().unwrap() = rig.metric("tsmigrate_relay_errors_total").await.unwrap_or(0.0),
        // A relay that cannot deliver says so in its error metric while the fault lasts.
        Stage::During if !attempt.done() => {
            let mark = *rig.relay_errors_mark.lock().unwrap();
            let deadline = Instant::now() + READY_TRUTH_WITHIN;
            loop {
                let now = rig.metric("tsmigrate_relay_errors_total").await;
                if now.is_some_and(|n| n > mark) {
                    break;
                }
                if Instant::now() >= deadline {
                    cell.problem(format!("tsmigrate_relay_errors_total stayed at {now:?} (from {mark}) while the relay could not deliver"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        _ => {}
    }
    attempt
}

/// Two replicas hold the jobs lease through the proxy: at most one is ever confirmed by
/// PostgreSQL (the jobs run in one replica at a time), and one is again once the fault cleared.
async fn lease(rig: &Rig, cell: &Cell) -> Attempt {
    use tsmigrate::daemon::leader::Lease;
    let (a, b) = {
        let mut leases = rig.leases.lock().unwrap();
        let (a, b, _) = leases.get_or_insert_with(|| {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let url = SecretUrl::new(rig.pg_proxy.url_through(rig.env.settings.database.url.expose()));
            let (a, b) = (Lease::new(Duration::from_millis(500)), Lease::new(Duration::from_millis(500)));
            tokio::spawn(a.clone().hold(url.clone(), stopped.clone()));
            tokio::spawn(b.clone().hold(url, stopped));
            (a, b, stop)
        });
        (a.clone(), b.clone())
    };
    let started = Instant::now();
    loop {
        let (first, second) = (a.confirm(&rig.env.pool).await, b.confirm(&rig.env.pool).await);
        if first && second {
            cell.problem("both replicas confirmed as holders of the jobs lease");
        }
        if first || second {
            return Attempt::Done(format!("held by replica {}", if first { "a" } else { "b" }));
        }
        // A moment to take it at the start; then "nobody holds it" is the answer.
        if started.elapsed() > Duration::from_secs(3) {
            return Attempt::Refused("no replica holds the jobs lease".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lock path's window and pace: 60 events in pages of 20 at 100 a second take more than
/// half a second, so the fault hits a copy in progress and the path costs the matrix seconds.
const LOCK_EVENTS: usize = 60;
const LOCK_RATE: &str = "100";
const LOCK_PAGE: &str = "20";

/// The migration lock under the fault: a phase command (`backfill --from --to`, paced with
/// `--max-rate`, as a process) takes the lock before the fault and is copying when it hits.
/// It either finishes with exact counts, or stops with a non-zero exit (resumable) — never
/// two holders: a second run started during the fault that completes (exit 0) while the first
/// still runs means the first may no longer finish with exit 0. Once the fault cleared a
/// re-run copies the window whole: every event Redis holds in it is in the target once.
async fn lock(rig: &Rig, cell: &Cell, stage: Stage) -> Attempt {
    let (from, to) = (&rig.lock_window.0, &rig.lock_window.1);
    let window = [from.as_str(), to.as_str()];
    match stage {
        Stage::Baseline => {
            rig.lock_run.lock().unwrap().take();
            // The copy has work to do: the window's rows go, the run puts them back.
            if sqlx::query("DELETE FROM analytics_events_ts WHERE time BETWEEN $1::timestamptz AND $2::timestamptz")
                .bind(from)
                .bind(to)
                .execute(&rig.env.pool)
                .await
                .is_err()
            {
                return Attempt::Refused("the target cannot be reached to clear the window".into());
            }
            let overrides = rig.overrides();
            let pairs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let args = ["backfill", "--from", from, "--to", to, "--page-size", LOCK_PAGE, "--max-rate", LOCK_RATE, "--json"];
            let mut command = rig.env.command(&args, &pairs);
            command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
            let mut run = crate::support::ChildGuard::spawn(command);
            let deadline = Instant::now() + HUNG_AFTER;
            loop {
                let (rows, _) = rig.window_rows(window).await;
                if rows > 0 {
                    *rig.lock_run.lock().unwrap() = Some(run);
                    return Attempt::Done(format!("copying ({rows} rows in)"));
                }
                if let Ok(Some(status)) = run.child().try_wait() {
                    return Attempt::Refused(format!("the paced copy exited {status} before copying"));
                }
                if Instant::now() >= deadline {
                    return Attempt::Refused("the paced copy copied nothing".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Stage::During => {
            let Some(mut first) = rig.lock_run.lock().unwrap().take() else {
                cell.problem("lock: no paced copy was running when the fault hit");
                return Attempt::Refused("nothing running".into());
            };
            // A second run while the first holds (or held) the lock.
            let first_was_running = first.child().try_wait().ok().flatten().is_none();
            let second = rig.cli(&["backfill", "--from", from, "--to", to, "--json"]).await;
            let first_still_running = first.child().try_wait().ok().flatten().is_none();
            let second_code = second.as_ref().map(|o| o.code);
            if second.is_none() {
                cell.problem(format!("lock: a second `backfill --from --to` did not finish within {HUNG_AFTER:?}"));
            }
            let deadline = Instant::now() + HUNG_AFTER;
            let code = loop {
                if let Ok(Some(status)) = first.child().try_wait() {
                    break status.code().unwrap_or(-1);
                }
                if Instant::now() >= deadline {
                    cell.problem(format!("lock: the paced copy neither finished nor stopped within {HUNG_AFTER:?} of the fault"));
                    return Attempt::Refused("hung".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let mut stdout = String::new();
            if let Some(mut out) = first.child().stdout.take() {
                let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
            }
            let out = CliOutput { code, stdout, stderr: String::new() };
            if second_code == Some(0) && first_was_running && first_still_running && code == 0 {
                cell.problem("lock: two holders — a second run completed while the first ran on, and both exited 0");
            }
            let second = second_code.map(|c| format!(", a second run exit {c}")).unwrap_or_default();
            match code {
                0 => {
                    let details = out.details();
                    let read = details["read"].as_u64().unwrap_or(0);
                    let kept = ["inserted", "already_present", "dead_letters"].iter().map(|k| details[*k].as_u64().unwrap_or(0)).sum::<u64>();
                    if read == 0 || kept != read {
                        cell.problem(format!("lock: the paced copy exited 0 with counts that do not add up: {details}"));
                    }
                    Attempt::Done(format!("finished, {read} read{second}"))
                }
                2 => Attempt::Refused(format!("stopped, exit 2{second}: {}", summary(&out))),
                other => {
                    cell.problem(format!("lock: the paced copy exited {other}: {}", summary(&out)));
                    Attempt::Refused(format!("exit {other}"))
                }
            }
        }
        Stage::Recovery => {
            let attempt = cli_attempt(rig, cell, &["backfill", "--from", from, "--to", to, "--json"]).await;
            if attempt.done() {
                let (rows, distinct) = rig.window_rows(window).await;
                let held = rig.window_held(window).await;
                if (rows, distinct) != (held, held) {
                    cell.problem(format!("lock: after the re-run the window has {rows} rows for {distinct} events; Redis holds {held}"));
                }
                return Attempt::Done(format!("{rows} of {held}"));
            }
            attempt
        }
    }
}

async fn reads(rig: &Rig, cell: &Cell, _stage: Stage) -> Attempt {
    let end = chrono::Utc::now();
    let path =
        format!("/api/v1/analytics/summary?from={}&to={}", tsmigrate::reads::wire_time(end - chrono::Duration::hours(6)), tsmigrate::reads::wire_time(end));
    match rig.http.get(rig.url(&path)).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            match status {
                200 => Attempt::Done("200".into()),
                503 => Attempt::Refused(format!("503 {body}")),
                other => {
                    cell.problem(format!("reads answered {other}: {body}"));
                    Attempt::Refused(format!("{other}"))
                }
            }
        }
        Err(e) if e.is_timeout() => {
            cell.problem(format!("reads: no answer within {HUNG_AFTER:?}"));
            Attempt::Refused("hung".into())
        }
        Err(e) => Attempt::Refused(format!("no answer: {e}")),
    }
}

/// A one-shot command: exit 0 is done, exit 2 an honest "could not run"; anything else (a
/// validation difference that does not exist, a refusal, a crash) or a hang is a broken promise.
async fn cli_attempt(rig: &Rig, cell: &Cell, args: &[&str]) -> Attempt {
    let Some(out) = rig.cli(args).await else {
        cell.problem(format!("`{}` did not finish within {HUNG_AFTER:?}", args.join(" ")));
        return Attempt::Refused("hung".into());
    };
    match out.code {
        0 => Attempt::Done(summary(&out)),
        2 => Attempt::Refused(summary(&out)),
        code => {
            cell.problem(format!("`{}` exited {code}: {}", args.join(" "), summary(&out)));
            Attempt::Refused(format!("exit {code}"))
        }
    }
}

/// Validation. While Redis evicts, the two systems really differ: events it dropped from the
/// sorted set are only in the target (extra), and events whose outbox entry it dropped are
/// only in Redis (missing, recorded as a possible loss). A run that reports differences then
/// tells the truth; outside such a fault a difference is a broken promise.
async fn validate(rig: &Rig, cell: &Cell, stage: Stage) -> Attempt {
    let evicting = stage == Stage::During && current_fault().is_some_and(|f| matches!(f.how, How::RedisEvicting));
    if evicting {
        let Some(out) = rig.cli(&["validate", "--json"]).await else {
            cell.problem(format!("`validate --json` did not finish within {HUNG_AFTER:?}"));
            return Attempt::Refused("hung".into());
        };
        let message = summary(&out);
        return match out.code {
            0 => Attempt::Done(message),
            1 => Attempt::Refused(format!("exit 1, Redis evicted keys: {message}")),
            2 => Attempt::Refused(message),
            code => {
                cell.problem(format!("`validate --json` exited {code}: {message}"));
                Attempt::Refused(format!("exit {code}"))
            }
        };
    }
    cli_attempt(rig, cell, &["validate", "--json"]).await
}

/// The envelope's error message, or its first line of stdout.
fn summary(out: &CliOutput) -> String {
    let envelope: Option<Value> = serde_json::from_str(&out.stdout).ok();
    match envelope {
        Some(e) if e["error"].is_object() => e["error"]["message"].as_str().unwrap_or_default().to_string(),
        Some(_) => "done".into(),
        None => out.stderr.lines().last().unwrap_or_default().to_string(),
    }
}

/// `status --check`: healthy (exit 0) is a claim that both servers were seen and keep what they are given.
async fn status(rig: &Rig, cell: &Cell, stage: Stage) -> Attempt {
    let Some(out) = rig.cli(&["status", "--check", "--json"]).await else {
        cell.problem(format!("status did not finish within {HUNG_AFTER:?}"));
        return Attempt::Refused("hung".into());
    };
    if out.code == 0 && stage == Stage::During {
        let fault = current_fault();
        if fault.is_some_and(|f| f.blinds_new_connections() || f.loses_writes()) {
            cell.problem(format!("status said healthy (exit 0) during {}", fault.unwrap().label()));
        }
    }
    if out.code == 0 {
        Attempt::Done("healthy".into())
    } else {
        Attempt::Refused(format!("exit {}: {}", out.code, summary(&out)))
    }
}

/// Backfill runs once for real (during the fault, or until it completes afterwards); then
/// every pre-T event in Redis is in the target exactly once.
async fn backfill(rig: &Rig, cell: &Cell, stage: Stage) -> Attempt {
    if stage == Stage::Baseline || phase(rig).await == "backfilled" {
        return Attempt::Done("backfilled".into());
    }
    let attempt = cli_attempt(rig, cell, &["backfill", "--json"]).await;
    if attempt.done() {
        let (rows, distinct) = crate::scenario::target_counts(&rig.env).await;
        if rows != distinct {
            cell.problem(format!("backfill: {rows} rows for {distinct} events"));
        }
    }
    attempt
}

async fn phase(rig: &Rig) -> String {
    sqlx::query_scalar("SELECT phase::text FROM tsmigrate.migration_state").fetch_one(&rig.env.pool).await.unwrap_or_default()
}

tokio::task_local! {
    static CURRENT_FAULT: &'static FaultDef;
}

/// The fault in force while a cell's "during" attempt runs (set by `run_fault`).
fn current_fault() -> Option<&'static FaultDef> {
    CURRENT_FAULT.try_with(|f| *f).ok()
}

/// Attempts `path` until it works, for at most [`RECOVERY_WITHIN`]; the last failed attempt
/// otherwise. After a fault that cost Redis writes, the operator's repair ([`Rig::heal`])
/// comes before each attempt.
async fn until_done(rig: &Rig, fault: &FaultDef, cell: &Cell, path: &PathDef, stage: Stage) -> Result<(), Attempt> {
    let started = Instant::now();
    loop {
        rig.heal(fault, cell, false).await;
        let attempt = (path.attempt)(rig, cell, stage).await;
        if attempt.done() {
            return Ok(());
        }
        if started.elapsed() > RECOVERY_WITHIN {
            return Err(attempt);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One row of the table.
struct Row {
    fault: String,
    path: &'static str,
    during: String,
    recovery: Option<f64>,
    problems: Vec<String>,
    /// Wall time of the cell (baseline to recovered), seconds.
    took: f64,
}

/// Runs every path of `fault` in one rig, path after path.
async fn run_fault(fault: &'static FaultDef, paths: Vec<&'static PathDef>) -> Vec<Row> {
    let rig = Rig::new(fault).await;
    let mut rows = Vec::new();
    for path in paths {
        let cell = Cell::default();
        let started = Instant::now();
        let row = |cell: Cell, during: String, recovery| Row {
            fault: fault.label(),
            path: path.name,
            during,
            recovery,
            problems: cell.problems.into_inner().unwrap(),
            took: started.elapsed().as_secs_f64(),
        };
        // The path works before the fault (a previous cell's fault may take a moment to pass,
        // and what it cost Redis is recorded, then accepted as an operator would).
        rig.heal(fault, &cell, true).await;
        if let Err(last) = until_done(&rig, fault, &cell, path, Stage::Baseline).await {
            cell.problem(format!("baseline: not working within {RECOVERY_WITHIN:?} before the fault: {}", last.short()));
            rows.push(row(cell, "not run".into(), None));
            tokio::task::block_in_place(|| rig.restart_daemon());
            continue;
        }
        tokio::task::block_in_place(|| rig.apply(fault));
        let during = CURRENT_FAULT.scope(fault, (path.attempt)(&rig, &cell, Stage::During)).await;
        tokio::task::block_in_place(|| rig.clear(fault));
        let cleared = Instant::now();
        let recovery = match until_done(&rig, fault, &cell, path, Stage::Recovery).await {
            Ok(()) => Some(cleared.elapsed().as_secs_f64()),
            Err(last) => {
                cell.problem(format!("not back within {RECOVERY_WITHIN:?} of the fault clearing: {}", last.short()));
                // The next cell starts with a service that has not been through this one.
                tokio::task::block_in_place(|| rig.restart_daemon());
                None
            }
        };
        rows.push(row(cell, during.short(), recovery));
    }
    // The data invariants, once every fault of the rig cleared: every accepted event is in the
    // target once, nothing answered "nothing was written" is anywhere. A fault that costs
    // Redis writes (an evicting policy set under a running dual-write) may lose accepted events,
    // and the promise is then that the loss is recorded: every accepted event not in the target
    // was accepted before the end of a recorded loss window (`tsmigrate.outbox_gaps`) that is
    // still open or was closed only by an operator's audited acceptance — never one "repaired".
    let accepted = rig.accepted.lock().unwrap().clone();
    let not_written = rig.not_written.lock().unwrap().clone();
    let deadline = Instant::now() + RECOVERY_WITHIN;
    let (landed, rows_accepted, lost) = loop {
        let (landed, rows_accepted) = rig.in_target(&accepted).await;
        let lost = if fault.loses_writes() { rig.lost(&accepted).await } else { Lost::default() };
        let accounted = landed + (lost.open + lost.accepted) as i64;
        if accounted == accepted.len() as i64 || Instant::now() >= deadline {
            break (landed, rows_accepted, lost);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (written_anyway, _) = rig.in_target(&not_written).await;
    let in_redis_now = rig.ids_in_redis().await;
    let in_redis = not_written.iter().filter(|id| in_redis_now.contains(*id)).count();
    let missing = accepted.len() as i64 - landed;
    let unrecorded = missing - (lost.open + lost.accepted) as i64;
    let recorded = if fault.loses_writes() {
        format!(" (in a recorded loss window: {} still open, {} accepted as lost; {} loss window(s) recorded)", lost.open, lost.accepted, lost.windows)
    } else {
        String::new()
    };
    let data = Row {
        fault: fault.label(),
        path: "(data)",
        during: format!(
            "sent {} accepted {} landed {} lost {missing}{recorded} doubled {}; answered not-written {} written anyway {}",
            rig.sent.load(std::sync::atomic::Ordering::SeqCst),
            accepted.len(),
            landed,
            rows_accepted - landed,
            not_written.len(),
            written_anyway as usize + in_redis
        ),
        recovery: None,
        took: 0.0,
        problems: [
            (unrecorded > 0).then(|| {
                if fault.loses_writes() {
                    format!("{unrecorded} accepted events are neither in the target nor in a recorded loss window")
                } else {
                    format!("{unrecorded} accepted events never reached the target")
                }
            }),
            (rows_accepted != landed).then(|| format!("{} accepted events doubled", rows_accepted - landed)),
            (written_anyway > 0 || in_redis > 0)
                .then(|| format!("answered \"nothing was written\" but written: {written_anyway} in the target, {in_redis} in Redis")),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    rows.push(data);
    rows
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from("| Fault | Path | During the fault | Back after (s) | Outcome |\n|---|---|---|---|---|\n");
    for row in rows {
        let outcome = match (row.problems.is_empty(), known_failing(&row.fault, row.path)) {
            (true, _) => "holds".to_string(),
            (false, None) => format!("FAILS: {}", row.problems.join("; ")),
            (false, Some(why)) => format!("fails, known ({why}): {}", row.problems.join("; ")),
        };
        let recovery = row.recovery.map(|s| format!("{s:.2}")).unwrap_or_else(|| "-".into());
        out.push_str(&format!("| {} | {} | {} | {} | {} |\n", row.fault, row.path, row.during.replace('|', " "), recovery, outcome.replace('|', " ")));
    }
    out
}

/// Rigs at a time: each is a redis-server, a daemon and CLI runs on a 2-core machine.
const RIGS_AT_ONCE: usize = 4;

#[test]
fn fault_matrix() {
    let all = std::env::var("TSMIGRATE_FAULT_MATRIX_ALL").as_deref() == Ok("1");
    // A part of the labels, to run some faults only (`redis`, `sigstop`).
    let only = std::env::var("TSMIGRATE_FAULT_MATRIX_ONLY").ok();
    let mut work: Vec<(&'static FaultDef, Vec<&'static PathDef>)> = Vec::new();
    for fault in FAULTS {
        if only.as_ref().is_some_and(|o| !fault.label().contains(o.as_str())) {
            continue;
        }
        work.push((fault, PATHS.iter().filter(|p| p.servers.contains(&fault.server)).collect()));
    }
    // Each rig runs on a thread with a runtime of its own (its futures hold sqlx borrows that
    // are not `Send` in general), RIGS_AT_ONCE threads taking rigs from one queue.
    let queue = Arc::new(Mutex::new(work.into_iter().collect::<std::collections::VecDeque<_>>()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..RIGS_AT_ONCE)
        .map(|_| {
            let (queue, results) = (queue.clone(), results.clone());
            std::thread::spawn(move || loop {
                let Some((fault, paths)) = queue.lock().unwrap().pop_front() else { return };
                let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(run_fault(fault, paths))));
                let rows = outcome.unwrap_or_else(|panic| {
                    let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                    vec![Row {
                        fault: fault.label(),
                        path: "(rig)",
                        during: String::new(),
                        recovery: None,
                        problems: vec![format!("the rig failed: {why}")],
                        took: 0.0,
                    }]
                });
                results.lock().unwrap().push(rows);
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let mut by_fault = std::mem::take(&mut *results.lock().unwrap());
    by_fault.sort_by_key(|rows| FAULTS.iter().position(|f| rows.first().is_some_and(|r| r.fault == f.label())));
    let rows: Vec<Row> = by_fault.into_iter().flatten().collect();
    let text = table(&rows);
    println!("{text}");
    // What each path costs the matrix (its cells' wall time over every fault).
    let mut took: BTreeMap<&str, f64> = BTreeMap::new();
    for row in &rows {
        *took.entry(row.path).or_default() += row.took;
    }
    println!("wall time per path, all faults: {}", took.iter().map(|(p, s)| format!("{p} {s:.1} s")).collect::<Vec<_>>().join(", "));
    let lock: Vec<String> = rows.iter().filter(|r| r.path == "lock").map(|r| format!("{} {:.1} s", r.fault, r.took)).collect();
    println!("the lock path by fault: {}", lock.join(", "));
    let holding_again: Vec<String> =
        rows.iter().filter(|r| r.problems.is_empty() && known_failing(&r.fault, r.path).is_some()).map(|r| format!("{} × {}", r.fault, r.path)).collect();
    if !holding_again.is_empty() {
        println!("KNOWN_FAILING cells that hold now (take them off the list):\n  {}", holding_again.join("\n  "));
    }
    if let Ok(path) = std::env::var("TSMIGRATE_FAULT_MATRIX_OUT") {
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("write the fault matrix to {path}: {e}"));
    }
    let failing: BTreeMap<String, Vec<String>> = rows
        .iter()
        .filter(|r| !r.problems.is_empty() && (all || known_failing(&r.fault, r.path).is_none()))
        .map(|r| (format!("{} × {}", r.fault, r.path), r.problems.clone()))
        .collect();
    assert!(failing.is_empty(), "cells that break a promise:\n{failing:#?}");
}

/// The migration lock across a PostgreSQL restart: `backfill` holds the phase lock on a
/// session that the restart ends. It must stop at its next page boundary (non-zero exit,
/// resumable) rather than carry on unlocked while a second `backfill` takes the lock; either
/// way nothing may be lost or doubled, and a final run completes the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_that_lost_its_lock_to_a_postgres_restart_stops() {
    let pg = tokio::task::block_in_place(|| PgServer::start(PgOptions::default()));
    let env = TestEnv::on_server(SecretUrl::new(pg.url("postgres")), |_| {}).await;
    const EVENTS: i64 = 3000;
    tokio::task::block_in_place(|| {
        env.cli(&["seed", "--events", &EVENTS.to_string(), "--days", "1", "--users", "20", "--seed", "3", "--end", "-2h"]).expect_success();
        env.cli(&["prepare", "--mode", "postgres"]).expect_success();
        env.cli(&["dual-write", "start"]).expect_success();
    });
    // Slow enough to be copying when the server restarts: 100 events a second, 50 a page.
    let mut first = crate::support::ChildGuard::spawn({
        let mut command = env.command(&["backfill", "--page-size", "50", "--max-rate", "100", "--no-history", "--json"], &[]);
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        command
    });
    crate::support::eventually("the first backfill copying", Duration::from_secs(60), || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_events_ts").fetch_one(&env.pool).await.unwrap_or(0);
        (rows > 0).then_some(())
    })
    .await;
    let (before, _) = crate::scenario::target_counts(&env).await;
    tokio::task::block_in_place(|| pg.restart());
    let restarted = Instant::now();
    // Its lock died with its session: it stops at its next page boundary, before anyone else
    // can take the lock and copy the same pages (it would otherwise copy for 30 s more).
    let first_exit = crate::support::eventually("the first backfill to stop", Duration::from_secs(60), || {
        let code = first.child().try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
        async move { code }
    })
    .await;
    let (rows, distinct) = crate::scenario::target_counts(&env).await;
    println!(
        "lock across a restart: the first backfill exited {first_exit} {:.1} s after the restart; {before} rows before it, {rows} rows for {distinct} events after",
        restarted.elapsed().as_secs_f64()
    );
    assert_ne!(first_exit, 0, "the backfill that lost its lock stopped (non-zero, resumable)");
    // The page in flight when the server went down, and at most the one after: not the
    // thousands that remained (copied unlocked, while another backfill could take the lock).
    assert!(rows - before <= 2 * 50, "the backfill that lost its lock copied {} more events instead of stopping at a page boundary", rows - before);
    assert_eq!(rows, distinct, "no event doubled");
    // Resumable: the next run completes the copy.
    tokio::task::block_in_place(|| env.cli(&["backfill", "--page-size", "50", "--no-history"])).expect_success();
    let (rows, distinct) = crate::scenario::target_counts(&env).await;
    let mut redis = env.redis().await;
    let held: i64 = redis::AsyncCommands::zcard(&mut redis, env.keys().events).await.unwrap();
    assert_eq!((rows, distinct), (held, held), "every event Redis holds copied once");
}
