//! The set builder: the sets of closed buckets, from raw rows up. Run by the daemon's
//! `user_sets` job and by `tsmigrate user-sets build`; one builder at a time (an advisory
//! lock), each bucket's work in a transaction of its own.
//!
//! A run consumes the marks of closed minutes and rebuilds them (dropping the hour and day
//! above), builds every closed minute from the oldest raw event to the newest that has no
//! set yet (quiet ones too: an empty set says "no events", a missing one "not built"),
//! then every closed hour whose 60 minutes are built and unmarked, then every closed day
//! likewise.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use roaring::RoaringBitmap;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::{encode, fetch, Parts, Span, Tally, ASSET_EVENT};
use crate::calendar::{day_start, hour_floor, local_day, minute_floor, next_hour};
use crate::config::TargetSettings;

/// A minute is built once it has been closed this long, so the relay's writes for it have
/// landed; a write that comes later marks it, and the next run rebuilds it.
pub const SETTLE: Duration = Duration::seconds(5);

/// Key of the advisory lock one builder holds for a run.
const LOCK: &str = "tsmigrate.user_sets";

#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    pub tz: Tz,
    /// Minutes are kept (and built) only while raw rows are.
    pub raw_retention_days: u32,
    /// Hours and days are kept as long as the daily aggregates.
    pub set_retention_days: u32,
    /// Wait for a running build to finish instead of skipping this run.
    pub wait: bool,
}

impl BuildOptions {
    pub fn from_settings(target: &TargetSettings, wait: bool) -> BuildOptions {
        BuildOptions { tz: target.timezone(), raw_retention_days: target.raw_retention_days, set_retention_days: target.daily_retention_days, wait }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildOutcome {
    pub minutes: u64,
    pub hours: u64,
    pub days: u64,
    /// Sets and marks older than their retention, deleted.
    pub expired: u64,
}

/// Builds what is missing or marked. `None`: another build holds the lock (and `wait` is off).
#[tracing::instrument(skip_all, err)]
pub async fn build(pool: &PgPool, options: BuildOptions, now: DateTime<Utc>) -> sqlx::Result<Option<BuildOutcome>> {
    let mut lock = pool.acquire().await?;
    let take = if options.wait { "SELECT pg_advisory_lock(hashtext($1)) IS NOT NULL" } else { "SELECT pg_try_advisory_lock(hashtext($1))" };
    if !sqlx::query_scalar::<_, bool>(take).bind(LOCK).fetch_one(&mut *lock).await? {
        return Ok(None);
    }
    let outcome = run(pool, options, now).await;
    if sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(LOCK).execute(&mut *lock).await.is_err() {
        // A session lock lives as long as its connection: never hand it back to the pool.
        let _ = lock.close().await;
    }
    outcome.map(Some)
}

/// Marks every minute of `[from, to)` changed, so the next build rebuilds them.
pub async fn mark_range(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "INSERT INTO tsmigrate.user_set_marks (minute)
         SELECT generate_series(date_trunc('minute', $1::timestamptz), $2::timestamptz - interval '1 microsecond', interval '1 minute')
         ON CONFLICT (minute) DO UPDATE SET marked_at = now()",
    )
    .bind(from)
    .bind(to)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

async fn run(pool: &PgPool, options: BuildOptions, now: DateTime<Utc>) -> sqlx::Result<BuildOutcome> {
    let tz = options.tz;
    let mut outcome = BuildOutcome { expired: expire(pool, options, now).await?, ..BuildOutcome::default() };
    let settled = minute_floor(now - SETTLE);
    // From the oldest raw row to now while it is recent (a quiet stretch is built as empty
    // sets, so reads of it need no raw rows); older data only up to its newest row, and a
    // late write after it marks its minute.
    let (oldest, newest): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT min(time), max(time) FROM analytics_events_ts").fetch_one(pool).await?;
    let (Some(oldest), Some(newest)) = (oldest, newest) else {
        return Ok(outcome);
    };
    let start = hour_floor(oldest.max(raw_kept_from(options, now)), tz);
    let until = if newest >= settled - Duration::days(1) { settled } else { next_hour(newest, tz) };
    if start >= until {
        return Ok(outcome);
    }
    let marked: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT minute FROM tsmigrate.user_set_marks WHERE minute >= $1 AND minute < $2 ORDER BY 1")
        .bind(start)
        .bind(until)
        .fetch_all(pool)
        .await?;
    let mut hours: BTreeSet<DateTime<Utc>> = missing(pool, Span::Hour, &Span::Hour.starts(start, until, tz)).await?.into_iter().collect();
    hours.extend(marked.iter().map(|m| hour_floor(*m, tz)));
    // The hour `until` falls in: its closed minutes.
    hours.insert(hour_floor(until, tz));
    let marked: HashSet<DateTime<Utc>> = marked.into_iter().collect();
    for hour in hours {
        outcome.minutes += build_minutes(pool, hour, until, &marked, tz).await?;
        if next_hour(hour, tz) <= until {
            outcome.hours += u64::from(build_above(pool, Span::Hour, hour, tz).await?);
        }
    }
    let first_day = day_start(local_day(start, tz), tz);
    for day in missing(pool, Span::Day, &Span::Day.starts(first_day, until, tz)).await? {
        outcome.days += u64::from(build_above(pool, Span::Day, day, tz).await?);
    }
    Ok(outcome)
}

/// Raw rows older than this may be dropping: their minutes are neither built nor kept.
fn raw_kept_from(options: BuildOptions, now: DateTime<Utc>) -> DateTime<Utc> {
    now - Duration::days(i64::from(options.raw_retention_days)) + Duration::days(1)
}

async fn expire(pool: &PgPool, options: BuildOptions, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let raw_from = raw_kept_from(options, now);
    // One range of the primary key (span, bucket) per statement: every run asks, and
    // almost always finds nothing, which an index range tells at once (an OR across spans
    // reads the whole index).
    let sets_from = now - Duration::days(i64::from(options.set_retention_days));
    let sets: i64 = sqlx::query_scalar(
        "WITH minutes AS (DELETE FROM tsmigrate.user_sets WHERE span = 'minute' AND bucket < $1 RETURNING 1),
              above AS (DELETE FROM tsmigrate.user_sets WHERE span IN ('hour', 'day') AND bucket < $2 RETURNING 1)
         SELECT (SELECT count(*) FROM minutes) + (SELECT count(*) FROM above)",
    )
    .bind(raw_from.max(sets_from))
    .bind(sets_from)
    .fetch_one(pool)
    .await?;
    // A write older than raw retention cannot be rebuilt from: the set stays as built.
    let marks = sqlx::query("DELETE FROM tsmigrate.user_set_marks WHERE minute < $1").bind(raw_from).execute(pool).await?;
    Ok(sets as u64 + marks.rows_affected())
}

/// Which of `buckets` have no set.
async fn missing(pool: &PgPool, span: Span, buckets: &[DateTime<Utc>]) -> sqlx::Result<Vec<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT b FROM unnest($2::timestamptz[]) b
         WHERE NOT EXISTS (SELECT 1 FROM tsmigrate.user_sets s WHERE s.span = $1 AND s.bucket = b) ORDER BY 1",
    )
    .bind(span.as_str())
    .bind(buckets)
    .fetch_all(pool)
    .await
}

type MinuteRow = (DateTime<Utc>, String, String, Option<String>, Option<i64>, i64);

/// Builds the minutes of `hour` before `until` that have no set or are marked: consumes
/// their marks, reads their raw rows, and drops the hour and day above them, in one transaction.
async fn build_minutes(pool: &PgPool, hour: DateTime<Utc>, until: DateTime<Utc>, marked: &HashSet<DateTime<Utc>>, tz: Tz) -> sqlx::Result<u64> {
    let until = next_hour(hour, tz).min(until);
    let built: HashSet<DateTime<Utc>> = sqlx::query_scalar("SELECT bucket FROM tsmigrate.user_sets WHERE span = 'minute' AND bucket >= $1 AND bucket < $2")
        .bind(hour)
        .bind(until)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    let todo: Vec<DateTime<Utc>> = Span::Minute.starts(hour, until, tz).into_iter().filter(|m| !built.contains(m) || marked.contains(m)).collect();
    let (Some(first), Some(last)) = (todo.first(), todo.last()) else {
        return Ok(0);
    };
    let mut tx = pool.begin().await?;
    // First the marks, then the rows: a write marking one of these minutes has committed
    // before the read below sees the table, or its mark outlives this transaction.
    sqlx::query("DELETE FROM tsmigrate.user_set_marks WHERE minute = ANY($1)").bind(&todo).execute(&mut *tx).await?;
    let (from, to) = (*first, *last + Duration::minutes(1));
    assign_ordinals(&mut tx, from, to).await?;
    let rows: Vec<MinuteRow> = sqlx::query_as(
        "SELECT date_trunc('minute', e.time), e.event_name, e.category,
                CASE WHEN e.event_name = $3 THEN e.properties->>'asset_type' END, o.ordinal, count(*)
         FROM analytics_events_ts e LEFT JOIN tsmigrate.user_ordinals o ON o.user_id = e.user_id
         WHERE e.time >= $1 AND e.time < $2 GROUP BY 1, 2, 3, 4, 5",
    )
    .bind(from)
    .bind(to)
    .bind(ASSET_EVENT)
    .fetch_all(&mut *tx)
    .await?;
    let mut minutes: BTreeMap<DateTime<Utc>, Tally> = todo.iter().map(|m| (*m, Tally::with_group_users())).collect();
    for (minute, name, category, asset_type, ordinal, events) in rows {
        if let Some(tally) = minutes.get_mut(&minute) {
            add_row(tally, name, category, asset_type, ordinal, events);
        }
    }
    for (minute, tally) in &minutes {
        store(&mut tx, Span::Minute, *minute, tally).await?;
    }
    sqlx::query("DELETE FROM tsmigrate.user_sets WHERE (span = 'hour' AND bucket = $1) OR (span = 'day' AND bucket = $2)")
        .bind(hour)
        .bind(day_start(local_day(hour, tz), tz))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(minutes.len() as u64)
}

fn add_row(tally: &mut Tally, name: String, category: String, asset_type: Option<String>, ordinal: Option<i64>, events: i64) {
    let ordinal = ordinal.and_then(|o| u32::try_from(o).ok());
    tally.events += events;
    if let Some(o) = ordinal {
        tally.users.ordinals.insert(o);
    }
    if name == ASSET_EVENT {
        let asset = tally.assets.entry(asset_type).or_default();
        asset.generations += events;
        if let Some(o) = ordinal {
            asset.creators.ordinals.insert(o);
        }
    }
    let group = (name, category);
    if let Some(group_users) = tally.group_users.as_mut() {
        let users = group_users.entry(group.clone()).or_default();
        if let Some(o) = ordinal {
            users.ordinals.insert(o);
        }
    }
    *tally.groups.entry(group).or_default() += events;
}

/// Gives every user of `[from, to)` without an ordinal the next ones, in one statement.
async fn assign_ordinals(conn: &mut PgConnection, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO tsmigrate.user_ordinals (user_id)
         SELECT DISTINCT e.user_id FROM analytics_events_ts e
         WHERE e.time >= $1 AND e.time < $2 AND e.user_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM tsmigrate.user_ordinals o WHERE o.user_id = e.user_id)
         ON CONFLICT DO NOTHING",
    )
    .bind(from)
    .bind(to)
    .execute(conn)
    .await?;
    Ok(())
}

/// Builds the hour (or day) set starting at `bucket` from the sets one level below, when
/// every one of them is built and none is marked. Returns whether it did.
async fn build_above(pool: &PgPool, span: Span, bucket: DateTime<Utc>, tz: Tz) -> sqlx::Result<bool> {
    let end = span.end(bucket, tz);
    let below = span.finer().expect("hours and days are built from finer sets");
    let parts: Vec<(Span, DateTime<Utc>)> = below.starts(bucket, end, tz).into_iter().map(|b| (below, b)).collect();
    let marked: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tsmigrate.user_set_marks WHERE minute >= $1 AND minute < $2)")
        .bind(bucket)
        .bind(end)
        .fetch_one(pool)
        .await?;
    if marked {
        return Ok(false);
    }
    let rows = fetch(pool, &parts, Parts { groups: true, users: true, assets: true, group_users: span == Span::Hour }).await?;
    if rows.len() != parts.len() {
        return Ok(false);
    }
    // An hour keeps its groups' users when all its minutes have them; a day never needs them.
    let mut tally = if span == Span::Hour { Tally::with_group_users() } else { Tally::default() };
    for (_, _, part) in &rows {
        tally.merge(part);
    }
    let mut tx = pool.begin().await?;
    store(&mut tx, span, bucket, &tally).await?;
    tx.commit().await?;
    Ok(true)
}

/// Writes one set row (replacing the bucket's previous one).
async fn store(conn: &mut PgConnection, span: Span, bucket: DateTime<Utc>, tally: &Tally) -> sqlx::Result<()> {
    let (names, categories): (Vec<&str>, Vec<&str>) = tally.groups.keys().map(|(n, c)| (n.as_str(), c.as_str())).unzip();
    let assets: Vec<_> = tally.assets.iter().collect();
    // One bitmap per group, in the order of the groups (a group of NULL users only: empty).
    let group_users: Option<Vec<Vec<u8>>> = tally.group_users.as_ref().filter(|_| span != Span::Day).map(|known| {
        tally.groups.keys().map(|group| known.get(group).map_or_else(|| encode(&RoaringBitmap::new()), |users| encode(&users.ordinals))).collect()
    });
    sqlx::query(
        "INSERT INTO tsmigrate.user_sets (span, bucket, event_count, users, event_names, categories, group_counts,
                                          asset_types, asset_counts, asset_creators, asset_creator_counts, group_users)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (span, bucket) DO UPDATE SET event_count = EXCLUDED.event_count, users = EXCLUDED.users,
             event_names = EXCLUDED.event_names, categories = EXCLUDED.categories, group_counts = EXCLUDED.group_counts,
             asset_types = EXCLUDED.asset_types, asset_counts = EXCLUDED.asset_counts, asset_creators = EXCLUDED.asset_creators,
             asset_creator_counts = EXCLUDED.asset_creator_counts, group_users = EXCLUDED.group_users, built_at = now()",
    )
    .bind(span.as_str())
    .bind(bucket)
    .bind(tally.events)
    .bind(encode(&tally.users.ordinals))
    .bind(names)
    .bind(categories)
    .bind(tally.groups.values().copied().collect::<Vec<_>>())
    .bind(assets.iter().map(|(t, _)| t.as_deref()).collect::<Vec<_>>())
    .bind(assets.iter().map(|(_, a)| a.generations).collect::<Vec<_>>())
    .bind(assets.iter().map(|(_, a)| encode(&a.creators.ordinals)).collect::<Vec<_>>())
    .bind(assets.iter().map(|(_, a)| a.creators.ordinals.len() as i64).collect::<Vec<_>>())
    .bind(group_users)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::next_day;

    #[test]
    fn closed_buckets_stop_before_the_open_one() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let hours = Span::Hour.starts(t("2025-03-01T10:00:00Z"), t("2025-03-01T12:59:00Z"), Tz::UTC);
        assert_eq!(hours, vec![t("2025-03-01T10:00:00Z"), t("2025-03-01T11:00:00Z")]);
        // A fall-back night in Berlin: the day holds 25 hours.
        let berlin = chrono_tz::Europe::Berlin;
        let day = day_start(chrono::NaiveDate::from_ymd_opt(2025, 10, 26).unwrap(), berlin);
        assert_eq!(Span::Hour.starts(day, next_day(day, berlin), berlin).len(), 25);
        assert_eq!(Span::Minute.starts(day, day + Duration::hours(1), berlin).len(), 60);
    }
}
