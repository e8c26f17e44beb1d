//! The legacy write path: a batch of events → the sorted set, the counters, the
//! sessions set and the cap trim, in one `MULTI`. During dual-write the same
//! transaction also appends the batch to the outbox stream, so an event is either
//! in both Redis and the outbox or in neither.
//!
//! An outbox entry holds a whole batch in one field: `XADD <outbox> * b "<ms> <member>\n<ms> <member>…"`.
//! One entry of one field per batch keeps dual-write's extra work in Redis to one small
//! command per request, for ingest and for the relay's reads and acknowledgements alike
//! (a field per event costs Redis about twice as much). Members written by ingest are
//! compact JSON, which never holds a raw newline; a batch with a member that does (never
//! from ingest) is written as field pairs instead. An application appending its own
//! events writes pairs: `m <member> s <ms>`, one or more per entry (the i-th `m` with the
//! i-th `s`).

use std::collections::HashMap;

use super::LegacyKeys;
use crate::event::AcceptedEvent;

/// Field names of an outbox entry: a whole batch, or pairs (repeated, one pair per event).
pub const OUTBOX_BATCH_FIELD: &str = "b";
pub const OUTBOX_MEMBER_FIELD: &str = "m";
pub const OUTBOX_SCORE_FIELD: &str = "s";

/// Writes one batch atomically. `outbox` is true while dual-write is on.
#[tracing::instrument(skip_all, fields(events = events.len(), outbox), err)]
pub async fn write_batch(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    keys: &LegacyKeys,
    event_cap: u64,
    events: &[AcceptedEvent],
    outbox: bool,
) -> redis::RedisResult<()> {
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
        pipe.add_command(outbox_entry(&keys.outbox, events)).ignore();
    }
    pipe
}

/// The `XADD` of one batch to the outbox (see the module's notes on its shape).
pub fn outbox_entry(outbox: &str, events: &[AcceptedEvent]) -> redis::Cmd {
    let mut xadd = redis::cmd("XADD");
    xadd.arg(outbox).arg("*");
    if events.iter().any(|e| e.member.contains('\n')) {
        for event in events {
            xadd.arg(OUTBOX_MEMBER_FIELD).arg(&event.member).arg(OUTBOX_SCORE_FIELD).arg(event.time_ms);
        }
        return xadd;
    }
    let mut batch = String::with_capacity(events.iter().map(|e| e.member.len() + 16).sum());
    for event in events {
        if !batch.is_empty() {
            batch.push('\n');
        }
        batch.push_str(&event.time_ms.to_string());
        batch.push(' ');
        batch.push_str(&event.member);
    }
    xadd.arg(OUTBOX_BATCH_FIELD).arg(batch);
    xadd
}
