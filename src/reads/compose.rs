//! The composition both sources share: each source provides the same few primitives
//! (raw horizon, hourly history, raw rows, raw summaries and buckets, popularity) and
//! every answer is built from them by the same rules ([`super::rules`]), split at the
//! source's raw start ([`super::buckets`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use super::buckets::{bin_start, bucket_starts, Split};
use super::context::ReadContext;
use super::request::{Answer, AssetRow, Comparison, EventFilter, HourRow, Intervals, RawSummary, ReadError, Request, Summary, TimeRange, UserCount};
use super::routing::ReadSource;
use super::rules::{merge_max, summarize, totals_of, trend};
use super::{legacy, target};
use crate::calendar::hour_floor;

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
