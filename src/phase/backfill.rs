//! `tsmigrate backfill`: copies the events Redis held before the completion point T into
//! the target, oldest first, in pages written with `COPY`. Each page commits together
//! with its checkpoint, so after a crash a re-run resumes exactly where the last commit
//! ended: no gap, no duplicate. Then it refreshes the aggregates over the backfilled range
//! and imports the legacy history older than the Redis horizon.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use super::history::{self, HistoryReport};
use super::state::{AuditEntry, PhaseGuard, StateChanges};
use super::{Phase, Refusal, BACKFILL};
use crate::config::Settings;
use crate::event::MAX_FUTURE_MS;
use crate::legacy::reader::{self, read_page, OutOfRange, ScoreCursor};
use crate::legacy::LegacyKeys;
use crate::progress::Progress;
use crate::target::aggregates::{self, RefreshOutcome};
use crate::target::checkpoint;
use crate::target::dead_letter::{self, DeadLetterCount, DeadLetterExample};
use crate::target::writer::{Method, ParsedPage, TargetWriter};

pub const CHECKPOINT: &str = "backfill";

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub page_size: usize,
    /// Events per second at most (protects a busy production server); `None` = as fast as possible.
    pub max_rate: Option<u64>,
    pub dry_run: bool,
    pub import_history: bool,
    /// No progress lines (JSON output).
    pub quiet: bool,
}

/// Saved with every page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackfillPosition {
    pub cursor: ScoreCursor,
    /// Scores up to this (inclusive) are the backfill's.
    pub until: f64,
    pub read: u64,
    pub inserted: u64,
    pub already_present: u64,
    pub dead_letters: u64,
    pub pages: u64,
    pub min_time_ms: Option<i64>,
    pub max_time_ms: Option<i64>,
    pub finished: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    pub dry_run: bool,
    pub phase_before: Phase,
    pub phase_after: Phase,
    pub completion_point: DateTime<Utc>,
    /// Events scored up to here were copied (T plus the tracker clock-skew allowance).
    pub upper_bound: DateTime<Utc>,
    pub resumed: bool,
    pub remaining_estimate: u64,
    /// Totals over the whole backfill (all runs).
    pub read: u64,
    pub inserted: u64,
    pub already_present: u64,
    pub dead_letters: u64,
    pub dead_letter_reasons: Vec<DeadLetterCount>,
    /// The most recent dead letters of the backfill, by name: reason, score and member.
    pub dead_letter_examples: Vec<DeadLetterExample>,
    /// Members scored where no path reads them (before 2000, `-inf`, after now + 1 day, `+inf`).
    pub out_of_range: OutOfRange,
    pub pages: u64,
    /// This run only.
    pub seconds: f64,
    pub events_per_second: f64,
    pub refresh: Option<RefreshOutcome>,
    pub history: Option<HistoryReport>,
    pub next_steps: Vec<String>,
}

/// One page read from Redis, parsed, ready to commit.
pub(super) struct Page {
    pub parsed: ParsedPage,
    pub read: usize,
    pub cursor_after: ScoreCursor,
}

/// Dead letters named in the report (the most recent of the backfill's).
const NAMED_DEAD_LETTERS: i64 = 5;
/// Out-of-range members shown from each end of the sorted set.
const OUT_OF_RANGE_EXAMPLES: usize = 3;

pub async fn run(settings: &Settings, options: BackfillOptions) -> anyhow::Result<BackfillReport> {
    let mut guard = PhaseGuard::acquire(&settings.database.url, BACKFILL.command).await?;
    let state = guard.check(&BACKFILL, json!({"dry_run": options.dry_run})).await?;
    let completion_point = state.completion_point.ok_or_else(|| Refusal {
        command: "backfill".into(),
        reason: "no completion point is recorded".into(),
        next: "tsmigrate dual-write stop && tsmigrate dual-write start".into(),
    })?;
    let mode = state.storage_mode.ok_or_else(|| anyhow::anyhow!("storage mode missing from the migration state"))?;
    let pool = crate::db::target_pool(settings).await?;
    let mut redis = crate::db::redis(settings).await?;
    let keys = LegacyKeys::from_settings(settings);
    let until = (completion_point.timestamp_millis() + MAX_FUTURE_MS + 60_000) as f64;
    let saved: Option<BackfillPosition> = checkpoint::load(&mut *pool.acquire().await?, CHECKPOINT).await?;
    let resumed = saved.as_ref().is_some_and(|p| p.pages > 0);
    let mut position = saved.unwrap_or(BackfillPosition {
        cursor: ScoreCursor::at(f64::MIN),
        until,
        read: 0,
        inserted: 0,
        already_present: 0,
        dead_letters: 0,
        pages: 0,
        min_time_ms: None,
        max_time_ms: None,
        finished: false,
    });
    let remaining: u64 = if position.finished {
        0
    } else {
        let zcount: u64 = redis::cmd("ZCOUNT").arg(&keys.events).arg(position.cursor.score).arg(position.until).query_async(&mut redis).await?;
        zcount.saturating_sub(position.cursor.skip)
    };
    let mut report = BackfillReport {
        dry_run: options.dry_run,
        phase_before: state.phase,
        phase_after: state.phase,
        completion_point,
        upper_bound: DateTime::from_timestamp_millis(position.until as i64).unwrap_or(completion_point),
        resumed,
        remaining_estimate: remaining,
        read: position.read,
        inserted: position.inserted,
        already_present: position.already_present,
        dead_letters: position.dead_letters,
        dead_letter_reasons: vec![],
        dead_letter_examples: vec![],
        out_of_range: reader::out_of_range(&mut redis, &keys.events, Utc::now().timestamp_millis(), OUT_OF_RANGE_EXAMPLES).await?,
        pages: position.pages,
        seconds: 0.0,
        events_per_second: 0.0,
        refresh: None,
        history: None,
        next_steps: vec!["tsmigrate backfill   # without --dry-run".into()],
    };
    if options.dry_run {
        return Ok(report);
    }

    let started = Instant::now();
    let read_before = position.read;
    if !position.finished {
        let writer = TargetWriter::new(pool.clone(), mode);
        let progress = Progress::new("backfill", remaining, options.quiet);
        let (tx, mut rx) = mpsc::channel::<anyhow::Result<Page>>(2);
        // Reading and parsing the next page overlaps with writing this one.
        let reader = tokio::spawn(read_pages(redis.clone(), keys.events.clone(), position.cursor, position.until, options.page_size, tx));
        let mut done_this_run = 0u64;
        while let Some(page) = rx.recv().await {
            let page = page?;
            writer.ensure_partitions(&page.parsed.events).await?;
            let mut db = pool.begin().await?;
            let written = writer.write_page(&mut db, &page.parsed, "backfill", Method::Copy).await?;
            position.cursor = page.cursor_after;
            position.read += page.read as u64;
            position.inserted += written.inserted;
            position.already_present += written.already_present;
            position.dead_letters += written.dead_letters_recorded;
            position.pages += 1;
            for e in &page.parsed.events {
                let ms = e.time_ms();
                position.min_time_ms = Some(position.min_time_ms.map_or(ms, |m| m.min(ms)));
                position.max_time_ms = Some(position.max_time_ms.map_or(ms, |m| m.max(ms)));
            }
            checkpoint::save(&mut db, CHECKPOINT, &position).await?;
            db.commit().await?;
            done_this_run += page.read as u64;
            progress.set(done_this_run);
            if let Some(rate) = options.max_rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(done_this_run as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        reader.await??;
        progress.finish();
        position.finished = true;
        checkpoint::save(&mut *pool.acquire().await?, CHECKPOINT, &position).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    report.seconds = seconds;
    report.events_per_second = (position.read - read_before) as f64 / seconds.max(1e-9);

    if let (Some(min), Some(max)) = (position.min_time_ms, position.max_time_ms) {
        let from = DateTime::from_timestamp_millis(min).unwrap_or(completion_point);
        let to = DateTime::from_timestamp_millis(max + 1).unwrap_or(completion_point);
        report.refresh = Some(aggregates::refresh(&pool, mode, from, to, settings.target.timezone(), settings.target.raw_retention_days).await?);
    }
    if options.import_history {
        let legacy = crate::db::legacy_pool(settings).await?;
        let horizon = history::redis_horizon(&mut redis, &keys).await?.unwrap_or(completion_point);
        report.history = Some(history::import(settings, &pool, &legacy, horizon).await?);
    }
    let mut conn = pool.acquire().await?;
    report.dead_letter_reasons = dead_letter::counts(&mut conn).await?;
    report.dead_letter_examples = dead_letter::recent(&mut conn, "backfill", NAMED_DEAD_LETTERS).await?;
    drop(conn);
    report.read = position.read;
    report.inserted = position.inserted;
    report.already_present = position.already_present;
    report.dead_letters = position.dead_letters;
    report.pages = position.pages;
    let details = json!({"read": position.read, "inserted": position.inserted, "dead_letters": position.dead_letters, "resumed": resumed});
    let upper = DateTime::from_timestamp_millis(position.until as i64);
    if state.phase == Phase::DualWriting {
        guard
            .commit(&BACKFILL, state.phase, StateChanges { backfilled_until: upper, ..Default::default() }, AuditEntry { details, ..Default::default() })
            .await?;
    } else {
        guard.audit_noop(BACKFILL.command, state.phase, details).await?;
    }
    report.phase_after = Phase::Backfilled.max(state.phase);
    report.next_steps = report.phase_after.next_steps();
    Ok(report)
}

/// Reads pages from `cursor` to `until` (inclusive) into `tx`, one ahead of the writer.
pub(super) async fn read_pages(
    mut redis: redis::aio::ConnectionManager,
    key: String,
    mut cursor: ScoreCursor,
    until: f64,
    page_size: usize,
    tx: mpsc::Sender<anyhow::Result<Page>>,
) -> anyhow::Result<()> {
    let now_ms = Utc::now().timestamp_millis();
    loop {
        let members = match read_page(&mut redis, &key, cursor, until, page_size).await {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return Ok(());
            }
        };
        if members.is_empty() {
            return Ok(());
        }
        let cursor_after = cursor.after(&members);
        let read = members.len();
        let mut parsed = ParsedPage::with_capacity(read);
        for (member, score) in members {
            parsed.push(member, Some(score), now_ms);
        }
        cursor = cursor_after;
        let last = read < page_size;
        if tx.send(Ok(Page { parsed, read, cursor_after })).await.is_err() || last {
            return Ok(());
        }
    }
}

impl BackfillReport {
    pub fn human(&self) -> String {
        let mut o = String::new();
        if self.dry_run {
            o.push_str(&format!(
                "dry run: would copy about {} events scored up to {} (completion point {}){}; nothing was changed\n",
                self.remaining_estimate,
                self.upper_bound,
                self.completion_point,
                if self.resumed { ", resuming from the saved checkpoint" } else { "" }
            ));
        } else {
            o.push_str(&format!(
                "backfill: {} events read, {} inserted, {} already present, {} dead letters, {} pages{}\n",
                self.read,
                self.inserted,
                self.already_present,
                self.dead_letters,
                self.pages,
                if self.resumed { " (resumed from checkpoint)" } else { "" }
            ));
            o.push_str(&format!("this run: {:.1}s, {:.0} events/s\n", self.seconds, self.events_per_second));
            if !self.dead_letter_reasons.is_empty() {
                let parts: Vec<String> = self.dead_letter_reasons.iter().map(|d| format!("{} {}", d.count, d.reason_code)).collect();
                o.push_str(&format!("dead letters by reason: {} (see tsmigrate.dead_letter)\n", parts.join(", ")));
            }
            for d in &self.dead_letter_examples {
                o.push_str(&format!("  dead letter at score {}: {}\n    member: {}\n", d.score.as_deref().unwrap_or("(none)"), d.reason, d.member));
            }
            if let Some(r) = &self.refresh {
                o.push_str(&format!(
                    "aggregates refreshed: {} .. {} in {} chunk(s){}\n",
                    r.from.map(|t| t.to_string()).unwrap_or_default(),
                    r.to.map(|t| t.to_string()).unwrap_or_default(),
                    r.chunks,
                    if r.clamped_from.is_some() { " (start clamped to stay inside raw retention)" } else { "" }
                ));
            }
            if let Some(h) = &self.history {
                o.push_str(&format!(
                    "history imported (through the hour of {}): {} hourly rows, {} asset rows\n",
                    h.horizon.map(|t| t.to_string()).unwrap_or_default(),
                    h.hourly_rows,
                    h.asset_rows
                ));
            }
            o.push_str(&format!("phase: {} -> {}\n", self.phase_before, self.phase_after));
        }
        if let Some(line) = self.out_of_range.summary() {
            o.push_str(&format!("warning: {line}\n"));
        }
        o.push_str("next:\n");
        for s in &self.next_steps {
            o.push_str(&format!("  {s}\n"));
        }
        o
    }
}
