//! Tail mode, for applications that write the sorted set themselves and cannot add the
//! outbox `XADD`: follows the sorted set by score. Each step copies what scored after
//! the saved position; a *sweep* step re-reads the last `lookback` too, so events that
//! arrive late (scored earlier than what was already copied) are still picked up.
//! Re-reading is harmless: rows are deduplicated by `(event_id, time)`.
//! Events later than the lookback are missed — validation reports them. Members scored
//! past now + 1 day (far future, `+inf`) are not event times and are not read: `backfill`
//! and `validate` report them.

use std::sync::Arc;
use std::time::Duration;

use crate::connect::RedisConn;
use chrono::Utc;

use crate::event::MAX_FUTURE_MS;
use crate::ledger::checkpoint::{self, Checkpoint, TailPosition};
use crate::legacy::reader::{read_page, ScoreCursor};
use crate::legacy::LegacyKeys;
use crate::store::writer::{Method, ParsedPage, TargetWriter};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailOutcome {
    Copied { read: usize, inserted: u64, dead_letters: usize },
    TargetUnavailable { error: String },
}

pub struct Tail {
    redis: RedisConn,
    writer: Arc<TargetWriter>,
    keys: Arc<LegacyKeys>,
    pub lookback: Duration,
    pub page: usize,
    /// Where to start when no position was saved yet (epoch ms).
    pub start_at: f64,
}

impl Tail {
    pub fn new(redis: RedisConn, writer: Arc<TargetWriter>, keys: Arc<LegacyKeys>, lookback: Duration, start_at: f64) -> Self {
        Tail { redis, writer, keys, lookback, page: 5000, start_at }
    }

    /// One pass. Events the target cannot store become dead letters inside the pass;
    /// an error of the target itself leaves the position where it was.
    pub async fn step(&mut self, sweep: bool) -> anyhow::Result<TailOutcome> {
        match self.copy(sweep).await {
            Ok(outcome) => Ok(outcome),
            Err(e) if e.downcast_ref::<sqlx::Error>().is_some() => Ok(TailOutcome::TargetUnavailable { error: format!("{e:#}") }),
            Err(e) => Err(e),
        }
    }

    async fn copy(&mut self, sweep: bool) -> anyhow::Result<TailOutcome> {
        let mut conn = self.writer.pool().acquire().await?;
        let saved = checkpoint::tail(&mut conn).await?;
        let mut position = saved.unwrap_or(TailPosition { score: self.start_at });
        let from = if sweep || saved.is_none() { position.score - self.lookback.as_millis() as f64 } else { position.score };
        let mut cursor = ScoreCursor::at(from);
        let (mut read, mut inserted, mut dead_total) = (0usize, 0u64, 0usize);
        let now_ms = Utc::now().timestamp_millis();
        // Scores past now + the clock-skew allowance are not event times (far future, +inf):
        // reading them would carry the position past every event still to come.
        let until = (now_ms + MAX_FUTURE_MS) as f64;
        loop {
            let members = read_page(&mut self.redis, &self.keys.events, cursor, until, self.page).await?;
            if members.is_empty() {
                break;
            }
            cursor = cursor.after(&members);
            let full = members.len() == self.page;
            let mut page = ParsedPage::with_capacity(members.len());
            for (member, score) in members {
                position.score = position.score.max(score);
                page.push(member, Some(score), now_ms);
            }
            let saved = Checkpoint::Tail(position);
            let outcome = self.writer.commit_page(&page, "tail", Method::Insert, move |tx, _| Box::pin(async move { saved.save(tx).await })).await?;
            read += page.len();
            inserted += outcome.inserted;
            dead_total += outcome.dead_letters;
            if !full {
                break;
            }
        }
        Ok(TailOutcome::Copied { read, inserted, dead_letters: dead_total })
    }
}
