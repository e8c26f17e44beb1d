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
///
/// The application's keys (`events`, the counters, `sessions`) are named by the settings.
/// Every key tsmigrate adds — the outbox, the dual-write flag, the flush-retired marker, the
/// migration id and the resend keys — carries the events key's hash tag,
/// `{prefix}{<events key>}:<name>` (or the events key's own tag when it has one), so that on a
/// Redis Cluster it lives in the events key's slot: the event, its cap trim and its outbox
/// entry are one `MULTI` on the shard that owns them. The same names are used on a single
/// server. The read cache's keys are not tagged: they belong to no transaction.
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
    /// The id of the migration this Redis belongs to (the target holds the same in
    /// `tsmigrate.migration_state`).
    pub migration_id: String,
}

impl LegacyKeys {
    pub fn from_settings(settings: &Settings) -> Self {
        let r = &settings.redis;
        let events = r.key(&r.events_key);
        let tagged = |name: &str| tagged_key(&r.key_prefix, &events, name);
        Self {
            event_counters: r.key(&r.event_counters_key),
            category_counters: r.key(&r.category_counters_key),
            sessions: r.key(&r.sessions_key),
            outbox: tagged(&r.outbox_stream),
            flush_retired: tagged(&r.flush_retired_key),
            dual_write_flag: tagged(&format!("{}:dual_write", r.outbox_stream)),
            cache_prefix: r.key(&r.cache_prefix),
            first_seen: tagged(&r.first_seen_key),
            migration_id: tagged("migration_id"),
            events,
        }
    }

    /// The names these keys had before they carried the events key's hash tag (untagged:
    /// `{prefix}{name}`), paired with today's: what an upgrade renames ([`adopt_untagged_keys`]).
    pub fn untagged_names(settings: &Settings) -> Vec<(String, String)> {
        let r = &settings.redis;
        let keys = Self::from_settings(settings);
        vec![
            (r.key(&r.outbox_stream), keys.outbox),
            (r.key(&format!("{}:dual_write", r.outbox_stream)), keys.dual_write_flag),
            (r.key(&r.flush_retired_key), keys.flush_retired),
            (r.key(&format!("{}:migration_id", r.events_key)), keys.migration_id),
        ]
    }

    /// The keys this layout writes together with the events key, which a cluster must hold
    /// in its slot (all but the application's counters and sessions, and the cache).
    pub fn in_events_slot(&self) -> [&str; 6] {
        [&self.events, &self.outbox, &self.dual_write_flag, &self.flush_retired, &self.migration_id, &self.first_seen]
    }
}

/// `{prefix}{<hash tag of events>}:<name>`: a name in the slot of the `events` key. Pure.
pub fn tagged_key(prefix: &str, events: &str, name: &str) -> String {
    format!("{prefix}{{{}}}:{name}", hash_tag(events))
}

/// What Redis Cluster hashes of `key`: its hash tag (between the first `{` and the next
/// `}`, when not empty), else the whole key. Pure.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Renames the keys tsmigrate wrote before they carried the events key's hash tag
/// ([`LegacyKeys::untagged_names`]) to today's names, where only the old one exists: an
/// upgrade in the middle of a migration (dual-write on, an outbox not yet relayed) carries on.
/// A single server only (a cluster never ran the old layout). A failure is a warning: the
/// command that needs the keys fails on its own.
pub async fn adopt_untagged_keys(redis: &mut RedisConn, settings: &Settings) {
    if let Err(e) = rename_untagged_keys(redis, settings).await {
        tracing::warn!(error = %e, "could not look for keys of the layout before hash tags");
    }
}

async fn rename_untagged_keys(redis: &mut RedisConn, settings: &Settings) -> redis::RedisResult<Vec<String>> {
    let mut renamed = Vec::new();
    if redis.is_cluster() {
        return Ok(renamed);
    }
    for (old, new) in LegacyKeys::untagged_names(settings) {
        // RENAMENX: never over a key the new version wrote already.
        let exists: bool = redis::cmd("EXISTS").arg(&old).query_async(redis).await?;
        if exists {
            let moved: bool = redis::cmd("RENAMENX").arg(&old).arg(&new).query_async(redis).await?;
            if moved {
                tracing::warn!(from = %old, to = %new, "renamed a key of the layout before hash tags");
                renamed.push(new);
            }
        }
    }
    Ok(renamed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::slot_of;

    #[test]
    fn every_key_tsmigrate_adds_is_in_the_events_slot() {
        for prefix in ["", "tsmt:ab12:"] {
            for events_key in ["analytics:events", "{app}:events"] {
                let mut settings = Settings::default();
                settings.redis.key_prefix = prefix.into();
                settings.redis.events_key = events_key.into();
                let keys = LegacyKeys::from_settings(&settings);
                let slot = slot_of(&keys.events);
                for key in keys.in_events_slot() {
                    assert_eq!(slot_of(key), slot, "{key} with events key {}", keys.events);
                    assert!(key.starts_with(prefix), "{key} keeps the prefix");
                }
                assert_eq!(slot_of(&format!("{}:0f8c", keys.first_seen)), slot, "each resend key too");
            }
        }
        let keys = LegacyKeys::from_settings(&Settings::default());
        assert_eq!(keys.outbox, "{analytics:events}:analytics:outbox");
        assert_eq!(keys.dual_write_flag, "{analytics:events}:analytics:outbox:dual_write");
        assert_eq!(hash_tag("{app}:events"), "app");
        // The application's other keys stay where it put them (four slots on a cluster).
        assert_eq!(slot_of(&keys.event_counters), 14991);
        assert_eq!(slot_of(&keys.sessions), 2955);
    }
}
