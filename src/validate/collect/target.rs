//! The target side: per-minute counts and hashes computed by PostgreSQL (in concurrent
//! time slices, so the server uses more than one core), and, for the minutes that
//! differ, the events themselves.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;
use uuid::Uuid;

use super::sql;
use crate::event::TargetEvent;
use crate::fingerprint::{score_ms, RawDigester};
use crate::validate::diff::{merge_minutes, minute_of, EventDigest, MinuteSummaries, Summary};

/// Time slices of the window summarized by separate queries, and how many run at once.
const SLICES: i32 = 8;
const CONCURRENT_SLICES: usize = 2;

/// `sum(fingerprint)` as PostgreSQL returns it (exact) reduced modulo 2^64.
pub fn wrap_sum(text: &str) -> anyhow::Result<u64> {
    let sum: i128 = text.trim().parse().map_err(|e| anyhow::anyhow!("fingerprint sum {text:?} is not an integer: {e}"))?;
    Ok(sum.rem_euclid(1i128 << 64) as u64)
}

/// The target's events per minute: every row (count, sum of fingerprints), and the rows
/// that carry a raw digest (count, sum of raw digests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TargetMinutes {
    pub rows: MinuteSummaries,
    pub raw: MinuteSummaries,
}

/// `--depth counts`: the target's events in each hour (`starts`, the last closed by `to`),
/// keyed by the minute each hour starts at (so they roll up into their hours), counted by
/// range scans of the time index in [`CONCURRENT_SLICES`] queries at once.
#[tracing::instrument(skip(pool, starts), err)]
pub async fn count_hours(pool: &PgPool, starts: &[DateTime<Utc>], to: DateTime<Utc>) -> anyhow::Result<MinuteSummaries> {
    let stops: Vec<DateTime<Utc>> = starts.iter().skip(1).copied().chain([to]).collect();
    let per_query = starts.len().div_ceil(CONCURRENT_SLICES).max(1);
    type Hours = (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>);
    let queries: Vec<Hours> = starts.chunks(per_query).zip(stops.chunks(per_query)).map(|(a, b)| (a.to_vec(), b.to_vec())).collect();
    let parts: Vec<Vec<(i64, i64)>> = futures::stream::iter(queries)
        .map(|(starts, stops)| async move {
            // A plan JIT-compiled for a table without statistics (just copied) costs more
            // to compile than counting takes.
            let mut tx = pool.begin().await?;
            sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
            let counts: Vec<(i64, i64)> = sqlx::query_as(sql::EVENT_COUNTS).bind(starts).bind(stops).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(counts)
        })
        .buffer_unordered(CONCURRENT_SLICES)
        .try_collect()
        .await?;
    Ok(parts.into_iter().flatten().filter(|(_, n)| *n > 0).map(|(minute, n)| (minute, Summary { count: n as u64, hash: 0 })).collect())
}

/// Events depth, before Redis is read: the hours (`starts`, the last closed by `to`; by their
/// start in epoch ms) worth comparing by raw digests first: those at least half of whose
/// sampled rows carry a raw digest. The others (rows written before raw digests existed,
/// changed by SQL, or no rows at all) would have nearly every minute parsed after being
/// hashed, so they are parsed at once. One index range scan of a few rows per hour.
#[tracing::instrument(skip(pool, starts), err)]
pub async fn hours_with_raw_digests(pool: &PgPool, starts: &[DateTime<Utc>], to: DateTime<Utc>) -> anyhow::Result<HashSet<i64>> {
    let stops: Vec<DateTime<Utc>> = starts.iter().skip(1).copied().chain([to]).collect();
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(sql::RAW_DIGEST_COVERAGE).bind(starts).bind(&stops).fetch_all(pool).await?;
    Ok(rows.into_iter().filter(|(_, sampled, raw)| *sampled > 0 && 2 * raw >= *sampled).map(|(start, _, _)| start).collect())
}

/// Per-minute counts and hashes of the target's events in `[from, to)` (events depth).
#[tracing::instrument(skip(pool), err)]
pub async fn summarize(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> anyhow::Result<TargetMinutes> {
    let query = sql::event_minutes();
    let minutes = (to - from).num_minutes().max(1);
    let step = Duration::minutes((minutes + i64::from(SLICES) - 1) / i64::from(SLICES));
    let mut slices = Vec::new();
    let mut start = from;
    while start < to {
        let end = (start + step).min(to);
        slices.push((start, end));
        start = end;
    }
    // (minute, rows, fingerprint sum, rows with a raw digest, raw digest sum)
    type MinuteRow = (i64, i64, String, i64, String);
    let parts: Vec<Vec<MinuteRow>> = futures::stream::iter(slices)
        .map(|(start, end)| {
            let query = &query;
            async move { sqlx::query_as(query).bind(start).bind(end).fetch_all(pool).await }
        })
        .buffer_unordered(CONCURRENT_SLICES)
        .try_collect()
        .await?;
    let mut total = TargetMinutes::default();
    for rows in parts {
        let (mut part, mut raw) = (MinuteSummaries::new(), MinuteSummaries::new());
        for (minute, count, sum, raw_count, raw_sum) in rows {
            part.insert(minute, Summary { count: count as u64, hash: wrap_sum(&sum)? });
            if raw_count > 0 {
                raw.insert(minute, Summary { count: raw_count as u64, hash: wrap_sum(&raw_sum)? });
            }
        }
        merge_minutes(&mut total.rows, part);
        merge_minutes(&mut total.raw, raw);
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

/// The recorded dead letters (`tsmigrate.dead_letter`) that are members of the window and
/// still not events, per minute: count and sum of raw digests, and their reasons.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeadLetterDigests {
    pub minutes: MinuteSummaries,
    pub reasons: BTreeMap<i64, BTreeMap<String, u64>>,
}

/// [`DeadLetterDigests`] of the members scored in `[from_ms, to_ms)` (the score range Redis
/// is read in). Each recorded member is parsed again as Redis's would be: one that parses now
/// (a row the target refused, another version of a stored event) is left out, so Redis's
/// member makes its minute differ and be compared by parsing, as it would be without raw digests.
pub async fn dead_letter_digests(pool: &PgPool, from_ms: i64, to_ms: i64, now_ms: i64) -> anyhow::Result<DeadLetterDigests> {
    let members = crate::ledger::dead_letter::members_scored(pool, from_ms as f64 - 0.5, to_ms as f64 - 0.5).await?;
    let mut digester = RawDigester::default();
    let mut out = DeadLetterDigests::default();
    for (raw, score) in members {
        if let Err(reason) = TargetEvent::from_member(&raw, score, now_ms) {
            let ms = score_ms(score);
            out.minutes.entry(minute_of(ms)).or_default().add(digester.digest(&raw, ms));
            *out.reasons.entry(minute_of(ms)).or_default().entry(reason.code().to_string()).or_default() += 1;
        }
    }
    Ok(out)
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
