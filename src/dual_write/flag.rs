//! The dual-write flag in Redis is a cache of PostgreSQL's migration state.
//!
//! Ingest reads the flag from Redis (it must work while the target is down), but a Redis that
//! restarts without persistence forgets it. [`check`] compares the two and sets the flag
//! again when the state says dual-write is on; `tsmigrate run` calls it every
//! `migration.dual_write_check_secs`.

use crate::connect::RedisConn;
use sqlx::{Connection, PgPool};

use crate::legacy::LegacyKeys;
use crate::state::{self, Phase};

/// The flag's value while dual-write is on.
pub const ON: &str = "1";
/// The flag's value after `dual-write stop` (a missing flag means "Redis does not know").
pub const OFF: &str = "0";
/// Ingest reads the flag from Redis at most this often; `dual-write start` waits this long
/// (and a margin) before recording the completion point.
pub const DUAL_WRITE_FLAG_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagCheck {
    /// The flag agrees with the state (`on`: dual-write is on).
    InPlace { on: bool },
    /// The state says dual-write is on and Redis did not (`found`: what it held); the flag was set again.
    Restored { phase: Phase, found: Option<String> },
    /// A phase command holds the migration lock (it may be turning dual-write on or off
    /// right now); nothing was changed. `on` is what the state said before the lock was tried.
    Busy { on: bool },
}

impl FlagCheck {
    /// Whether the migration state says dual-write is on.
    pub fn state_says_on(&self) -> bool {
        match self {
            FlagCheck::InPlace { on } | FlagCheck::Busy { on } => *on,
            FlagCheck::Restored { .. } => true,
        }
    }
}

async fn read_flag(redis: &mut RedisConn, keys: &LegacyKeys) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(&keys.dual_write_flag).query_async(redis).await
}

/// Restores the flag when the migration state says dual-write is on and Redis does not.
///
/// Only this direction: `dual-write start` sets the flag before it moves the phase, so a flag
/// that is on while the phase is not yet is normal for a moment. The repair runs under the
/// phase lock (a transaction-scoped try-lock), so it never races `dual-write start`/`stop`.
pub async fn check(pool: &PgPool, redis: &mut RedisConn, keys: &LegacyKeys) -> anyhow::Result<FlagCheck> {
    let phase = crate::ledger::migration::load_from_pool(pool).await?.phase;
    let found = read_flag(redis, keys).await?;
    if !phase.dual_write_active() || found.as_deref() == Some(ON) {
        return Ok(FlagCheck::InPlace { on: phase.dual_write_active() });
    }
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))").bind(state::PHASE_LOCK_KEY).fetch_one(&mut *tx).await?;
    if !locked {
        return Ok(FlagCheck::Busy { on: true });
    }
    // Under the lock: the phase and the flag as they are now, not as they were.
    let phase = crate::ledger::migration::load(&mut tx).await?.phase;
    let found = read_flag(redis, keys).await?;
    if !phase.dual_write_active() || found.as_deref() == Some(ON) {
        return Ok(FlagCheck::InPlace { on: phase.dual_write_active() });
    }
    redis::cmd("SET").arg(&keys.dual_write_flag).arg(ON).query_async::<()>(redis).await?;
    tx.commit().await?;
    metrics::counter!("tsmigrate_dual_write_flag_restored_total").increment(1);
    tracing::warn!(
        %phase,
        found = found.as_deref().unwrap_or("(missing)"),
        key = %keys.dual_write_flag,
        "the dual-write flag in Redis disagreed with the migration state (did Redis restart without its data?); set it again"
    );
    Ok(FlagCheck::Restored { phase, found })
}
