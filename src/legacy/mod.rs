//! The legacy system, faithfully: the Redis layout the application writes, the hourly
//! flush worker that rolls it up into PostgreSQL, and a traffic generator.
//!
//! In a real deployment the user's own writer and worker play these roles; `tsmigrate`
//! only relies on the layout (`LegacyKeys`, the hourly and asset tables), never on this code.

pub mod flush;
pub mod reader;
pub mod schema;
pub mod seed;
pub mod writer;

use crate::connect::RedisConn;

use crate::config::Settings;

/// After completion the legacy keys are only history: gives them an expiry of `days`
/// (kept where one is set already). Returns how many got one.
pub async fn expire_keys(redis: &mut RedisConn, keys: &LegacyKeys, days: u32) -> redis::RedisResult<u64> {
    let seconds = i64::from(days) * 86_400;
    let mut set = 0;
    for key in [&keys.events, &keys.event_counters, &keys.category_counters, &keys.sessions] {
        let applied: i64 = redis::cmd("EXPIRE").arg(key).arg(seconds).arg("NX").query_async(redis).await?;
        set += applied as u64;
    }
    Ok(set)
}

/// The full Redis key names of the legacy layout (prefix applied).
#[derive(Debug, Clone)]
pub struct LegacyKeys {
    pub events: String,
    pub event_counters: String,
    pub category_counters: String,
    pub sessions: String,
    pub outbox: String,
    pub flush_retired: String,
    /// Set while dual-write is on: the ingest path appends to the outbox only then.
    pub dual_write_flag: String,
    pub cache_prefix: String,
    /// `{first_seen}:{event_id}`: when ingest first accepted an event without a timestamp.
    pub first_seen: String,
    /// `{events}:migration_id`: the id of the migration this Redis belongs to (the target
    /// holds the same in `tsmigrate.migration_state`). Named after the events key so that
    /// one hash tag in `redis.events_key` puts both in the same Redis Cluster slot.
    pub migration_id: String,
}

impl LegacyKeys {
    pub fn from_settings(settings: &Settings) -> Self {
        let r = &settings.redis;
        Self {
            events: r.key(&r.events_key),
            event_counters: r.key(&r.event_counters_key),
            category_counters: r.key(&r.category_counters_key),
            sessions: r.key(&r.sessions_key),
            outbox: r.key(&r.outbox_stream),
            flush_retired: r.key(&r.flush_retired_key),
            dual_write_flag: r.key(&format!("{}:dual_write", r.outbox_stream)),
            cache_prefix: r.key(&r.cache_prefix),
            first_seen: r.key(&r.first_seen_key),
            migration_id: r.key(&format!("{}:migration_id", r.events_key)),
        }
    }
}
