//! What the read API is asked and what it answers, in domain terms: the validated
//! [`Request`], the [`Answer`] and the rows it is made of, the request limits, and how
//! times and spans are written on the wire and in cache keys. Pure: no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};

use super::buckets::{bin_start, bucket_count};

/// The longest `from..to` range a request may ask for.
pub const MAX_RANGE_DAYS: i64 = 400;
/// `popular-asset-types?days=` accepts 1..=this.
pub const MAX_POPULAR_DAYS: u32 = 3650;
/// `comparison?period=` at most this long (both periods together stay within `MAX_RANGE_DAYS`).
pub const MAX_PERIOD_DAYS: i64 = MAX_RANGE_DAYS / 2;
/// `intervals` answers at most this many buckets.
pub const MAX_BUCKETS: i64 = 10_000;

/// A read failed; the HTTP layer turns this into 503 or 500.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A server is down, or the source is not set up (retrying later may help).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ReadError {
    pub(crate) fn postgres(what: &str, e: sqlx::Error) -> ReadError {
        let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
        let missing_table = code.as_deref().is_some_and(|c| c == "42P01" || c == "42883");
        match e {
            // A read replica cancels a read whose rows replay must change ("conflict with recovery").
            _ if code.as_deref() == Some("40001") => ReadError::Unavailable(format!("{what}: the read was cancelled ({e}); ask again")),
            _ if missing_table => ReadError::Unavailable(format!("{what} is not set up ({e}); run `tsmigrate prepare` / check the legacy tables")),
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                ReadError::Unavailable(format!("{what} is unreachable: {e}"))
            }
            other => ReadError::Unexpected(anyhow::Error::new(other).context(format!("reading {what}"))),
        }
    }

    pub(crate) fn redis(e: redis::RedisError) -> ReadError {
        ReadError::Unavailable(format!("Redis is unavailable: {e}"))
    }
}

/// `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl TimeRange {
    /// A range a request may ask for: `to` after `from`, at most `MAX_RANGE_DAYS` long.
    pub fn checked(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<TimeRange, String> {
        if to <= from {
            return Err(format!("to ({}) must be after from ({})", wire_time(to), wire_time(from)));
        }
        if to - from > Duration::days(MAX_RANGE_DAYS) {
            return Err(format!("the range is longer than {MAX_RANGE_DAYS} days; ask for a shorter one"));
        }
        Ok(TimeRange { from, to })
    }

    pub(crate) fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<TimeRange> {
        (from < to).then_some(TimeRange { from, to })
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to
    }
}

/// Optional exact-match filters of `/hourly`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub event_name: Option<String>,
    pub category: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, event_name: &str, category: &str) -> bool {
        self.event_name.as_deref().is_none_or(|n| n == event_name) && self.category.as_deref().is_none_or(|c| c == category)
    }
}

/// One (hour, event_name, category) group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourRow {
    pub hour: DateTime<Utc>,
    pub event_name: String,
    pub category: String,
    pub event_count: i64,
    /// Distinct users within this hour and group.
    pub unique_users: i64,
}

/// Totals of one (event_name, category) over a range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupTotal {
    pub event_name: String,
    pub category: String,
    pub event_count: i64,
    /// The sum of the hourly distinct users (not a distinct count over the range); 0
    /// unless [`UserCount::HourlySum`] was asked for.
    pub hourly_unique_users: i64,
}

/// What a raw summary counts about users: nothing (comparison), the hourly uniques (to be
/// summed, when history takes part), or the exact distinct users of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCount {
    Skip,
    HourlySum,
    Distinct,
}

/// What a source's raw part of a range holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawSummary {
    pub totals: Vec<GroupTotal>,
    /// Distinct users over the whole raw range, with [`UserCount::Distinct`].
    pub distinct_users: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub range: TimeRange,
    pub total_events: i64,
    pub unique_users: i64,
    pub unique_users_exact: bool,
    pub by_type: BTreeMap<String, i64>,
    pub by_category: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetRow {
    pub asset_type: String,
    pub generation_count: i64,
    /// Sum of daily distinct creators, as the legacy function reports it.
    pub unique_creators: i64,
}

/// One daily asset-popularity row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayAssetRow {
    pub day: NaiveDate,
    pub asset_type: String,
    pub generation_count: i64,
    pub unique_creators: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub current: TimeRange,
    pub previous: TimeRange,
    pub current_events: i64,
    pub previous_events: i64,
    pub trend: i64,
    pub trend_percentage: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Intervals {
    pub range: TimeRange,
    pub bucket_secs: i64,
    /// Every bucket of the range, oldest first, zero buckets included.
    pub buckets: Vec<(DateTime<Utc>, i64)>,
}

/// A validated read request; relative parameters are already resolved against the
/// request's minute, so equal requests have equal cache keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Summary(TimeRange),
    Hourly { range: TimeRange, filter: EventFilter },
    PopularAssetTypes { days: u32, as_of: DateTime<Utc> },
    Comparison { period_secs: i64, to: DateTime<Utc> },
    Intervals { range: TimeRange, bucket_secs: i64 },
}

impl Request {
    pub fn endpoint(&self) -> &'static str {
        match self {
            Request::Summary(_) => "summary",
            Request::Hourly { .. } => "hourly",
            Request::PopularAssetTypes { .. } => "popular-asset-types",
            Request::Comparison { .. } => "comparison",
            Request::Intervals { .. } => "intervals",
        }
    }

    /// The parameters, normalized (absolute, UTC, fixed order, escaped): the cache key's tail.
    pub fn cache_params(&self) -> String {
        let mut params = url::form_urlencoded::Serializer::new(String::new());
        match self {
            Request::Summary(range) => {
                params.append_pair("from", &wire_time(range.from)).append_pair("to", &wire_time(range.to));
            }
            Request::Hourly { range, filter } => {
                params.append_pair("from", &wire_time(range.from)).append_pair("to", &wire_time(range.to));
                if let Some(name) = &filter.event_name {
                    params.append_pair("event_name", name);
                }
                if let Some(category) = &filter.category {
                    params.append_pair("category", category);
                }
            }
            Request::PopularAssetTypes { days, as_of } => {
                params.append_pair("days", &days.to_string()).append_pair("as_of", &wire_time(*as_of));
            }
            Request::Comparison { period_secs, to } => {
                params.append_pair("period", &format_span(*period_secs)).append_pair("to", &wire_time(*to));
            }
            Request::Intervals { range, bucket_secs } => {
                params.append_pair("bucket", &format_span(*bucket_secs)).append_pair("from", &wire_time(range.from)).append_pair("to", &wire_time(range.to));
            }
        }
        params.finish()
    }

    /// `comparison?period=`: this period ends at `now`, the previous one right before it.
    pub fn comparison(period: Duration, now: DateTime<Utc>) -> Result<Request, String> {
        if period < Duration::minutes(1) || period > Duration::days(MAX_PERIOD_DAYS) {
            return Err(format!("period must be between 1m and {MAX_PERIOD_DAYS}d"));
        }
        Ok(Request::Comparison { period_secs: period.num_seconds(), to: now })
    }

    /// `intervals?bucket=&since=`: buckets from the one holding `now - since` up to `now`.
    pub fn intervals(bucket: Duration, since: Duration, now: DateTime<Utc>) -> Result<Request, String> {
        if bucket < Duration::seconds(1) {
            return Err("bucket must be at least 1s".into());
        }
        if since <= Duration::zero() {
            return Err("since must be a positive duration like 24h".into());
        }
        if since > Duration::days(MAX_RANGE_DAYS) {
            return Err(format!("since is longer than {MAX_RANGE_DAYS} days"));
        }
        let bucket_ms = bucket.num_milliseconds();
        let from = bin_start(now - since, bucket_ms);
        let count = bucket_count(TimeRange { from, to: now }, bucket_ms);
        if count > MAX_BUCKETS {
            return Err(format!(
                "{count} buckets of {} over {} is more than {MAX_BUCKETS}; use a larger bucket or a shorter since",
                format_span(bucket.num_seconds()),
                format_span(since.num_seconds())
            ));
        }
        Ok(Request::Intervals { range: TimeRange { from, to: now }, bucket_secs: bucket.num_seconds() })
    }

    pub fn popular(days: u32, now: DateTime<Utc>) -> Result<Request, String> {
        if !(1..=MAX_POPULAR_DAYS).contains(&days) {
            return Err(format!("days must be between 1 and {MAX_POPULAR_DAYS}"));
        }
        Ok(Request::PopularAssetTypes { days, as_of: now })
    }
}

/// An answer, in domain terms (the HTTP layer renders it).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Summary(Summary),
    Hourly { range: TimeRange, rows: Vec<HourRow> },
    PopularAssetTypes { days: u32, as_of: DateTime<Utc>, rows: Vec<AssetRow> },
    Comparison { period_secs: i64, comparison: Comparison },
    Intervals(Intervals),
}

/// `t` rounded down to the minute, the settle boundary: relative windows end there and
/// cache keys use it, so requests in the same minute share answers.
pub use crate::calendar::minute_floor;

/// A time as the wire shows it: RFC 3339, UTC, fractions only when present.
pub fn wire_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// `86400` → `1d`, `5400` → `90m`: the largest unit that divides the span.
pub fn format_span(secs: i64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs != 0 && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reads::buckets::bucket_starts;
    use crate::reads::testing::{range, t};

    #[test]
    fn intervals_cover_since_with_every_bucket_oldest_first() {
        let now = t("2025-03-10T12:47:00Z");
        let Request::Intervals { range, bucket_secs } = Request::intervals(Duration::minutes(10), Duration::hours(1), now).unwrap() else { panic!() };
        assert_eq!(range, self::range("2025-03-10T11:40:00Z", "2025-03-10T12:47:00Z"));
        let starts = bucket_starts(range, bucket_secs * 1000);
        assert_eq!(starts.len(), 7);
        assert_eq!((starts[0], starts[6]), (t("2025-03-10T11:40:00Z"), t("2025-03-10T12:40:00Z")));
        assert!(Request::intervals(Duration::minutes(1), Duration::days(7), now).unwrap_err().contains("more than 10000"));
        assert!(Request::intervals(Duration::zero(), Duration::days(1), now).is_err());
    }

    #[test]
    fn ranges_are_checked() {
        assert!(TimeRange::checked(t("2025-01-02T00:00:00Z"), t("2025-01-01T00:00:00Z")).unwrap_err().contains("must be after"));
        assert!(TimeRange::checked(t("2024-01-01T00:00:00Z"), t("2025-03-01T00:00:00Z")).unwrap_err().contains("400 days"));
        assert!(TimeRange::checked(t("2025-01-01T00:00:00Z"), t("2025-01-01T00:00:01Z")).is_ok());
    }

    #[test]
    fn cache_params_are_normalized_and_escaped() {
        let r = range("2025-03-01T00:00:00+01:00", "2025-03-02T00:00:00Z");
        assert_eq!(Request::Summary(r).cache_params(), "from=2025-02-28T23%3A00%3A00Z&to=2025-03-02T00%3A00%3A00Z");
        let filter = EventFilter { event_name: Some("a&category=b".into()), category: None };
        assert!(Request::Hourly { range: r, filter }.cache_params().contains("event_name=a%26category%3Db"));
        assert_eq!(format_span(86_400 * 30), "30d");
        assert_eq!(format_span(5_400), "90m");
        assert_eq!(format_span(90), "90s");
        assert_eq!(minute_floor(t("2025-03-01T10:17:59.9Z")), t("2025-03-01T10:17:00Z"));
    }
}
