//! Connecting to PostgreSQL and Redis, with errors that say what to do next.
//!
//! Every message shows the redacted URL only.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection, PgConnection, PgPool};

use crate::config::{DatabaseSettings, RedisSettings, SecretUrl};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to PostgreSQL at {url}: {reason}\n  next: check that the server is running and the URL is right (scripts/services.sh starts a local one)")]
    Postgres { url: String, reason: String },
    #[error("database {name:?} does not exist on {url}\n  next: create it, for example: createdb -h <host> -U <user> {name}")]
    NoDatabase { url: String, name: String },
    #[error("cannot connect to Redis at {url}: {reason}\n  next: check that Redis is running and REDIS_URL is right (scripts/services.sh starts a local one)")]
    Redis { url: String, reason: String },
}

/// Statements slower than this are logged as warnings.
const SLOW_STATEMENT: Duration = Duration::from_secs(60);

/// Sizes and deadlines of a PostgreSQL pool.
#[derive(Debug, Clone, Copy)]
pub struct PgLimits {
    pub max_connections: u32,
    /// Waiting for a pooled connection (or a new one) gives up after this.
    pub acquire_timeout: Duration,
    /// PostgreSQL cancels a statement running longer (`statement_timeout`); `None` = no limit.
    pub statement_timeout: Option<Duration>,
}

impl PgLimits {
    pub fn from_settings(d: &DatabaseSettings) -> PgLimits {
        PgLimits {
            max_connections: d.max_connections,
            acquire_timeout: Duration::from_secs(d.connect_timeout_secs),
            statement_timeout: Some(Duration::from_secs(d.statement_timeout_secs)).filter(|t| !t.is_zero()),
        }
    }

    fn pool_options(&self) -> PgPoolOptions {
        let statement_timeout = self.statement_timeout;
        PgPoolOptions::new().max_connections(self.max_connections).acquire_timeout(self.acquire_timeout).after_connect(move |conn, _| {
            Box::pin(async move {
                // SET rather than a startup option: connection poolers (PgBouncer) reject unknown startup parameters.
                if let Some(timeout) = statement_timeout {
                    sqlx::query(&format!("SET statement_timeout = {}", timeout.as_millis())).execute(conn).await?;
                }
                Ok(())
            })
        })
    }
}

fn pg_options(url: &SecretUrl) -> Result<PgConnectOptions, ConnectError> {
    let options: PgConnectOptions =
        url.expose().parse().map_err(|e: sqlx::Error| ConnectError::Postgres { url: url.redacted(), reason: scrub(&e.to_string(), url) })?;
    // Statements that scan a window of events (validation hashing, aggregate refreshes,
    // backfill pages) take seconds by design; sqlx's default warns after one second.
    Ok(options.application_name("tsmigrate").log_slow_statements(log::LevelFilter::Warn, SLOW_STATEMENT))
}

/// A pool on `url`; fails fast (within the acquire timeout) when the server is unreachable.
pub async fn pg_pool(url: &SecretUrl, limits: PgLimits) -> Result<PgPool, ConnectError> {
    let options = pg_options(url)?;
    let timeout = limits.acquire_timeout;
    // One direct attempt first: a pool retries until its timeout and then reports only
    // "timed out", hiding the cause (connection refused, authentication failed...).
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(pg_error(url, e)),
        Err(_) => return Err(ConnectError::Postgres { url: url.redacted(), reason: format!("no answer within {}s", timeout.as_secs()) }),
    }
    limits.pool_options().connect_with(options).await.map_err(|e| pg_error(url, e))
}

fn pg_error(url: &SecretUrl, e: sqlx::Error) -> ConnectError {
    if let Some(db) = e.as_database_error() {
        if db.code().as_deref() == Some("3D000") {
            return ConnectError::NoDatabase { url: url.redacted(), name: url.database_name().unwrap_or_default() };
        }
    }
    ConnectError::Postgres { url: url.redacted(), reason: scrub(&e.to_string(), url) }
}

/// A pool that connects on first use: for workers that must start while the target is down.
pub fn pg_pool_lazy(url: &SecretUrl, limits: PgLimits) -> Result<PgPool, ConnectError> {
    Ok(limits.pool_options().connect_lazy_with(pg_options(url)?))
}

/// Deadlines of a Redis connection.
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    /// Each connection attempt, the first and every reconnection.
    pub connect: Duration,
    /// A command without an answer after this fails (the connection stays).
    pub response: Duration,
}

impl RedisTimeouts {
    pub fn from_settings(r: &RedisSettings) -> RedisTimeouts {
        RedisTimeouts { connect: r.connect_timeout(), response: r.response_timeout() }
    }

    /// For a connection whose commands wait on the server by design (`XREADGROUP ... BLOCK`):
    /// the usual response deadline on top of the longest wait, so a wait is never cut short.
    pub fn blocking(self, longest_wait: Duration) -> RedisTimeouts {
        RedisTimeouts { response: self.response + longest_wait, ..self }
    }
}

/// A reconnecting Redis connection with deadlines on every command and connection attempt.
///
/// While the server is down every command fails at once (and triggers one new connection
/// attempt), so callers answer 503 quickly and the first command after the server's return
/// reconnects. The manager's own retries are off on purpose: they sleep between attempts
/// (at least a second, then growing to a minute), and every command issued meanwhile waits
/// on them — a blip of a few seconds became minutes of hung requests.
///
/// Clones share one multiplexed connection: a command that holds it (a blocking read)
/// delays every other clone, so such commands need a connection of their own, with
/// [`RedisTimeouts::blocking`] deadlines.
pub async fn redis(url: &SecretUrl, timeouts: RedisTimeouts) -> Result<ConnectionManager, ConnectError> {
    let err = |e: redis::RedisError| ConnectError::Redis { url: url.redacted(), reason: scrub(&e.to_string(), url) };
    let client = redis::Client::open(url.expose()).map_err(err)?;
    let no_answer = || ConnectError::Redis { url: url.redacted(), reason: format!("no answer within {}ms", timeouts.connect.as_millis()) };
    // One direct attempt first, for the real cause (the manager would report a timeout).
    match tokio::time::timeout(timeouts.connect, client.get_multiplexed_async_connection()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(err(e)),
        Err(_) => return Err(no_answer()),
    }
    let config =
        redis::aio::ConnectionManagerConfig::new().set_connection_timeout(timeouts.connect).set_response_timeout(timeouts.response).set_number_of_retries(0);
    tokio::time::timeout(timeouts.connect + Duration::from_secs(1), ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| no_answer())?
        .map_err(err)
}

/// Drivers sometimes echo the URL back; never let a password through.
fn scrub(message: &str, url: &SecretUrl) -> String {
    match url::Url::parse(url.expose()).ok().and_then(|u| u.password().map(str::to_string)) {
        Some(password) if !password.is_empty() => message.replace(&password, "***"),
        _ => message.to_string(),
    }
}
