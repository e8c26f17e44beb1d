//! The target side: per-minute counts and hashes computed by PostgreSQL (in concurrent
//! time slices, so the server uses more than one core), and, for the minutes that
//! differ, the events themselves.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;
use uuid::Uuid;

use super::sql;
use crate::event::TargetEvent;
use crate::validate::diff::{merge_minutes, EventDigest, MinuteSummaries, Summary};

/// Time slices of the window summarized by separate queries, and how many run at once.
const SLICES: i32 = 8;
const CONCURRENT_SLICES: usize = 2;

/// `sum(fingerprint)` as PostgreSQL returns it (exact) reduced modulo 2^64.
pub fn wrap_sum(text: &str) -> anyhow::Result<u64> {
    let sum: i128 = text.trim().parse().map_err(|e| anyhow::anyhow!("fingerprint sum {text:?} is not an integer: {e}"))?;
    Ok(sum.rem_euclid(1i128 << 64) as u64)
}

/// Per-minute counts (and hashes, unless `counts_only`) of the target's events in `[from, to)`.
#[tracing::instrument(skip(pool), err)]
pub async fn summarize(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>, counts_only: bool) -> anyhow::Result<MinuteSummaries> {
    let query = if counts_only { sql::EVENT_COUNTS.to_string() } else { sql::event_minutes() };
    let minutes = (to - from).num_minutes().max(1);
    let step = Duration::minutes((minutes + i64::from(SLICES) - 1) / i64::from(SLICES));
    let mut slices = Vec::new();
    let mut start = from;
    while start < to {
        let end = (start + step).min(to);
        slices.push((start, end));
        start = end;
    }
    let parts: Vec<Vec<(i64, i64, String)>> = futures::stream::iter(slices)
        .map(|(start, end)| {
            let query = &query;
            async move { sqlx::query_as(query).bind(start).bind(end).fetch_all(pool).await }
        })
        .buffer_unordered(CONCURRENT_SLICES)
        .try_collect()
        .await?;
    let mut total = MinuteSummaries::new();
    for rows in parts {
        let mut part = MinuteSummaries::new();
        for (minute, count, sum) in rows {
            part.insert(minute, Summary { count: count as u64, hash: wrap_sum(&sum)? });
        }
        merge_minutes(&mut total, part);
    }
    Ok(total)
}

/// The oldest event time the target holds (`None` when it holds none).
pub async fn oldest(pool: &PgPool) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar("SELECT min(time) FROM analytics_events_ts").fetch_one(pool).await?)
}

/// Dead letters recorded per minute of `[from_ms, to_ms)` (for `--depth counts`).
pub async fn dead_letter_minutes(pool: &PgPool, from_ms: i64, to_ms: i64) -> anyhow::Result<HashMap<i64, u64>> {
    Ok(crate::ledger::dead_letter::per_minute(pool, from_ms, to_ms).await?)
}

/// The digests of the target's events in the given `[from_ms, to_ms)` ranges.
pub async fn digests(pool: &PgPool, ranges: &[(i64, i64)]) -> anyhow::Result<Vec<EventDigest>> {
    let mut out = Vec::new();
    for (from, to) in ranges {
        let rows: Vec<(Uuid, i64, String, i64)> = sqlx::query_as(sql::EVENT_FINGERPRINTS).bind(ms_to_time(*from)).bind(ms_to_time(*to)).fetch_all(pool).await?;
        out.extend(rows.into_iter().map(|(event_id, time_ms, event_name, fingerprint)| EventDigest {
            event_id,
            time_ms,
            fingerprint: fingerprint as u64,
            event_name,
        }));
    }
    Ok(out)
}

/// Full target rows for `(event_id, time_ms)` keys.
pub async fn events_by_key(pool: &PgPool, keys: &[(Uuid, i64)]) -> anyhow::Result<Vec<TargetEvent>> {
    let keys: Vec<(Uuid, DateTime<Utc>)> = keys.iter().map(|(id, ms)| (*id, ms_to_time(*ms))).collect();
    Ok(crate::store::writer::rows_by_key(&mut *pool.acquire().await?, &keys).await?)
}

pub fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_wrap_modulo_two_to_the_64() {
        assert_eq!(wrap_sum("5").unwrap(), 5);
        assert_eq!(wrap_sum("-1").unwrap(), u64::MAX);
        assert_eq!(wrap_sum("18446744073709551621").unwrap(), 5);
        // Two fingerprints with the top bit set: -2^63 each in SQL.
        assert_eq!(wrap_sum("-18446744073709551616").unwrap(), 0);
        assert!(wrap_sum("1.5").is_err());
    }
}
