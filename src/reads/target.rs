//! The target read path: `analytics_events_ts` (raw), the `analytics_hourly` and
//! `analytics_asset_popularity_ts` aggregates for whole settled hours and days, and
//! `tsmigrate.history_*` for periods older than the oldest raw event.
//!
//! The same SQL serves both storage modes: the aggregates have the same names and columns
//! (continuous aggregates with real-time aggregation, or tool-maintained tables).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use futures::future::try_join_all;
use sqlx::PgPool;

use super::buckets::{bin_start, hours_nest, Pieces, BUCKET_ORIGIN_MS};
use super::context::{ReadContext, Route};
use super::control::{self, HourlyTable};
use super::request::{AssetRow, DayAssetRow, EventFilter, GroupTotal, HourRow, RawSummary, ReadError, Summary, TimeRange, UserCount};
use super::rules::{merge_max, popular_of, summarize, totals_of};
use super::sets;
use crate::calendar::{day_start, hour_floor, local_day, minute_ceil, minute_floor, next_hour};
use crate::legacy::flush::UNKNOWN_ASSET_TYPE;
use crate::store::user_sets::{self, AssetTally, Parts, Tally};

type HourTuple = (DateTime<Utc>, String, String, i64, i64);

fn pg(e: sqlx::Error) -> ReadError {
    ReadError::postgres("the target database", e)
}

fn hour_rows(rows: Vec<HourTuple>) -> Vec<HourRow> {
    rows.into_iter().map(|(hour, event_name, category, event_count, unique_users)| HourRow { hour, event_name, category, event_count, unique_users }).collect()
}

/// The oldest event the target holds raw (remembered for a few seconds, see `HorizonCache`).
pub async fn horizon(ctx: &ReadContext) -> Result<Option<DateTime<Utc>>, ReadError> {
    let pool = ctx.target_pool()?.clone();
    ctx.target_horizon.get(ctx, || async move { sqlx::query_scalar("SELECT min(time) FROM analytics_events_ts").fetch_one(&pool).await.map_err(pg) }).await
}

/// History for the hours starting in `hours`: the imported legacy rows, and aggregate rows
/// older than the raw start (their raw rows were dropped by retention); the larger wins
/// where both have an hour.
pub async fn history_hours(ctx: &ReadContext, hours: TimeRange, raw_start: Option<DateTime<Utc>>, filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
    let pool = ctx.target_pool()?;
    let imported = control::hourly_rows(pool, HourlyTable::ImportedHistory, hours, filter);
    let retained = async {
        match TimeRange::new(hours.from, raw_start.map_or(hours.to, |start| start.min(hours.to))) {
            Some(older) => aggregate_hours(pool, older, filter).await,
            None => Ok(vec![]),
        }
    };
    let (imported, retained) = tokio::try_join!(async { imported.await.map_err(pg) }, retained)?;
    Ok(merge_max(hour_rows(imported), retained))
}

async fn aggregate_hours(pool: &PgPool, range: TimeRange, filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
    Ok(hour_rows(control::hourly_rows(pool, HourlyTable::Aggregate, range, filter).await.map_err(pg)?))
}

/// Raw events of `range` grouped per hour (cut in the bucket time zone, like the aggregates).
async fn raw_table_hours(ctx: &ReadContext, range: TimeRange, filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
    let rows: Vec<HourTuple> = sqlx::query_as(
        "SELECT date_trunc('hour', time, $3), event_name, category, count(*), count(DISTINCT user_id)
         FROM analytics_events_ts
         WHERE time >= $1 AND time < $2 AND ($4::text IS NULL OR event_name = $4) AND ($5::text IS NULL OR category = $5)
         GROUP BY 1, 2, 3",
    )
    .bind(range.from)
    .bind(range.to)
    .bind(&ctx.shared.settings.target.bucket_timezone)
    .bind(&filter.event_name)
    .bind(&filter.category)
    .fetch_all(ctx.target_pool()?)
    .await
    .map_err(pg)?;
    Ok(hour_rows(rows))
}

/// The pieces of a range the aggregate does not answer, per hour and group, concurrently:
/// from the user sets on the sets route (raw rows where they do not answer), raw rows otherwise.
async fn raw_pieces(ctx: &ReadContext, pieces: &[TimeRange], filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
    let parts = try_join_all(pieces.iter().map(|piece| async move {
        match ctx.route {
            Route::Sets => sets::hours(ctx, *piece, filter).await,
            Route::RawRows => raw_table_hours(ctx, *piece, filter).await,
        }
    }))
    .await?;
    Ok(parts.into_iter().flatten().collect())
}

pub async fn raw_hours(ctx: &ReadContext, range: TimeRange, filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
    let pieces = Pieces::new(range, ctx.now, ctx.tz());
    let aggregate = async {
        match pieces.aggregate {
            Some(agg) => aggregate_hours(ctx.target_pool()?, agg, filter).await,
            None => Ok(vec![]),
        }
    };
    let (mut rows, raw) = tokio::try_join!(aggregate, raw_pieces(ctx, &pieces.raw, filter))?;
    rows.extend(raw);
    rows.sort_by(|a, b| (a.hour, &a.event_name, &a.category).cmp(&(b.hour, &b.event_name, &b.category)));
    Ok(rows)
}

/// Raw events of `range` counted per group, without users (the cheap edge query).
async fn raw_table_totals(ctx: &ReadContext, range: TimeRange) -> Result<Vec<GroupTotal>, ReadError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT event_name, category, count(*) FROM analytics_events_ts WHERE time >= $1 AND time < $2 GROUP BY 1, 2")
            .bind(range.from)
            .bind(range.to)
            .fetch_all(ctx.target_pool()?)
            .await
            .map_err(pg)?;
    Ok(rows.into_iter().map(|(event_name, category, event_count)| GroupTotal { event_name, category, event_count, hourly_unique_users: 0 }).collect())
}

/// Totals and the users `count` asks for. From the user sets (raw rows where they do not
/// answer); on the raw-row route, and for hourly sums, from the aggregate for whole settled
/// hours, raw for the rest (exact distinct users from raw over the whole range), all
/// concurrently.
pub async fn raw_summary(ctx: &ReadContext, range: TimeRange, count: UserCount) -> Result<RawSummary, ReadError> {
    if ctx.route == Route::Sets && count != UserCount::HourlySum {
        let users = count == UserCount::Distinct;
        let total = sets::tally(ctx, range, Parts { groups: true, users, ..Parts::default() }).await?.total();
        return Ok(RawSummary { totals: totals(&total), distinct_users: users.then_some(total.users.len() as i64) });
    }
    let pool = ctx.target_pool()?;
    let pieces = Pieces::new(range, ctx.now, ctx.tz());
    let aggregate = async {
        let Some(agg) = pieces.aggregate else {
            return Ok::<_, ReadError>(vec![]);
        };
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT event_name, category, sum(event_count)::bigint, sum(unique_users)::bigint
             FROM analytics_hourly WHERE bucket >= $1 AND bucket < $2 GROUP BY 1, 2",
        )
        .bind(agg.from)
        .bind(agg.to)
        .fetch_all(pool)
        .await
        .map_err(pg)?;
        Ok(rows
            .into_iter()
            .map(|(event_name, category, event_count, hourly_unique_users)| GroupTotal { event_name, category, event_count, hourly_unique_users })
            .collect::<Vec<_>>())
    };
    let edges = async {
        if count == UserCount::HourlySum {
            Ok::<_, ReadError>(totals_of(&raw_pieces(ctx, &pieces.raw, &EventFilter::default()).await?))
        } else {
            Ok(try_join_all(pieces.raw.iter().map(|piece| raw_table_totals(ctx, *piece))).await?.into_iter().flatten().collect())
        }
    };
    let users = async {
        if count != UserCount::Distinct {
            return Ok(None);
        }
        // DISTINCT in a subquery hashes (and parallelizes) where count(DISTINCT) sorts.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT DISTINCT user_id FROM analytics_events_ts
             WHERE time >= $1 AND time < $2 AND user_id IS NOT NULL) u",
        )
        .bind(range.from)
        .bind(range.to)
        .fetch_one(pool)
        .await
        .map_err(pg)?;
        Ok(Some(n))
    };
    let (mut totals, edges, distinct_users) = tokio::try_join!(aggregate, edges, users)?;
    totals.extend(edges);
    Ok(RawSummary { totals, distinct_users })
}

/// Event counts per interval bucket of `range` (only non-empty buckets): whole settled hours
/// from the hourly aggregate when the buckets hold whole hours; the rest from the minute
/// sets when the buckets hold whole minutes (on the sets route), raw rows otherwise.
pub async fn raw_buckets(ctx: &ReadContext, range: TimeRange, bucket_ms: i64) -> Result<BTreeMap<DateTime<Utc>, i64>, ReadError> {
    let pool = ctx.target_pool()?;
    let tz = ctx.tz();
    let pieces = if hours_nest(bucket_ms, tz, range) { Pieces::new(range, ctx.now, tz) } else { Pieces { aggregate: None, raw: vec![range] } };
    let from_minutes = ctx.route == Route::Sets && bucket_ms % MINUTE_MS == 0;
    let aggregate = async {
        let Some(agg) = pieces.aggregate else {
            return Ok(vec![]);
        };
        let rows: Vec<(DateTime<Utc>, i64)> =
            sqlx::query_as("SELECT bucket, sum(event_count)::bigint FROM analytics_hourly WHERE bucket >= $1 AND bucket < $2 GROUP BY 1")
                .bind(agg.from)
                .bind(agg.to)
                .fetch_all(pool)
                .await
                .map_err(pg)?;
        Ok(rows.into_iter().map(|(hour, n)| (bin_start(hour, bucket_ms), n)).collect())
    };
    let raw = try_join_all(pieces.raw.iter().map(|piece| async move {
        if from_minutes {
            minute_set_buckets(pool, *piece, bucket_ms).await
        } else {
            raw_bucket_counts(pool, *piece, bucket_ms).await
        }
    }));
    let (aggregate, raw) = tokio::try_join!(aggregate, raw)?;
    let mut counts = BTreeMap::new();
    for (start, n) in aggregate.into_iter().chain(raw.into_iter().flatten()) {
        *counts.entry(start).or_default() += n;
    }
    Ok(counts)
}

const MINUTE_MS: i64 = 60_000;

/// Counts per bucket of `range` from the minute sets: every minute with a fresh set adds its
/// count to its bucket (buckets of whole minutes hold whole minutes); the minutes without one
/// and the sub-minute edges are read raw. Exact like the raw rows, at a cost that follows the
/// number of minutes, not of events.
async fn minute_set_buckets(pool: &PgPool, range: TimeRange, bucket_ms: i64) -> Result<Vec<(DateTime<Utc>, i64)>, ReadError> {
    let (first, last) = (minute_ceil(range.from).min(range.to), minute_floor(range.to).max(range.from));
    // Oldest first: the gaps between them are what is read raw.
    let fresh = if first < last { user_sets::fresh_minute_counts(pool, first, last).await.map_err(pg)? } else { vec![] };
    let mut unread: Vec<TimeRange> = TimeRange::new(range.from, first).into_iter().collect();
    let mut at = first;
    for (minute, _) in &fresh {
        unread.extend(TimeRange::new(at, *minute));
        at = *minute + Duration::minutes(1);
    }
    unread.extend(TimeRange::new(at.max(first), range.to));
    let unread = fewest_reads(unread);
    // A minute inside a raw read is counted there, not from its set.
    let read_raw = |minute: DateTime<Utc>| unread.iter().any(|r| r.contains(minute));
    let mut counts: Vec<(DateTime<Utc>, i64)> =
        fresh.into_iter().filter(|(minute, _)| !read_raw(*minute)).map(|(minute, n)| (bin_start(minute, bucket_ms), n)).collect();
    let raw = try_join_all(unread.iter().map(|r| raw_bucket_counts(pool, *r, bucket_ms))).await?;
    counts.extend(raw.into_iter().flatten());
    Ok(counts)
}

/// Raw reads of a minute-set answer at most: scattered stale minutes are read in a few
/// ranges (the sets inside them unused) rather than one query each.
const MAX_RAW_READS: usize = 4;

/// `ranges` (disjoint, in order) joined across their smallest gaps until at most
/// [`MAX_RAW_READS`] remain.
fn fewest_reads(mut ranges: Vec<TimeRange>) -> Vec<TimeRange> {
    while ranges.len() > MAX_RAW_READS {
        let closest = (1..ranges.len()).min_by_key(|i| ranges[*i].from - ranges[*i - 1].to).expect("more than one range");
        ranges[closest - 1].to = ranges[closest].to;
        ranges.remove(closest);
    }
    ranges
}

/// Raw event counts per bucket of `range` (only non-empty buckets).
async fn raw_bucket_counts(pool: &PgPool, range: TimeRange, bucket_ms: i64) -> Result<Vec<(DateTime<Utc>, i64)>, ReadError> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT floor((extract(epoch FROM time) * 1000 - $3) / $4)::bigint, count(*)
         FROM analytics_events_ts WHERE time >= $1 AND time < $2 GROUP BY 1",
    )
    .bind(range.from)
    .bind(range.to)
    .bind(BUCKET_ORIGIN_MS)
    .bind(bucket_ms)
    .fetch_all(pool)
    .await
    .map_err(pg)?;
    Ok(rows.into_iter().filter_map(|(index, n)| Some((DateTime::from_timestamp_millis(BUCKET_ORIGIN_MS + index * bucket_ms)?, n))).collect())
}

/// Popular asset types over the last `days` days (today included), as the legacy function
/// answers: daily rows summed per type. The legacy function only sees flushed hours, so
/// today counts the closed hours only. Days older than the raw start come from the
/// imported history; the horizon day takes the larger of history and the target's rows.
/// From the horizon day on, the user sets answer (the raw-row route: the daily aggregate
/// for past days, raw rows for today's hours).
pub async fn popular(ctx: &ReadContext, days: u32) -> Result<Vec<AssetRow>, ReadError> {
    let tz = ctx.tz();
    let today = local_day(ctx.now, tz);
    let first = today - Duration::days(i64::from(days) - 1);
    let horizon_day = horizon(ctx).await?.map(|h| local_day(h, tz));
    let history = history_days(ctx, first, horizon_day.map_or(today, |d| d.min(today)));
    let current = async {
        match horizon_day {
            Some(horizon_day) if ctx.route == Route::Sets && horizon_day <= today => {
                let from = horizon_day.max(first);
                let (mut older, recent) = tokio::try_join!(aggregate_days(ctx, first, from), days_from_sets(ctx, from))?;
                older.extend(recent);
                Ok(older)
            }
            _ => {
                let (mut older, today_rows) = tokio::try_join!(aggregate_days(ctx, first, today), today_closed_raw(ctx, today))?;
                older.extend(today_rows);
                Ok::<_, ReadError>(older)
            }
        }
    };
    let (history, current) = tokio::try_join!(history, current)?;
    Ok(popular_of(history, current))
}

async fn history_days(ctx: &ReadContext, first: NaiveDate, last: NaiveDate) -> Result<Vec<DayAssetRow>, ReadError> {
    let rows = control::history_asset_days(ctx.target_pool()?, first, last).await.map_err(pg)?;
    Ok(rows
        .into_iter()
        .map(|(day, asset_type, generation_count, unique_creators)| DayAssetRow { day, asset_type, generation_count, unique_creators })
        .collect())
}

/// The daily asset aggregate's rows for the days `[first, until)`.
async fn aggregate_days(ctx: &ReadContext, first: NaiveDate, until: NaiveDate) -> Result<Vec<DayAssetRow>, ReadError> {
    let tz = ctx.tz();
    let rows: Vec<(DateTime<Utc>, String, i64, i64)> = sqlx::query_as(
        "SELECT bucket, COALESCE(asset_type, $3), generation_count, unique_creators FROM analytics_asset_popularity_ts
         WHERE bucket >= $1 AND bucket < $2",
    )
    .bind(day_start(first, tz))
    .bind(day_start(until, tz))
    .bind(UNKNOWN_ASSET_TYPE)
    .fetch_all(ctx.target_pool()?)
    .await
    .map_err(pg)?;
    Ok(rows
        .into_iter()
        .map(|(bucket, asset_type, generation_count, unique_creators)| DayAssetRow {
            day: local_day(bucket, tz),
            asset_type,
            generation_count,
            unique_creators,
        })
        .collect())
}

/// Today's closed hours, from raw rows.
async fn today_closed_raw(ctx: &ReadContext, today: NaiveDate) -> Result<Vec<DayAssetRow>, ReadError> {
    let tz = ctx.tz();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT COALESCE(properties->>'asset_type', $3), count(*), count(DISTINCT user_id) FROM analytics_events_ts
         WHERE event_name = 'asset_generated' AND time >= $1 AND time < $2 GROUP BY 1",
    )
    .bind(day_start(today, tz))
    .bind(hour_floor(ctx.now, tz))
    .bind(UNKNOWN_ASSET_TYPE)
    .fetch_all(ctx.target_pool()?)
    .await
    .map_err(pg)?;
    Ok(rows
        .into_iter()
        .map(|(asset_type, generation_count, unique_creators)| DayAssetRow { day: today, asset_type, generation_count, unique_creators })
        .collect())
}

/// The days from `first` on (today's closed hours included) from the user sets: per day and
/// asset type as the daily aggregate has them (a missing type and "unknown" apart, summed by
/// `popular_of`), today's per type as the raw rows' `COALESCE` groups them.
async fn days_from_sets(ctx: &ReadContext, first: NaiveDate) -> Result<Vec<DayAssetRow>, ReadError> {
    let tz = ctx.tz();
    let today = local_day(ctx.now, tz);
    let Some(range) = TimeRange::new(day_start(first, tz), hour_floor(ctx.now, tz)) else {
        return Ok(vec![]);
    };
    let tallied = sets::tally(ctx, range, Parts { assets: true, ..Parts::default() }).await?;
    let mut days: BTreeMap<NaiveDate, Vec<Tally>> = BTreeMap::new();
    for (start, tally) in tallied.pieces {
        days.entry(local_day(start, tz)).or_default().push(tally);
    }
    let mut rows = Vec::new();
    for (day, mut pieces) in days {
        // A whole day's set carries its creators' count; pieces of a day union.
        let mut tally = pieces.pop().unwrap_or_default();
        for piece in &pieces {
            tally.merge(piece);
        }
        let named = |t: &Option<String>| t.clone().unwrap_or_else(|| UNKNOWN_ASSET_TYPE.to_string());
        if day < today {
            rows.extend(tally.assets.iter().map(|(t, a)| DayAssetRow {
                day,
                asset_type: named(t),
                generation_count: a.generations,
                unique_creators: a.unique_creators(),
            }));
            continue;
        }
        let mut by_name: BTreeMap<String, AssetTally> = BTreeMap::new();
        for (t, a) in &tally.assets {
            let mine = by_name.entry(named(t)).or_default();
            mine.generations += a.generations;
            mine.creators.union(&a.creators);
        }
        rows.extend(by_name.into_iter().map(|(asset_type, a)| DayAssetRow {
            day,
            asset_type,
            generation_count: a.generations,
            unique_creators: a.unique_creators(),
        }));
    }
    Ok(rows)
}

/// Per-group totals of a tally.
fn totals(tally: &Tally) -> Vec<GroupTotal> {
    tally
        .groups
        .iter()
        .map(|((event_name, category), n)| GroupTotal { event_name: event_name.clone(), category: category.clone(), event_count: *n, hourly_unique_users: 0 })
        .collect()
}

/// A summary reaching before the oldest raw row, exact from the user sets that outlive raw
/// retention: when every bucket there has a fresh set and no imported history does (the
/// legacy-covered hours answer as the legacy side does). `None`: answer the usual way.
pub async fn summary_beyond_raw(ctx: &ReadContext, range: TimeRange, users: bool) -> Result<Option<Summary>, ReadError> {
    let tz = ctx.tz();
    let Some(raw_start) = horizon(ctx).await? else {
        return Ok(None);
    };
    if ctx.route != Route::Sets || range.from >= hour_floor(raw_start, tz) {
        return Ok(None);
    }
    let hours = TimeRange { from: hour_floor(range.from, tz), to: next_hour(raw_start, tz) };
    let (oldest_set, history) = control::oldest_hour_set_and_history(ctx.target_pool()?, hours).await.map_err(pg)?;
    if history || oldest_set.is_none_or(|oldest| oldest > range.from) {
        return Ok(None);
    }
    let tallied = sets::tally(ctx, range, Parts { groups: true, users, ..Parts::default() }).await?;
    if tallied.raw.iter().any(|r| r.from < raw_start) {
        return Ok(None);
    }
    let total = tallied.total();
    Ok(Some(summarize(range, &totals(&total), users.then_some(total.users.len() as i64))))
}
