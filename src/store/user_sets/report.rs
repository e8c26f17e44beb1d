//! What `status` says about the user sets: how many are built, which are stale (marked by
//! a write, or counting other events than the aggregate), their size and their lag.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::store::{DAILY_VIEW, HOURLY_VIEW};

/// Hours and days that ended at least this long ago are in the aggregates as they are
/// materialized (TimescaleDB's policies: hourly every 30 minutes up to 1 h ago, daily every
/// hour up to 1 h ago; plain mode: every 5 minutes). Only those are compared with them:
/// a younger one relies on its marks alone, and asking the aggregate would mean asking
/// the raw rows that real-time aggregation reads past its watermark.
pub const AGGREGATE_SETTLE: Duration = Duration::hours(2);

/// Buckets ending at or before this are compared with the aggregates.
pub fn compared_until(now: DateTime<Utc>) -> DateTime<Utc> {
    now - AGGREGATE_SETTLE
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UserSetsStatus {
    /// Sets built, per span.
    pub minutes: i64,
    pub hours: i64,
    pub days: i64,
    /// Closed minutes a write touched after their set was built (answered from raw rows
    /// until the next build).
    pub marked_minutes: i64,
    /// Settled hours and days whose set counts other events than the aggregate (answered
    /// from finer sets or raw rows until the aggregate or the set is rebuilt).
    pub hours_differing: i64,
    pub days_differing: i64,
    /// What one day of events costs: its minutes (kept as long as raw rows), hours and day.
    pub bytes_per_day: Option<i64>,
    /// The end of the newest minute built.
    pub built_through: Option<DateTime<Utc>>,
    /// How far the newest minute built is behind now.
    pub lag_seconds: Option<i64>,
}

type SpanRow = (String, i64, i64, Option<DateTime<Utc>>);

pub async fn status(pool: &PgPool, now: DateTime<Utc>) -> sqlx::Result<UserSetsStatus> {
    let spans: Vec<SpanRow> =
        sqlx::query_as("SELECT span, count(*), coalesce(sum(pg_column_size(s.*)), 0)::bigint, max(bucket) FROM tsmigrate.user_sets s GROUP BY span")
            .fetch_all(pool)
            .await?;
    let mut status = UserSetsStatus::default();
    let mut bytes_per_day = None;
    for (span, count, bytes, newest) in spans {
        let per_day = match span.as_str() {
            "minute" => {
                status.minutes = count;
                status.built_through = newest.map(|m| m + Duration::minutes(1));
                1_440
            }
            "hour" => {
                status.hours = count;
                24
            }
            _ => {
                status.days = count;
                1
            }
        };
        *bytes_per_day.get_or_insert(0) += bytes * per_day / count.max(1);
    }
    status.bytes_per_day = bytes_per_day;
    status.lag_seconds = status.built_through.map(|t| (now - t).num_seconds().max(0));
    status.marked_minutes = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.user_set_marks WHERE minute < $1")
        .bind(now - super::build::SETTLE - Duration::minutes(1))
        .fetch_one(pool)
        .await?;
    status.hours_differing = differing(pool, "hour", HOURLY_VIEW, compared_until(now) - Duration::hours(1)).await?;
    // 25 hours: the longest day, across a DST change.
    status.days_differing = differing(pool, "day", DAILY_VIEW, compared_until(now) - Duration::hours(25)).await?;
    Ok(status)
}

/// Sets of `span` starting before `before` whose event count is not the aggregate's.
async fn differing(pool: &PgPool, span: &str, aggregate: &str, before: DateTime<Utc>) -> sqlx::Result<i64> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM tsmigrate.user_sets s
         LEFT JOIN (SELECT bucket, sum(event_count) AS n FROM {aggregate} WHERE bucket < $2 GROUP BY 1) a ON a.bucket = s.bucket
         WHERE s.span = $1 AND s.bucket < $2 AND s.bucket >= (SELECT min(bucket) FROM {aggregate})
           AND s.event_count <> coalesce(a.n, 0)"
    ))
    .bind(span)
    .bind(before)
    .fetch_one(pool)
    .await
}
