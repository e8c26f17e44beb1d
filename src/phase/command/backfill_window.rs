//! `tsmigrate backfill --from --to`: copies the events the sorted set holds in a time window
//! into the target again — the repair for a possible gap in dual-write (Redis lost the outbox
//! before the relay read it; `status` lists such windows). Idempotent like every write path:
//! rows already present stay single, events the target cannot store become dead letters.
//! Needs no phase change. A recorded gap inside the window is closed only when the copy read
//! events of the gap's window from Redis; one Redis holds nothing for, or one opened by
//! evictions (evicted events cannot be read back), stays open — a loss, not a repair — unless
//! `accept_loss` gives the operator's reason, which is audited.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::backfill::{copy_pages, Page, PageSink};
use crate::context::Context;
use crate::ledger::checkpoint::Checkpoint;
use crate::ledger::gaps;
use crate::legacy::reader::ScoreCursor;
use crate::phase::report::{Details, PhaseReport};
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::{Transition, BACKFILL_WINDOW};
use crate::progress::RateLimit;
use crate::state::NextStep;
use crate::stop::{Stopped, Why};
use crate::store::aggregates::{self, RefreshOutcome};
use crate::store::writer::{PageOutcome, TargetWriter};

pub struct BackfillWindow {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub page_size: usize,
    /// At most this many events per second (`--max-rate`), to spare a busy server.
    pub max_rate: Option<u64>,
    /// Close the gaps the copy cannot repair (Redis holds nothing of their window, or evicted
    /// keys in it), accepting their loss, for this reason (audited).
    pub accept_loss: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct WindowDetails {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub read: u64,
    pub inserted: u64,
    pub already_present: u64,
    pub dead_letters: u64,
    /// Recorded outbox gaps inside the window the copy read events of, now closed.
    pub gaps_repaired: u64,
    /// Recorded gaps inside the window the copy cannot repair — Redis holds no events of their
    /// window, or evicted keys in it (evicted events cannot be read back): still open unless accepted.
    pub gaps_lost: Vec<i64>,
    /// Of those, the ones closed by the operator's acceptance of the loss.
    pub gaps_accepted_as_lost: Vec<i64>,
    pub refresh: Option<RefreshOutcome>,
    /// The pace `--max-rate` sets (none: as fast as the servers go).
    #[serde(skip)]
    limit: Option<RateLimit>,
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
        let mode = run.state.mode()?;
        let limit = self.max_rate.filter(|r| *r > 0).map(|rate| RateLimit::new(rate, Instant::now()));
        let mut details = WindowDetails { from: Some(self.from), to: Some(self.to), limit, ..Default::default() };
        if !run.dry_run {
            let writer = TargetWriter::new(ctx.target.clone(), mode);
            let (cursor, until) = (ScoreCursor::at(self.from.timestamp_millis() as f64), self.to.timestamp_millis() as f64);
            let redis = ctx.redis().await?;
            copy_pages(&writer, redis, ctx.keys.events.clone(), cursor, until, self.page_size, "repair", &mut details, &run.boundary).await?;
            if details.read > 0 {
                let t = &ctx.settings.target;
                details.refresh = Some(aggregates::refresh(&*ctx.store(mode), self.from, self.to, t.timezone(), t.raw_retention_days).await?);
            }
            self.close_gaps(ctx, &mut details).await?;
        }
        let audit = json!({
            "from": self.from, "to": self.to, "read": details.read, "inserted": details.inserted, "gaps_repaired": details.gaps_repaired,
            "gaps_lost": details.gaps_lost, "gaps_accepted_as_lost": details.gaps_accepted_as_lost, "accept_loss_reason": self.accept_loss,
        });
        Ok(Applied { audit, ..Applied::new(details, Commit::Stay) })
    }

    fn next_steps(&self, report: &PhaseReport<WindowDetails>) -> Vec<NextStep> {
        let d = &report.details;
        let still_open: Vec<i64> = d.gaps_lost.iter().filter(|id| !d.gaps_accepted_as_lost.contains(id)).copied().collect();
        let mut steps = Vec::new();
        if !still_open.is_empty() {
            steps.push(NextStep::run(
                format!("tsmigrate backfill --from {} --to {} --accept-loss \"<why>\"", rfc3339(self.from), rfc3339(self.to)),
                format!(
                    "gap(s) {still_open:?} cannot be repaired from Redis: resend those events from their source if it keeps them, or accept the loss (audited)"
                ),
            ));
        }
        steps.push(NextStep::run("tsmigrate validate", "compare the window again"));
        steps
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl BackfillWindow {
    /// Closes the open gaps inside the window whose own window the copy read events of (the
    /// copy read all of `[from, to]`, so Redis holding events in a gap's window now means the
    /// copy read them); the others stay open, or are closed as accepted losses.
    async fn close_gaps(&self, ctx: &Context, details: &mut WindowDetails) -> anyhow::Result<()> {
        let mut conn = ctx.target.acquire().await?;
        let mut redis = ctx.redis().await?;
        for gap in gaps::open_within(&mut conn, self.from, self.to).await? {
            let from = gap.window_from.unwrap_or(gap.window_to).timestamp_millis();
            let held: u64 = redis::cmd("ZCOUNT").arg(&ctx.keys.events).arg(from).arg(gap.window_to.timestamp_millis()).query_async(&mut redis).await?;
            // Evicted events can never be read back: the copy takes what Redis still holds,
            // and the gap stays open until the loss is accepted.
            if gap.cause != gaps::EVICTED && held > 0 && details.read > 0 {
                gaps::close(&mut conn, gap.id, None).await?;
                details.gaps_repaired += 1;
                continue;
            }
            details.gaps_lost.push(gap.id);
            if let Some(reason) = &self.accept_loss {
                gaps::close(&mut conn, gap.id, Some(reason)).await?;
                details.gaps_accepted_as_lost.push(gap.id);
            }
        }
        Ok(())
    }
}

impl PageSink for WindowDetails {
    fn written(&mut self, page: &Page, outcome: &PageOutcome) -> Option<Checkpoint> {
        self.read += page.read as u64;
        self.inserted += outcome.inserted;
        self.already_present += outcome.already_present;
        self.dead_letters += outcome.dead_letters_recorded;
        None
    }

    fn committed(&mut self, page: &Page, now: Instant) -> Option<Duration> {
        self.limit.as_mut()?.after(page.read as u64, now)
    }

    fn stopped(&self, why: Why) -> Stopped {
        let show = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
        Stopped {
            command: "backfill --from --to".into(),
            why,
            at: format!("after {} events of the window (no recorded gap was closed)", self.read),
            // The window is copied again from its start: what is in stays single.
            resume: format!("tsmigrate backfill --from {} --to {}", show(self.from), show(self.to)),
            rerun: crate::stop::Rerun::StartsOver,
        }
    }
}

impl Details for WindowDetails {
    fn text(&self) -> String {
        let show = |t: Option<DateTime<Utc>>| t.map(crate::human::utc).unwrap_or_default();
        let mut o = format!(
            "repaired {} .. {}: {} events read from Redis, {} inserted, {} already present, {} dead letters; {} closed\n",
            show(self.from),
            show(self.to),
            self.read,
            self.inserted,
            self.already_present,
            self.dead_letters,
            crate::human::plural(self.gaps_repaired, "recorded gap")
        );
        if self.read == 0 {
            o.push_str("Redis holds no events in this window: what it lost cannot be copied from it (resend from the source, if it keeps them)\n");
        }
        let open: Vec<i64> = self.gaps_lost.iter().filter(|id| !self.gaps_accepted_as_lost.contains(id)).copied().collect();
        if !open.is_empty() {
            o.push_str(&format!(
                "LOSS: recorded gap(s) {open:?} cannot be repaired from Redis (it holds no events of their window, or evicted keys in it): they stay open; \
                 accept the loss with --accept-loss \"<why>\" (audited) once the source cannot resend them\n"
            ));
        }
        if !self.gaps_accepted_as_lost.is_empty() {
            o.push_str(&format!("recorded gap(s) {:?} closed as accepted losses (audited)\n", self.gaps_accepted_as_lost));
        }
        o
    }
}
