//! `tsmigrate validate`: one validation run (`crate::validate::run`), recorded in
//! `tsmigrate.validation_runs` with what it covered; a clean run over the whole migrated
//! range after backfill moves `backfilled → validated`. A narrower one moves nothing and
//! says which range is still unchecked.
//!
//! Runs in any phase from `dual_writing` on (before backfill it is informational: the
//! window starts at the completion point). The phase lock is taken only at the end, to
//! commit the move: validation reads, it never blocks another phase command.

use crate::context::Context;
use crate::ledger::gaps;
use crate::phase::report::{Details, PhaseReport};
use crate::phase::runner::{Applied, Commit, Locking, PhaseCommand, Run};
use crate::phase::state::StateChanges;
use crate::phase::{Transition, VALIDATE};
use crate::state::NextStep;
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

    fn invocation(&self) -> String {
        self.options.command_line.clone()
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<ValidationReport>> {
        let mut report = crate::validate::run::run(ctx, &run.state, &self.options).await?;
        // A recorded gap explains missing events better than anything the diff can say.
        let open = gaps::open(&ctx.target).await?;
        report.next_steps = open.iter().map(|g| NextStep::run(g.repair_command(), g.describe())).collect();
        let audit = serde_json::json!({
            "validation_run": report.run_id,
            "window_from": report.window.from,
            "window_to": report.window.to,
            "range": report.window.range,
            "depth": report.depth,
        });
        // Only a clean run after backfill moves the phase, and one at counts depth (it cannot
        // see an altered event) only where the settings allow it; every run is in
        // validation_runs already.
        let shallow = report.depth == Depth::Counts && !ctx.settings.migration.counts_depth_opens_gates;
        let coverage = report.window.coverage();
        let mut warnings = vec![];
        // Said of every narrow run, clean or not, in any phase: it opens no gate.
        if let Some(why) = coverage.narrow_because() {
            warnings.push(format!("this validation opens no gate: {why}; run `tsmigrate validate` without --from/--to to compare the whole range"));
        }
        let commit = match report.verdict() {
            Verdict::Clean if run.moves() && shallow => {
                warnings.push(format!(
                    "a validation at counts depth does not open the cutover gate (migration.counts_depth_opens_gates is false): the phase stays {}",
                    run.state.phase
                ));
                Commit::Nothing
            }
            Verdict::Clean if run.moves() && !coverage.whole() => Commit::Nothing,
            Verdict::Clean if run.moves() => Commit::Move(StateChanges::default()),
            _ => Commit::Nothing,
        };
        Ok(Applied { audit, commit, warnings, ..Applied::new(report, Commit::Nothing) })
    }

    fn next_steps(&self, report: &PhaseReport<ValidationReport>) -> Vec<NextStep> {
        let details = &report.details;
        let mut steps = details.next_steps.clone();
        steps.extend(verdict_steps(details, &report.gated_next));
        steps
    }

    fn settle(&self, report: &mut PhaseReport<ValidationReport>, note: Option<&str>) {
        report.details.phase_after = report.phase_after;
        report.details.phase_note = note.map(str::to_string);
        report.details.warnings = report.warnings.iter().filter(|w| Some(w.as_str()) != note).cloned().collect();
        if !report.next_steps.is_empty() {
            report.details.next_steps = report.next_steps.clone();
        }
    }
}

/// What to do after this run: for a clean one, what the gates say comes next.
fn verdict_steps(report: &ValidationReport, gated_next: &[NextStep]) -> Vec<NextStep> {
    match report.verdict() {
        Verdict::Clean if report.phase_note.is_some() => vec![NextStep::run("tsmigrate validate", "again, to move the phase to validated")],
        Verdict::Clean => gated_next.to_vec(),
        Verdict::Differences => difference_steps(report),
        Verdict::Incomplete => report
            .could_not_run()
            .iter()
            .map(|(check, _, hint)| NextStep::note(format!("{check} check: {hint}")))
            .chain([NextStep::run("tsmigrate validate", "then validate again")])
            .collect(),
    }
}

/// The command that fixes each kind of difference found, then validating again.
fn difference_steps(report: &ValidationReport) -> Vec<NextStep> {
    let mut steps = Vec::new();
    if report.depth == Depth::Counts && report.events.has_differences() {
        steps.push(NextStep::run("tsmigrate validate --depth events", "counts differ: list the differing events, which repair then fixes"));
    }
    let (missing, extra, different) = report.events.findings.as_ref().map_or((0, 0, 0), |f| (f.missing.total, f.extra.total, f.different.total));
    if missing + different > 0 || report.hourly.has_differences() || report.assets.has_differences() {
        let mut what = Vec::new();
        if missing > 0 {
            what.push(format!("copies the {} from Redis", crate::human::plural(missing, "missing event")));
        }
        if different > 0 {
            what.push(format!("rewrites the {} from Redis", crate::human::plural(different, "differing event")));
        }
        if report.hourly.has_differences() || report.assets.has_differences() {
            what.push("refreshes the target aggregates over the window".into());
        }
        steps.push(NextStep::run("tsmigrate repair", what.join("; ")));
    }
    if extra > 0 {
        steps.push(NextStep::run(
            "tsmigrate repair --delete-extra",
            format!("deletes the {} only the target holds (find out why they are there first)", crate::human::plural(extra, "event")),
        ));
    }
    if missing > 0 {
        steps.push(NextStep::note(
            "many missing events at the newest end: the relay may be behind (tsmigrate status), or a gap needs `tsmigrate backfill --from --to`",
        ));
    }
    steps.push(NextStep::run("tsmigrate validate", "after the repair, compare again"));
    steps
}

impl Details for ValidationReport {
    fn text(&self) -> String {
        self.human()
    }
}
