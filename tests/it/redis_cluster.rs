//! A Redis Cluster of the test's own (no Docker): `redis-server --cluster-enabled yes` nodes on
//! free ports in a temporary directory, joined by `redis-cli --cluster create`, killed on drop.
//! Self-contained (the benchmarks include it too).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// A Redis Cluster of the test's own: `masters` masters with one replica each (started with
/// `redis-cli --cluster create … --cluster-replicas 1`), plus one spare node outside the
/// cluster for `add-node`. `cluster-node-timeout` is 1 s, so a killed master's replica takes
/// over within a few seconds. Every node is killed when dropped.
pub struct RedisCluster {
    dir: tempfile::TempDir,
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    port: u16,
    child: Option<Child>,
}

impl RedisCluster {
    /// 3 masters, 3 replicas and a spare; waits for `cluster_state:ok` on every member.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("create a directory for the private cluster");
        let mut cluster = RedisCluster { dir, nodes: Vec::new() };
        for _ in 0..7 {
            let port = cluster_port();
            let child = cluster.spawn(port);
            cluster.nodes.push(ClusterNode { port, child: Some(child) });
        }
        let members: Vec<String> = cluster.nodes[..6].iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(members.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        cluster.cli(&args);
        cluster.wait_ok();
        cluster.wait_replicas_synced();
        cluster
    }

    /// Waits until every replica has finished its first sync with its master: a replica that
    /// never synced is not promoted when its master dies, so a failover test must not kill
    /// a master before then.
    fn wait_replicas_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let unsynced: Vec<u16> = self
                .members()
                .into_iter()
                .filter(|p| {
                    let info = self.on(*p, &["INFO", "replication"]);
                    info.contains("role:slave") && !info.contains("master_link_status:up")
                })
                .collect();
            if unsynced.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "replicas {unsynced:?} did not sync with their masters:\n{}", self.diagnosis());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&self, port: u16) -> Child {
        let dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("redis.log");
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            // A replica's first sync starts at once instead of after the default 5 s.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); install it (apt-get install redis-server)"));
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            let ready = std::fs::read_to_string(&log).is_ok_and(|text| text.contains("Ready to accept connections"));
            if ready && TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1)).is_ok() {
                return child;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("cluster node on port {port} was not ready: {}", log_tail(&log));
    }

    /// `redis-cli <args>`, which must succeed; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli").args(args).stdin(Stdio::null()).output().expect("run redis-cli");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && !text.contains("[ERR]"), "redis-cli {args:?} failed:\n{text}");
        text
    }

    /// A command on one node, its answer as text (`redis-cli -p <port> …`).
    pub fn on(&self, port: u16, args: &[&str]) -> String {
        let mut all = vec!["-p".to_string(), port.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let output = Command::new("redis-cli").args(&all).stdin(Stdio::null()).output().expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The URL of the first node (any node will do: the cluster is detected).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    /// Every member as a seed node, as `redis.url` takes them: `redis://127.0.0.1:p1,redis://127.0.0.1:p2,…`.
    pub fn seed_urls(&self) -> String {
        self.nodes[..6].iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// The ports of the nodes that run and are members.
    fn members(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// Waits until every running member says `cluster_state:ok` and agrees on who serves `slot`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self.members().iter().filter(|p| self.is_member(**p)).all(|p| self.on(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the private cluster did not reach cluster_state:ok:\n{}", self.on(self.members()[0], &["CLUSTER", "NODES"]));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn is_member(&self, port: u16) -> bool {
        self.on(port, &["CLUSTER", "INFO"]).lines().any(|l| l.trim().starts_with("cluster_known_nodes:") && l.trim() != "cluster_known_nodes:1")
    }

    /// The port of the master that serves `slot`, as a running member sees it.
    pub fn master_of(&self, slot: u16) -> u16 {
        self.serving(slot).unwrap_or_else(|nodes| panic!("no master serves slot {slot}:\n{nodes}"))
    }

    /// The port of the master that serves `slot`, or what the cluster says when none that is
    /// not failing does (during a failover).
    pub fn serving(&self, slot: u16) -> Result<u16, String> {
        let asker = *self.members().iter().find(|p| self.is_member(**p)).expect("a running member");
        let nodes = self.on(asker, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).expect("ip:port@bus");
            for range in &fields[8..] {
                if range.starts_with('[') {
                    continue;
                }
                let (from, to) = match range.split_once('-') {
                    Some((a, b)) => (a.parse::<u16>().unwrap(), b.parse::<u16>().unwrap()),
                    None => (range.parse::<u16>().unwrap(), range.parse::<u16>().unwrap()),
                };
                if (from..=to).contains(&slot) {
                    return Ok(port);
                }
            }
        }
        Err(nodes)
    }

    /// What every running node says of the cluster and the tail of each node's log, for a
    /// failure message.
    pub fn diagnosis(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let log = self.dir.path().join(node.port.to_string()).join("redis.log");
            out += &format!("--- node {} ({})\n{}\n", node.port, if node.child.is_some() { "running" } else { "killed" }, log_tail(&log));
        }
        if let Some(asker) = self.members().first() {
            out += &format!("--- CLUSTER NODES from {asker}\n{}", self.on(*asker, &["CLUSTER", "NODES"]));
        }
        out
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        self.on(port, &["CLUSTER", "MYID"])
    }

    /// SIGKILL the node on `port` (a crash).
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Adds the spare node to the cluster as an empty master; returns its port.
    pub fn add_spare(&self) -> u16 {
        let spare = self.nodes[6].port;
        let existing = *self.members().iter().find(|p| **p != spare && self.is_member(**p)).expect("a running member");
        self.cli(&["--cluster", "add-node", &format!("127.0.0.1:{spare}"), &format!("127.0.0.1:{existing}")]);
        spare
    }

    /// Moves `slot` with its keys from its master to the master on `to` (`CLUSTER SETSLOT …
    /// IMPORTING/MIGRATING`, `MIGRATE` in batches, `SETSLOT NODE` on both), as
    /// `redis-cli --cluster reshard` does for each slot.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} is on that master already");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let s = slot.to_string();
        assert_eq!(self.on(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]), "OK");
        assert_eq!(self.on(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]), "OK");
        loop {
            let keys = self.on(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
            let keys: Vec<&str> = keys.lines().map(str::trim).filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1"];
            let port = to.to_string();
            args.extend([port.as_str(), "", "0", "10000", "KEYS"]);
            args.extend(keys.iter().copied());
            let answer = self.on(from, &args);
            assert!(answer == "OK" || answer == "NOKEY", "MIGRATE of slot {slot}: {answer}");
        }
        for port in self.members() {
            if self.is_member(port) {
                self.on(port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
            }
        }
        self.wait_ok();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    for _ in 0..200 {
        let port = 20_000 + (rand_u16() % 20_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish() as u16
}
