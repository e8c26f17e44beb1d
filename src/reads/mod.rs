//! The read API's answers, from the legacy path or from the target, as the migration
//! state says (`tsmigrate.migration_state.read_source`).
//!
//! Both sources answer through the same composition (this module) over the same few
//! primitives ([`legacy`], [`target`]), so the same question gets the same answer before
//! and after the switch:
//!
//! * A source's **raw start** is the start of the hour holding the oldest event it still
//!   has raw (legacy: the oldest member of the Redis sorted set; target: the oldest row of
//!   `analytics_events_ts`).
//! * Hours **before** the raw start come from hourly **history** (legacy: the hourly table
//!   the flush worker fills; target: `tsmigrate.history_hourly`, plus aggregate rows whose
//!   raw rows retention already dropped). A history hour counts when it *starts* inside
//!   the asked range: history cannot be cut finer than an hour.
//! * The **horizon hour** (the one at the raw start) takes, per (event_name, category), the
//!   larger of history and raw: Redis may have trimmed the beginning of that hour, and
//!   the legacy flush counted it while it was whole (the flush's own `GREATEST` rule).
//! * Everything **after** comes from raw (legacy: Redis; target: the hourly aggregate for
//!   whole settled hours, the raw table for partial edge hours and the unsettled recent ones).
//!
//! Unique users: exact (distinct over raw) when no history row contributed to the answer;
//! otherwise the sum of hourly uniques per (hour, event_name, category) — an upper bound —
//! and the answer says `unique_users_exact: false`. Both sources apply the same rule. The
//! target counts exactly from user sets ([`sets`]: bitmaps per minute, hour and day, raw rows
//! only where a set is missing or stale), with the same answer as raw rows
//! ([`Route::RawRows`], kept to check and measure against) and at a cost that follows the
//! number of buckets, not of events; they also keep a summary exact where retention has
//! dropped the raw rows.
//!
//! Members that are not valid events count nowhere, on either side (on the target they are
//! dead letters). Invariant: this module and its primitives only read; they never write.

pub mod cache;
pub mod legacy;
pub mod sets;
pub mod shadow;
pub mod target;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use crate::connect::RedisConn;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sqlx::PgPool;

use crate::calendar::{hour_ceil, hour_floor, next_hour};
use crate::config::Settings;
use crate::legacy::LegacyKeys;
use crate::remembered::Remembered;

/// The longest `from..to` range a request may ask for.
pub const MAX_RANGE_DAYS: i64 = 400;
/// `popular-asset-types?days=` accepts 1..=this.
pub const MAX_POPULAR_DAYS: u32 = 3650;
/// `comparison?period=` at most this long (both periods together stay within `MAX_RANGE_DAYS`).
pub const MAX_PERIOD_DAYS: i64 = MAX_RANGE_DAYS / 2;
/// `intervals` answers at most this many buckets.
pub const MAX_BUCKETS: i64 = 10_000;
/// Interval buckets are aligned like `date_bin(bucket, time, '2000-01-01 00:00:00+00')`.
pub const BUCKET_ORIGIN_MS: i64 = 946_684_800_000;
/// Whole hours younger than this (counted from the start of the current hour) are read
/// from raw even on the target: both modes' refresh jobs re-materialize the recent hours
/// (TimescaleDB policy: 3 h .. 1 h; plain-mode rollups every 5 minutes over 3 hours), and
/// late events land in raw at once.
pub const AGGREGATE_SETTLE: Duration = Duration::hours(1);
/// How long the in-process copy of `read_source` / `shadow` is trusted.
pub const ROUTING_REFRESH: StdDuration = StdDuration::from_secs(1);
/// How long the target's raw horizon is remembered. It moves only when retention drops a
/// day or a backfill adds older events, and asking costs a planning pass over every chunk.
pub const HORIZON_REFRESH: StdDuration = StdDuration::from_secs(10);

/// Where reads are answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadSource {
    /// Redis plus the legacy hourly tables and function.
    Legacy,
    /// The target: raw table, aggregates and imported history.
    Target,
}

impl ReadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadSource::Legacy => "legacy",
            ReadSource::Target => "target",
        }
    }

    pub fn parse(s: &str) -> Option<ReadSource> {
        match s {
            "legacy" => Some(ReadSource::Legacy),
            "target" => Some(ReadSource::Target),
            _ => None,
        }
    }

    /// The side shadow mode compares with.
    pub fn other(self) -> ReadSource {
        match self {
            ReadSource::Legacy => ReadSource::Target,
            ReadSource::Target => ReadSource::Legacy,
        }
    }
}

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
    fn postgres(what: &str, e: sqlx::Error) -> ReadError {
        let missing_table = e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "42P01" || c == "42883");
        match e {
            _ if missing_table => ReadError::Unavailable(format!("{what} is not set up ({e}); run `tsmigrate prepare` / check the legacy tables")),
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                ReadError::Unavailable(format!("{what} is unreachable: {e}"))
            }
            other => ReadError::Unexpected(anyhow::Error::new(other).context(format!("reading {what}"))),
        }
    }

    fn redis(e: redis::RedisError) -> ReadError {
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

    fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<TimeRange> {
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

/// How the target answers what involves unique users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// The user sets, raw rows where they do not answer (what the API serves).
    #[default]
    Sets,
    /// Raw rows and the aggregates only: the route before user sets, kept to check the sets
    /// against and to measure them by.
    RawRows,
}

/// What a read needs: connections and the request's minute.
#[derive(Clone)]
pub struct ReadContext {
    pub settings: Arc<Settings>,
    pub keys: Arc<LegacyKeys>,
    pub redis: RedisConn,
    pub target: Option<PgPool>,
    /// The legacy database (hourly tables, popular function).
    pub legacy: Option<PgPool>,
    /// The request's "now", rounded down to the minute.
    pub now: DateTime<Utc>,
    /// The target's raw horizon, shared between requests.
    pub target_horizon: Arc<HorizonCache>,
    pub route: Route,
}

impl ReadContext {
    pub fn tz(&self) -> Tz {
        self.settings.target.timezone()
    }

    fn target_pool(&self) -> Result<&PgPool, ReadError> {
        self.target.as_ref().ok_or_else(|| ReadError::Unavailable("the target database is not configured for reads".into()))
    }

    fn legacy_pool(&self) -> Result<&PgPool, ReadError> {
        self.legacy.as_ref().ok_or_else(|| ReadError::Unavailable("the legacy database is not configured for reads".into()))
    }
}

// The primitives each source provides; the composition below is shared.
impl ReadSource {
    /// The oldest event time this source holds raw.
    async fn horizon(self, ctx: &ReadContext) -> Result<Option<DateTime<Utc>>, ReadError> {
        match self {
            ReadSource::Legacy => legacy::horizon(ctx).await,
            ReadSource::Target => target::horizon(ctx).await,
        }
    }

    /// History rows of the hours starting in `hours` (`raw_start` marks where raw begins).
    async fn history_hours(
        self,
        ctx: &ReadContext,
        hours: TimeRange,
        raw_start: Option<DateTime<Utc>>,
        filter: &EventFilter,
    ) -> Result<Vec<HourRow>, ReadError> {
        match self {
            ReadSource::Legacy => legacy::history_hours(ctx, hours, filter).await,
            ReadSource::Target => target::history_hours(ctx, hours, raw_start, filter).await,
        }
    }

    /// Raw rows per hour of the events in `range`.
    async fn raw_hours(self, ctx: &ReadContext, range: TimeRange, filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
        match self {
            ReadSource::Legacy => legacy::raw_hours(ctx, range, filter).await,
            ReadSource::Target => target::raw_hours(ctx, range, filter).await,
        }
    }

    async fn raw_summary(self, ctx: &ReadContext, range: TimeRange, users: UserCount) -> Result<RawSummary, ReadError> {
        match self {
            ReadSource::Legacy => legacy::raw_summary(ctx, range, users).await,
            ReadSource::Target => target::raw_summary(ctx, range, users).await,
        }
    }

    /// Raw event counts per bucket (only non-empty buckets).
    async fn raw_buckets(self, ctx: &ReadContext, range: TimeRange, bucket_ms: i64) -> Result<BTreeMap<DateTime<Utc>, i64>, ReadError> {
        match self {
            ReadSource::Legacy => legacy::raw_buckets(ctx, range, bucket_ms).await,
            ReadSource::Target => target::raw_buckets(ctx, range, bucket_ms).await,
        }
    }

    async fn popular(self, ctx: &ReadContext, days: u32) -> Result<Vec<AssetRow>, ReadError> {
        match self {
            ReadSource::Legacy => legacy::popular(ctx, days).await,
            ReadSource::Target => target::popular(ctx, days).await,
        }
    }

    /// Answers `request` from this source.
    #[tracing::instrument(skip_all, fields(source = self.as_str(), endpoint = request.endpoint()), err)]
    pub async fn answer(self, ctx: &ReadContext, request: &Request) -> Result<Answer, ReadError> {
        Ok(match request {
            Request::Summary(range) => Answer::Summary(self.summary(ctx, *range, true).await?),
            Request::Hourly { range, filter } => Answer::Hourly { range: *range, rows: self.hourly(ctx, *range, filter).await? },
            Request::PopularAssetTypes { days, as_of } => Answer::PopularAssetTypes { days: *days, as_of: *as_of, rows: self.popular(ctx, *days).await? },
            Request::Comparison { period_secs, to } => {
                let period = Duration::seconds(*period_secs);
                let current = TimeRange { from: *to - period, to: *to };
                let previous = TimeRange { from: *to - period - period, to: *to - period };
                let (now, before) = tokio::try_join!(self.summary(ctx, current, false), self.summary(ctx, previous, false))?;
                let (trend, trend_percentage) = trend(now.total_events, before.total_events);
                Answer::Comparison {
                    period_secs: *period_secs,
                    comparison: Comparison {
                        current,
                        previous,
                        current_events: now.total_events,
                        previous_events: before.total_events,
                        trend,
                        trend_percentage,
                    },
                }
            }
            Request::Intervals { range, bucket_secs } => Answer::Intervals(self.intervals(ctx, *range, *bucket_secs).await?),
        })
    }

    /// Totals over `range`; unique users too when `users` (comparison does not need them).
    async fn summary(self, ctx: &ReadContext, range: TimeRange, users: bool) -> Result<Summary, ReadError> {
        if self == ReadSource::Target {
            if let Some(summary) = target::summary_beyond_raw(ctx, range, users).await? {
                return Ok(summary);
            }
        }
        let tz = ctx.tz();
        let split = Split::new(range, self.horizon(ctx).await?.map(|h| hour_floor(h, tz)), tz);
        let history = match split.history {
            Some(hours) => self.history_hours(ctx, hours, split.raw_start, &EventFilter::default()).await?,
            None => vec![],
        };
        let (mut rows, at_horizon) = split.partition(history.clone());
        let mut raw = split.raw;
        match split.horizon_raw {
            Some(horizon_hour) if !at_horizon.is_empty() => {
                // The horizon hour: the larger of history and raw, per group.
                let raw_rows = self.raw_hours(ctx, horizon_hour, &EventFilter::default()).await?;
                rows.extend(merge_max(at_horizon, raw_rows));
                raw = TimeRange::new(horizon_hour.to, range.to);
            }
            _ => rows.extend(at_horizon),
        }
        let count = match (users, history.is_empty()) {
            (false, _) => UserCount::Skip,
            (true, true) => UserCount::Distinct,
            (true, false) => UserCount::HourlySum,
        };
        let raw_summary = match raw {
            Some(raw) => self.raw_summary(ctx, raw, count).await?,
            None => RawSummary { totals: vec![], distinct_users: (count == UserCount::Distinct).then_some(0) },
        };
        let mut totals = totals_of(&rows);
        totals.extend(raw_summary.totals);
        Ok(summarize(range, &totals, raw_summary.distinct_users))
    }

    async fn hourly(self, ctx: &ReadContext, range: TimeRange, filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
        let tz = ctx.tz();
        let split = Split::new(range, self.horizon(ctx).await?.map(|h| hour_floor(h, tz)), tz);
        let history = match split.history {
            Some(hours) => self.history_hours(ctx, hours, split.raw_start, filter).await?,
            None => vec![],
        };
        let raw = match split.raw {
            Some(raw) => self.raw_hours(ctx, raw, filter).await?,
            None => vec![],
        };
        Ok(merge_max(history, raw))
    }

    async fn intervals(self, ctx: &ReadContext, range: TimeRange, bucket_secs: i64) -> Result<Intervals, ReadError> {
        let tz = ctx.tz();
        let bucket_ms = bucket_secs * 1000;
        let split = Split::new(range, self.horizon(ctx).await?.map(|h| hour_floor(h, tz)), tz);
        let mut counts = match split.raw {
            Some(raw) => self.raw_buckets(ctx, raw, bucket_ms).await?,
            None => BTreeMap::new(),
        };
        if let Some(hours) = split.history {
            let history = self.history_hours(ctx, hours, split.raw_start, &EventFilter::default()).await?;
            let (before, at_horizon) = split.partition(history);
            for row in before {
                *counts.entry(bin_start(row.hour, bucket_ms)).or_default() += row.event_count;
            }
            if let (false, Some(horizon_hour)) = (at_horizon.is_empty(), split.horizon_raw) {
                // Raw already placed its events of the horizon hour; history adds what Redis
                // trimmed, in the bucket where the hour starts.
                let raw_rows = self.raw_hours(ctx, horizon_hour, &EventFilter::default()).await?;
                let raw_total: i64 = raw_rows.iter().map(|r| r.event_count).sum();
                let merged: i64 = merge_max(at_horizon, raw_rows).iter().map(|r| r.event_count).sum();
                *counts.entry(bin_start(horizon_hour.from, bucket_ms)).or_default() += merged - raw_total;
            }
        }
        let buckets = bucket_starts(range, bucket_ms).into_iter().map(|start| (start, counts.get(&start).copied().unwrap_or(0))).collect();
        Ok(Intervals { range, bucket_secs, buckets })
    }
}

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

/// `current - previous`, and that as a percentage of `previous` (two decimals; `None` when
/// `previous` is 0: no percentage of nothing).
pub fn trend(current: i64, previous: i64) -> (i64, Option<f64>) {
    let trend = current - previous;
    let percentage = (previous != 0).then(|| (trend as f64 / previous as f64 * 10_000.0).round() / 100.0);
    (trend, percentage)
}

/// History and raw rows together; where both have a row for the same (hour, event_name,
/// category) — only the horizon hour — the larger counts win. Sorted by hour, name, category.
pub fn merge_max(history: Vec<HourRow>, raw: Vec<HourRow>) -> Vec<HourRow> {
    let mut merged: BTreeMap<(DateTime<Utc>, String, String), HourRow> = BTreeMap::new();
    for row in history.into_iter().chain(raw) {
        let key = (row.hour, row.event_name.clone(), row.category.clone());
        match merged.get_mut(&key) {
            Some(existing) => {
                existing.event_count = existing.event_count.max(row.event_count);
                existing.unique_users = existing.unique_users.max(row.unique_users);
            }
            None => {
                merged.insert(key, row);
            }
        }
    }
    merged.into_values().collect()
}

/// Per-group totals of hourly rows.
pub fn totals_of(rows: &[HourRow]) -> Vec<GroupTotal> {
    let mut totals: BTreeMap<(&str, &str), GroupTotal> = BTreeMap::new();
    for row in rows {
        let total = totals.entry((&row.event_name, &row.category)).or_insert_with(|| GroupTotal {
            event_name: row.event_name.clone(),
            category: row.category.clone(),
            ..Default::default()
        });
        total.event_count += row.event_count;
        total.hourly_unique_users += row.unique_users;
    }
    totals.into_values().collect()
}

/// The summary of per-group totals; `distinct_users` when the answer is exact.
pub fn summarize(range: TimeRange, totals: &[GroupTotal], distinct_users: Option<i64>) -> Summary {
    let mut summary = Summary {
        range,
        total_events: 0,
        unique_users: distinct_users.unwrap_or(0),
        unique_users_exact: distinct_users.is_some(),
        by_type: BTreeMap::new(),
        by_category: BTreeMap::new(),
    };
    for total in totals.iter().filter(|t| t.event_count > 0) {
        summary.total_events += total.event_count;
        *summary.by_type.entry(total.event_name.clone()).or_default() += total.event_count;
        *summary.by_category.entry(total.category.clone()).or_default() += total.event_count;
        if distinct_users.is_none() {
            summary.unique_users += total.hourly_unique_users;
        }
    }
    summary
}

/// Daily asset rows to the legacy function's answer: history and current rows (each folded
/// per day and type), the larger winning where both have a day (the horizon day), then
/// summed per type and ordered like `ORDER BY generation_count DESC, asset_type`.
pub fn popular_of(history: Vec<DayAssetRow>, current: Vec<DayAssetRow>) -> Vec<AssetRow> {
    fn fold(rows: Vec<DayAssetRow>) -> BTreeMap<(NaiveDate, String), (i64, i64)> {
        let mut out: BTreeMap<(NaiveDate, String), (i64, i64)> = BTreeMap::new();
        for row in rows {
            let entry = out.entry((row.day, row.asset_type)).or_default();
            entry.0 += row.generation_count;
            entry.1 += row.unique_creators;
        }
        out
    }
    let mut days = fold(history);
    for (key, (count, creators)) in fold(current) {
        let entry = days.entry(key).or_default();
        *entry = (entry.0.max(count), entry.1.max(creators));
    }
    let mut by_type: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for ((_, asset_type), (count, creators)) in days {
        let entry = by_type.entry(asset_type).or_default();
        entry.0 += count;
        entry.1 += creators;
    }
    let mut rows: Vec<AssetRow> =
        by_type.into_iter().map(|(asset_type, (generation_count, unique_creators))| AssetRow { asset_type, generation_count, unique_creators }).collect();
    rows.sort_by(|a, b| b.generation_count.cmp(&a.generation_count).then_with(|| a.asset_type.cmp(&b.asset_type)));
    rows
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

/// The oldest raw event time of the target, remembered for [`HORIZON_REFRESH`].
pub struct HorizonCache(Remembered<Option<DateTime<Utc>>>);

impl Default for HorizonCache {
    fn default() -> Self {
        HorizonCache(Remembered::new(HORIZON_REFRESH))
    }
}

impl HorizonCache {
    pub async fn get(&self, load: impl std::future::Future<Output = Result<Option<DateTime<Utc>>, ReadError>>) -> Result<Option<DateTime<Utc>>, ReadError> {
        self.0.get(|_| load).await
    }
}

/// Which source answers and whether the other is compared, as the migration state says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub source: ReadSource,
    pub shadow: bool,
}

impl Default for Routing {
    fn default() -> Self {
        Routing { source: ReadSource::Legacy, shadow: false }
    }
}

/// `read_source` and `shadow` from `tsmigrate.migration_state`, read at most once per
/// [`ROUTING_REFRESH`]. When the target cannot be asked, the last known value stays
/// (legacy before anything was known): reads must not fail because the control table did.
pub struct RoutingCache(Remembered<Routing>);

impl Default for RoutingCache {
    fn default() -> Self {
        RoutingCache(Remembered::new(ROUTING_REFRESH))
    }
}

impl RoutingCache {
    pub async fn current(&self, target: Option<&PgPool>) -> Routing {
        let fetch = |last: Option<Routing>| async move {
            let last = last.unwrap_or_default();
            let Some(pool) = target else {
                return Ok::<_, std::convert::Infallible>(Routing::default());
            };
            Ok(match tokio::time::timeout(StdDuration::from_millis(500), load_routing(pool)).await {
                Ok(Ok(Some(routing))) => routing,
                // No state row: nothing is prepared, reads stay legacy.
                Ok(Ok(None)) => Routing::default(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, source = last.source.as_str(), "cannot read the read source; keeping the last known one");
                    last
                }
                Err(_) => {
                    tracing::warn!(source = last.source.as_str(), "the target did not answer for the read source; keeping the last known one");
                    last
                }
            })
        };
        match self.0.get(fetch).await {
            Ok(routing) => routing,
            Err(never) => match never {},
        }
    }
}

async fn load_routing(pool: &PgPool) -> sqlx::Result<Option<Routing>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('tsmigrate.migration_state') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(None);
    }
    let row: Option<(String, bool)> = sqlx::query_as("SELECT read_source, shadow FROM tsmigrate.migration_state").fetch_optional(pool).await?;
    Ok(row.map(|(source, shadow)| Routing { source: ReadSource::parse(&source).unwrap_or(ReadSource::Legacy), shadow }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn range(from: &str, to: &str) -> TimeRange {
        TimeRange { from: t(from), to: t(to) }
    }

    fn row(hour: &str, name: &str, count: i64, users: i64) -> HourRow {
        HourRow { hour: t(hour), event_name: name.into(), category: "c".into(), event_count: count, unique_users: users }
    }

    #[test]
    fn buckets_align_like_date_bin_from_2000() {
        // date_bin('10 minutes', '2025-03-10 12:47:05+00', '2000-01-01') = 12:40.
        assert_eq!(bin_start(t("2025-03-10T12:47:05Z"), 600_000), t("2025-03-10T12:40:00Z"));
        // 7-day buckets start on Saturdays, like date_bin from 2000-01-01 (a Saturday), not on epoch Thursdays.
        assert_eq!(bin_start(t("2025-03-10T12:00:00Z"), 7 * 86_400_000), t("2025-03-08T00:00:00Z"));
        assert_eq!(bin_start(t("2025-03-10T12:40:00Z"), 600_000), t("2025-03-10T12:40:00Z"));
    }

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
    fn trend_is_a_difference_and_a_percentage_of_the_previous_period() {
        assert_eq!(trend(150, 100), (50, Some(50.0)));
        assert_eq!(trend(1, 3), (-2, Some(-66.67)));
        assert_eq!(trend(7, 0), (7, None));
        assert_eq!(trend(0, 0), (0, None));
    }

    #[test]
    fn ranges_are_checked() {
        assert!(TimeRange::checked(t("2025-01-02T00:00:00Z"), t("2025-01-01T00:00:00Z")).unwrap_err().contains("must be after"));
        assert!(TimeRange::checked(t("2024-01-01T00:00:00Z"), t("2025-03-01T00:00:00Z")).unwrap_err().contains("400 days"));
        assert!(TimeRange::checked(t("2025-01-01T00:00:00Z"), t("2025-01-01T00:00:01Z")).is_ok());
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

    #[test]
    fn merging_keeps_the_larger_history_or_raw_row() {
        let history = vec![row("2025-03-01T05:00:00Z", "click", 10, 4), row("2025-03-01T04:00:00Z", "click", 3, 1)];
        let raw = vec![row("2025-03-01T05:00:00Z", "click", 6, 5), row("2025-03-01T06:00:00Z", "click", 2, 2)];
        let merged = merge_max(history, raw);
        assert_eq!(
            merged,
            vec![row("2025-03-01T04:00:00Z", "click", 3, 1), row("2025-03-01T05:00:00Z", "click", 10, 5), row("2025-03-01T06:00:00Z", "click", 2, 2)]
        );
    }

    #[test]
    fn summaries_are_exact_only_without_history() {
        let rows = vec![row("2025-03-01T04:00:00Z", "click", 3, 2), row("2025-03-01T05:00:00Z", "click", 4, 2), row("2025-03-01T05:00:00Z", "view", 1, 1)];
        let r = range("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z");
        let approx = summarize(r, &totals_of(&rows), None);
        assert_eq!((approx.total_events, approx.unique_users, approx.unique_users_exact), (8, 5, false));
        assert_eq!(approx.by_type.get("click"), Some(&7));
        assert_eq!(approx.by_category.get("c"), Some(&8));
        let exact = summarize(r, &totals_of(&rows), Some(3));
        assert_eq!((exact.unique_users, exact.unique_users_exact), (3, true));
    }

    #[test]
    fn popular_asset_types_order_like_the_legacy_function() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let a = |day: &str, ty: &str, n: i64, u: i64| DayAssetRow { day: d(day), asset_type: ty.into(), generation_count: n, unique_creators: u };
        // The horizon day (03-02) is in both: the larger wins. 'unknown' twice on one day: summed.
        let history = vec![a("2025-03-01", "image", 5, 2), a("2025-03-02", "image", 9, 3)];
        let current = vec![
            a("2025-03-02", "image", 4, 4),
            a("2025-03-03", "logo", 14, 1),
            a("2025-03-03", "unknown", 1, 1),
            a("2025-03-03", "unknown", 2, 1),
            a("2025-03-03", "audio", 3, 1),
        ];
        let rows = popular_of(history, current);
        let flat: Vec<(&str, i64, i64)> = rows.iter().map(|r| (r.asset_type.as_str(), r.generation_count, r.unique_creators)).collect();
        assert_eq!(flat, vec![("image", 14, 6), ("logo", 14, 1), ("audio", 3, 1), ("unknown", 3, 2)]);
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
