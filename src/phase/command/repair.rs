//! `tsmigrate repair`: fixes exactly what the latest validation found, from Redis — the
//! events missing in the target are copied, the events the target holds in another
//! version are rewritten, and the events only the target has are deleted only with
//! `--delete-extra`. An event Redis no longer holds (trimmed by the cap) cannot be repaired
//! from it; the report says so instead of pretending. Then the aggregates over what changed
//! (and over the window, when the aggregates differed) are refreshed.
//!
//! Idempotent and resumable: the findings are worked through in a fixed order, and each
//! batch commits with its checkpoint (`repair:<run>`), so a re-run resumes after the last
//! batch and a finished repair is not done twice. Runs in every phase from dual-write to
//! before `complete`, while dual-write goes on (every write is idempotent). Audited like
//! every phase command; `--dry-run` says what it would do, reading Redis but writing nothing.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::context::Context;
use crate::human;
use crate::ledger::checkpoint::{self, RepairCounts};
use crate::ledger::validation::{self, Depth, Verdict};
use crate::phase::report::{Details, PhaseReport};
use crate::phase::runner::{default_next_steps, Applied, Commit, PhaseCommand, Run};
use crate::phase::{Transition, REPAIR};
use crate::repair::{self as engine, GoneEvent};
use crate::state::NextStep;
use crate::store::aggregates::RefreshOutcome;
use crate::store::writer::TargetWriter;

pub struct Repair {
    /// Delete the events only the target holds (without it they are counted and kept).
    pub delete_extra: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepairDetails {
    #[serde(skip)]
    dry_run: bool,
    /// The validation run whose findings are repaired.
    pub validation_run: i64,
    pub validation_result: String,
    pub delete_extra: bool,
    pub found: HashMap<&'static str, u64>,
    /// Counted (dry run: would be) over every run of this repair.
    pub counts: RepairCounts,
    /// Findings already repaired by an earlier, interrupted run (resumed after them).
    pub resumed_after: usize,
    /// This repair had already finished: nothing was done again.
    pub already_done: bool,
    pub gone_examples: Vec<GoneEvent>,
    pub refresh: Option<RefreshOutcome>,
}

impl PhaseCommand for Repair {
    type Details = RepairDetails;

    fn stops_at_pages(&self) -> bool {
        true
    }

    fn transition(&self) -> &'static Transition {
        &REPAIR
    }

    async fn gate(&self, ctx: &Context, _run: &mut Run) -> anyhow::Result<Result<Value, String>> {
        let Some(latest) = validation::latest_from_pool(&ctx.target).await? else {
            return Ok(Err("no validation has run yet: there is nothing to repair".into()));
        };
        let findings = validation::count_findings(&ctx.target, latest.id).await?;
        if latest.depth == Depth::Counts && latest.verdict != Verdict::Clean && findings == 0 && !latest.figures.aggregates_differ() {
            return Ok(Err(format!("the latest validation (#{}) ran at counts depth: it lists no events to repair", latest.id)));
        }
        Ok(Ok(json!({"validation_run": latest.id, "result": latest.verdict.as_str(), "findings": findings})))
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<RepairDetails>> {
        let target = validation::latest_from_pool(&ctx.target).await?.ok_or_else(|| anyhow::anyhow!("no validation run to repair"))?;
        let findings = validation::findings(&ctx.target, target.id, &[]).await?;
        let mut position = checkpoint::repair(&mut *ctx.target.acquire().await?, target.id).await?.unwrap_or_default();
        let mut details = RepairDetails {
            dry_run: run.dry_run,
            validation_run: target.id,
            validation_result: target.verdict.as_str().into(),
            delete_extra: self.delete_extra,
            found: engine::found_by_kind(&findings),
            counts: position.counts.clone(),
            resumed_after: if position.finished { 0 } else { position.done },
            already_done: position.finished,
            gone_examples: vec![],
            refresh: None,
        };
        if position.finished {
            return Ok(Applied::new(details, Commit::Stay));
        }
        let mode = run.state.mode()?;
        let writer = TargetWriter::new(ctx.target.clone(), mode);
        let repair = engine::Engine { ctx, writer: &writer, run: target.id, delete_extra: self.delete_extra, dry_run: run.dry_run, resume: self.invocation() };
        repair.run(&findings, &mut position, &mut details.gone_examples, &run.boundary).await?;
        details.counts = position.counts.clone();
        if !run.dry_run {
            details.refresh = engine::refresh(ctx, mode, &target, &position).await?;
        }
        let audit = json!({"validation_run": target.id, "counts": details.counts, "delete_extra": self.delete_extra, "resumed_after": details.resumed_after});
        Ok(Applied { audit, ..Applied::new(details, Commit::Stay) })
    }

    fn command_line(&self, _report: &PhaseReport<RepairDetails>) -> String {
        self.invocation()
    }

    fn next_steps(&self, report: &PhaseReport<RepairDetails>) -> Vec<NextStep> {
        if report.dry_run && report.details.nothing_to_repair() {
            // A real run would change nothing: where the gates point, never `repair` again.
            let onward: Vec<NextStep> =
                report.gated_next.iter().filter(|s| s.command.as_deref().is_none_or(|c| !c.starts_with("tsmigrate repair"))).cloned().collect();
            if !onward.is_empty() {
                return onward;
            }
        }
        default_next_steps(self, report)
    }

    fn invocation(&self) -> String {
        format!("tsmigrate repair{}", if self.delete_extra { " --delete-extra" } else { "" })
    }
}

impl RepairDetails {
    /// The validation it works from found nothing, or this repair already ran to the end.
    fn nothing_to_repair(&self) -> bool {
        self.already_done || self.found.values().sum::<u64>() == 0
    }
}

impl Details for RepairDetails {
    fn text(&self) -> String {
        let found = |k: &str| self.found.get(k).copied().unwrap_or(0);
        let mut o = format!(
            "validation run #{} ({}): {} missing in the target, {} different, {} extra\n",
            self.validation_run,
            self.validation_result,
            found("missing"),
            found("different"),
            found("extra")
        );
        if self.already_done {
            o.push_str("this repair already ran to the end: nothing was done again (validate, then repair what a new run finds)\n");
            return o;
        }
        if self.resumed_after > 0 {
            o.push_str(&format!("resumed after {} differences repaired by an earlier run\n", self.resumed_after));
        }
        let c = &self.counts;
        let verb = |done: &'static str, would: &'static str| if self.dry_run { would } else { done };
        o.push_str(&format!("{} {} from Redis\n", verb("copied", "would copy"), human::plural(c.copied, "missing event")));
        o.push_str(&format!("{} {} from Redis\n", verb("rewrote", "would rewrite"), human::plural(c.rewritten, "different event")));
        if self.delete_extra {
            o.push_str(&format!("{} {} only the target held\n", verb("deleted", "would delete"), human::plural(c.deleted, "event")));
        } else if c.kept_extra > 0 {
            o.push_str(&format!("kept {} only the target holds (--delete-extra deletes them)\n", human::plural(c.kept_extra, "event")));
        }
        if c.already_right > 0 {
            o.push_str(&format!("{} already right (written meanwhile)\n", human::plural(c.already_right, "event")));
        }
        if c.dead_letters > 0 {
            o.push_str(&format!("{} the target refused: dead letters (see tsmigrate.dead_letter)\n", human::plural(c.dead_letters, "event")));
        }
        if c.gone_from_redis > 0 {
            o.push_str(&format!(
                "NOT REPAIRED: {} Redis no longer holds (trimmed by its cap, or changed since the validation); they cannot be copied from it:\n",
                human::plural(c.gone_from_redis, "event")
            ));
            for g in &self.gone_examples {
                o.push_str(&format!("  {} {} at {}\n", g.kind, g.event_id, g.time.map(human::utc).unwrap_or_else(|| "-".into())));
            }
        }
        if let Some(r) = &self.refresh {
            o.push_str(&format!(
                "aggregates refreshed: {} .. {}\n",
                r.from.map(|t| t.to_string()).unwrap_or_default(),
                r.to.map(|t| t.to_string()).unwrap_or_default()
            ));
        }
        o
    }
}
