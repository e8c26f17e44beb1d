//! The target's answers from user sets (`store::user_sets`): a window is covered by the
//! largest buckets that fit (whole days, then hours, then minutes), and each is answered by
//! its set when the set is built and fresh. A set is stale when a minute inside it is marked
//! (a write touched it since the build), or, for a settled hour or day, when it counts
//! other events than the aggregate shows. A stale or missing day is answered by its hours;
//! a marked or missing hour by its minutes; a marked or missing minute, an hour that differs
//! from its aggregate, and the sub-minute edges of the window by raw rows. A read of users
//! per group treats a set built without them as missing. Users are unioned in memory, so
//! the answer is exact, and its cost follows the number of buckets.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use futures::future::try_join_all;

use super::context::ReadContext;
use super::request::{EventFilter, HourRow, ReadError, TimeRange};
use crate::calendar::{day_start, hour_floor, local_day, minute_ceil, next_hour};
use crate::store::user_sets::report::compared_until;
use crate::store::user_sets::{self, Parts, Span, Tally};
use crate::store::{DAILY_VIEW, HOURLY_VIEW};

/// A piece of a window: a bucket answered by its set, or raw rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Set(Span, DateTime<Utc>),
    Raw(TimeRange),
}

/// The pieces of a window, each with what it holds.
#[derive(Debug, Default)]
pub struct Tallied {
    /// Every piece's start (so its local day) and tally.
    pub pieces: Vec<(DateTime<Utc>, Tally)>,
    /// The ranges that were read raw.
    pub raw: Vec<TimeRange>,
}

impl Tallied {
    /// Everything together (whole days' creator counts are dropped: they do not union).
    pub fn total(&self) -> Tally {
        let mut total = Tally::default();
        for (_, tally) in &self.pieces {
            total.merge(tally);
        }
        total
    }
}

/// The buckets whose sets answer `range` when all are built and fresh, left to right: at
/// each point the largest bucket that starts there and fits; raw for the sub-minute edges.
pub fn cover(range: TimeRange, tz: Tz) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut at = minute_ceil(range.from).min(range.to);
    if at > range.from {
        pieces.push(Piece::Raw(TimeRange { from: range.from, to: at }));
    }
    while at < range.to {
        let fits = |span: Span| span.end(at, tz) <= range.to;
        let span = if day_start(local_day(at, tz), tz) == at && fits(Span::Day) {
            Span::Day
        } else if hour_floor(at, tz) == at && fits(Span::Hour) {
            Span::Hour
        } else if fits(Span::Minute) {
            Span::Minute
        } else {
            pieces.push(Piece::Raw(TimeRange { from: at, to: range.to }));
            break;
        };
        pieces.push(Piece::Set(span, at));
        at = span.end(at, tz);
    }
    pieces
}

/// What answers a bucket whose set cannot: its hours, its minutes, or its raw rows.
fn below(span: Span, bucket: DateTime<Utc>, tz: Tz) -> Vec<Piece> {
    let end = span.end(bucket, tz);
    match span.finer() {
        Some(finer) => finer.starts(bucket, end, tz).into_iter().map(|b| Piece::Set(finer, b)).collect(),
        None => vec![Piece::Raw(TimeRange { from: bucket, to: end })],
    }
}

/// Raw ranges that touch become one query, within a local day (answers by day need them apart).
fn coalesce(mut ranges: Vec<TimeRange>, tz: Tz) -> Vec<TimeRange> {
    ranges.sort_by_key(|r| r.from);
    let mut out: Vec<TimeRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.to == r.from && local_day(last.from, tz) == local_day(r.from, tz) => last.to = r.to,
            _ => out.push(r),
        }
    }
    out
}

/// Tallies `range` from the sets, falling back to finer sets and raw rows where a set is
/// missing or stale. One round of concurrent queries when every set is there.
pub async fn tally(ctx: &ReadContext, range: TimeRange, parts: Parts) -> Result<Tallied, ReadError> {
    let pool = ctx.target_pool()?;
    let tz = ctx.tz();
    let mut todo = cover(range, tz);
    let mut marks: Option<HashSet<DateTime<Utc>>> = None;
    let mut out = Tallied::default();
    let mut raw: Vec<TimeRange> = Vec::new();
    loop {
        raw.extend(todo.iter().filter_map(|p| if let Piece::Raw(r) = p { Some(*r) } else { None }));
        let wanted: Vec<(Span, DateTime<Utc>)> = todo.iter().filter_map(|p| if let Piece::Set(s, b) = p { Some((*s, *b)) } else { None }).collect();
        if wanted.is_empty() {
            break;
        }
        let load_marks = async {
            match marks {
                Some(_) => Ok(None),
                None => user_sets::marks_in(pool, range.from, range.to).await.map(|m| Some(m.into_iter().collect::<HashSet<_>>())).map_err(pg),
            }
        };
        let (rows, counts, loaded) =
            tokio::try_join!(async { user_sets::fetch(pool, &wanted, parts).await.map_err(pg) }, aggregate_counts(ctx, &wanted), load_marks)?;
        if let Some(loaded) = loaded {
            marks = Some(loaded);
        }
        let marked = marks.as_ref().expect("loaded in the first round");
        let mut rows: HashMap<(Span, DateTime<Utc>), Tally> = rows.into_iter().map(|(s, b, t)| ((s, b), t)).collect();
        todo = Vec::new();
        for (span, bucket) in wanted {
            let end = span.end(bucket, tz);
            let fresh = !marked.iter().any(|m| bucket <= *m && *m < end);
            // A set built before its groups' users were kept cannot answer per group.
            let rows_answering = rows.remove(&(span, bucket)).filter(|set| !parts.group_users || set.group_users.is_some());
            match (rows_answering, counts.get(&(span, bucket))) {
                (Some(set), Some(n)) if fresh && set.events != *n && span == Span::Hour => raw.push(TimeRange { from: bucket, to: end }),
                (Some(set), count) if fresh && count.is_none_or(|n| *n == set.events) => out.pieces.push((bucket, set)),
                _ => todo.extend(below(span, bucket, tz)),
            }
        }
    }
    out.raw = coalesce(raw, tz);
    let read = try_join_all(out.raw.iter().map(|r| async move { user_sets::raw(pool, r.from, r.to, parts).await.map(|t| (r.from, t)) })).await.map_err(pg)?;
    out.pieces.extend(read);
    Ok(out)
}

/// Events and distinct users per hour (cut in the bucket time zone) and group of `range`,
/// grouped as the raw rows are, from the sets that keep their groups' users: each hour's
/// piece is tallied on its own (concurrently), so its cost follows the number of minutes.
pub async fn hours(ctx: &ReadContext, range: TimeRange, filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
    let tz = ctx.tz();
    let mut pieces = Vec::new();
    let mut at = range.from;
    while at < range.to {
        let end = next_hour(at, tz).min(range.to);
        pieces.push(TimeRange { from: at, to: end });
        at = end;
    }
    let parts = Parts { groups: true, group_users: true, ..Parts::default() };
    let tallied = try_join_all(pieces.iter().map(|piece| tally(ctx, *piece, parts))).await?;
    let mut rows = Vec::new();
    for (piece, tallied) in pieces.iter().zip(tallied) {
        let mut hour = Tally::with_group_users();
        for (_, part) in &tallied.pieces {
            hour.merge(part);
        }
        let users = hour.group_users.ok_or_else(|| anyhow::anyhow!("a piece of {piece:?} was answered without its groups' users"))?;
        for ((event_name, category), event_count) in hour.groups {
            if filter.matches(&event_name, &category) {
                let unique_users = users.get(&(event_name.clone(), category.clone())).map_or(0, |u| u.len() as i64);
                rows.push(HourRow { hour: hour_floor(piece.from, tz), event_name, category, event_count, unique_users });
            }
        }
    }
    Ok(rows)
}

/// The aggregate's event count of every settled hour and day among `wanted` (a bucket the
/// aggregate has no row for counts 0), one query per run of consecutive buckets.
async fn aggregate_counts(ctx: &ReadContext, wanted: &[(Span, DateTime<Utc>)]) -> Result<HashMap<(Span, DateTime<Utc>), i64>, ReadError> {
    let tz = ctx.tz();
    let until = compared_until(ctx.now);
    let t = &ctx.shared.settings.target;
    let kept_from = |span: Span| {
        let days = if span == Span::Hour { t.hourly_retention_days } else { t.daily_retention_days };
        ctx.now - Duration::days(i64::from(days)) + Duration::days(1)
    };
    let mut runs: Vec<(Span, Vec<DateTime<Utc>>)> = Vec::new();
    for (span, bucket) in wanted.iter().filter(|(s, b)| *s != Span::Minute && s.end(*b, tz) <= until && *b >= kept_from(*s)) {
        match runs.last_mut() {
            Some((s, run)) if s == span && run.last().is_some_and(|last| span.end(*last, tz) == *bucket) => run.push(*bucket),
            _ => runs.push((*span, vec![*bucket])),
        }
    }
    let counted = try_join_all(runs.iter().map(|(span, run)| {
        let range = TimeRange { from: run[0], to: span.end(*run.last().expect("runs are not empty"), tz) };
        aggregate_event_counts(ctx, *span == Span::Day, range)
    }))
    .await?;
    let mut counts = HashMap::new();
    for ((span, run), found) in runs.iter().zip(counted) {
        for bucket in run {
            counts.insert((*span, *bucket), found.get(bucket).copied().unwrap_or(0));
        }
    }
    Ok(counts)
}

/// The aggregate's event count per bucket of `range` (hourly, or daily when `daily`), to
/// tell a user set built from other events than the aggregate shows.
async fn aggregate_event_counts(ctx: &ReadContext, daily: bool, range: TimeRange) -> Result<HashMap<DateTime<Utc>, i64>, ReadError> {
    let view = if daily { DAILY_VIEW } else { HOURLY_VIEW };
    let rows: Vec<(DateTime<Utc>, i64)> =
        sqlx::query_as(&format!("SELECT bucket, sum(event_count)::bigint FROM {view} WHERE bucket >= $1 AND bucket < $2 GROUP BY 1"))
            .bind(range.from)
            .bind(range.to)
            .fetch_all(ctx.target_pool()?)
            .await
            .map_err(|e| ReadError::postgres("the target database (aggregates)", e))?;
    Ok(rows.into_iter().collect())
}

fn pg(e: sqlx::Error) -> ReadError {
    ReadError::postgres("the target database (user sets)", e)
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

    /// What a list of pieces covers, in order, with no gap or overlap.
    fn covered(pieces: &[Piece], tz: Tz) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = pieces
            .iter()
            .map(|p| match p {
                Piece::Set(s, b) => (*b, s.end(*b, tz)),
                Piece::Raw(r) => (r.from, r.to),
            })
            .collect();
        for pair in spans.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "pieces are contiguous: {pieces:?}");
        }
        spans
    }

    #[test]
    fn a_window_is_covered_by_days_then_hours_then_minutes_and_raw_edges() {
        let r = range("2025-03-01T10:37:30Z", "2025-03-04T12:05:00Z");
        let pieces = cover(r, Tz::UTC);
        let spans = covered(&pieces, Tz::UTC);
        assert_eq!((spans[0].0, spans.last().unwrap().1), (r.from, r.to));
        assert_eq!(pieces[0], Piece::Raw(range("2025-03-01T10:37:30Z", "2025-03-01T10:38:00Z")));
        let count = |span: Span| pieces.iter().filter(|p| matches!(p, Piece::Set(s, _) if *s == span)).count();
        // 22 minutes to 11:00, 13 hours to midnight, 2 days, 12 hours, 5 minutes.
        assert_eq!((count(Span::Minute), count(Span::Hour), count(Span::Day)), (27, 25, 2));
        assert_eq!(pieces.iter().filter(|p| matches!(p, Piece::Raw(_))).count(), 1);
    }

    #[test]
    fn days_are_cut_in_the_bucket_zone_across_dst() {
        let berlin = chrono_tz::Europe::Berlin;
        // Local days of 23 hours (2025-03-30) and 25 hours (2025-10-26) are still one set each.
        for (from, to) in [("2025-03-29T23:00:00Z", "2025-03-30T22:00:00Z"), ("2025-10-25T22:00:00Z", "2025-10-26T23:00:00Z")] {
            assert_eq!(cover(range(from, to), berlin), vec![Piece::Set(Span::Day, t(from))]);
        }
        // Kolkata's hours start at :30 UTC.
        let pieces = cover(range("2025-03-01T10:00:00Z", "2025-03-01T12:00:00Z"), chrono_tz::Asia::Kolkata);
        assert!(pieces.contains(&Piece::Set(Span::Hour, t("2025-03-01T10:30:00Z"))), "{pieces:?}");
        covered(&pieces, chrono_tz::Asia::Kolkata);
    }

    #[test]
    fn a_bucket_without_a_fresh_set_is_answered_one_level_down() {
        let berlin = chrono_tz::Europe::Berlin;
        let day = t("2025-10-25T22:00:00Z");
        let hours = below(Span::Day, day, berlin);
        assert_eq!(hours.len(), 25);
        assert!(hours.iter().all(|p| matches!(p, Piece::Set(Span::Hour, _))));
        let minutes = below(Span::Hour, day, berlin);
        assert_eq!(minutes.len(), 60);
        assert_eq!(below(Span::Minute, day, berlin), vec![Piece::Raw(TimeRange { from: day, to: day + Duration::minutes(1) })]);
    }

    #[test]
    fn touching_raw_ranges_are_read_together_within_a_day() {
        let r = |from: &str, to: &str| range(from, to);
        let merged = coalesce(vec![r("2025-03-01T10:02:00Z", "2025-03-01T10:03:00Z"), r("2025-03-01T10:01:00Z", "2025-03-01T10:02:00Z")], Tz::UTC);
        assert_eq!(merged, vec![r("2025-03-01T10:01:00Z", "2025-03-01T10:03:00Z")]);
        let apart = coalesce(vec![r("2025-03-01T23:59:00Z", "2025-03-02T00:00:00Z"), r("2025-03-02T00:00:00Z", "2025-03-02T00:01:00Z")], Tz::UTC);
        assert_eq!(apart.len(), 2);
    }

    #[test]
    fn a_window_inside_one_minute_is_raw() {
        let r = range("2025-03-01T10:37:10Z", "2025-03-01T10:37:50Z");
        assert_eq!(cover(r, Tz::UTC), vec![Piece::Raw(r)]);
    }
}
