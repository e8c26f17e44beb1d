//! Test harness: every test gets its own PostgreSQL database and its own Redis key
//! prefix, so tests run in parallel and in any order against the real servers.
//!
//! * [`TestEnv::new`] creates database `tsm_t_<hex>` and prefix `tsmt:<hex>:`.
//! * [`TestEnv::cli`] runs the built `tsmigrate` binary against them.
//! * Dropping a `TestEnv` drops the database and deletes the prefix's keys, also when
//!   the test panicked.
//!
//! Servers: `TSMIGRATE_TEST_DATABASE_URL` (a maintenance database on the server, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `TSMIGRATE_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`). `scripts/services.sh` starts local ones.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tsmigrate::config::{SecretUrl, Settings};
use tsmigrate::connect::RedisConn;
use tsmigrate::legacy::LegacyKeys;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Set to 1 to make a missing TimescaleDB a test failure instead of a skip.
pub const REQUIRE_TIMESCALEDB_ENV: &str = "TSMIGRATE_REQUIRE_TIMESCALEDB";
/// A file to which every skipped TimescaleDB-tier test appends its name (set by scripts/test.sh).
pub const TIER_SKIP_LOG_ENV: &str = "TSMIGRATE_TIER_SKIP_LOG";

/// Environment variables the binary reads that must not leak from the developer's shell
/// into a test run (each test sets what it needs explicitly).
const SCRUBBED_ENV: &[&str] = &[
    "DATABASE_URL",
    "LEGACY_DATABASE_URL",
    "REDIS_URL",
    "TSMIGRATE_REDIS_PREFIX",
    "TSMIGRATE_REDIS_TLS_CA_FILE",
    "TSMIGRATE_REDIS_TLS_INSECURE",
    "TSMIGRATE_CONFIG",
    "TSMIGRATE_API_TOKEN",
    "TSMIGRATE_BIND",
    "TSMIGRATE_ACTOR",
    "RUST_LOG",
];

/// The maintenance database URL used to create and drop test databases.
pub fn admin_database_url() -> SecretUrl {
    SecretUrl::new(std::env::var("TSMIGRATE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into()))
}

pub fn redis_url() -> SecretUrl {
    SecretUrl::new(std::env::var("TSMIGRATE_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into()))
}

fn random_hex() -> String {
    // 64 random bits: collisions between concurrently running tests are not a concern.
    format!("{:016x}", rand::random::<u64>())
}

/// One isolated test environment: a fresh database, a Redis key prefix, and settings for both.
pub struct TestEnv {
    /// `tsm_t_<hex>`, created by `new`, dropped on drop.
    pub db_name: String,
    /// `tsmt:<hex>:`; every key under it is deleted on drop.
    pub prefix: String,
    /// Settings pointing at this database and prefix (defaults otherwise).
    pub settings: Settings,
    /// A pool on the test database, for assertions.
    pub pool: PgPool,
    /// The working directory of CLI runs: empty, so no stray `tsmigrate.toml` is picked up.
    workdir: tempfile::TempDir,
    cleaned: bool,
}

/// What a CLI run produced.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics with the full output unless the exit code is `expected`.
    #[track_caller]
    pub fn expect_code(&self, expected: i32) -> &Self {
        assert_eq!(self.code, expected, "expected exit code {expected}, got {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn expect_success(&self) -> &Self {
        self.expect_code(0)
    }

    /// Stdout of a `--json` run: exactly one JSON document, valid against the envelope
    /// schema (`schemas/envelope.schema.json`), whose `exit_code` is the process's.
    #[track_caller]
    pub fn json(&self) -> Value {
        let envelope: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e})\n--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout, self.stderr));
        let problems: Vec<String> = envelope_schema().iter_errors(&envelope).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(problems.is_empty(), "stdout does not follow the envelope schema:\n{}\n--- stdout ---\n{}", problems.join("\n"), self.stdout);
        assert_eq!(envelope["exit_code"].as_i64(), Some(self.code as i64), "the envelope's exit_code is the process's: {}", self.stdout);
        envelope
    }

    /// The `details` of a `--json` run's envelope (see [`Self::json`]).
    #[track_caller]
    pub fn details(&self) -> Value {
        self.json()["details"].clone()
    }
}

/// The shipped envelope schema, compiled once.
pub fn envelope_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/envelope.schema.json")).expect("read the envelope schema");
        let schema: Value = serde_json::from_str(&text).expect("the envelope schema is JSON");
        jsonschema::options().should_validate_formats(true).build(&schema).expect("the envelope schema compiles")
    })
}

impl TestEnv {
    /// A fresh database and key prefix with the default settings.
    pub async fn new() -> TestEnv {
        Self::with_settings(|_| {}).await
    }

    /// Like `new`, with settings adjusted by `adjust` (database and Redis are filled in after).
    pub async fn with_settings(adjust: impl FnOnce(&mut Settings)) -> TestEnv {
        Self::on_server(admin_database_url(), adjust).await
    }

    /// Like `with_settings`, with the database on the server of `admin` (a maintenance
    /// database URL: a private server a test restarts). Drop cleans up the default server
    /// only: a private server goes with its own directory.
    pub async fn on_server(admin: SecretUrl, adjust: impl FnOnce(&mut Settings)) -> TestEnv {
        let hex = random_hex();
        let db_name = format!("tsm_t_{hex}");
        let prefix = format!("tsmt:{hex}:");
        let mut conn = PgConnection::connect(admin.expose())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {admin} ({e}); run scripts/services.sh or set TSMIGRATE_TEST_DATABASE_URL"));
        sqlx::raw_sql(&format!("CREATE DATABASE {db_name}")).execute(&mut conn).await.expect("create the test database");
        let _ = conn.close().await;

        let mut settings = Settings::default();
        adjust(&mut settings);
        settings.database.url = admin.with_database(&db_name);
        settings.database.legacy_url = None;
        settings.redis.url = redis_url();
        settings.redis.key_prefix = prefix.clone();

        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(settings.database.url.expose())
            .await
            .expect("connect to the test database");
        let workdir = tempfile::tempdir().expect("create a temporary working directory");
        TestEnv { db_name, prefix, settings, pool, workdir, cleaned: false }
    }

    /// The legacy Redis key names for this env's prefix.
    pub fn keys(&self) -> LegacyKeys {
        LegacyKeys::from_settings(&self.settings)
    }

    /// A Redis connection (the same kind the tool uses).
    pub async fn redis(&self) -> RedisConn {
        tsmigrate::db::redis(&self.settings).await.expect("connect to the test Redis; run scripts/services.sh or set TSMIGRATE_TEST_REDIS_URL")
    }

    /// An empty directory that lives as long as this env (config files, reports).
    pub fn dir(&self) -> &Path {
        self.workdir.path()
    }

    /// Writes `text` to a file in [`Self::dir`] and returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }

    /// Runs `tsmigrate <args>` against this env's database and prefix.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with_env(args, &[])
    }

    /// Runs `tsmigrate <args>` with extra environment variables (applied last, so they override).
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let output = self.command(args, env).output().expect("run the tsmigrate binary");
        CliOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `tsmigrate <args>` set up against this env (for runs a test starts and stops itself).
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tsmigrate"));
        command.args(args).current_dir(self.dir());
        for name in SCRUBBED_ENV {
            command.env_remove(name);
        }
        self.set_env(&mut command, env);
        command
    }

    /// Like [`Self::command`], but the process inherits nothing from the test's environment
    /// except what is set here (for a process the test kills: nothing of the developer's
    /// shell may change what it does).
    pub fn clean_command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tsmigrate"));
        command.args(args).current_dir(self.dir()).env_clear();
        self.set_env(&mut command, env);
        command
    }

    /// This env's database and prefix, a fixed actor, then `env` on top.
    fn set_env(&self, command: &mut Command, env: &[(&str, &str)]) {
        command
            .env("DATABASE_URL", self.settings.database.url.expose())
            .env("REDIS_URL", self.settings.redis.url.expose())
            .env("TSMIGRATE_REDIS_PREFIX", &self.prefix)
            .env("TSMIGRATE_ACTOR", "integration-test")
            // No terminal progress bars in captured output.
            .env("NO_COLOR", "1");
        // A test pointing the env at a TLS Redis (see `servers`) gets the same trust settings in the CLI.
        if let Some(ca) = &self.settings.redis.tls_ca_file {
            command.env("TSMIGRATE_REDIS_TLS_CA_FILE", ca);
        }
        if self.settings.redis.tls_insecure {
            command.env("TSMIGRATE_REDIS_TLS_INSECURE", "1");
        }
        for (name, value) in env {
            command.env(name, value);
        }
    }

    /// Waits until a backend of a `tsmigrate` process waits for a lock another test
    /// transaction holds (a process stopped at a known point, to be killed there).
    pub async fn wait_until_tsmigrate_waits_for_a_lock(&self, what: &str) {
        let query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tsmigrate' AND wait_event_type = 'Lock'";
        eventually(what, Duration::from_secs(60), || async {
            let blocked: i64 = sqlx::query_scalar(query).fetch_one(&self.pool).await.unwrap();
            (blocked > 0).then_some(())
        })
        .await
    }

    /// Runs `sql` on the maintenance database (a second database a test creates and drops itself).
    pub async fn admin_sql(&self, sql: &str) {
        let admin = admin_database_url();
        let mut conn = PgConnection::connect(admin.expose()).await.expect("connect to the maintenance database");
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    }

    /// Drops the database and deletes the Redis keys now (drop does the same, best effort).
    pub async fn cleanup(mut self) {
        self.pool.close().await;
        let (db, prefix) = (self.db_name.clone(), self.prefix.clone());
        tokio::task::spawn_blocking(move || cleanup_blocking(&db, &prefix)).await.expect("cleanup task");
        self.cleaned = true;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Async drop does not exist, and the test's runtime may be unwinding: clean up on a
        // separate thread with its own small runtime, and wait for it.
        let (db, prefix) = (self.db_name.clone(), self.prefix.clone());
        let joined = std::thread::spawn(move || cleanup_blocking(&db, &prefix)).join();
        if joined.is_err() {
            eprintln!("warning: cleanup of test database {} panicked", self.db_name);
        }
    }
}

/// A spawned child process that dies with its test: dropping the guard (also while a failed
/// test unwinds) kills the process if it is still running, so no test leaves one behind.
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn spawn(mut command: Command) -> ChildGuard {
        ChildGuard(command.spawn().expect("spawn the tsmigrate binary"))
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Drops `db` (terminating its connections) and deletes every key under `prefix`.
/// Never panics: it runs during unwinding too.
fn cleanup_blocking(db: &str, prefix: &str) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warning: cannot clean up {db}: no runtime: {e}");
            return;
        }
    };
    runtime.block_on(async {
        match PgConnection::connect(admin_database_url().expose()).await {
            Ok(mut conn) => {
                if let Err(e) = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&mut conn).await {
                    eprintln!("warning: cannot drop test database {db}: {e}");
                }
                let _ = conn.close().await;
            }
            Err(e) => eprintln!("warning: cannot drop test database {db}: {e}"),
        }
        if let Err(e) = delete_keys(prefix).await {
            eprintln!("warning: cannot delete Redis keys {prefix}*: {e}");
        }
    });
}

async fn delete_keys(prefix: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url().expose())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys = scan_keys(&mut conn, prefix).await?;
    for chunk in keys.chunks(500) {
        redis::cmd("DEL").arg(chunk).query_async::<()>(&mut conn).await?;
    }
    Ok(())
}

/// Every key starting with `prefix` (SCAN, never KEYS).
pub async fn scan_keys<C: redis::aio::ConnectionLike>(conn: &mut C, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(conn).await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What the test server offers for TimescaleDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimescaleSupport {
    /// Packaged and preloaded: `CREATE EXTENSION timescaledb` works.
    Usable,
    /// Packaged, but not in `shared_preload_libraries`.
    NotPreloaded,
    /// Not installed on the server at all.
    Missing,
}

pub async fn timescaledb_support(pool: &PgPool) -> TimescaleSupport {
    let packaged: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')")
        .fetch_one(pool)
        .await
        .expect("query pg_available_extensions");
    let preload: String =
        sqlx::query_scalar("SELECT current_setting('shared_preload_libraries')").fetch_one(pool).await.expect("read shared_preload_libraries");
    match (packaged, preload.split(',').any(|lib| lib.trim() == "timescaledb")) {
        (true, true) => TimescaleSupport::Usable,
        (true, false) => TimescaleSupport::NotPreloaded,
        (false, _) => TimescaleSupport::Missing,
    }
}

/// Whether the server can host TimescaleDB: the package is installed and it is preloaded.
pub async fn timescaledb_available(pool: &PgPool) -> bool {
    timescaledb_support(pool).await == TimescaleSupport::Usable
}

/// The TimescaleDB tier gate. Returns true when the test should run. When TimescaleDB is
/// unavailable it says so loudly on stderr and returns false — unless
/// `TSMIGRATE_REQUIRE_TIMESCALEDB=1`, which turns the skip into a failure.
pub async fn ts_tier(env: &TestEnv) -> bool {
    ts_tier_for(env, None).await
}

/// Like [`ts_tier`], for a test whose plain-PostgreSQL half has run (or runs) anyway: the
/// notice and the skip log say that only `half` was skipped.
pub async fn ts_tier_half(env: &TestEnv, half: &str) -> bool {
    ts_tier_for(env, Some(half)).await
}

async fn ts_tier_for(env: &TestEnv, half: Option<&str>) -> bool {
    if timescaledb_available(&env.pool).await {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("<unnamed test>").to_string();
    if std::env::var(REQUIRE_TIMESCALEDB_ENV).as_deref() == Ok("1") {
        panic!(
            "{REQUIRE_TIMESCALEDB_ENV}=1 but TimescaleDB is not available on the test server \
             (the timescaledb package must be installed and in shared_preload_libraries): {test}"
        );
    }
    let test = match half {
        Some(half) => format!("{test} ({half} only; the plain-PostgreSQL half ran)"),
        None => test,
    };
    notice(&format!("TIMESCALEDB TIER SKIPPED: {test}: extension not available"));
    record_tier_skip(&test);
    false
}

/// One line on the process's own stderr, which the test harness does not capture (it
/// captures `eprintln!`): a skip must show in a plain `cargo test` too.
pub fn notice(line: &str) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: fd 2 is open for the whole process; ManuallyDrop keeps it open after the write.
    let mut stderr = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
    let _ = stderr.write_all(format!("{line}\n").as_bytes());
}

/// Appends `test` to the file `$TSMIGRATE_TIER_SKIP_LOG` names (scripts/test.sh sets it and
/// reports the skipped tests in its closing lines: cargo counts a skipped test as passed).
fn record_tier_skip(test: &str) {
    let Some(path) = std::env::var_os(TIER_SKIP_LOG_ENV) else {
        return;
    };
    use std::io::Write;
    // One short append per line: concurrent tests do not interleave within a line.
    let appended = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(format!("{test}\n").as_bytes()));
    if let Err(e) = appended {
        panic!("cannot record the skipped TimescaleDB test {test} in {}: {e}", path.to_string_lossy());
    }
}

/// `return`s from the calling test when the TimescaleDB tier cannot run (see [`ts_tier`]).
macro_rules! require_timescaledb_or_skip {
    ($env:expr) => {
        if !$crate::support::ts_tier(&$env).await {
            return;
        }
    };
}

/// `obj[key]` (a dotted path: `run.phase_after`), panicking with the whole object when it is missing.
#[track_caller]
pub fn field<'a>(obj: &'a Value, key: &str) -> &'a Value {
    key.split('.')
        .try_fold(obj, |value, part| value.get(part))
        .unwrap_or_else(|| panic!("missing key {key:?} in {}", serde_json::to_string_pretty(obj).unwrap()))
}

/// Polls `probe` until it returns `Some`, for at most `timeout` (no sleeps as synchronisation).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, timeout: std::time::Duration, mut probe: impl FnMut() -> F) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
