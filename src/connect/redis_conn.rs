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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use redis::aio::{ConnectionLike, MultiplexedConnection};
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

struct Inner {
    client: redis::Client,
    timeouts: RedisTimeouts,
    role: RedisRole,
    /// The connection in use and its generation; `None` after one was discarded.
    live: std::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
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
    pub async fn connect(client: redis::Client, timeouts: RedisTimeouts, role: RedisRole) -> RedisResult<RedisConn> {
        let db = client.get_connection_info().redis.db;
        let conn = RedisConn {
            inner: Arc::new(Inner {
                client,
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

    async fn open(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        // The answer deadline is ours (per command, connection wait included); redis-rs gets
        // none so that it never times out a command we are still willing to wait for.
        let config = AsyncConnectionConfig::new().set_connection_timeout(self.inner.timeouts.connect);
        let attempt = self.inner.client.get_multiplexed_async_connection_with_config(&config);
        // The connection timeout of redis-rs covers the TCP connect; the handshake after it
        // (HELLO/AUTH/SELECT) is bounded here, for a server that accepts and then hangs.
        let conn = match tokio::time::timeout(self.inner.timeouts.connect + Duration::from_millis(500), attempt).await {
            Ok(conn) => conn?,
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {:?}", self.inner.timeouts.connect)).into()),
        };
        Ok((self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1, conn))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pin(&self, (generation, conn): (u64, MultiplexedConnection)) -> Pinned {
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
            || matches!(e.kind(), ErrorKind::ExecAbortError | ErrorKind::ReadOnly | ErrorKind::BusyLoadingError | ErrorKind::MasterDown);
        if refused_before_running {
            Outcome::NotWritten
        } else {
            Outcome::Unknown
        }
    }
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
    conn: MultiplexedConnection,
    generation: u64,
}

impl Pinned {
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
            let mut conn = self.conn.clone();
            self.send(deadline, async move { conn.send_packed_command(cmd).await }).await
        })
        .boxed()
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        (async move {
            let deadline = Instant::now() + self.owner.inner.timeouts.response;
            let mut conn = self.conn.clone();
            self.send(deadline, async move { conn.send_packed_commands(cmd, offset, count).await }).await
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
            let mut conn = pinned.conn.clone();
            pinned.send(deadline, async move { conn.send_packed_command(cmd).await }).await
        })
        .boxed()
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        (async move {
            let deadline = Instant::now() + self.inner.timeouts.response;
            let mut pinned = self.current(deadline).await?;
            let mut conn = pinned.conn.clone();
            pinned.send(deadline, async move { conn.send_packed_commands(cmd, offset, count).await }).await
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
        assert_eq!(Outcome::of(&io(std::io::ErrorKind::TimedOut)), Outcome::Unknown, "sent, no answer");
        assert_eq!(Outcome::of(&io(std::io::ErrorKind::BrokenPipe)), Outcome::Unknown, "the connection broke after sending");
        let inside_exec = RedisError::from((ErrorKind::ResponseError, "WRONGTYPE Operation against a key holding the wrong kind of value"));
        assert_eq!(Outcome::of(&inside_exec), Outcome::Unknown, "the other commands of the EXEC ran");
        assert!(is_not_connected(&not_connected("x")) && !is_not_connected(&io(std::io::ErrorKind::ConnectionRefused)));
    }
}
