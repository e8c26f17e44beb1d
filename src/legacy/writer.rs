//! The legacy write path: a batch of events → the sorted set, the counters, the
//! sessions set and the cap trim, in one `MULTI`. During dual-write the same
//! transaction also appends every event to the outbox stream, so an event is either
//! in both Redis and the outbox or in neither.

use std::collections::HashMap;

use redis::aio::ConnectionManager;

use super::LegacyKeys;
use crate::event::AcceptedEvent;

/// Field names of an outbox entry.
pub const OUTBOX_MEMBER_FIELD: &str = "m";
pub const OUTBOX_SCORE_FIELD: &str = "s";

/// Writes one batch atomically. `outbox` is true while dual-write is on.
#[tracing::instrument(skip_all, fields(events = events.len(), outbox), err)]
pub async fn write_batch(conn: &mut ConnectionManager, keys: &LegacyKeys, event_cap: u64, events: &[AcceptedEvent], outbox: bool) -> redis::RedisResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    build_batch(keys, event_cap, events, outbox).query_async::<()>(conn).await
}

/// The `MULTI … EXEC` for one batch (exposed for benchmarks and pipelining).
pub fn build_batch(keys: &LegacyKeys, event_cap: u64, events: &[AcceptedEvent], outbox: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(&keys.events);
    let mut by_name: HashMap<&str, i64> = HashMap::new();
    let mut by_category: HashMap<&str, i64> = HashMap::new();
    let mut sessions: HashMap<&str, i64> = HashMap::new();
    for event in events {
        zadd.arg(event.time_ms).arg(&event.member);
        // Members that are not events (old bugs wrote some) have no name and count nowhere.
        if !event.event_name.is_empty() {
            *by_name.entry(&event.event_name).or_default() += 1;
            *by_category.entry(&event.category).or_default() += 1;
        }
        if let Some(session) = event.session_id.as_deref() {
            let seen = sessions.entry(session).or_insert(event.time_ms);
            *seen = (*seen).max(event.time_ms);
        }
    }
    pipe.add_command(zadd).ignore();
    for (name, n) in by_name {
        pipe.hincr(&keys.event_counters, name, n).ignore();
    }
    for (category, n) in by_category {
        pipe.hincr(&keys.category_counters, category, n).ignore();
    }
    if !sessions.is_empty() {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&keys.sessions).arg("GT");
        for (session, seen) in sessions {
            zadd.arg(seen).arg(session);
        }
        pipe.add_command(zadd).ignore();
    }
    // Keep the newest `event_cap` members, as the legacy writer always did.
    pipe.cmd("ZREMRANGEBYRANK").arg(&keys.events).arg(0).arg(-(event_cap as i64) - 1).ignore();
    if outbox {
        for event in events {
            pipe.cmd("XADD").arg(&keys.outbox).arg("*").arg(OUTBOX_MEMBER_FIELD).arg(&event.member).arg(OUTBOX_SCORE_FIELD).arg(event.time_ms).ignore();
        }
    }
    pipe
}
