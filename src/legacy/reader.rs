//! Reading the events sorted set in score order, resumably.
//!
//! A [`ScoreCursor`] says "every member scored below `score` is done, and so are the
//! first `skip` members scored exactly `score`" — enough to resume in the middle of a
//! run of equal scores (Redis orders those by member bytes).

use crate::connect::RedisConn;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::{MAX_FUTURE_MS, MIN_EVENT_MS};
use crate::ledger::dead_letter::{preview, show_score};

pub use crate::ledger::checkpoint::ScoreCursor;

impl ScoreCursor {
    pub fn at(score: f64) -> Self {
        ScoreCursor { score, skip: 0 }
    }

    /// The cursor after consuming `page` (which was read from this cursor).
    pub fn after(&self, page: &[(Vec<u8>, f64)]) -> ScoreCursor {
        let Some(&(_, last)) = page.last() else {
            return *self;
        };
        let at_last = page.iter().rev().take_while(|(_, s)| *s == last).count() as u64;
        if last == self.score {
            ScoreCursor { score: last, skip: self.skip + at_last }
        } else {
            ScoreCursor { score: last, skip: at_last }
        }
    }
}

/// The members whose event time (the score, rounded to the millisecond) is each of
/// `times_ms`, in one pipelined round trip: one list per time.
pub async fn members_at(redis: &mut RedisConn, key: &str, times_ms: &[i64]) -> redis::RedisResult<Vec<Vec<(Vec<u8>, f64)>>> {
    if times_ms.is_empty() {
        return Ok(vec![]);
    }
    let mut pipe = redis::pipe();
    for t in times_ms {
        pipe.cmd("ZRANGEBYSCORE").arg(key).arg(*t as f64 - 0.5).arg(format!("({}", *t as f64 + 0.5)).arg("WITHSCORES");
    }
    pipe.query_async(redis).await
}

/// Up to `limit` members from `cursor` to `until` (inclusive), oldest first, with scores.
pub async fn read_page(redis: &mut RedisConn, key: &str, cursor: ScoreCursor, until: f64, limit: usize) -> redis::RedisResult<Vec<(Vec<u8>, f64)>> {
    range_page(redis, key, cursor, until, limit).await
}

/// Like [`read_page`], but only members scored below `before` (exclusive).
pub async fn read_page_before(redis: &mut RedisConn, key: &str, cursor: ScoreCursor, before: f64, limit: usize) -> redis::RedisResult<Vec<(Vec<u8>, f64)>> {
    range_page(redis, key, cursor, format!("({before}"), limit).await
}

async fn range_page(
    redis: &mut RedisConn,
    key: &str,
    cursor: ScoreCursor,
    max: impl redis::ToRedisArgs,
    limit: usize,
) -> redis::RedisResult<Vec<(Vec<u8>, f64)>> {
    redis::cmd("ZRANGEBYSCORE").arg(key).arg(cursor.score).arg(max).arg("WITHSCORES").arg("LIMIT").arg(cursor.skip).arg(limit).query_async(redis).await
}

/// Members whose score cannot be an event time now: before 2000 (or `-inf`), or after now +
/// the clock-skew allowance (far future, `+inf`). No path migrates them, so the commands
/// that read the sorted set report them instead of passing over them in silence.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutOfRange {
    /// Scored before 2000-01-01 (as `TargetEvent::from_member` rounds scores).
    pub before: u64,
    /// Scored after now + 1 day.
    pub after: u64,
    /// A few of them, oldest and newest first.
    pub examples: Vec<OutOfRangeMember>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutOfRangeMember {
    /// As Redis prints it (`+inf`, `-inf`, or a number).
    pub score: String,
    pub member: String,
}

impl OutOfRange {
    pub fn total(&self) -> u64 {
        self.before + self.after
    }

    /// One line for text reports; `None` when there is nothing to say.
    pub fn summary(&self) -> Option<String> {
        if self.total() == 0 {
            return None;
        }
        let shown: Vec<String> = self.examples.iter().map(|e| format!("{} {}", e.score, e.member)).collect();
        Some(format!(
            "{} member(s) scored outside the valid event-time range are not migrated by any path ({} before 2000, {} after now + 1 day); e.g. {}",
            self.total(),
            self.before,
            self.after,
            shown.join(" | ")
        ))
    }
}

/// Score bounds of valid event times at `now_ms`: valid scores are in `[low, high)`.
pub fn valid_score_bounds(now_ms: i64) -> (f64, f64) {
    (MIN_EVENT_MS as f64 - 0.5, (now_ms + MAX_FUTURE_MS) as f64 + 0.5)
}

/// Counts (`ZCOUNT`) and samples the members of `key` scored outside the valid event-time
/// range, in one pipelined round trip.
pub async fn out_of_range(redis: &mut RedisConn, key: &str, now_ms: i64, examples: usize) -> redis::RedisResult<OutOfRange> {
    let (low, high) = valid_score_bounds(now_ms);
    type Members = Vec<(Vec<u8>, f64)>;
    let (before, after, oldest, newest): (u64, u64, Members, Members) = redis::pipe()
        .cmd("ZCOUNT")
        .arg(key)
        .arg("-inf")
        .arg(format!("({low}"))
        .cmd("ZCOUNT")
        .arg(key)
        .arg(high)
        .arg("+inf")
        .cmd("ZRANGEBYSCORE")
        .arg(key)
        .arg("-inf")
        .arg(format!("({low}"))
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(examples)
        .cmd("ZREVRANGEBYSCORE")
        .arg(key)
        .arg("+inf")
        .arg(high)
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(examples)
        .query_async(redis)
        .await?;
    let examples = oldest.iter().chain(&newest).map(|(m, s)| OutOfRangeMember { score: show_score(*s), member: preview(m) }).collect();
    Ok(OutOfRange { before, after, examples })
}

/// The oldest member scored at a valid event time, if any (members before 2000 or at
/// `-inf` are not events and do not move the horizon).
pub async fn oldest_valid(redis: &mut RedisConn, key: &str) -> redis::RedisResult<Option<(Vec<u8>, f64)>> {
    let (low, _) = valid_score_bounds(0);
    let oldest: Vec<(Vec<u8>, f64)> =
        redis::cmd("ZRANGEBYSCORE").arg(key).arg(low).arg("+inf").arg("WITHSCORES").arg("LIMIT").arg(0).arg(1).query_async(redis).await?;
    Ok(oldest.into_iter().next())
}

/// The oldest event time Redis holds, if any.
pub async fn redis_horizon(redis: &mut RedisConn, keys: &super::LegacyKeys) -> redis::RedisResult<Option<DateTime<Utc>>> {
    let oldest = oldest_valid(redis, &keys.events).await?;
    Ok(oldest.and_then(|(_, score)| DateTime::from_timestamp_millis(score.round() as i64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(scores: &[f64]) -> Vec<(Vec<u8>, f64)> {
        scores.iter().map(|s| (b"m".to_vec(), *s)).collect()
    }

    #[test]
    fn cursor_counts_equal_scores_across_pages() {
        let c = ScoreCursor::at(0.0);
        let c = c.after(&page(&[1.0, 2.0, 2.0]));
        assert_eq!(c, ScoreCursor { score: 2.0, skip: 2 });
        // The next page starts inside the run of 2.0s.
        let c = c.after(&page(&[2.0, 2.0]));
        assert_eq!(c, ScoreCursor { score: 2.0, skip: 4 });
        let c = c.after(&page(&[2.0, 3.0]));
        assert_eq!(c, ScoreCursor { score: 3.0, skip: 1 });
        assert_eq!(c.after(&[]), c);
    }

    #[test]
    fn out_of_range_members_are_summarized_only_when_there_are_some() {
        assert_eq!(OutOfRange::default().summary(), None);
        let found = OutOfRange { before: 1, after: 2, examples: vec![OutOfRangeMember { score: "+inf".into(), member: "{}".into() }] };
        let line = found.summary().unwrap();
        assert!(line.starts_with("3 member(s)") && line.contains("1 before 2000, 2 after now + 1 day") && line.contains("+inf {}"), "{line}");
        // Valid scores round to [2000-01-01, now + 1 day], as from_member rounds them.
        assert_eq!(valid_score_bounds(0), (MIN_EVENT_MS as f64 - 0.5, MAX_FUTURE_MS as f64 + 0.5));
    }
}
