//! The legacy write path: a batch of events → the sorted set, the counters, the
//! sessions set and the cap trim, in one `MULTI`. During dual-write the same
//! transaction also appends the batch to the outbox stream, so an event is either
//! in both Redis and the outbox or in neither.
//!
//! On a Redis Cluster a transaction must stay in one slot. The outbox carries the events
//! key's hash tag (see `LegacyKeys`), so the events, the cap trim and the outbox entry are one
//! `MULTI` on the shard that owns them; the application's counters and sessions live in other
//! slots and are written after it, one pipeline per key. A failure between the two leaves the
//! events stored (and relayed) and those counters short by the batch: it is counted
//! (`tsmigrate_legacy_counter_writes_failed_total`) and logged, and the write reports success,
//! since a retry would store no event twice but would count them twice.
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
use crate::connect::Topology;
use crate::event::AcceptedEvent;

/// Field names of an outbox entry: a whole batch, or pairs (repeated, one pair per event).
pub const OUTBOX_BATCH_FIELD: &str = "b";
pub const OUTBOX_MEMBER_FIELD: &str = "m";
pub const OUTBOX_SCORE_FIELD: &str = "s";

/// Writes one batch atomically (on a cluster: atomically in the events slot, then the
/// counters and sessions). `outbox` is true while dual-write is on.
#[tracing::instrument(skip_all, fields(events = events.len(), outbox), err)]
pub async fn write_batch(
    conn: &mut (impl redis::aio::ConnectionLike + Topology + Send),
    keys: &LegacyKeys,
    event_cap: u64,
    events: &[AcceptedEvent],
    outbox: bool,
) -> redis::RedisResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    if !conn.is_cluster() {
        return build_batch(keys, event_cap, events, outbox).query_async::<()>(conn).await;
    }
    let (in_events_slot, others) = build_batch_per_slot(keys, event_cap, events, outbox);
    in_events_slot.query_async::<()>(conn).await?;
    for pipe in others {
        if let Err(e) = pipe.query_async::<()>(conn).await {
            metrics::counter!("tsmigrate_legacy_counter_writes_failed_total").increment(1);
            tracing::warn!(error = %e, events = events.len(), "the events were written but the legacy counters or sessions after them were not: those are short by this batch");
            return Ok(());
        }
    }
    Ok(())
}

/// What one batch adds to the counters and the sessions.
struct Tallies<'a> {
    by_name: HashMap<&'a str, i64>,
    by_category: HashMap<&'a str, i64>,
    sessions: HashMap<&'a str, i64>,
}

fn tally(events: &[AcceptedEvent]) -> Tallies<'_> {
    let mut t = Tallies { by_name: HashMap::new(), by_category: HashMap::new(), sessions: HashMap::new() };
    for event in events {
        // Members that are not events (old bugs wrote some) have no name and count nowhere.
        if !event.event_name.is_empty() {
            *t.by_name.entry(&event.event_name).or_default() += 1;
            *t.by_category.entry(&event.category).or_default() += 1;
        }
        if let Some(session) = event.session_id.as_deref() {
            let seen = t.sessions.entry(session).or_insert(event.time_ms);
            *seen = (*seen).max(event.time_ms);
        }
    }
    t
}

fn zadd_events(keys: &LegacyKeys, events: &[AcceptedEvent]) -> redis::Cmd {
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(&keys.events);
    for event in events {
        zadd.arg(event.time_ms).arg(&event.member);
    }
    zadd
}

/// Keep the newest `event_cap` members, as the legacy writer always did.
fn cap_trim(keys: &LegacyKeys, event_cap: u64) -> redis::Cmd {
    let mut trim = redis::cmd("ZREMRANGEBYRANK");
    trim.arg(&keys.events).arg(0).arg(-(event_cap as i64) - 1);
    trim
}

fn add_counters(pipe: &mut redis::Pipeline, key: &str, counts: &HashMap<&str, i64>) {
    for (field, n) in counts {
        pipe.hincr(key, *field, *n).ignore();
    }
}

fn zadd_sessions(keys: &LegacyKeys, sessions: &HashMap<&str, i64>) -> redis::Cmd {
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(&keys.sessions).arg("GT");
    for (session, seen) in sessions {
        zadd.arg(*seen).arg(*session);
    }
    zadd
}

/// The `MULTI … EXEC` for one batch (exposed for benchmarks and pipelining).
pub fn build_batch(keys: &LegacyKeys, event_cap: u64, events: &[AcceptedEvent], outbox: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    let t = tally(events);
    pipe.add_command(zadd_events(keys, events)).ignore();
    add_counters(&mut pipe, &keys.event_counters, &t.by_name);
    add_counters(&mut pipe, &keys.category_counters, &t.by_category);
    if !t.sessions.is_empty() {
        pipe.add_command(zadd_sessions(keys, &t.sessions)).ignore();
    }
    pipe.add_command(cap_trim(keys, event_cap)).ignore();
    if outbox {
        pipe.add_command(outbox_entry(&keys.outbox, events)).ignore();
    }
    pipe
}

/// One batch for a Redis Cluster: the `MULTI` of the events slot (events, cap trim, outbox
/// entry), then one pipeline per other slot (each counter hash, the sessions).
pub fn build_batch_per_slot(keys: &LegacyKeys, event_cap: u64, events: &[AcceptedEvent], outbox: bool) -> (redis::Pipeline, Vec<redis::Pipeline>) {
    let mut first = redis::pipe();
    first.atomic();
    first.add_command(zadd_events(keys, events)).ignore();
    first.add_command(cap_trim(keys, event_cap)).ignore();
    if outbox {
        first.add_command(outbox_entry(&keys.outbox, events)).ignore();
    }
    let t = tally(events);
    let mut after = Vec::new();
    for (key, counts) in [(&keys.event_counters, &t.by_name), (&keys.category_counters, &t.by_category)] {
        if !counts.is_empty() {
            let mut pipe = redis::pipe();
            add_counters(&mut pipe, key, counts);
            after.push(pipe);
        }
    }
    if !t.sessions.is_empty() {
        let mut pipe = redis::pipe();
        pipe.add_command(zadd_sessions(keys, &t.sessions)).ignore();
        after.push(pipe);
    }
    (first, after)
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
