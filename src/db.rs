//! Pools and connections built from settings.

use std::time::Duration;

use sqlx::PgPool;

use crate::config::Settings;
use crate::connect::{self, ConnectError, PgLimits, RedisConn, RedisRole, RedisTimeouts};

/// Redis commands of background work that reads a lot at once (the legacy flush reads an
/// hour and a half of events in one command) may take this long.
pub const BULK_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn target_pool(settings: &Settings) -> Result<PgPool, ConnectError> {
    connect::pg_pool(&settings.database.url, PgLimits::from_settings(&settings.database)).await
}

pub async fn legacy_pool(settings: &Settings) -> Result<PgPool, ConnectError> {
    connect::pg_pool(settings.database.legacy_url(), PgLimits::from_settings(&settings.database)).await
}

/// The target pool of a long-running process: connects on first use, so the process starts
/// (and ingest works) while the target is down.
pub fn target_pool_lazy(settings: &Settings) -> Result<PgPool, ConnectError> {
    connect::pg_pool_lazy(&settings.database.url, PgLimits::from_settings(&settings.database))
}

/// The target pool of `tsmigrate run`: [`target_pool_lazy`], kept full of connections
/// primed on `relations` (the read path's, `reads::READ_RELATIONS`; see `PgLimits::serving`).
pub fn serving_pool_lazy(settings: &Settings, relations: &'static [&'static str]) -> Result<PgPool, ConnectError> {
    connect::pg_pool_lazy(&settings.database.url, PgLimits::from_settings(&settings.database).serving(relations))
}

/// [`read_pool_lazy`] for `tsmigrate run`: kept full of primed connections, like [`serving_pool_lazy`].
pub fn serving_read_pool_lazy(settings: &Settings, relations: &'static [&'static str]) -> Option<Result<PgPool, ConnectError>> {
    read_pool_with(settings, PgLimits::from_settings(&settings.database).serving(relations))
}

/// The read replica's pool (`database.read_url`), when one is set: connects on first use,
/// with the target's limits, so a standby that is down costs reads nothing but a fallback.
pub fn read_pool_lazy(settings: &Settings) -> Option<Result<PgPool, ConnectError>> {
    read_pool_with(settings, PgLimits::from_settings(&settings.database))
}

fn read_pool_with(settings: &Settings, limits: PgLimits) -> Option<Result<PgPool, ConnectError>> {
    settings.database.read_url.as_ref().map(|url| connect::pg_pool_lazy(url, limits))
}

pub fn legacy_pool_lazy(settings: &Settings) -> Result<PgPool, ConnectError> {
    connect::pg_pool_lazy(settings.database.legacy_url(), PgLimits::from_settings(&settings.database))
}

/// The shared, multiplexed Redis connection for requests and short commands (clone it
/// freely; never block on it): `redis.response_timeout_ms` per command.
pub async fn redis(settings: &Settings) -> Result<RedisConn, ConnectError> {
    connect::redis_as(&settings.redis, RedisTimeouts::from_settings(&settings.redis), RedisRole::Shared).await
}

/// Redis for background work with large single reads (the legacy flush): a connection of
/// its own (a long read would hold up every request queued behind it) and a longer deadline.
pub async fn redis_bulk(settings: &Settings) -> Result<RedisConn, ConnectError> {
    let timeouts = RedisTimeouts { response: BULK_RESPONSE_TIMEOUT.max(settings.redis.response_timeout()), ..RedisTimeouts::from_settings(&settings.redis) };
    connect::redis_as(&settings.redis, timeouts, RedisRole::Bulk).await
}

/// A Redis connection for the relay alone: its `XREADGROUP … BLOCK` holds the connection
/// while it waits, which on the shared connection would delay every ingest request.
pub async fn relay_redis(settings: &Settings) -> Result<RedisConn, ConnectError> {
    let block = Duration::from_millis(settings.redis.relay_block_ms);
    connect::redis_as(&settings.redis, RedisTimeouts::from_settings(&settings.redis).blocking(block), RedisRole::Relay).await
}
