//! Tail mode, for applications that write the sorted set themselves and cannot add the
//! outbox `XADD`: follows the sorted set by score. Each step copies what scored after
//! the saved position; a *sweep* step re-reads the last `lookback` too, so events that
//! arrive late (scored earlier than what was already copied) are still picked up.
//! Re-reading is harmless: rows are deduplicated by `(event_id, time)`.
//! Events later than the lookback are missed — validation reports them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::event::TargetEvent;
use crate::legacy::reader::{read_page, ScoreCursor};
use crate::legacy::LegacyKeys;
use crate::target::checkpoint;
use crate::target::dead_letter::{self, DeadLetter};
use crate::target::writer::TargetWriter;

pub const CHECKPOINT: &str = "tail";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TailPosition {
    /// Highest score copied so far.
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailOutcome {
    Copied { read: usize, inserted: u64, dead_letters: usize },
    TargetUnavailable { error: String },
}

pub struct Tail {
    redis: ConnectionManager,
    writer: Arc<TargetWriter>,
    keys: Arc<LegacyKeys>,
    pub lookback: Duration,
    pub page: usize,
    /// Where to start when no position was saved yet (epoch ms).
    pub start_at: f64,
}

impl Tail {
    pub fn new(redis: ConnectionManager, writer: Arc<TargetWriter>, keys: Arc<LegacyKeys>, lookback: Duration, start_at: f64) -> Self {
        Tail { redis, writer, keys, lookback, page: 5000, start_at }
    }

    pub async fn step(&mut self, sweep: bool) -> anyhow::Result<TailOutcome> {
        match self.copy(sweep).await {
            Ok(outcome) => Ok(outcome),
            Err(e) if e.downcast_ref::<sqlx::Error>().is_some() => Ok(TailOutcome::TargetUnavailable { error: e.to_string() }),
            Err(e) => Err(e),
        }
    }

    async fn copy(&mut self, sweep: bool) -> anyhow::Result<TailOutcome> {
        let mut conn = self.writer.pool().acquire().await?;
        let saved: Option<TailPosition> = checkpoint::load(&mut conn, CHECKPOINT).await?;
        let mut position = saved.unwrap_or(TailPosition { score: self.start_at });
        let from = if sweep || saved.is_none() { position.score - self.lookback.as_millis() as f64 } else { position.score };
        let mut cursor = ScoreCursor::at(from);
        let (mut read, mut inserted, mut dead_total) = (0usize, 0u64, 0usize);
        let now_ms = Utc::now().timestamp_millis();
        loop {
            let page = read_page(&mut self.redis, &self.keys.events, cursor, f64::INFINITY, self.page).await?;
            if page.is_empty() {
                break;
            }
            cursor = cursor.after(&page);
            let mut events = Vec::with_capacity(page.len());
            let mut dead = Vec::new();
            for (member, score) in &page {
                match TargetEvent::from_member(member, *score, now_ms) {
                    Ok(e) => events.push(e),
                    Err(reason) => dead.push(DeadLetter { raw: member.clone(), score: Some(*score), reason }),
                }
                position.score = position.score.max(*score);
            }
            self.writer.ensure_partitions(&events).await?;
            let mut tx = self.writer.pool().begin().await?;
            inserted += self.writer.insert(&mut tx, &events).await?.inserted;
            dead_letter::record(&mut tx, "tail", &dead).await?;
            checkpoint::save(&mut tx, CHECKPOINT, &position).await?;
            tx.commit().await?;
            read += page.len();
            dead_total += dead.len();
            if page.len() < self.page {
                break;
            }
        }
        Ok(TailOutcome::Copied { read, inserted, dead_letters: dead_total })
    }
}
