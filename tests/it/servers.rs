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
        let dir = tempfile::tempdir().expect("create a directory for the test CA");
        let path = |name: &str| dir.path().join(name);
        let (ca_key, ca_cert, key, csr, cert, ext) =
            (path("ca.key"), path("ca.pem"), path("server.key"), path("server.csr"), path("server.pem"), path("server.ext"));
        std::fs::write(&ext, "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n").unwrap();
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

    /// Sends `signal` (`STOP`, `CONT`) to the server: SIGSTOP is a server that hangs with
    /// its connections open (the kernel still accepts new ones into the backlog).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the private redis-server runs").id();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL, like a crash: no shutdown save, connections cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

fn free_port() -> u16 {
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
        std::thread::spawn(move || {
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
        Daemon { addr, child, logs }
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

    /// SIGTERM, then waits for a graceful exit; returns the exit code.
    pub fn stop(mut self) -> i32 {
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
