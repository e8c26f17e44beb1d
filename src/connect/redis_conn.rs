//! [`RedisConn`]: a Redis connection that is discarded and replaced when it misses a deadline.
//!
//! redis-rs's `ConnectionManager` reconnects only when the socket reports an error. A
//! connection that a NAT or load balancer dropped without a reset (or a server that stopped
//! answering) reports nothing: every command timed out, forever, on the same socket. Here a
//! command that gets no answer within its deadline, or whose connection broke, drops that
//! connection (its socket closes once the commands still on it give up) and the next command
//! connects afresh. TCP keepalive would notice such a socket only after minutes.
//!
//! Each command has one deadline for everything it waits on: getting a connection
//! (queueing behind another caller's connection attempt, or connecting itself) and the
//! answer. No retries, no sleeps: a server that is down is answered at once, and a command
//! issued after it returns connects.
//!
//! Whether a failed command may have run matters to ingest (a 503 says "nothing was written"
//! only when that is known): [`RedisConn::pinned`] hands out the current connection first, so a
//! caller that could not get one knows nothing was sent; a refusal before anything ran (OOM,
//! EXECABORT) means nothing was written; a timeout, a broken connection after sending, or an
//! error from inside `EXEC` leaves the outcome unknown ([`Outcome::of`]).
//!
//! Redis Cluster is detected, not configured: several seed URLs (`redis://h:7000,redis://h:7001`)
//! mean a cluster, and one URL is asked `INFO cluster` on connecting; `cluster_enabled:1` makes
//! the connection a redis-rs cluster connection (slot routing, `MOVED`/`ASK`, topology refresh
//! are redis-rs's), with the same deadlines around each command. Its own response timeout is
//! off: the deadline is this module's, and the relay's blocking reads wait on purpose.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::time::Instant;

use super::RedisTimeouts;

/// Which of the process's Redis connections this is (the `connection` label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisRole {
    /// The multiplexed connection every request and short command shares.
    Shared,
    /// The relay's own (blocking reads).
    Relay,
    /// Background work with large reads (the jobs).
    Bulk,
}

impl RedisRole {
    pub const ALL: [RedisRole; 3] = [RedisRole::Shared, RedisRole::Relay, RedisRole::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            RedisRole::Shared => "shared",
            RedisRole::Relay => "relay",
            RedisRole::Bulk => "bulk",
        }
    }
}

/// A Redis connection with deadlines that replaces itself; clones share it.
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
    db: i64,
}

/// Where a [`RedisConn`] connects: one server, or the seed nodes of a cluster (built by
/// `connect::redis_source`, which applies the TLS settings).
#[derive(Clone)]
pub struct RedisSource {
    /// One client per seed URL; the first is the one asked whether it is a cluster node.
    pub seeds: Vec<redis::Client>,
    /// The PEM of the CA that signs the nodes' certificates, when one is configured.
    pub ca: Option<Vec<u8>>,
}

/// The connection of a [`RedisConn`]: to one server, or to a whole cluster.
#[derive(Clone)]
enum Link {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Link {
    async fn command(mut self, cmd: &Cmd) -> RedisResult<Value> {
        match &mut self {
            Link::Single(conn) => conn.send_packed_command(cmd).await,
            Link::Cluster(conn) => conn.req_packed_command(cmd).await,
        }
    }

    async fn commands(mut self, cmd: &Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        match &mut self {
            Link::Single(conn) => conn.send_packed_commands(cmd, offset, count).await,
            Link::Cluster(conn) => conn.req_packed_commands(cmd, offset, count).await,
        }
    }

    /// `cmd` on every master (a cluster answers with a map: address → answer).
    async fn on_all_masters(mut self, cmd: &Cmd) -> RedisResult<Value> {
        match &mut self {
            Link::Single(conn) => conn.send_packed_command(cmd).await,
            Link::Cluster(conn) => conn.route_command(cmd, RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None))).await,
        }
    }

    /// `cmd` on the master that owns `key`'s slot (on a single server: that server).
    async fn on_master_of(mut self, key: &str, cmd: &Cmd) -> RedisResult<Value> {
        match &mut self {
            Link::Single(conn) => conn.send_packed_command(cmd).await,
            Link::Cluster(conn) => conn.route_command(cmd, master_of(key)).await,
        }
    }
}

/// The routing to the master that owns `key`'s slot.
pub fn master_of(key: &str) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot_of(key), SlotAddr::Master)))
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag — the part between the first
/// `{` and the next `}`, when not empty — or of the whole key, modulo 16384. Pure.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|b| *b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

struct Inner {
    source: RedisSource,
    /// Set on the first connection when the server is a cluster node (or several seeds were given).
    cluster: std::sync::OnceLock<ClusterClient>,
    timeouts: RedisTimeouts,
    role: RedisRole,
    /// The connection in use and its generation; `None` after one was discarded.
    live: std::sync::Mutex<Option<(u64, Link)>>,
    /// Held while connecting, so callers queue behind one attempt instead of each opening
    /// a socket (each within its own deadline).
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    timeouts_seen: AtomicU64,
    replaced: AtomicU64,
}

/// The description of errors raised before anything was sent (no connection).
const NOT_CONNECTED: &str = "no connection to Redis (nothing was sent)";

impl RedisConn {
    /// Connects once (so a wrong URL or a server that is down is reported now, with its cause).
    pub async fn connect(source: RedisSource, timeouts: RedisTimeouts, role: RedisRole) -> RedisResult<RedisConn> {
        let Some(first) = source.seeds.first() else {
            return Err(RedisError::from((ErrorKind::InvalidClientConfig, "no Redis URL given")));
        };
        let db = first.get_connection_info().redis.db;
        let conn = RedisConn {
            inner: Arc::new(Inner {
                source,
                cluster: std::sync::OnceLock::new(),
                timeouts,
                role,
                live: std::sync::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                timeouts_seen: AtomicU64::new(0),
                replaced: AtomicU64::new(0),
            }),
            db,
        };
        let opened = conn.open().await?;
        *conn.live() = Some(opened);
        Ok(conn)
    }

    /// A connection of its own to the same server or cluster, with the same deadlines and
    /// role (clones share one connection, whose replies are read one after another: a bulk
    /// read split across connections is parsed on several cores).
    pub async fn another(&self) -> RedisResult<RedisConn> {
        RedisConn::connect(self.inner.source.clone(), self.inner.timeouts, self.inner.role).await
    }

    pub fn timeouts(&self) -> RedisTimeouts {
        self.inner.timeouts
    }

    /// Commands of this connection that got no answer in time, since it was made.
    pub fn timeouts_seen(&self) -> u64 {
        self.inner.timeouts_seen.load(Ordering::Relaxed)
    }

    /// Connections discarded (missed deadline or broken) since it was made.
    pub fn replaced(&self) -> u64 {
        self.inner.replaced.load(Ordering::Relaxed)
    }

    /// True when this is a connection to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster.get().is_some()
    }

    /// `cmd` on every master, each answer with the master's address (a single server: one
    /// answer, named by the URL's address). For `INFO` and `CONFIG GET`, which describe one
    /// server: a cluster has several.
    pub async fn per_master(&self, cmd: &Cmd) -> RedisResult<Vec<(String, Value)>> {
        let deadline = Instant::now() + self.inner.timeouts.response;
        let mut pinned = self.current(deadline).await?;
        let conn = pinned.conn.clone();
        let cluster = pinned.is_cluster();
        let value = pinned.send(deadline, async move { conn.on_all_masters(cmd).await }).await?;
        match value {
            Value::Map(nodes) if cluster => {
                let mut masters = Vec::with_capacity(nodes.len());
                for (node, answer) in nodes {
                    masters.push((redis::from_redis_value::<String>(&node)?, answer));
                }
                masters.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(masters)
            }
            single => Ok(vec![(self.inner.source.seeds[0].get_connection_info().addr.to_string(), single)]),
        }
    }

    async fn open(&self) -> RedisResult<(u64, Link)> {
        // The connection timeout of redis-rs covers the TCP connect; the handshake after it
        // (HELLO/AUTH/SELECT, the cluster's slot map) is bounded here, for a server that
        // accepts and then hangs.
        let bound = self.inner.timeouts.connect + Duration::from_millis(500);
        let link = match tokio::time::timeout(bound, self.open_link()).await {
            Ok(link) => link?,
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {:?}", self.inner.timeouts.connect)).into()),
        };
        Ok((self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1, link))
    }

    async fn open_link(&self) -> RedisResult<Link> {
        if let Some(cluster) = self.inner.cluster.get() {
            return self.open_cluster(cluster).await;
        }
        let seeds = &self.inner.source.seeds;
        if seeds.len() == 1 {
            // The answer deadline is ours (per command, connection wait included); redis-rs gets
            // none so that it never times out a command we are still willing to wait for.
            let config = AsyncConnectionConfig::new().set_connection_timeout(self.inner.timeouts.connect);
            let mut conn = seeds[0].get_multiplexed_async_connection_with_config(&config).await?;
            let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut conn).await?;
            if !cluster_enabled(&info) {
                return Ok(Link::Single(conn));
            }
        }
        let cluster = self.inner.cluster.get_or_init(|| self.cluster_client()).clone();
        self.open_cluster(&cluster).await
    }

    fn cluster_client(&self) -> ClusterClient {
        let nodes: Vec<redis::ConnectionInfo> = self.inner.source.seeds.iter().map(|c| c.get_connection_info().clone()).collect();
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes).connection_timeout(self.inner.timeouts.connect);
        if let Some(ca) = &self.inner.source.ca {
            builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) });
        }
        // The seeds were parsed already: building fails only on nodes that disagree (a
        // password, TLS on some only); then the first seed alone is used, and its error shows.
        builder.build().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the Redis seed nodes disagree; using the first one only");
            let first = self.inner.source.seeds[0].get_connection_info().clone();
            redis::cluster::ClusterClient::new(vec![first]).expect("one parsed node")
        })
    }

    async fn open_cluster(&self, cluster: &ClusterClient) -> RedisResult<Link> {
        Ok(Link::Cluster(cluster.get_async_connection().await?))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Option<(u64, Link)>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pin(&self, (generation, conn): (u64, Link)) -> Pinned {
        Pinned { owner: self.clone(), conn, generation }
    }

    /// The current connection, connecting when there is none, by `deadline`. An error here
    /// means nothing was sent.
    async fn current(&self, deadline: Instant) -> RedisResult<Pinned> {
        if let Some(live) = self.live().clone() {
            return Ok(self.pin(live));
        }
        let get = async {
            let _connecting = self.inner.connecting.lock().await;
            // Another caller may have connected while this one queued.
            if let Some(live) = self.live().clone() {
                return Ok(live);
            }
            let opened = self.open().await?;
            *self.live() = Some(opened.clone());
            Ok::<_, RedisError>(opened)
        };
        match tokio::time::timeout_at(deadline, get).await {
            Ok(Ok(live)) => Ok(self.pin(live)),
            Ok(Err(e)) => Err(not_connected(&e.to_string())),
            Err(_) => Err(not_connected("no connection within the command's deadline")),
        }
    }

    /// The current connection, for a sequence of commands whose outcome the caller must
    /// tell apart: an error here means nothing was sent. Each command on it still has the
    /// response deadline, and a miss discards the connection for everyone.
    pub async fn pinned(&self) -> RedisResult<Pinned> {
        self.current(Instant::now() + self.inner.timeouts.response).await
    }

    /// Drops connection `generation` if it is still the current one.
    fn discard(&self, generation: u64, why: &str) {
        let mut live = self.live();
        if live.as_ref().is_some_and(|(current, _)| *current == generation) {
            *live = None;
            drop(live);
            self.inner.replaced.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tsmigrate_redis_connections_replaced_total", "connection" => self.inner.role.as_str()).increment(1);
            tracing::warn!(connection = self.inner.role.as_str(), reason = why, "discarding a Redis connection; the next command opens a new one");
        }
    }
}

/// True when an `INFO cluster` answer says the server is a cluster node. Pure.
pub fn cluster_enabled(info: &str) -> bool {
    info.lines().any(|line| line.trim() == "cluster_enabled:1")
}

/// Whether a connection is to a Redis Cluster (whose transactions and pipelines must stay in
/// one slot).
pub trait Topology {
    fn is_cluster(&self) -> bool;
}

impl Topology for RedisConn {
    fn is_cluster(&self) -> bool {
        RedisConn::is_cluster(self)
    }
}

impl Topology for Pinned {
    fn is_cluster(&self) -> bool {
        Pinned::is_cluster(self)
    }
}

/// redis-rs's connections to one server (tools and tests that write the legacy layout).
impl Topology for MultiplexedConnection {
    fn is_cluster(&self) -> bool {
        false
    }
}

impl Topology for redis::aio::ConnectionManager {
    fn is_cluster(&self) -> bool {
        false
    }
}

/// Errors meaning no command was sent (no connection could be had in time).
fn not_connected(detail: &str) -> RedisError {
    RedisError::from((ErrorKind::IoError, NOT_CONNECTED, detail.to_string()))
}

/// What a failed command did to the data, as far as the client can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was sent, or the server answered with an error: nothing was written.
    NotWritten,
    /// Sent, and no answer (a timeout, a connection that broke): it may have run, or may
    /// still run when the server wakes up.
    Unknown,
}

impl Outcome {
    /// For a write (a `MULTI … EXEC` included). Only refusals that come before anything runs
    /// count as "not written": no connection, `EXECABORT` (a command refused while queued),
    /// OOM, a read-only replica, a server still loading. Any other error reply may come from
    /// inside `EXEC`, whose other commands did run, and a reply that could not be parsed came
    /// after the command ran: unknown.
    pub fn of(e: &RedisError) -> Outcome {
        let refused_before_running = is_not_connected(e)
            || is_out_of_memory(e)
            || matches!(e.kind(), ErrorKind::ExecAbortError | ErrorKind::ReadOnly | ErrorKind::BusyLoadingError | ErrorKind::MasterDown)
            || refused_by_the_cluster(e);
        if refused_before_running {
            Outcome::NotWritten
        } else {
            Outcome::Unknown
        }
    }
}

/// A cluster's redirections and refusals (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`,
/// `CROSSSLOT`, no connection to the node) come before a command runs; inside a `MULTI` they
/// are queueing errors, which abort the `EXEC`.
pub fn refused_by_the_cluster(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Moved | ErrorKind::Ask | ErrorKind::TryAgain | ErrorKind::ClusterDown | ErrorKind::CrossSlot | ErrorKind::ClusterConnectionNotFound
    )
}

/// True for errors raised before anything was sent.
pub fn is_not_connected(e: &RedisError) -> bool {
    e.kind() == ErrorKind::IoError && e.to_string().starts_with(NOT_CONNECTED)
}

/// True when Redis refused a write because it is out of memory (`maxmemory` with `noeviction`).
pub fn is_out_of_memory(e: &RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM command not allowed")
}

/// One connection of a [`RedisConn`], as handed out for one command or a sequence of them.
pub struct Pinned {
    owner: RedisConn,
    conn: Link,
    generation: u64,
}

impl Pinned {
    /// True when this is a connection to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Link::Cluster(_))
    }

    /// `WAIT replicas timeout` on the master that owns `key` (the one a write of `key` went
    /// to): how many replicas acknowledged every write of this connection so far.
    pub async fn wait_replicas(&mut self, key: &str, replicas: u32, timeout: Duration) -> RedisResult<u64> {
        let deadline = Instant::now() + self.owner.inner.timeouts.response + timeout;
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        let conn = self.conn.clone();
        let value = self.send(deadline, async move { conn.on_master_of(key, &cmd).await }).await?;
        redis::from_redis_value(&value)
    }

    async fn send<T>(&mut self, deadline: Instant, request: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
        match tokio::time::timeout_at(deadline, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                // A broken connection is replaced; server error replies leave it be.
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.owner.discard(self.generation, &e.to_string());
                }
                Err(e)
            }
            Err(_) => {
                let role = self.owner.inner.role.as_str();
                self.owner.inner.timeouts_seen.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tsmigrate_redis_command_timeouts_total", "connection" => role).increment(1);
                self.owner.discard(self.generation, "a command got no answer within its deadline");
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("Redis did not answer within {:?}", self.owner.inner.timeouts.response)).into())
            }
        }
    }
}

impl ConnectionLike for Pinned {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        (async move {
            let deadline = Instant::now() + self.owner.inner.timeouts.response;
            let conn = self.conn.clone();
            self.send(deadline, async move { conn.command(cmd).await }).await
        })
        .boxed()
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        (async move {
            let deadline = Instant::now() + self.owner.inner.timeouts.response;
            let conn = self.conn.clone();
            self.send(deadline, async move { conn.commands(cmd, offset, count).await }).await
        })
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.owner.db
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        (async move {
            let deadline = Instant::now() + self.inner.timeouts.response;
            let mut pinned = self.current(deadline).await?;
            let conn = pinned.conn.clone();
            pinned.send(deadline, async move { conn.command(cmd).await }).await
        })
        .boxed()
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        (async move {
            let deadline = Instant::now() + self.inner.timeouts.response;
            let mut pinned = self.current(deadline).await?;
            let conn = pinned.conn.clone();
            pinned.send(deadline, async move { conn.commands(cmd, offset, count).await }).await
        })
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_before_anything_ran_count_as_not_written() {
        let io = |kind| RedisError::from(std::io::Error::from(kind));
        assert_eq!(Outcome::of(&not_connected("connection refused")), Outcome::NotWritten);
        assert_eq!(Outcome::of(&RedisError::from((ErrorKind::ExecAbortError, "EXECABORT"))), Outcome::NotWritten);
        let oom = RedisError::from((ErrorKind::ResponseError, "OOM command not allowed when used memory > 'maxmemory'."));
        assert_eq!(Outcome::of(&oom), Outcome::NotWritten);
        assert_eq!(Outcome::of(&RedisError::from((ErrorKind::TryAgain, "TRYAGAIN"))), Outcome::NotWritten, "a cluster's refusal");
        assert_eq!(Outcome::of(&io(std::io::ErrorKind::TimedOut)), Outcome::Unknown, "sent, no answer");
        assert_eq!(Outcome::of(&io(std::io::ErrorKind::BrokenPipe)), Outcome::Unknown, "the connection broke after sending");
        let inside_exec = RedisError::from((ErrorKind::ResponseError, "WRONGTYPE Operation against a key holding the wrong kind of value"));
        assert_eq!(Outcome::of(&inside_exec), Outcome::Unknown, "the other commands of the EXEC ran");
        assert!(is_not_connected(&not_connected("x")) && !is_not_connected(&io(std::io::ErrorKind::ConnectionRefused)));
    }

    #[test]
    fn slots_are_the_clusters() {
        // As `CLUSTER KEYSLOT` answers.
        assert_eq!(slot_of("analytics:events"), 11393);
        assert_eq!(slot_of("analytics:counters:events"), 14991);
        assert_eq!(slot_of("analytics:counters:categories"), 3062);
        assert_eq!(slot_of("analytics:sessions"), 2955);
        assert_eq!(slot_of("{analytics:events}:x"), 11393, "the hash tag decides");
        assert_eq!(slot_of("a{}b"), slot_of("a{}b"), "an empty tag hashes the whole key");
        assert_ne!(slot_of("{}analytics:events"), slot_of("analytics:events"));
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n") && !cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
    }
}
