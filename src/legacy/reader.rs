//! Reading the events sorted set in score order, resumably.
//!
//! A [`ScoreCursor`] says "every member scored below `score` is done, and so are the
//! first `skip` members scored exactly `score`" — enough to resume in the middle of a
//! run of equal scores (Redis orders those by member bytes).

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreCursor {
    pub score: f64,
    pub skip: u64,
}

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

/// Up to `limit` members from `cursor` to `until` (inclusive), oldest first, with scores.
pub async fn read_page(redis: &mut ConnectionManager, key: &str, cursor: ScoreCursor, until: f64, limit: usize) -> redis::RedisResult<Vec<(Vec<u8>, f64)>> {
    range_page(redis, key, cursor, until, limit).await
}

/// Like [`read_page`], but only members scored below `before` (exclusive).
pub async fn read_page_before(
    redis: &mut ConnectionManager,
    key: &str,
    cursor: ScoreCursor,
    before: f64,
    limit: usize,
) -> redis::RedisResult<Vec<(Vec<u8>, f64)>> {
    range_page(redis, key, cursor, format!("({before}"), limit).await
}

async fn range_page(
    redis: &mut ConnectionManager,
    key: &str,
    cursor: ScoreCursor,
    max: impl redis::ToRedisArgs,
    limit: usize,
) -> redis::RedisResult<Vec<(Vec<u8>, f64)>> {
    redis::cmd("ZRANGEBYSCORE").arg(key).arg(cursor.score).arg(max).arg("WITHSCORES").arg("LIMIT").arg(cursor.skip).arg(limit).query_async(redis).await
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
}
