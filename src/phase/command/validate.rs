//! `tsmigrate validate`: one validation run (`crate::validate::run`), recorded in
//! `tsmigrate.validation_runs`; a clean run after backfill moves `backfilled → validated`.
//!
//! Runs in any phase from `dual_writing` on (before backfill it is informational: the
//! window starts at the completion point). The phase lock is taken only at the end, to
//! commit the move: validation reads, it never blocks another phase command.

use crate::context::Context;
use crate::dual_write::gaps;
use crate::phase::report::{Details, PhaseReport};
use crate::phase::runner::{Applied, Commit, Locking, PhaseCommand, Run};
use crate::phase::state::StateChanges;
use crate::phase::{Transition, VALIDATE};
use crate::validate::run::ValidateOptions;
use crate::validate::{Depth, ValidationReport, Verdict};

pub struct Validate {
    pub options: ValidateOptions,
}

impl PhaseCommand for Validate {
    type Details = ValidationReport;

    fn transition(&self) -> &'static Transition {
        &VALIDATE
    }

    fn locking(&self) -> Locking {
        Locking::AtCommit
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<ValidationReport>> {
        let mut report = crate::validate::run::run(ctx, &run.state, &self.options).await?;
        // A recorded gap explains missing events better than anything the diff can say.
        let open = gaps::open(&ctx.target).await?;
        report.next_steps = open.iter().map(|g| format!("{}   # {}", g.repair_command(), g.describe())).collect();
        let audit =
            serde_json::json!({"validation_run": report.run_id, "window_from": report.window.from, "window_to": report.window.to, "depth": report.depth});
        // Only a clean run after backfill moves the phase; every run is in validation_runs already.
        let commit = match report.verdict() {
            Verdict::Clean if run.moves() => Commit::Move(StateChanges::default()),
            _ => Commit::Nothing,
        };
        Ok(Applied { audit, commit, ..Applied::new(report, Commit::Nothing) })
    }

    fn next_steps(&self, report: &PhaseReport<ValidationReport>) -> Vec<String> {
        let details = &report.details;
        let mut steps = details.next_steps.clone();
        steps.extend(verdict_steps(details));
        steps
    }

    fn settle(&self, report: &mut PhaseReport<ValidationReport>, note: Option<&str>) {
        report.details.phase_after = report.phase_after;
        report.details.phase_note = note.map(str::to_string);
        if !report.next_steps.is_empty() {
            report.details.next_steps = report.next_steps.clone();
        }
    }
}

fn verdict_steps(report: &ValidationReport) -> Vec<String> {
    match report.verdict() {
        Verdict::Clean if report.phase_note.is_some() => vec!["tsmigrate validate           # again, to move the phase to validated".into()],
        Verdict::Clean => report.phase_after.next_steps(),
        Verdict::Differences => {
            let mut steps = Vec::new();
            if report.depth == Depth::Counts && report.events.has_differences() {
                steps.push("tsmigrate validate --depth events   # list the differing events".into());
            }
            if report.events.findings.as_ref().is_some_and(|f| f.missing.total > 0) {
                steps.push("missing events: check the relay (tsmigrate status); events from before dual-write: tsmigrate backfill (idempotent)".into());
            }
            steps.push("fix the cause of the differences above, then: tsmigrate validate".into());
            steps
        }
    }
}

impl Details for ValidationReport {
    fn text(&self) -> String {
        self.human()
    }
}
