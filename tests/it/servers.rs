//! Private servers a test may break without touching the shared ones: a `redis-server` of
//! its own (plaintext or TLS, with or without AOF) that it can kill and restart on the same
//! port, a throwaway certificate authority made with the `openssl` command, and
//! `tsmigrate run` as a process of its own ([`Daemon`]).
//!
//! Each server lives in its own temporary directory (data, log, a copy of its certificate)
//! and is killed when dropped, also when the test panics.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready (loading a big AOF included).
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A CA and one server certificate it signed, valid for `localhost` and `127.0.0.1`.
pub struct TestCa {
    /// Holds every file below; removed on drop.
    _dir: tempfile::TempDir,
    /// The CA certificate: what a client is told to trust.
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    /// Makes the CA and the server certificate (RSA 2048, valid one day) with `openssl`.
    pub fn generate() -> TestCa {
        Self::generate_for("DNS:localhost, IP:127.0.0.1")
    }

    /// Like [`Self::generate`], the server certificate naming `subject_alt_names` only
    /// (`DNS:localhost`: a name check by IP address fails).
    pub fn generate_for(subject_alt_names: &str) -> TestCa {
        let dir = tempfile::tempdir().expect("create a directory for the test CA");
        let path = |name: &str| dir.path().join(name);
        let (ca_key, ca_cert, key, csr, cert, ext) =
            (path("ca.key"), path("ca.pem"), path("server.key"), path("server.csr"), path("server.pem"), path("server.ext"));
        std::fs::write(&ext, format!("subjectAltName = {subject_alt_names}\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n")).unwrap();
        let s = |p: &PathBuf| p.to_str().expect("temporary paths are UTF-8").to_string();
        let days = ["-days", "1"];
        openssl(&[
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=tsmigrate test CA"][..],
            &days,
            &["-keyout", &s(&ca_key), "-out", &s(&ca_cert)],
        ]);
        openssl(&[&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", &s(&key), "-out", &s(&csr)][..]]);
        openssl(&[
            &["x509", "-req", "-set_serial", "2", "-in", &s(&csr), "-CA", &s(&ca_cert), "-CAkey", &s(&ca_key)][..],
            &days,
            &["-extfile", &s(&ext), "-out", &s(&cert)],
        ]);
        TestCa { _dir: dir, ca_cert, server_cert: cert, server_key: key }
    }

    /// The files a TLS server needs.
    pub fn server_tls(&self) -> ServerTls {
        ServerTls { cert: self.server_cert.clone(), key: self.server_key.clone(), ca: self.ca_cert.clone() }
    }
}

fn openssl(args: &[&[&str]]) {
    let mut command = Command::new("openssl");
    command.args(args.concat());
    let output = command.output().unwrap_or_else(|e| panic!("cannot run openssl ({e}); the TLS tests need the openssl command (apt-get install openssl)"));
    assert!(output.status.success(), "{command:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// Certificate files for a TLS server. They are copied into the server's own directory, so
/// the [`TestCa`] may be dropped first.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// How a private Redis runs.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Serve TLS only (`--port 0 --tls-port <port>`), with this certificate.
    pub tls: Option<ServerTls>,
    /// Append-only file with `appendfsync always`: what was acknowledged survives `kill`.
    pub aof: bool,
}

/// A `redis-server` of the test's own on 127.0.0.1.
pub struct RedisServer {
    port: u16,
    options: RedisOptions,
    /// Data (AOF), log and certificate copies; kept across restarts.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it accepts commands.
    pub fn start(options: RedisOptions) -> RedisServer {
        let dir = tempfile::tempdir().expect("create a directory for the private redis-server");
        let options = copy_certificates(options, dir.path());
        let mut server = RedisServer { port: 0, options, dir, child: None };
        let mut last_error = String::new();
        // The port is free when chosen but could be taken before redis binds it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start a private redis-server: {last_error}");
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, like a crash: no shutdown save, connections cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the process freezes with every connection open (a stalled host, a long
    /// fork, a swapping machine). [`Self::resume`] lets it go on; drop kills it either way.
    pub fn pause(&mut self) {
        signal(self.pid().expect("the private redis-server runs"), libc::SIGSTOP);
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&mut self) {
        signal(self.pid().expect("the private redis-server runs"), libc::SIGCONT);
    }

    /// `CONFIG SET name value …` on this server (plaintext servers only).
    pub fn config_set(&self, pairs: &[(&str, &str)]) {
        let mut conn = self.sync_connection();
        let mut command = redis::cmd("CONFIG");
        command.arg("SET");
        for (name, value) in pairs {
            command.arg(*name).arg(*value);
        }
        command.query::<()>(&mut conn).unwrap_or_else(|e| panic!("CONFIG SET {pairs:?} on the private redis-server: {e}"));
    }

    /// Out of memory: writes fail with OOM once `maxmemory` bytes are used (`noeviction`).
    pub fn set_out_of_memory(&self, maxmemory: u64) {
        self.config_set(&[("maxmemory", &maxmemory.to_string()), ("maxmemory-policy", "noeviction")]);
    }

    /// An evicting cache: keys are dropped to stay under `maxmemory` (`allkeys-lru`), any key,
    /// the outbox and the flag included.
    pub fn set_evicting(&self, maxmemory: u64) {
        self.config_set(&[("maxmemory", &maxmemory.to_string()), ("maxmemory-policy", "allkeys-lru")]);
    }

    /// No memory limit again (the fault cleared).
    pub fn clear_memory_limit(&self) {
        self.config_set(&[("maxmemory", "0"), ("maxmemory-policy", "noeviction")]);
    }

    /// `INFO` field `name` (`used_memory`, `evicted_keys`…) as a number.
    pub fn info_number(&self, name: &str) -> u64 {
        let info: String = redis::cmd("INFO").query(&mut self.sync_connection()).expect("INFO on the private redis-server");
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no numeric {name} in INFO"))
    }

    fn sync_connection(&self) -> redis::Connection {
        assert!(self.options.tls.is_none(), "the fault helpers talk plaintext");
        let client = redis::Client::open(self.url()).expect("a redis URL");
        client.get_connection_with_timeout(Duration::from_secs(5)).expect("connect to the private redis-server")
    }

    /// Kills the server if it runs and starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("cannot restart the private redis-server on port {}: {e}", self.port);
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let log = dir.join("redis.log");
        // A fresh log per start: readiness is read from it.
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"]).arg("--dir").arg(dir).arg("--logfile").arg(&log);
        if self.options.aof {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        match &self.options.tls {
            Some(tls) => {
                command.args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"]);
                command.arg("--tls-cert-file").arg(&tls.cert).arg("--tls-key-file").arg(&tls.key).arg("--tls-ca-cert-file").arg(&tls.ca);
            }
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = command.spawn().map_err(|e| format!("cannot run redis-server ({e}); install it (apt-get install redis-server)"))?;
        self.child = Some(child);
        self.wait_ready(&log)
    }

    /// Redis logs "Ready to accept connections" once its data is loaded and it listens.
    fn wait_ready(&mut self, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("redis-server exited ({status}) on port {}: {}", self.port, log_tail(log)));
            }
            let ready = std::fs::read_to_string(log).is_ok_and(|text| text.contains("Ready to accept connections"));
            if ready && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!("redis-server on port {} was not ready within {READY_WITHIN:?}: {}", self.port, log_tail(log)))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process id this test spawned and has not reaped.
    let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("find a free port").port()
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn copy_certificates(mut options: RedisOptions, dir: &Path) -> RedisOptions {
    if let Some(tls) = &options.tls {
        let copy = |from: &Path, name: &str| {
            let to = dir.join(name);
            std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} for redis-server: {e}", from.display()));
            to
        };
        options.tls = Some(ServerTls { cert: copy(&tls.cert, "server.pem"), key: copy(&tls.key, "server.key"), ca: copy(&tls.ca, "ca.pem") });
    }
    options
}

/// `tsmigrate run` as a separate process, the way it runs in production.
pub struct Daemon {
    pub addr: std::net::SocketAddr,
    child: Child,
    logs: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread reading the log; it ends when the process has closed its stderr.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `tsmigrate [--config FILE] run --bind 127.0.0.1:0` with `env` on top of the
    /// test env's, and waits until it listens.
    pub fn start(test: &crate::support::TestEnv, config: Option<&std::path::Path>, env: &[(&str, &str)]) -> Daemon {
        Self::start_with(test, config, &[], env)
    }

    /// Like [`Self::start`], with more `run` options (`--no-relay`, `--no-jobs`).
    pub fn start_with(test: &crate::support::TestEnv, config: Option<&std::path::Path>, run_options: &[&str], env: &[(&str, &str)]) -> Daemon {
        use std::io::BufRead;
        let mut args: Vec<&str> = Vec::new();
        if let Some(config) = config {
            args.extend(["--config", config.to_str().expect("a UTF-8 path")]);
        }
        args.extend(["run", "--bind", "127.0.0.1:0"]);
        args.extend_from_slice(run_options);
        let mut child = test.command(&args, env).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start tsmigrate run");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        // Reads the log until the process ends, so the pipe never fills up.
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                // Plain, or inside a JSON log line (`--log-format json`).
                if let Some((_, rest)) = line.split_once("tsmigrate listening on http://") {
                    let _ = addr_tx.send(rest.split('"').next().unwrap_or(rest).trim().to_string());
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                panic!("tsmigrate run did not start listening:\n{}", logs.lock().unwrap());
            }
        };
        Daemon { addr, child, logs, reader: Some(reader) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// SIGKILL: dies at once, as in a crash or an OOM kill; nothing of its shutdown runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, waits for a graceful exit, and returns the exit code with everything the
    /// process logged, to its last line.
    pub fn stop_and_read_log(mut self) -> (i32, String) {
        let code = self.terminate();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (code, self.logs())
    }

    /// SIGTERM, then waits for a graceful exit; returns the exit code.
    pub fn stop(mut self) -> i32 {
        self.terminate()
    }

    fn terminate(&mut self) -> i32 {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for tsmigrate run") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "tsmigrate run did not stop within 30s of SIGTERM:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where Debian puts PostgreSQL 15's server programs (initdb, pg_ctl, postgres).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How a private PostgreSQL runs.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// `ssl = on` with this certificate (and CA for client certificates, unused).
    pub tls: Option<ServerTls>,
}

/// A PostgreSQL cluster of the test's own (initdb in a temporary directory, run as the
/// `postgres` OS user, trust authentication, on a free port of 127.0.0.1 and its own socket
/// directory), which the test may restart or stop. Stopped (immediate) on drop.
pub struct PgServer {
    port: u16,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// initdb, then start and wait until it accepts connections.
    pub fn start(options: PgOptions) -> PgServer {
        let dir = tempfile::Builder::new().prefix("tsm-pg-").tempdir().expect("create a directory for the private PostgreSQL");
        let (uid, gid) = postgres_user();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("give the cluster directory to the postgres user");
        let data = dir.path().join("data");
        run_as_postgres(Command::new(Path::new(PG_BIN).join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]));
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = 'localhost'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 16MB\nmax_connections = 60\n",
            dir.path().display()
        );
        if let Some(tls) = &options.tls {
            for (from, name) in [(&tls.cert, "server.crt"), (&tls.key, "server.key")] {
                let to = data.join(name);
                std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} for PostgreSQL: {e}", from.display()));
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
                // PostgreSQL refuses a key others can read.
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        let mut file = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("open postgresql.conf");
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        let server = PgServer { port, dir };
        server.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some("server.log"));
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// `pg_ctl restart -m fast`: every session is ended (advisory locks with them), the
    /// server is back when it returns.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60", "-l"], Some("server.log"));
    }

    /// `pg_ctl stop -m fast`; [`Self::start_again`] brings it back.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"], None);
    }

    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some("server.log"));
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn pg_ctl(&self, args: &[&str], log: Option<&str>) {
        let mut command = Command::new(Path::new(PG_BIN).join("pg_ctl"));
        command.arg("-D").arg(self.dir.path().join("data")).args(args);
        if let Some(log) = log {
            command.arg(self.dir.path().join(log));
        }
        let output = run_as_postgres(&mut command);
        let _ = output;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(Path::new(PG_BIN).join("pg_ctl")).arg("-D").arg(self.dir.path().join("data"));
        command.args(["stop", "-m", "immediate", "-w", "-t", "30"]).stdout(Stdio::null()).stderr(Stdio::null());
        let _ = command.status();
    }
}

/// The `postgres` OS user's uid and gid (initdb refuses to run as root).
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("run id");
        assert!(out.status.success(), "the private PostgreSQL needs the postgres OS user (apt-get install postgresql)");
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().expect("a numeric id")
    };
    (id("-u"), id("-g"))
}

/// Runs `command` as the `postgres` OS user (runuser, as root) and panics with its output on failure.
fn run_as_postgres(command: &mut Command) -> std::process::Output {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
    let mut wrapped = Command::new("runuser");
    wrapped.args(["-u", "postgres", "--"]).arg(&program).args(&args).stdin(Stdio::null());
    let output = wrapped.output().unwrap_or_else(|e| panic!("cannot run {program:?} as postgres ({e})"));
    assert!(output.status.success(), "{program:?} {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    output
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    fn ping(server: &RedisServer, within: Duration) -> redis::RedisResult<String> {
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_connection_with_timeout(within)?;
        conn.set_read_timeout(Some(within))?;
        redis::cmd("PING").query(&mut conn)
    }

    #[test]
    fn a_private_redis_pauses_resumes_runs_out_of_memory_and_evicts() {
        let mut server = RedisServer::start(RedisOptions::default());
        assert_eq!(ping(&server, Duration::from_secs(5)).unwrap(), "PONG");
        server.pause();
        // An absence: a slow machine can only make it pass.
        assert!(ping(&server, Duration::from_millis(300)).is_err(), "a stopped server answers nothing");
        server.resume();
        assert_eq!(ping(&server, Duration::from_secs(5)).unwrap(), "PONG");

        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
        let value = "x".repeat(64 * 1024);
        let used = server.info_number("used_memory");
        server.set_out_of_memory(used + 256 * 1024);
        let refused = (0..64).find_map(|i| redis::cmd("SET").arg(format!("oom:{i}")).arg(&value).query::<()>(&mut conn).err());
        let refused = refused.expect("a server out of memory refuses writes");
        assert!(refused.to_string().contains("OOM"), "{refused}");
        assert_eq!(server.info_number("evicted_keys"), 0, "noeviction keeps every key");

        server.set_evicting(used + 256 * 1024);
        for i in 0..64 {
            redis::cmd("SET").arg(format!("evict:{i}")).arg(&value).query::<()>(&mut conn).expect("an evicting server takes every write");
        }
        assert!(server.info_number("evicted_keys") > 0, "and drops keys to make room");
        server.clear_memory_limit();
        redis::cmd("SET").arg("after").arg(&value).query::<()>(&mut conn).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_private_postgres_restart_ends_every_session_and_its_locks() {
        let server = PgServer::start(PgOptions::default());
        let mut holder = sqlx::PgConnection::connect(&server.url("postgres")).await.expect("connect to the private PostgreSQL");
        sqlx::query("SELECT pg_advisory_lock(42)").execute(&mut holder).await.unwrap();
        tokio::task::block_in_place(|| server.restart());
        assert!(sqlx::query("SELECT 1").execute(&mut holder).await.is_err(), "the session did not survive the restart");
        let mut other = sqlx::PgConnection::connect(&server.url("postgres")).await.expect("the server is back when restart returns");
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(42)").fetch_one(&mut other).await.unwrap();
        assert!(taken, "the lock died with its session");
    }
}
