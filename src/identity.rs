//! Which migration a target and a Redis belong to. Each migration has an id (a UUID) held
//! by both: the target in `tsmigrate.migration_state.migration_id`, Redis under
//! [`LegacyKeys::migration_id`]. A `DATABASE_URL` and a `REDIS_URL` (or key prefix) of
//! different migrations would mix them — a backfill copying another migration's events, a
//! status calling the pair healthy — so every command that uses both compares the ids first
//! ([`verify`]) and a mismatch is refused ([`Mismatch`], exit 3).
//!
//! The id is made on first contact with a prepared target that has none (right after
//! `prepare`, or the first command after an upgrade) and written to Redis. A Redis that lost
//! it (restarted empty, flushed, evicted the key) gets it back, with a warning: whatever else
//! Redis lost is a possible gap, which other checks report.

use std::time::Duration;

use crate::connect::RedisConn;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::context::Context;
use crate::ledger::migration::{self, Identity};
use crate::legacy::LegacyKeys;

/// A check that would wait longer than this is skipped (a server that slow fails the command anyway).
const CHECK_DEADLINE: Duration = Duration::from_secs(10);

/// What the comparison found, when the pair may be used together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    /// Both hold this id.
    Matched { id: Uuid },
    /// The target is not prepared and Redis holds no id: nothing to compare yet.
    NotPrepared,
    /// The target's id was written to Redis for the first time (prepare, an upgrade).
    Published { id: Uuid },
    /// Redis had lost the id it held before; it was written back.
    Restored { id: Uuid },
    /// The ids could not be compared, and why.
    Unchecked { reason: String },
}

impl Outcome {
    /// What an operator should know about this outcome, if anything.
    pub fn warning(&self, keys: &LegacyKeys) -> Option<String> {
        match self {
            Outcome::Restored { id } => Some(format!(
                "Redis had lost this migration's identity (key {}): it was restarted empty, flushed, or evicted keys, so other keys may be gone too \
                 (`tsmigrate status` shows possible gaps); identity {id} was written back",
                keys.migration_id
            )),
            _ => None,
        }
    }
}

/// A target and a Redis of different migrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct Mismatch {
    /// The target's id; `None`: the target is not prepared (or has no id yet).
    pub target: Option<Uuid>,
    /// What Redis holds under `key` (normally a UUID).
    pub redis: String,
    pub target_url: String,
    pub redis_url: String,
    pub key: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Mismatch { target, redis, target_url, redis_url, key } = self;
        match target {
            Some(target) => write!(
                f,
                "the target and Redis belong to different migrations: the target at {target_url} is migration {target}, \
                 Redis at {redis_url} holds migration {redis} (key {key})"
            )?,
            None => write!(
                f,
                "Redis at {redis_url} belongs to migration {redis} (key {key}), but the target at {target_url} has no migration: \
                 another migration uses this Redis and key prefix"
            )?,
        }
        write!(
            f,
            "\n  next: check that DATABASE_URL (database.url) and REDIS_URL (redis.url) with TSMIGRATE_REDIS_PREFIX (redis.key_prefix) \
             and redis.events_key name the target and Redis of one migration"
        )?;
        if target.is_none() {
            write!(f, "; if migration {redis}'s target was dropped without `tsmigrate abort`, delete the key: redis-cli -u <REDIS_URL> DEL {key}")?;
        }
        Ok(())
    }
}

/// Compares the ids of the context's target and Redis (making and publishing the id on first
/// contact). Servers that cannot be reached leave it [`Outcome::Unchecked`]: the command
/// fails on its own if it needs them.
pub async fn verify(ctx: &Context) -> Result<Outcome, Mismatch> {
    let mut redis = match ctx.redis().await {
        Ok(redis) => redis,
        Err(e) => return Ok(Outcome::Unchecked { reason: format!("Redis: {}", first_line(&e.to_string())) }),
    };
    verify_with(&ctx.target, &mut redis, &ctx.keys, &ctx.settings.database.url.redacted(), &ctx.settings.redis.url.redacted()).await
}

/// [`verify`] on given connections (the daemon's, a relay's).
pub async fn verify_with(target: &PgPool, redis: &mut RedisConn, keys: &LegacyKeys, target_url: &str, redis_url: &str) -> Result<Outcome, Mismatch> {
    match tokio::time::timeout(CHECK_DEADLINE, compare(target, redis, keys, target_url, redis_url)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Ok(Outcome::Unchecked { reason: first_line(&format!("{e:#}")) }),
        Err(_) => Ok(Outcome::Unchecked { reason: format!("no answer within {}s", CHECK_DEADLINE.as_secs()) }),
    }
}

async fn compare(target: &PgPool, redis: &mut RedisConn, keys: &LegacyKeys, target_url: &str, redis_url: &str) -> anyhow::Result<Result<Outcome, Mismatch>> {
    let held: Option<String> = redis::cmd("GET").arg(&keys.migration_id).query_async(redis).await?;
    let mismatch = |target: Option<Uuid>, redis: String| Mismatch {
        target,
        redis,
        target_url: target_url.to_string(),
        redis_url: redis_url.to_string(),
        key: keys.migration_id.clone(),
    };
    let (id, in_redis_before) = match (migration::identity(target).await?, held) {
        (Identity::NotPrepared, None) => return Ok(Ok(Outcome::NotPrepared)),
        (Identity::NotPrepared, Some(held)) => return Ok(Err(mismatch(None, held))),
        (Identity::Predates, _) => {
            return Ok(Ok(Outcome::Unchecked { reason: "the target was prepared by an earlier tsmigrate; `tsmigrate prepare` gives it an identity".into() }))
        }
        (Identity::Id { id, in_redis_before }, Some(held)) if held == id.to_string() => {
            if !in_redis_before {
                migration::mark_identity_in_redis(target).await?;
            }
            return Ok(Ok(Outcome::Matched { id }));
        }
        (Identity::Id { id, .. }, Some(held)) => return Ok(Err(mismatch(Some(id), held))),
        (Identity::Id { id, in_redis_before }, None) => (id, in_redis_before),
    };
    // NX: of two commands publishing at once, both end up comparing against the same value.
    let set: Option<String> = redis::cmd("SET").arg(&keys.migration_id).arg(id.to_string()).arg("NX").query_async(redis).await?;
    if set.is_none() {
        let held: Option<String> = redis::cmd("GET").arg(&keys.migration_id).query_async(redis).await?;
        match held {
            Some(held) if held != id.to_string() => return Ok(Err(mismatch(Some(id), held))),
            _ => {}
        }
    }
    migration::mark_identity_in_redis(target).await?;
    if in_redis_before {
        let outcome = Outcome::Restored { id };
        if let Some(warning) = outcome.warning(keys) {
            tracing::warn!("{warning}");
        }
        Ok(Ok(outcome))
    } else {
        Ok(Ok(Outcome::Published { id }))
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(target: Option<Uuid>) -> Mismatch {
        Mismatch {
            target,
            redis: "7d1c0f3e-9a53-4c4f-8d0e-1f2a3b4c5d6e".into(),
            target_url: "postgres://app:***@db.example/analytics".into(),
            redis_url: "redis://cache.example:6379".into(),
            key: "analytics:events:migration_id".into(),
        }
    }

    #[test]
    fn a_mismatch_names_both_ids_and_the_settings_to_check() {
        let target = Uuid::parse_str("0b6a8f5e-2a2d-4c51-9f0e-5b7f3c2d1e0a").unwrap();
        let text = mismatch(Some(target)).to_string();
        let (message, hint) = crate::state::split_hint(&text);
        assert!(message.contains(&target.to_string()) && message.contains("7d1c0f3e-9a53-4c4f-8d0e-1f2a3b4c5d6e"), "{message}");
        assert!(message.contains("postgres://app:***@db.example/analytics") && message.contains("redis://cache.example:6379"), "{message}");
        let hint = hint.expect("a mismatch says what to check");
        for setting in ["DATABASE_URL", "REDIS_URL", "TSMIGRATE_REDIS_PREFIX", "redis.events_key"] {
            assert!(hint.contains(setting), "{hint}");
        }
        assert!(!hint.contains("DEL"), "deleting the key is advice only when the target has no migration: {hint}");
        let unprepared = mismatch(None).to_string();
        assert!(unprepared.contains("has no migration") && unprepared.contains("DEL analytics:events:migration_id"), "{unprepared}");
    }

    #[test]
    fn only_a_restored_identity_is_a_warning() {
        let keys = LegacyKeys::from_settings(&crate::config::Settings::default());
        assert_eq!(keys.migration_id, "{analytics:events}:migration_id");
        let id = Uuid::new_v4();
        let warning = Outcome::Restored { id }.warning(&keys).unwrap();
        assert!(warning.contains("lost") && warning.contains(&id.to_string()) && warning.contains("possible gaps"), "{warning}");
        assert_eq!(Outcome::Published { id }.warning(&keys), None);
        assert_eq!(Outcome::Matched { id }.warning(&keys), None);
    }
}
