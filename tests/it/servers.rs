//! Private servers a fault test may kill and restart without touching the shared ones.
//!
//! [`PrivateRedis::start`] runs `redis-server` on a free port in a temporary directory;
//! `kill` stops it hard (SIGKILL, like a crash), `restart` brings it back on the same port,
//! and dropping it kills it. Without persistence a restart comes back empty.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the private Redis keeps its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Persistence {
    /// `--save '' --appendonly no`: a restart loses everything.
    #[default]
    None,
    /// `--appendonly yes --appendfsync always`: every acknowledged write survives a kill.
    Aof,
}

#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    pub persistence: Persistence,
    /// `--maxmemory` in bytes (0 = no limit).
    pub maxmemory: u64,
}

pub struct PrivateRedis {
    pub port: u16,
    options: RedisOptions,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port and waits until it answers.
    pub async fn start(options: RedisOptions) -> PrivateRedis {
        let port = free_port();
        let dir = tempfile::tempdir().expect("a directory for the private Redis");
        let mut redis = PrivateRedis { port, options, dir, child: None };
        redis.spawn().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command.arg("--port").arg(self.port.to_string()).arg("--bind").arg("127.0.0.1").arg("--dir").arg(self.dir.path());
        match self.options.persistence {
            Persistence::None => command.args(["--save", "", "--appendonly", "no"]),
            Persistence::Aof => command.args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"]),
        };
        if self.options.maxmemory > 0 {
            command.args(["--maxmemory", &self.options.maxmemory.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); fault tests need it on PATH (apt-get install redis-server)"));
        self.child = Some(child);
        self.wait_until_up().await;
    }

    async fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            if let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_millis(500), client.get_multiplexed_async_connection()).await {
                if redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the private redis-server on port {} did not come up", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server at once (SIGKILL): connections drop, new ones are refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now (the OS picks it; released before the server binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().unwrap().port()
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
        use std::io::BufRead;
        let mut args: Vec<&str> = Vec::new();
        if let Some(config) = config {
            args.extend(["--config", config.to_str().expect("a UTF-8 path")]);
        }
        args.extend(["run", "--bind", "127.0.0.1:0"]);
        let mut child = test.command(&args, env).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start tsmigrate run");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        // Reads the log until the process ends, so the pipe never fills up.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("tsmigrate listening on http://") {
                    let _ = addr_tx.send(addr.trim().to_string());
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
