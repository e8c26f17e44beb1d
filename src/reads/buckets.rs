//! Bucket arithmetic, pure: how a range divides between history and raw at a source's
//! raw start ([`Split`]), where the target reads a range from its hourly aggregate and
//! where from raw ([`Pieces`]), and interval buckets aligned like `date_bin`.

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;

use super::request::{HourRow, TimeRange};
use crate::calendar::{hour_ceil, hour_floor, next_hour};

/// Interval buckets are aligned like `date_bin(bucket, time, '2000-01-01 00:00:00+00')`.
pub const BUCKET_ORIGIN_MS: i64 = 946_684_800_000;
/// Whole hours younger than this (counted from the start of the current hour) are read
/// from raw even on the target: both modes' refresh jobs re-materialize the recent hours
/// (TimescaleDB policy: 3 h .. 1 h; plain-mode rollups every 5 minutes over 3 hours), and
/// late events land in raw at once.
pub const AGGREGATE_SETTLE: Duration = Duration::hours(1);

/// How a range divides between history and raw, given the source's raw start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub raw_start: Option<DateTime<Utc>>,
    /// History rows whose hour starts in here (the horizon hour included).
    pub history: Option<TimeRange>,
    /// The raw part of the horizon hour, when the history range includes that hour.
    pub horizon_raw: Option<TimeRange>,
    /// Everything from the raw start on.
    pub raw: Option<TimeRange>,
}

impl Split {
    pub fn new(range: TimeRange, raw_start: Option<DateTime<Utc>>, tz: Tz) -> Split {
        let Some(start) = raw_start else {
            return Split { raw_start, history: Some(range), horizon_raw: None, raw: None };
        };
        let after_horizon = next_hour(start, tz);
        let history = TimeRange::new(range.from, range.to.min(after_horizon));
        let horizon_included = range.contains(start);
        Split {
            raw_start,
            history: history.filter(|h| h.from <= start),
            horizon_raw: if horizon_included { TimeRange::new(start, range.to.min(after_horizon)) } else { None },
            raw: TimeRange::new(range.from.max(start), range.to),
        }
    }
}

impl Split {
    /// History rows of hours before the raw start, and those of the horizon hour.
    pub fn partition(&self, history: Vec<HourRow>) -> (Vec<HourRow>, Vec<HourRow>) {
        history.into_iter().partition(|r| self.raw_start.is_none_or(|start| r.hour < start))
    }
}

/// Where the target reads a raw-covered range: the hourly aggregate for whole settled
/// hours, raw for the rest (the partial edge hours and the recent, unsettled hours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces {
    pub aggregate: Option<TimeRange>,
    pub raw: Vec<TimeRange>,
}

impl Pieces {
    pub fn new(range: TimeRange, now: DateTime<Utc>, tz: Tz) -> Pieces {
        let settled_until = hour_floor(hour_floor(now, tz) - AGGREGATE_SETTLE + Duration::minutes(30), tz);
        let aggregate = TimeRange::new(hour_ceil(range.from, tz), hour_floor(range.to, tz).min(settled_until));
        match aggregate {
            Some(agg) => Pieces { aggregate, raw: [TimeRange::new(range.from, agg.from), TimeRange::new(agg.to, range.to)].into_iter().flatten().collect() },
            None => Pieces { aggregate: None, raw: vec![range] },
        }
    }
}

/// The start of the bucket holding `t`, like `date_bin(bucket, t, '2000-01-01 00:00:00+00')`.
pub fn bin_start(t: DateTime<Utc>, bucket_ms: i64) -> DateTime<Utc> {
    let ms = t.timestamp_millis();
    let start = BUCKET_ORIGIN_MS + (ms - BUCKET_ORIGIN_MS).div_euclid(bucket_ms) * bucket_ms;
    Utc.timestamp_millis_opt(start).single().expect("bucket start in range")
}

/// How many buckets `range` touches (its start is expected to be aligned).
pub fn bucket_count(range: TimeRange, bucket_ms: i64) -> i64 {
    let span = (range.to - bin_start(range.from, bucket_ms)).num_milliseconds();
    (span + bucket_ms - 1) / bucket_ms
}

/// Every bucket start from the one holding `range.from` up to `range.to` (exclusive), oldest first.
pub fn bucket_starts(range: TimeRange, bucket_ms: i64) -> Vec<DateTime<Utc>> {
    let mut start = bin_start(range.from, bucket_ms);
    let mut out = Vec::new();
    while start < range.to {
        out.push(start);
        start += Duration::milliseconds(bucket_ms);
    }
    out
}

/// Whether every hour of `range` (cut in `tz`) lies inside one bucket, so hourly rows can be
/// placed in buckets: buckets of whole hours, and a zone whose hours start on UTC hours.
pub fn hours_nest(bucket_ms: i64, tz: Tz, range: TimeRange) -> bool {
    let whole_hour_offset = |t: DateTime<Utc>| hour_floor(t, tz).timestamp_millis() % 3_600_000 == 0;
    bucket_ms % 3_600_000 == 0 && whole_hour_offset(range.from) && whole_hour_offset(range.to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reads::testing::{range, t};

    #[test]
    fn buckets_align_like_date_bin_from_2000() {
        // date_bin('10 minutes', '2025-03-10 12:47:05+00', '2000-01-01') = 12:40.
        assert_eq!(bin_start(t("2025-03-10T12:47:05Z"), 600_000), t("2025-03-10T12:40:00Z"));
        // 7-day buckets start on Saturdays, like date_bin from 2000-01-01 (a Saturday), not on epoch Thursdays.
        assert_eq!(bin_start(t("2025-03-10T12:00:00Z"), 7 * 86_400_000), t("2025-03-08T00:00:00Z"));
        assert_eq!(bin_start(t("2025-03-10T12:40:00Z"), 600_000), t("2025-03-10T12:40:00Z"));
    }

    #[test]
    fn a_range_splits_at_the_raw_start_and_shares_the_horizon_hour() {
        let tz = Tz::UTC;
        let r = range("2025-03-01T10:30:00Z", "2025-03-03T00:00:00Z");
        let split = Split::new(r, Some(t("2025-03-02T05:00:00Z")), tz);
        assert_eq!(split.history, Some(range("2025-03-01T10:30:00Z", "2025-03-02T06:00:00Z")));
        assert_eq!(split.horizon_raw, Some(range("2025-03-02T05:00:00Z", "2025-03-02T06:00:00Z")));
        assert_eq!(split.raw, Some(range("2025-03-02T05:00:00Z", "2025-03-03T00:00:00Z")));
        // Entirely raw.
        let split = Split::new(range("2025-03-02T07:00:00Z", "2025-03-02T08:00:00Z"), Some(t("2025-03-02T05:00:00Z")), tz);
        assert_eq!((split.history, split.horizon_raw), (None, None));
        // Starting inside the horizon hour: that hour is raw only (history counts hours starting in the range).
        let split = Split::new(range("2025-03-02T05:10:00Z", "2025-03-02T08:00:00Z"), Some(t("2025-03-02T05:00:00Z")), tz);
        assert_eq!((split.history, split.horizon_raw), (None, None));
        // Nothing raw at all: everything is history.
        let split = Split::new(r, None, tz);
        assert_eq!((split.history, split.raw), (Some(r), None));
    }

    #[test]
    fn the_target_reads_settled_whole_hours_from_the_aggregate() {
        let tz = Tz::UTC;
        let now = t("2025-03-10T12:47:00Z");
        let p = Pieces::new(range("2025-03-01T10:30:00Z", "2025-03-10T12:47:00Z"), now, tz);
        assert_eq!(p.aggregate, Some(range("2025-03-01T11:00:00Z", "2025-03-10T11:00:00Z")));
        assert_eq!(p.raw, vec![range("2025-03-01T10:30:00Z", "2025-03-01T11:00:00Z"), range("2025-03-10T11:00:00Z", "2025-03-10T12:47:00Z")]);
        let p = Pieces::new(range("2025-03-01T10:00:00Z", "2025-03-01T12:00:00Z"), now, tz);
        assert_eq!((p.aggregate, p.raw), (Some(range("2025-03-01T10:00:00Z", "2025-03-01T12:00:00Z")), vec![]));
        let p = Pieces::new(range("2025-03-10T10:15:00Z", "2025-03-10T10:45:00Z"), now, tz);
        assert_eq!((p.aggregate, p.raw.len()), (None, 1));
        // India: hours start at :30 UTC.
        let p = Pieces::new(range("2025-03-01T10:00:00Z", "2025-03-01T13:00:00Z"), now, chrono_tz::Asia::Kolkata);
        assert_eq!(p.aggregate, Some(range("2025-03-01T10:30:00Z", "2025-03-01T12:30:00Z")));
    }

    #[test]
    fn hours_nest_in_whole_hour_buckets_of_whole_hour_zones() {
        let r = range("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z");
        assert!(hours_nest(3_600_000, Tz::UTC, r));
        assert!(hours_nest(86_400_000, chrono_tz::Europe::Berlin, r));
        assert!(!hours_nest(600_000, Tz::UTC, r));
        assert!(!hours_nest(3_600_000, chrono_tz::Asia::Kolkata, r));
    }
}
