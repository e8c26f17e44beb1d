//! `tsmigrate backfill --from --to`: copies the events the sorted set holds in a time window
//! into the target again — the repair for a possible gap in dual-write (Redis lost the outbox
//! before the relay read it; `status` lists such windows). Idempotent like every write path:
//! rows already present stay single, events the target cannot store become dead letters.
//! Needs no phase change and records none; the gaps the window covers are marked repaired.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::backfill::{read_pages, Page};
use super::state::PhaseGuard;
use super::Refusal;
use crate::config::Settings;
use crate::dual_write::gaps;
use crate::legacy::reader::ScoreCursor;
use crate::legacy::LegacyKeys;
use crate::target::aggregates::{self, RefreshOutcome};
use crate::target::writer::{Method, TargetWriter};

#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub read: u64,
    pub inserted: u64,
    pub already_present: u64,
    pub dead_letters: u64,
    /// Recorded outbox gaps inside the window, now marked repaired.
    pub gaps_repaired: u64,
    pub refresh: Option<RefreshOutcome>,
    pub next_steps: Vec<String>,
}

/// The command's name in refusals and the audit log.
const COMMAND: &str = "backfill --from --to";

pub async fn run(settings: &Settings, from: DateTime<Utc>, to: DateTime<Utc>, page_size: usize) -> anyhow::Result<RepairReport> {
    if from >= to {
        anyhow::bail!("--from ({from}) must be before --to ({to})");
    }
    let mut guard = PhaseGuard::acquire(&settings.database.url, COMMAND).await?;
    let state = guard.state().await?;
    let mode = match state.storage_mode {
        Some(mode) if state.phase.dual_write_active() => mode,
        _ => {
            return Err(Refusal {
                command: COMMAND.into(),
                reason: format!("the migration is in phase {}; a window is repaired once dual-write is on", state.phase),
                next: state.phase.next_steps().first().cloned().unwrap_or_default(),
            }
            .into())
        }
    };
    let pool = crate::db::target_pool(settings).await?;
    let redis = crate::db::redis(settings).await?;
    let keys = LegacyKeys::from_settings(settings);
    let writer = TargetWriter::new(pool.clone(), mode);
    let mut report = RepairReport { from, to, read: 0, inserted: 0, already_present: 0, dead_letters: 0, gaps_repaired: 0, refresh: None, next_steps: vec![] };
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Page>>(2);
    let cursor = ScoreCursor::at(from.timestamp_millis() as f64);
    let reader = tokio::spawn(read_pages(redis, keys.events.clone(), cursor, to.timestamp_millis() as f64, page_size, tx));
    while let Some(page) = rx.recv().await {
        let page = page?;
        writer.ensure_partitions(&page.parsed.events).await?;
        let mut db = pool.begin().await?;
        let written = writer.write_page(&mut db, &page.parsed, "repair", Method::Copy).await?;
        report.dead_letters += written.dead_letters_recorded;
        db.commit().await?;
        report.read += page.read as u64;
        report.inserted += written.inserted;
        report.already_present += written.already_present;
    }
    reader.await??;
    if report.read > 0 {
        report.refresh = Some(aggregates::refresh(&pool, mode, from, to, settings.target.timezone(), settings.target.raw_retention_days).await?);
    }
    report.gaps_repaired = gaps::mark_repaired(&mut *pool.acquire().await?, from, to).await?;
    let details = json!({"from": from, "to": to, "read": report.read, "inserted": report.inserted, "gaps_repaired": report.gaps_repaired});
    guard.audit_noop(COMMAND, state.phase, details).await?;
    report.next_steps = vec!["tsmigrate validate           # compare the window again".into()];
    Ok(report)
}

impl RepairReport {
    pub fn human(&self) -> String {
        let mut o = format!(
            "repaired {} .. {}: {} events read from Redis, {} inserted, {} already present, {} dead letters; {} recorded gap(s) closed\n",
            self.from, self.to, self.read, self.inserted, self.already_present, self.dead_letters, self.gaps_repaired
        );
        if self.read == 0 {
            o.push_str("Redis holds no events in this window: what it lost cannot be copied from it (resend from the source, if it keeps them)\n");
        }
        o.push_str("next:\n");
        for s in &self.next_steps {
            o.push_str(&format!("  {s}\n"));
        }
        o
    }
}
