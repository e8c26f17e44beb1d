//! `tsmigrate backfill --from --to`: copies the events the sorted set holds in a time window
//! into the target again — the repair for a possible gap in dual-write (Redis lost the outbox
//! before the relay read it; `status` lists such windows). Idempotent like every write path:
//! rows already present stay single, events the target cannot store become dead letters.
//! Needs no phase change; the gaps the window covers are marked repaired.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::backfill::{copy_pages, Page, PageSink};
use crate::context::Context;
use crate::dual_write::gaps;
use crate::legacy::reader::ScoreCursor;
use crate::phase::report::Details;
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::{Transition, BACKFILL_WINDOW};
use crate::stop::{Stopped, Why};
use crate::store::aggregates::{self, RefreshOutcome};
use crate::store::writer::{PageOutcome, TargetWriter};

pub struct BackfillWindow {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub page_size: usize,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct WindowDetails {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub read: u64,
    pub inserted: u64,
    pub already_present: u64,
    pub dead_letters: u64,
    /// Recorded outbox gaps inside the window, now marked repaired.
    pub gaps_repaired: u64,
    pub refresh: Option<RefreshOutcome>,
}

impl PhaseCommand for BackfillWindow {
    type Details = WindowDetails;

    fn stops_at_pages(&self) -> bool {
        true
    }

    fn transition(&self) -> &'static Transition {
        &BACKFILL_WINDOW
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<WindowDetails>> {
        if self.from >= self.to {
            anyhow::bail!("--from ({}) must be before --to ({})", self.from, self.to);
        }
        let mode = run.state.storage_mode.ok_or_else(|| anyhow::anyhow!("storage mode missing from the migration state"))?;
        let mut details = WindowDetails { from: Some(self.from), to: Some(self.to), ..Default::default() };
        if !run.dry_run {
            let writer = TargetWriter::new(ctx.target.clone(), mode);
            let (cursor, until) = (ScoreCursor::at(self.from.timestamp_millis() as f64), self.to.timestamp_millis() as f64);
            let redis = ctx.redis().await?;
            copy_pages(&writer, redis, ctx.keys.events.clone(), cursor, until, self.page_size, "repair", &mut details, &run.boundary).await?;
            if details.read > 0 {
                let t = &ctx.settings.target;
                details.refresh = Some(aggregates::refresh(&*ctx.store(mode), self.from, self.to, t.timezone(), t.raw_retention_days).await?);
            }
            details.gaps_repaired = gaps::mark_repaired(&mut *ctx.target.acquire().await?, self.from, self.to).await?;
        }
        let audit = json!({"from": self.from, "to": self.to, "read": details.read, "inserted": details.inserted, "gaps_repaired": details.gaps_repaired});
        Ok(Applied { audit, ..Applied::new(details, Commit::Stay) })
    }
}

impl PageSink for WindowDetails {
    fn written(&mut self, page: &Page, outcome: &PageOutcome) -> Option<(&'static str, Value)> {
        self.read += page.read as u64;
        self.inserted += outcome.inserted;
        self.already_present += outcome.already_present;
        self.dead_letters += outcome.dead_letters_recorded;
        None
    }

    fn committed(&mut self, _page: &Page, _now: Instant) -> Option<Duration> {
        None
    }

    fn stopped(&self, why: Why) -> Stopped {
        let show = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
        Stopped {
            command: "backfill --from --to".into(),
            why,
            at: format!("after {} events of the window (no recorded gap was closed)", self.read),
            // The window is copied again from its start: what is in stays single.
            resume: format!("tsmigrate backfill --from {} --to {}", show(self.from), show(self.to)),
        }
    }
}

impl Details for WindowDetails {
    fn text(&self) -> String {
        let show = |t: Option<DateTime<Utc>>| t.map(|t| t.to_string()).unwrap_or_default();
        let mut o = format!(
            "repaired {} .. {}: {} events read from Redis, {} inserted, {} already present, {} dead letters; {} recorded gap(s) closed\n",
            show(self.from),
            show(self.to),
            self.read,
            self.inserted,
            self.already_present,
            self.dead_letters,
            self.gaps_repaired
        );
        if self.read == 0 {
            o.push_str("Redis holds no events in this window: what it lost cannot be copied from it (resend from the source, if it keeps them)\n");
        }
        o
    }
}
