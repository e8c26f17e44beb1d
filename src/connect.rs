//! Connecting to PostgreSQL and Redis, with errors that say what to do next.
//!
//! Every message shows the redacted URL only.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection, PgConnection, PgPool};

use crate::config::SecretUrl;

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

/// A pool on `url`; fails fast (within `timeout`) when the server is unreachable.
pub async fn pg_pool(url: &SecretUrl, max_connections: u32, timeout: Duration) -> Result<PgPool, ConnectError> {
    let options: PgConnectOptions =
        url.expose().parse().map_err(|e: sqlx::Error| ConnectError::Postgres { url: url.redacted(), reason: scrub(&e.to_string(), url) })?;
    // Statements that scan a window of events (validation hashing, aggregate refreshes,
    // backfill pages) take seconds by design; sqlx's default warns after one second.
    let options = options.application_name("tsmigrate").log_slow_statements(log::LevelFilter::Warn, SLOW_STATEMENT);
    // One direct attempt first: a pool retries until its timeout and then reports only
    // "timed out", hiding the cause (connection refused, authentication failed...).
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(pg_error(url, e)),
        Err(_) => return Err(ConnectError::Postgres { url: url.redacted(), reason: format!("no answer within {}s", timeout.as_secs()) }),
    }
    PgPoolOptions::new().max_connections(max_connections).acquire_timeout(timeout).connect_with(options).await.map_err(|e| pg_error(url, e))
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
pub fn pg_pool_lazy(url: &SecretUrl, max_connections: u32) -> Result<PgPool, ConnectError> {
    let options: PgConnectOptions =
        url.expose().parse().map_err(|e: sqlx::Error| ConnectError::Postgres { url: url.redacted(), reason: scrub(&e.to_string(), url) })?;
    Ok(PgPoolOptions::new().max_connections(max_connections).acquire_timeout(Duration::from_secs(5)).connect_lazy_with(options.application_name("tsmigrate")))
}

/// How long a Redis command may take before the call fails (the server is then treated as down).
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A reconnecting Redis connection; fails fast when the server is unreachable.
///
/// Clones share one multiplexed connection: a command that holds it (a blocking read)
/// delays every other clone, so such commands need a connection of their own
/// ([`redis_for_blocking_reads`]).
pub async fn redis(url: &SecretUrl, timeout: Duration) -> Result<ConnectionManager, ConnectError> {
    redis_with_response_timeout(url, timeout, REDIS_RESPONSE_TIMEOUT).await
}

/// A Redis connection of its own for a worker whose commands block (`XREADGROUP … BLOCK`)
/// for up to `longest_block`; its response deadline allows for that wait.
pub async fn redis_for_blocking_reads(url: &SecretUrl, timeout: Duration, longest_block: Duration) -> Result<ConnectionManager, ConnectError> {
    redis_with_response_timeout(url, timeout, REDIS_RESPONSE_TIMEOUT + longest_block).await
}

async fn redis_with_response_timeout(url: &SecretUrl, timeout: Duration, response_timeout: Duration) -> Result<ConnectionManager, ConnectError> {
    let err = |e: redis::RedisError| ConnectError::Redis { url: url.redacted(), reason: scrub(&e.to_string(), url) };
    let client = redis::Client::open(url.expose()).map_err(err)?;
    // One direct attempt first, for the real cause (the manager would retry and time out).
    match tokio::time::timeout(timeout, client.get_multiplexed_async_connection()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(err(e)),
        Err(_) => return Err(ConnectError::Redis { url: url.redacted(), reason: format!("no answer within {}s", timeout.as_secs()) }),
    }
    // The manager's reconnect backoff starts at 1 s and multiplies by `factor` (redis-rs
    // 0.32 hands it to backon as a multiplier; its default of 100 made the second retry
    // wait 60-120 s, and every request waits for a reconnect in progress — so ingest
    // answered its 503 minutes late while Redis was down). At most 2 retries of 1-2 s each.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(response_timeout)
        .set_number_of_retries(2)
        .set_factor(2)
        .set_max_delay(1000);
    tokio::time::timeout(timeout + Duration::from_secs(1), ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| ConnectError::Redis { url: url.redacted(), reason: "timed out".into() })?
        .map_err(err)
}

/// Drivers sometimes echo the URL back; never let a password through.
fn scrub(message: &str, url: &SecretUrl) -> String {
    match url::Url::parse(url.expose()).ok().and_then(|u| u.password().map(str::to_string)) {
        Some(password) if !password.is_empty() => message.replace(&password, "***"),
        _ => message.to_string(),
    }
}
