//! Pools built from settings.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::config::Settings;
use crate::connect::{self, ConnectError};

pub async fn target_pool(settings: &Settings) -> Result<PgPool, ConnectError> {
    let d = &settings.database;
    connect::pg_pool(&d.url, d.max_connections, Duration::from_secs(d.connect_timeout_secs)).await
}

pub async fn legacy_pool(settings: &Settings) -> Result<PgPool, ConnectError> {
    let d = &settings.database;
    connect::pg_pool(d.legacy_url(), d.max_connections, Duration::from_secs(d.connect_timeout_secs)).await
}

/// The shared, multiplexed Redis connection (clone it freely; never block on it).
pub async fn redis(settings: &Settings) -> Result<ConnectionManager, ConnectError> {
    connect::redis(&settings.redis, Duration::from_secs(settings.database.connect_timeout_secs)).await
}

/// A Redis connection for the relay alone: its `XREADGROUP … BLOCK` holds the connection
/// while it waits, which on the shared connection would delay every ingest request.
pub async fn relay_redis(settings: &Settings) -> Result<ConnectionManager, ConnectError> {
    let block = Duration::from_millis(settings.redis.relay_block_ms);
    connect::redis_for_blocking_reads(&settings.redis, Duration::from_secs(settings.database.connect_timeout_secs), block).await
}
