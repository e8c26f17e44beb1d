//! The diff core: pure functions from what the collectors found on each side to the
//! findings. No I/O here, so every rule is unit-tested without a server.
//!
//! * Events: per-minute [`Summary`]s (count + order-independent hash) rolled up into
//!   the window's hours; where they differ, the events of the differing minutes are
//!   matched as [`EventDigest`]s into missing / extra / candidates, and candidates
//!   are confirmed as different (or equivalent under the tolerance rules) with
//!   [`changed_fields`].
//! * Aggregates: rows keyed by bucket, compared by count and distinct count.

use std::collections::{BTreeMap, HashMap};

use chrono::DateTime;
use serde::Serialize;
use uuid::Uuid;

use crate::event::TargetEvent;

/// Minutes are epoch milliseconds / 60 000: every time zone's hours start on a whole minute.
pub const MINUTE_MS: i64 = 60_000;

/// Count and order-independent hash (wrapping sum of fingerprints) of a set of events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub hash: u64,
}

impl Summary {
    pub fn add(&mut self, fingerprint: u64) {
        self.count += 1;
        self.hash = self.hash.wrapping_add(fingerprint);
    }

    pub fn merge(&mut self, other: Summary) {
        self.count += other.count;
        self.hash = self.hash.wrapping_add(other.hash);
    }
}

/// Summaries by minute (epoch ms / 60 000).
pub type MinuteSummaries = BTreeMap<i64, Summary>;

pub fn minute_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(MINUTE_MS)
}

/// Adds `page` into `total`.
pub fn merge_minutes(total: &mut MinuteSummaries, page: MinuteSummaries) {
    for (minute, summary) in page {
        total.entry(minute).or_default().merge(summary);
    }
}

/// The hour of the window a time falls in: `starts` are the hour starts (ms), sorted, and
/// `end` closes the last one. `None` outside the window.
pub fn hour_index(starts: &[i64], end: i64, time_ms: i64) -> Option<usize> {
    if starts.is_empty() || time_ms < starts[0] || time_ms >= end {
        return None;
    }
    Some(starts.partition_point(|s| *s <= time_ms) - 1)
}

/// Rolls minute summaries up into the hours `starts` (closed by `end`).
pub fn roll_up(minutes: &MinuteSummaries, starts: &[i64], end: i64) -> Vec<Summary> {
    let mut hours = vec![Summary::default(); starts.len()];
    for (minute, summary) in minutes {
        if let Some(i) = hour_index(starts, end, minute * MINUTE_MS) {
            hours[i].merge(*summary);
        }
    }
    hours
}

/// An hour whose two sides differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HourDifference {
    pub start_ms: i64,
    pub redis: Summary,
    pub target: Summary,
    /// Minutes inside the hour whose summaries differ (events depth).
    pub minutes: Vec<i64>,
}

/// Compares two sides hour by hour. With `compare_hashes` false only counts are compared.
pub fn diff_hours(redis: &[Summary], target: &[Summary], starts: &[i64], compare_hashes: bool) -> Vec<HourDifference> {
    starts
        .iter()
        .zip(redis.iter().zip(target))
        .filter(|(_, (r, t))| r.count != t.count || (compare_hashes && r.hash != t.hash))
        .map(|(start, (r, t))| HourDifference { start_ms: *start, redis: *r, target: *t, minutes: vec![] })
        .collect()
}

/// Fills in each differing hour's differing minutes.
pub fn attach_minutes(hours: &mut [HourDifference], redis: &MinuteSummaries, target: &MinuteSummaries, starts: &[i64], end: i64) {
    for minute in differing_minutes(redis, target) {
        let Some(i) = hour_index(starts, end, minute * MINUTE_MS) else { continue };
        if let Some(hour) = hours.iter_mut().find(|h| h.start_ms == starts[i]) {
            hour.minutes.push(minute);
        }
    }
}

/// Minutes whose summaries differ (present on one side only counts as differing).
pub fn differing_minutes(redis: &MinuteSummaries, target: &MinuteSummaries) -> Vec<i64> {
    let empty = Summary::default();
    let mut minutes: Vec<i64> = redis
        .iter()
        .filter(|(m, s)| target.get(m).unwrap_or(&empty) != *s)
        .map(|(m, _)| *m)
        .chain(target.keys().filter(|m| !redis.contains_key(m)).copied())
        .collect();
    minutes.sort_unstable();
    minutes
}

/// Which minutes the raw digests settle, and which must be compared by parsing Redis's members.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RawVerdict {
    /// Redis holds exactly the members the target's rows of the minute were written from,
    /// and the recorded dead letters of the minute: the minute is the same on both sides.
    pub settled: Vec<i64>,
    /// Anything else: compared by fingerprints, from parsed members, as without raw digests.
    pub to_parse: Vec<i64>,
}

/// Settles minutes by raw digests (`fingerprint::raw_digest`). `redis_raw`: every member of
/// a minute in Redis (count, sum of raw digests); `target`: every row (count); `target_raw`:
/// the rows that carry a raw digest (count, sum); `dead_raw`: the recorded dead letters that
/// still are not events (count, sum of their raw digests). A minute is settled when every
/// row carries a raw digest and Redis's members are exactly those rows' members plus those
/// dead letters (same count, same sum): parsing them would give exactly these rows, each
/// with the fingerprint stored with it, and these dead letters. Any other minute — a
/// member missing, extra or spelled otherwise, a row written without a raw digest or
/// changed since — is left to the fingerprints, which decide whether it differs.
pub fn settle_by_raw_digests(redis_raw: &MinuteSummaries, target: &MinuteSummaries, target_raw: &MinuteSummaries, dead_raw: &MinuteSummaries) -> RawVerdict {
    let empty = Summary::default();
    let mut minutes: Vec<i64> = redis_raw.keys().chain(target.keys()).copied().collect();
    minutes.sort_unstable();
    minutes.dedup();
    let mut verdict = RawVerdict::default();
    for minute in minutes {
        let (r, t) = (redis_raw.get(&minute).unwrap_or(&empty), target.get(&minute).unwrap_or(&empty));
        let (tr, d) = (target_raw.get(&minute).unwrap_or(&empty), dead_raw.get(&minute).unwrap_or(&empty));
        let settled = tr.count == t.count && r.count == t.count + d.count && r.hash == tr.hash.wrapping_add(d.hash);
        if settled {
            verdict.settled.push(minute);
        } else {
            verdict.to_parse.push(minute);
        }
    }
    verdict
}

/// Groups sorted minutes into contiguous `[from_ms, to_ms)` ranges (fewer queries).
pub fn minute_ranges(minutes: &[i64]) -> Vec<(i64, i64)> {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &m in minutes {
        let (from, to) = (m * MINUTE_MS, (m + 1) * MINUTE_MS);
        match ranges.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => ranges.push((from, to)),
        }
    }
    ranges
}

/// Sorted, disjoint `[from_ms, to_ms)` ranges.
pub type Ranges = Vec<(i64, i64)>;

/// The window's hours (`starts`, the last closed by `to_ms`) as contiguous `[from_ms, to_ms)`
/// ranges: first those for which `hashed` holds (compared by raw digests first), then the
/// others (parsed at once).
pub fn split_hours(starts: &[i64], to_ms: i64, hashed: impl Fn(i64) -> bool) -> (Ranges, Ranges) {
    let (mut yes, mut no) = (Ranges::new(), Ranges::new());
    for (i, &start) in starts.iter().enumerate() {
        let stop = starts.get(i + 1).copied().unwrap_or(to_ms);
        let ranges = if hashed(start) { &mut yes } else { &mut no };
        match ranges.last_mut() {
            Some(last) if last.1 == start => last.1 = stop,
            _ => ranges.push((start, stop)),
        }
    }
    (yes, no)
}

/// Whether `ms` lies in one of the sorted, disjoint `[from_ms, to_ms)` `ranges`.
pub fn in_ranges(ranges: &[(i64, i64)], ms: i64) -> bool {
    let i = ranges.partition_point(|(_, to)| *to <= ms);
    ranges.get(i).is_some_and(|(from, _)| *from <= ms)
}

/// What event-level narrowing needs of one event, on either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDigest {
    pub event_id: Uuid,
    pub time_ms: i64,
    pub fingerprint: u64,
    pub event_name: String,
}

/// The same event id on both sides, with a different fingerprint or time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub redis: EventDigest,
    pub target: EventDigest,
}

/// Digests matched across the two sides.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DigestMatch {
    /// In Redis, not in the target.
    pub missing: Vec<EventDigest>,
    /// In the target, not in Redis.
    pub extra: Vec<EventDigest>,
    /// Same event id, different content or time: confirmed by [`changed_fields`].
    pub candidates: Vec<Candidate>,
    /// Identical on both sides.
    pub identical: u64,
}

/// Matches the events of the differing minutes: first by `(event_id, time)` (the target's
/// identity), then what is left by `event_id` alone (an event moved in time).
pub fn match_digests(redis: Vec<EventDigest>, target: Vec<EventDigest>) -> DigestMatch {
    let mut result = DigestMatch::default();
    let mut by_key: HashMap<(Uuid, i64), EventDigest> = HashMap::with_capacity(target.len());
    let mut target_dupes = Vec::new();
    for t in target {
        if let Some(previous) = by_key.insert((t.event_id, t.time_ms), t) {
            target_dupes.push(previous);
        }
    }
    let mut unmatched_redis = Vec::new();
    for r in redis {
        match by_key.remove(&(r.event_id, r.time_ms)) {
            Some(t) if t.fingerprint == r.fingerprint => result.identical += 1,
            Some(t) => result.candidates.push(Candidate { redis: r, target: t }),
            None => unmatched_redis.push(r),
        }
    }
    let mut by_id: HashMap<Uuid, Vec<EventDigest>> = HashMap::new();
    for t in by_key.into_values().chain(target_dupes) {
        by_id.entry(t.event_id).or_default().push(t);
    }
    for r in unmatched_redis {
        match by_id.get_mut(&r.event_id).and_then(|ts| ts.pop()) {
            Some(t) => result.candidates.push(Candidate { redis: r, target: t }),
            None => result.missing.push(r),
        }
    }
    result.extra = by_id.into_values().flatten().collect();
    result.missing.sort_by_key(|d| (d.time_ms, d.event_id));
    result.extra.sort_by_key(|d| (d.time_ms, d.event_id));
    result.candidates.sort_by_key(|c| (c.redis.time_ms, c.redis.event_id));
    result
}

pub use crate::event::{changed_fields, json_equivalent};
pub use crate::ledger::validation::{DifferenceKind, FoundKey};

/// One event-level difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDifference {
    pub kind: DifferenceKind,
    pub event_id: Uuid,
    pub event_name: String,
    pub redis_time_ms: Option<i64>,
    pub target_time_ms: Option<i64>,
    pub redis_fingerprint: Option<u64>,
    pub target_fingerprint: Option<u64>,
    /// Different only: which fields differ.
    pub fields: Vec<&'static str>,
}

impl EventDifference {
    pub fn missing(d: &EventDigest) -> Self {
        Self::one_sided(DifferenceKind::Missing, d)
    }

    pub fn extra(d: &EventDigest) -> Self {
        Self::one_sided(DifferenceKind::Extra, d)
    }

    fn one_sided(kind: DifferenceKind, d: &EventDigest) -> Self {
        let redis = kind == DifferenceKind::Missing;
        EventDifference {
            kind,
            event_id: d.event_id,
            event_name: d.event_name.clone(),
            redis_time_ms: redis.then_some(d.time_ms),
            target_time_ms: (!redis).then_some(d.time_ms),
            redis_fingerprint: redis.then_some(d.fingerprint),
            target_fingerprint: (!redis).then_some(d.fingerprint),
            fields: vec![],
        }
    }

    pub fn different(c: &Candidate, fields: Vec<&'static str>) -> Self {
        EventDifference {
            kind: DifferenceKind::Different,
            event_id: c.redis.event_id,
            event_name: c.redis.event_name.clone(),
            redis_time_ms: Some(c.redis.time_ms),
            target_time_ms: Some(c.target.time_ms),
            redis_fingerprint: Some(c.redis.fingerprint),
            target_fingerprint: Some(c.target.fingerprint),
            fields,
        }
    }
}

/// A bounded list with the true total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed<T> {
    pub total: u64,
    pub items: Vec<T>,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed { total: 0, items: Vec::new() }
    }
}

impl<T> Listed<T> {
    /// Adds `item`, keeping at most `limit` items (the total counts all).
    pub fn push(&mut self, item: T, limit: usize) {
        self.total += 1;
        if self.items.len() < limit {
            self.items.push(item);
        }
    }
}

/// Event-level findings of the differing minutes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFindings {
    pub missing: Listed<EventDifference>,
    pub extra: Listed<EventDifference>,
    pub different: Listed<EventDifference>,
    /// Same id, different fingerprint, but equal under the tolerance rules.
    pub equivalent: u64,
    /// Every difference, unlisted ones included: what `repair` works from.
    pub all: Vec<FoundKey>,
}

impl From<&EventDifference> for FoundKey {
    fn from(d: &EventDifference) -> FoundKey {
        let time = |ms: Option<i64>| ms.and_then(DateTime::from_timestamp_millis);
        FoundKey { kind: d.kind, event_id: d.event_id, redis_time: time(d.redis_time_ms), target_time: time(d.target_time_ms) }
    }
}

impl EventFindings {
    /// Missing and extra from a match; different ones come from [`Self::confirm`].
    pub fn from_match(matched: &DigestMatch, limit: usize) -> Self {
        let mut findings = EventFindings::default();
        for d in &matched.missing {
            let difference = EventDifference::missing(d);
            findings.all.push(FoundKey::from(&difference));
            findings.missing.push(difference, limit);
        }
        for d in &matched.extra {
            let difference = EventDifference::extra(d);
            findings.all.push(FoundKey::from(&difference));
            findings.extra.push(difference, limit);
        }
        findings
    }

    /// Confirms one candidate with both full versions (`None` when a side could not be
    /// read back: it changed while validating, and is reported as different in `time`).
    pub fn confirm(&mut self, candidate: &Candidate, redis: Option<&TargetEvent>, target: Option<&TargetEvent>, limit: usize) {
        let fields = match (redis, target) {
            (Some(r), Some(t)) => changed_fields(r, t),
            _ => vec!["unreadable"],
        };
        if fields.is_empty() {
            self.equivalent += 1;
        } else {
            let difference = EventDifference::different(candidate, fields);
            self.all.push(FoundKey::from(&difference));
            self.different.push(difference, limit);
        }
    }

    pub fn total(&self) -> u64 {
        self.missing.total + self.extra.total + self.different.total
    }
}

/// Counts of one aggregate row: events (or generations) and distinct users (or creators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub count: i64,
    pub distinct: i64,
}

/// An aggregate bucket whose two sides differ (`None`: no row on that side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateDifference<K> {
    pub key: K,
    pub legacy: Option<Counts>,
    pub target: Option<Counts>,
}

/// Result of comparing one aggregate table pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateFindings<K> {
    /// Distinct keys seen on either side.
    pub rows_compared: u64,
    pub differences: Listed<AggregateDifference<K>>,
}

/// Compares legacy and target rows by key (rows absent on one side count as zero).
pub fn diff_aggregates<K: Ord + Clone>(legacy: Vec<(K, Counts)>, target: Vec<(K, Counts)>, limit: usize) -> AggregateFindings<K> {
    let mut keys: BTreeMap<K, (Option<Counts>, Option<Counts>)> = BTreeMap::new();
    for (k, c) in legacy {
        keys.entry(k).or_default().0 = Some(c);
    }
    for (k, c) in target {
        keys.entry(k).or_default().1 = Some(c);
    }
    let mut findings = AggregateFindings { rows_compared: keys.len() as u64, differences: Listed::default() };
    for (key, (legacy, target)) in keys {
        if legacy != target {
            findings.differences.push(AggregateDifference { key, legacy, target }, limit);
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn digest(id: u128, time_ms: i64, fingerprint: u64) -> EventDigest {
        EventDigest { event_id: Uuid::from_u128(id), time_ms, fingerprint, event_name: "e".into() }
    }

    fn minutes(entries: &[(i64, u64, u64)]) -> MinuteSummaries {
        entries.iter().map(|(m, c, h)| (*m, Summary { count: *c, hash: *h })).collect()
    }

    #[test]
    fn raw_digests_settle_only_minutes_whose_members_are_exactly_the_rows_and_dead_letters() {
        // Redis per minute (count, raw sum); the target's rows (count) and those with a raw digest.
        let redis = minutes(&[(1, 2, 30), (2, 3, 31), (3, 2, 30), (4, 2, 30), (5, 1, 9), (7, 2, 30)]);
        let target = minutes(&[(1, 2, 0), (2, 2, 0), (3, 2, 0), (4, 2, 0), (6, 1, 0), (7, 2, 0)]);
        let target_raw = minutes(&[(1, 2, 30), (2, 2, 30), (3, 1, 20), (4, 2, 29), (6, 1, 5), (7, 2, 21)]);
        // Minute 2 holds a recorded dead letter (digest 1); minute 5 one that Redis lost; minute 7
        // one whose count matches but not its digest.
        let dead = minutes(&[(2, 1, 1), (5, 1, 8), (7, 0, 0)]);
        let verdict = settle_by_raw_digests(&redis, &target, &target_raw, &dead);
        // 3: a row without a raw digest; 4: another spelling; 5: Redis's member is not the
        // dead letter recorded; 6: Redis lacks the row; 7: sums differ.
        assert_eq!(verdict, RawVerdict { settled: vec![1, 2], to_parse: vec![3, 4, 5, 6, 7] });
        // Sums wrap like every hash here.
        let wrapped = settle_by_raw_digests(&minutes(&[(1, 2, 1)]), &minutes(&[(1, 1, 0)]), &minutes(&[(1, 1, u64::MAX)]), &minutes(&[(1, 1, 2)]));
        assert_eq!(wrapped.settled, vec![1]);
    }

    #[test]
    fn hashes_are_order_independent_and_wrap() {
        let (mut a, mut b) = (Summary::default(), Summary::default());
        for f in [u64::MAX, 7, 1 << 63] {
            a.add(f);
        }
        for f in [1 << 63, u64::MAX, 7] {
            b.add(f);
        }
        assert_eq!(a, b);
        assert_eq!(a.hash, 6u64.wrapping_add(1 << 63));
    }

    #[test]
    fn minutes_roll_up_into_hours_and_outside_is_ignored() {
        let starts = [0, 3_600_000];
        let m = minutes(&[(0, 1, 1), (59, 2, 2), (60, 4, 4), (120, 8, 8), (-1, 16, 16)]);
        let hours = roll_up(&m, &starts, 7_200_000);
        assert_eq!(hours, vec![Summary { count: 3, hash: 3 }, Summary { count: 4, hash: 4 }]);
        assert_eq!(hour_index(&starts, 7_200_000, 3_599_999), Some(0));
        assert_eq!(hour_index(&starts, 7_200_000, 7_200_000), None);
    }

    #[test]
    fn hours_differ_by_count_or_hash_and_name_their_minutes() {
        let starts = [0, 3_600_000];
        let redis = minutes(&[(1, 1, 10), (61, 1, 5)]);
        let target = minutes(&[(1, 1, 10), (61, 1, 6), (62, 1, 1)]);
        let (r, t) = (roll_up(&redis, &starts, 7_200_000), roll_up(&target, &starts, 7_200_000));
        let mut diff = diff_hours(&r, &t, &starts, true);
        attach_minutes(&mut diff, &redis, &target, &starts, 7_200_000);
        assert_eq!(diff.len(), 1);
        assert_eq!((diff[0].start_ms, diff[0].minutes.clone()), (3_600_000, vec![61, 62]));
        // Counts only: the same count with a different hash is not a difference.
        let same_count = minutes(&[(1, 1, 99)]);
        assert!(diff_hours(&roll_up(&same_count, &starts, 7_200_000), &roll_up(&minutes(&[(1, 1, 1)]), &starts, 7_200_000), &starts, false).is_empty());
        assert_eq!(minute_ranges(&[1, 2, 3, 7]), vec![(60_000, 240_000), (420_000, 480_000)]);
    }

    #[test]
    fn hours_split_into_hashed_and_parsed_ranges() {
        const H: i64 = 3_600_000;
        let starts = [0, H, 2 * H, 3 * H, 4 * H];
        let (hashed, parsed) = split_hours(&starts, 5 * H, |start| start != H && start != 2 * H);
        assert_eq!(hashed, vec![(0, H), (3 * H, 5 * H)]);
        assert_eq!(parsed, vec![(H, 3 * H)]);
        assert_eq!(split_hours(&starts, 5 * H, |_| true), (vec![(0, 5 * H)], vec![]));
        assert_eq!(split_hours(&starts, 5 * H, |_| false), (vec![], vec![(0, 5 * H)]));
        assert!(in_ranges(&hashed, 0) && in_ranges(&hashed, H - 1) && in_ranges(&hashed, 3 * H) && in_ranges(&hashed, 5 * H - 1));
        assert!(!in_ranges(&hashed, H) && !in_ranges(&hashed, 3 * H - 1) && !in_ranges(&hashed, 5 * H) && !in_ranges(&hashed, -1));
    }

    #[test]
    fn digests_match_into_missing_extra_and_candidates() {
        let redis = vec![digest(1, 100, 1), digest(2, 100, 2), digest(3, 100, 3), digest(4, 100, 4)];
        // 1 identical, 2 altered, 3 moved an hour later, 4 missing, 5 extra.
        let target = vec![digest(1, 100, 1), digest(2, 100, 22), digest(3, 3_600_100, 33), digest(5, 200, 5)];
        let m = match_digests(redis, target);
        assert_eq!(m.identical, 1);
        assert_eq!(m.missing.iter().map(|d| d.event_id.as_u128()).collect::<Vec<_>>(), vec![4]);
        assert_eq!(m.extra.iter().map(|d| d.event_id.as_u128()).collect::<Vec<_>>(), vec![5]);
        let ids: Vec<(u128, i64)> = m.candidates.iter().map(|c| (c.redis.event_id.as_u128(), c.target.time_ms)).collect();
        assert_eq!(ids, vec![(2, 100), (3, 3_600_100)]);
    }

    fn event() -> TargetEvent {
        TargetEvent {
            event_id: Uuid::nil(),
            time: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            event_name: "click".into(),
            category: "ui".into(),
            user_id: Some("u".into()),
            session_id: None,
            properties: json!({"price": 1.5, "n": 1, "tags": ["a"]}),
            device_info: json!({}),
            page_url: None,
            referrer: None,
        }
    }

    #[test]
    fn changed_fields_apply_the_tolerance_rules() {
        let a = event();
        let mut b = event();
        b.properties = serde_json::from_str(r#"{"tags": ["a"], "n": 1.0, "price": 1.50}"#).unwrap();
        assert!(changed_fields(&a, &b).is_empty(), "key order and number formatting are not differences");
        b.time = a.time + chrono::Duration::hours(1);
        b.user_id = None;
        b.properties = json!({"price": 1.6, "n": 1, "tags": ["a"]});
        assert_eq!(changed_fields(&a, &b), vec!["time", "user_id", "properties"]);
    }

    #[test]
    fn findings_are_bounded_but_totals_are_exact() {
        let redis: Vec<_> = (0..10).map(|i| digest(i, 100, 1)).collect();
        let m = match_digests(redis, vec![]);
        let findings = EventFindings::from_match(&m, 3);
        assert_eq!((findings.missing.total, findings.missing.items.len()), (10, 3));
        let mut f = EventFindings::default();
        let c = Candidate { redis: digest(1, 100, 1), target: digest(1, 100, 2) };
        f.confirm(&c, Some(&event()), Some(&event()), 5);
        assert_eq!((f.equivalent, f.different.total), (1, 0));
        f.confirm(&c, Some(&event()), None, 5);
        assert_eq!(f.different.items[0].fields, vec!["unreadable"]);
        assert_eq!(f.total(), 1);
    }

    #[test]
    fn aggregates_compare_by_key_with_absent_rows() {
        let c = |count, distinct| Counts { count, distinct };
        let legacy = vec![("a", c(10, 3)), ("b", c(5, 2)), ("c", c(1, 1))];
        let target = vec![("a", c(10, 3)), ("b", c(5, 1)), ("d", c(2, 2))];
        let f = diff_aggregates(legacy, target, 50);
        assert_eq!(f.rows_compared, 4);
        let keys: Vec<_> = f.differences.items.iter().map(|d| (d.key, d.legacy.is_some(), d.target.is_some())).collect();
        assert_eq!(keys, vec![("b", true, true), ("c", true, false), ("d", false, true)]);
    }
}
