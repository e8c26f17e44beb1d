//! Bulk writes: a copy split into parallel streams over disjoint score ranges.
//!
//! One `COPY` stream keeps one server backend busy; a backfill split into streams over
//! disjoint ranges of the sorted set keeps several. Each stream writes through the one
//! write sequence (`TargetWriter::commit_page`) and commits every page with a checkpoint
//! of its own (`backfill.part<i>` in `tsmigrate.checkpoints`), so a stream killed at any
//! point resumes from its own last commit: no gap, no duplicate, and no stream waits for
//! another's checkpoint row. The layout (where each stream starts and ends) is saved
//! before the first page and never recomputed for a resumed copy.
//!
//! Parts are cut on minute boundaries (scores `m·60000 − 0.5`, where the millisecond
//! rounding of `TargetEvent::from_member` changes minute): no event time, and no minute
//! whose user set a page marks, is shared by two streams, so their transactions never wait
//! for each other's rows.

use crate::event::TargetEvent;
use crate::fingerprint::Fingerprinter;

/// Milliseconds in a minute.
const MINUTE_MS: i64 = 60_000;

/// Streams a backfill copies in unless told otherwise (`--streams`).
pub const DEFAULT_STREAMS: usize = 2;
/// At most this many streams (one target connection each).
pub const MAX_STREAMS: usize = 8;

/// One stream's range of scores: from `from` (inclusive) to `until` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartRange {
    pub from: f64,
    pub until: f64,
}

/// Splits `[from, until]` into at most `cuts.len() + 1` parts at the minute boundaries at or
/// below each of `cuts` (scores at the quantiles of the members to copy, ascending).
/// Boundaries that would leave a part empty of minutes are dropped.
pub fn split(from: f64, until: f64, cuts: &[f64]) -> Vec<PartRange> {
    let mut bounds: Vec<f64> = Vec::new();
    for cut in cuts {
        let minute_start = (cut.round() as i64).div_euclid(MINUTE_MS) * MINUTE_MS;
        let bound = minute_start as f64 - 0.5;
        if bound > from && bound <= until && bounds.last().is_none_or(|last| bound > *last) {
            bounds.push(bound);
        }
    }
    let mut parts = Vec::with_capacity(bounds.len() + 1);
    let mut start = from;
    for bound in bounds {
        parts.push(PartRange { from: start, until: just_below(bound) });
        start = bound;
    }
    parts.push(PartRange { from: start, until });
    parts
}

/// The largest score below `x` (a part's inclusive end before the next part's start).
fn just_below(x: f64) -> f64 {
    match x {
        x if x > 0.0 => f64::from_bits(x.to_bits() - 1),
        x if x < 0.0 => f64::from_bits(x.to_bits() + 1),
        _ => -f64::MIN_POSITIVE,
    }
}

/// The fingerprint each row is stored with (`analytics_events_ts.stored_fingerprint`): the
/// event fingerprint validation compares (`validate::fingerprint`, defined in SQL by
/// `validation/event_fingerprints.sql`), as the signed `bigint` holding its 64 bits. Every
/// write path computes it here, from the event it writes; validation then sums stored
/// numbers instead of hashing every row, and fingerprints from their content only rows
/// without one (written otherwise, or changed since: an UPDATE clears it).
#[derive(Debug, Default)]
pub struct Fingerprints(Fingerprinter);

impl Fingerprints {
    pub fn of(&mut self, event: &TargetEvent) -> i64 {
        self.0.fingerprint(event) as i64
    }

    pub fn all<'e>(&mut self, events: impl IntoIterator<Item = &'e TargetEvent>) -> Vec<i64> {
        events.into_iter().map(|e| self.of(e)).collect()
    }
}

/// A row to write: an event, and the raw digest of the member it was parsed from
/// (`fingerprint::raw_digest`, stored in `analytics_events_ts.raw_digest`; `None` for an
/// event that did not come from a member as the writer received it: stored NULL, and
/// validation compares its minute by fingerprints).
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub event: &'a TargetEvent,
    pub raw_digest: Option<i64>,
}

impl<'a> Row<'a> {
    /// `events[i]` with `raw_digests[i]` (`None` past its end).
    pub fn all(events: &'a [TargetEvent], raw_digests: &[Option<i64>]) -> Vec<Row<'a>> {
        events.iter().enumerate().map(|(i, event)| Row { event, raw_digest: raw_digests.get(i).copied().flatten() }).collect()
    }

    /// Events written without a raw digest.
    pub fn without_raw_digests(events: &'a [TargetEvent]) -> Vec<Row<'a>> {
        Self::all(events, &[])
    }
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The `COPY … (FORMAT binary)` payload of `rows`, each with its stored fingerprint and raw
/// digest, in the column order of [`BINARY_COPY_COLUMNS`]. Less work for the server than the
/// text format: times, ids and fingerprints arrive as their binary values and text needs no
/// unescaping (jsonb still arrives as its text, after the format's version byte).
pub fn encode_copy_binary(rows: &[Row<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 400 + 21);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    let mut fingerprints = Fingerprints::default();
    let mut json = Vec::with_capacity(512);
    for row in rows {
        let e = row.event;
        out.extend_from_slice(&12i16.to_be_bytes());
        field(&mut out, Some(&(e.time.timestamp_micros() - POSTGRES_EPOCH_MICROS).to_be_bytes()));
        field(&mut out, Some(e.event_id.as_bytes()));
        field(&mut out, Some(e.event_name.as_bytes()));
        field(&mut out, Some(e.category.as_bytes()));
        field(&mut out, e.user_id.as_deref().map(str::as_bytes));
        field(&mut out, e.session_id.as_deref().map(str::as_bytes));
        for value in [&e.properties, &e.device_info] {
            json.clear();
            json.push(1); // jsonb binary format version
            serde_json::to_writer(&mut json, value).expect("a JSON value serializes");
            field(&mut out, Some(&json));
        }
        field(&mut out, e.page_url.as_deref().map(str::as_bytes));
        field(&mut out, e.referrer.as_deref().map(str::as_bytes));
        field(&mut out, Some(&fingerprints.of(e).to_be_bytes()));
        field(&mut out, row.raw_digest.map(i64::to_be_bytes).as_ref().map(|b| b.as_slice()));
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// The columns [`encode_copy_binary`] writes, in order.
pub const BINARY_COPY_COLUMNS: &str =
    "time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer, stored_fingerprint, raw_digest";

/// One field of a binary COPY row: its length and bytes, or -1 for NULL.
fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_cut_on_minute_boundaries_and_cover_the_range_without_overlap() {
        let minute = MINUTE_MS as f64;
        let base = 1_700_000_040_000.0; // a minute start
        let parts = split(f64::MIN, base + 10.0 * minute, &[base + 3.0 * minute + 12_345.0, base + 6.0 * minute + 59_999.4]);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].from, f64::MIN);
        assert_eq!(parts[1].from, base + 3.0 * minute - 0.5);
        assert_eq!(parts[2].from, base + 6.0 * minute - 0.5);
        assert_eq!(parts[2].until, base + 10.0 * minute);
        for pair in parts.windows(2) {
            assert!(pair[0].until < pair[1].from, "no score in two parts");
            assert_eq!(f64::from_bits(pair[0].until.to_bits() + 1), pair[1].from, "no score between parts");
        }
        // A member scored x.5 ms before a minute belongs to that minute (rounding), hence the next part.
        assert!(base + 3.0 * minute - 0.5 >= parts[1].from);
    }

    #[test]
    fn cuts_in_the_same_minute_or_outside_the_range_make_fewer_parts() {
        let base = 1_700_000_040_000.0;
        assert_eq!(split(base, base + 100.0, &[base + 10.0, base + 20.0]), vec![PartRange { from: base, until: base + 100.0 }]);
        let parts = split(f64::MIN, base + 200_000.0, &[base + 70_000.0, base + 70_500.0, base + 999_999.0]);
        assert_eq!(parts.len(), 2);
        assert_eq!(split(f64::MIN, base, &[]).len(), 1);
    }
}
