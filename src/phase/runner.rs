//! The one way a phase command runs, like sqlx-cli's `migrate run`: take the phase lock,
//! check the phase order, pass the gate (or be refused, audited), apply — or with
//! `--dry-run` say what would be applied — commit the move with its audit entry, and
//! report with the next steps. Commands only declare their [`Transition`], their gate
//! and their `apply` step ([`PhaseCommand`]); the runner does the rest the same way for all.

use std::future::Future;

use serde_json::{json, Value};

use super::gates::{GateRules, Outlook};
use super::report::{Details, PhaseReport};
use super::state::{AuditEntry, MigrationState, PhaseGuard, StateChanges};
use super::{Phase, Refusal, Transition};
use crate::context::Context;
use crate::state::NextStep;
use crate::stop::{Boundary, Rerun, Stopped, Why};

/// `--force --reason`: pass a validation/soak gate (never the phase order), audited.
#[derive(Debug, Clone, Default)]
pub struct Force {
    pub reason: Option<String>,
}

impl Force {
    pub fn forced(&self) -> bool {
        self.reason.is_some()
    }
}

/// The options every phase command shares (flattened into each command's arguments).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub dry_run: bool,
    pub force: Force,
}

impl Options {
    pub fn dry_run(dry_run: bool) -> Options {
        Options { dry_run, ..Default::default() }
    }
}

/// When the phase lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// For the whole command: nothing else moves the phase meanwhile.
    Whole,
    /// Only to commit the move at the end (validation only reads; a held lock never
    /// fails it, the report says the phase was not moved).
    AtCommit,
}

/// How the state changes once `apply` has done its work.
#[derive(Debug)]
pub enum Commit {
    /// Along the transition when the phase check said the command moves, with these
    /// changes; otherwise recorded in the audit log as a run that left the phase as it was.
    Move(StateChanges),
    /// Recorded in the audit log as a run that left the phase as it was.
    Stay,
    /// `apply` wrote the state and its audit entry itself (abort drops the state table).
    Done,
    /// Nothing to record (a validation that found differences records its own run).
    Nothing,
}

/// What `apply` hands back.
pub struct Applied<D> {
    pub details: D,
    /// What the audit log keeps of it.
    pub audit: Value,
    pub commit: Commit,
    pub warnings: Vec<String>,
}

impl<D: Details> Applied<D> {
    /// Details that are also the audit entry.
    pub fn new(details: D, commit: Commit) -> Applied<D> {
        let audit = serde_json::to_value(&details).unwrap_or(Value::Null);
        Applied { details, audit, commit, warnings: vec![] }
    }
}

/// One run of a command: what `gate` and `apply` may read and use.
pub struct Run {
    /// The state when the command started (under the lock, unless [`Locking::AtCommit`]).
    pub state: MigrationState,
    /// Where the phase check says the command leaves the migration.
    pub phase_after: Phase,
    pub dry_run: bool,
    /// The gate's evidence (or, forced, why it failed), for the details.
    pub gate: Value,
    /// What long work asks at each page boundary (interrupted? lock still held?).
    pub boundary: Boundary,
    guard: Option<PhaseGuard>,
}

impl Run {
    /// The phase lock's connection (control tables, validation runs).
    pub fn guard(&mut self) -> anyhow::Result<&mut PhaseGuard> {
        self.guard.as_mut().ok_or_else(|| anyhow::anyhow!("this command does not hold the phase lock here"))
    }

    /// Whether the command moves the phase (rather than running again in it).
    pub fn moves(&self) -> bool {
        self.phase_after != self.state.phase
    }
}

/// A phase command: one per file in [`super::command`].
pub trait PhaseCommand: Send + Sync {
    type Details: Details + Send + Sync;

    fn transition(&self) -> &'static Transition;

    /// The name in output and in the audit log.
    fn name(&self) -> String {
        self.transition().command.to_string()
    }

    /// Whether `--force --reason` may pass its gate (the validation and soak gates).
    const FORCEABLE: bool = false;

    fn locking(&self) -> Locking {
        Locking::Whole
    }

    /// Whether `apply` stops at its own page boundaries when interrupted (and confirms the
    /// lock before each page commits). Otherwise an interrupt abandons `apply` where it
    /// waits — its open transaction rolls back — and the command commits nothing.
    fn stops_at_pages(&self) -> bool {
        false
    }

    /// The command line as it was given, with the command's own options (`validate --from
    /// … --depth counts`): what an interrupted run says to run again. The options every
    /// phase command shares are added by the runner.
    fn invocation(&self) -> String {
        format!("tsmigrate {}", self.name())
    }

    /// A gate past the phase order: evidence it may run, or why not (refused unless forced).
    fn gate(&self, _ctx: &Context, _run: &mut Run) -> impl Future<Output = anyhow::Result<Result<Value, String>>> + Send {
        async { Ok(Ok(Value::Null)) }
    }

    /// The rules its gate applies (`retire-flush --soak` asks for another soak period); the
    /// advice after a refusal is computed with them.
    fn gate_rules(&self, ctx: &Context) -> GateRules {
        GateRules::from_settings(&ctx.settings.migration)
    }

    /// The command's own work; with `run.dry_run`, only what it would do.
    fn apply(&self, ctx: &Context, run: &mut Run) -> impl Future<Output = anyhow::Result<Applied<Self::Details>>> + Send;

    /// Work that must follow the committed move (never before it).
    fn after_commit(&self, _ctx: &Context) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// The command line that does what a dry run showed (with what it needs to run for
    /// real, like `--yes`).
    fn command_line(&self, _report: &PhaseReport<Self::Details>) -> String {
        format!("tsmigrate {}", self.name())
    }

    /// The fix for a refusal of this command's own gate when the migration state does not
    /// decide it (the Redis eviction policy); `None`: the gates' outlook says what to do.
    fn gate_fix(&self) -> Option<NextStep> {
        None
    }

    /// What the operator does next, once the report is complete.
    fn next_steps(&self, report: &PhaseReport<Self::Details>) -> Vec<NextStep> {
        default_next_steps(self, report)
    }

    /// Brings the details up to date with what the runner did (a command whose details
    /// repeat the phase move, like validation's report).
    fn settle(&self, _report: &mut PhaseReport<Self::Details>, _note: Option<&str>) {}
}

/// A command that cannot be undone runs only with `--yes`: otherwise it is refused (and
/// audited), naming what it would do and how to look first.
pub fn confirmed(yes: bool, command: &str, why: &str) -> Result<(), Refusal> {
    if yes {
        return Ok(());
    }
    Err(Refusal {
        command: command.into(),
        reason: format!("{why}; it needs confirmation"),
        next: format!("tsmigrate {command} --dry-run   # to see what it would do, then: tsmigrate {command} --yes"),
    })
}

/// After a dry run, the command line that does it; else what the gates say comes next,
/// without the command that just ran (it is done).
pub fn default_next_steps<C: PhaseCommand + ?Sized>(command: &C, report: &PhaseReport<C::Details>) -> Vec<NextStep> {
    if report.dry_run {
        return vec![NextStep::run(command.command_line(report), "do what is listed above (the same without --dry-run)")];
    }
    let done = command.transition().command;
    let steps: Vec<NextStep> =
        report.gated_next.iter().filter(|s| s.command.as_deref().and_then(super::transition_of).map(|t| t.command) != Some(done)).cloned().collect();
    if steps.is_empty() {
        report.gated_next.clone()
    } else {
        steps
    }
}

/// Where the migration can go from here as the gates see it, read on `conn`.
async fn read_outlook(conn: &mut sqlx::PgConnection, rules: &GateRules) -> anyhow::Result<Outlook> {
    let state = crate::ledger::migration::load(conn).await?;
    let latest = if state.phase > Phase::New { super::state::latest_validation(conn).await? } else { None };
    Ok(super::gates::outlook(&state, latest.as_ref(), chrono::Utc::now(), rules))
}

/// The next steps from where the migration is now, as the gates see them; `status` when the
/// state or the latest validation cannot be read.
async fn gated_next_steps(ctx: &Context) -> Vec<NextStep> {
    let read = async { read_outlook(&mut *ctx.target.acquire().await?, &GateRules::from_settings(&ctx.settings.migration)).await };
    match read.await {
        Ok(outlook) => outlook.next_steps,
        Err(_) => vec![unknown_step()],
    }
}

fn unknown_step() -> NextStep {
    NextStep::run("tsmigrate status", "see where the migration stands (it could not be read just now)")
}

/// A refusal with what to do instead, from the gates: the first step they advise from where
/// the migration stands (read on the lock's connection when the command holds it).
async fn advised<C: PhaseCommand>(ctx: &Context, command: &C, run: &mut Run, mut refusal: Refusal, gate_refused: bool) -> Refusal {
    let rules = command.gate_rules(ctx);
    let outlook = match run.guard.as_mut() {
        Some(guard) => read_outlook(guard.conn(), &rules).await,
        None => match ctx.target.acquire().await {
            Ok(mut conn) => read_outlook(&mut conn, &rules).await,
            Err(e) => Err(e.into()),
        },
    };
    let step = match (outlook, command.gate_fix().filter(|_| gate_refused)) {
        (_, Some(fix)) => fix,
        (Ok(outlook), None) => super::gates::after_refusal(command.transition().command, gate_refused, &outlook),
        (Err(_), None) => unknown_step(),
    };
    refusal.next = step.to_string();
    refusal
}

/// Runs `command`: lock, phase check, gate, apply, commit, report. Every refusal on the
/// way is written to the audit log (once the control tables exist).
pub async fn run<C: PhaseCommand>(ctx: &Context, command: &C, options: &Options) -> anyhow::Result<PhaseReport<C::Details>> {
    let guard = match command.locking() {
        Locking::Whole => Some(PhaseGuard::acquire(&ctx.settings.database.url, &command.name()).await?),
        Locking::AtCommit => None,
    };
    let boundary = Boundary::new(ctx.interrupt.clone(), guard.as_ref().map(PhaseGuard::pid));
    let mut run = Run {
        state: crate::ledger::migration::load_from_pool(&ctx.target).await?,
        phase_after: Phase::New,
        dry_run: options.dry_run,
        gate: Value::Null,
        boundary,
        guard,
    };
    if let Some(guard) = run.guard.as_mut() {
        // Under the lock, the state is what the lock's connection reads.
        run.state = guard.state().await?;
    }
    let outcome = steps(ctx, command, options, &mut run).await;
    if let Err(error) = &outcome {
        if let Some(refusal) = error.downcast_ref::<Refusal>() {
            audit_refusal(ctx, &mut run, &command.name(), refusal, options).await;
        }
        if let Some(stopped) = error.downcast_ref::<Stopped>() {
            if let Err(e) = super::state::record_stop(&ctx.target, &command.name(), run.state.phase, stopped).await {
                tracing::warn!(error = %format!("{e:#}"), command = command.name(), "could not record the stop in the audit log");
            }
        }
    }
    outcome
}

async fn steps<C: PhaseCommand>(ctx: &Context, command: &C, options: &Options, run: &mut Run) -> anyhow::Result<PhaseReport<C::Details>> {
    run.phase_after = match command.transition().check(run.state.phase) {
        Ok(phase) => phase,
        Err(refusal) => return Err(advised(ctx, command, run, refusal, false).await.into()),
    };
    let gate = command.gate(ctx, run).await?;
    run.gate = match pass_gate(command, gate, &options.force) {
        Ok(evidence) => evidence,
        Err(refusal) => return Err(advised(ctx, command, run, refusal, true).await.into()),
    };
    let applied = match command.stops_at_pages() {
        true => command.apply(ctx, run).await?,
        false => tokio::select! {
            applied = command.apply(ctx, run) => applied?,
            signal = ctx.interrupt.wait() => return Err(Stopped {
                command: command.name(),
                why: Why::Interrupted(signal),
                at: "before it committed anything (what it had started was rolled back)".into(),
                resume: rerun_line(command, options),
                rerun: Rerun::StartsOver,
            }
            .into()),
        },
    };
    let mut report = PhaseReport {
        command: command.name(),
        dry_run: options.dry_run,
        phase_before: run.state.phase,
        phase_after: if options.dry_run { run.phase_after } else { run.state.phase },
        forced: options.force.forced(),
        reason: options.force.reason.clone(),
        details: applied.details,
        warnings: applied.warnings,
        next_steps: vec![],
        gated_next: vec![],
    };
    let mut note = None;
    if !options.dry_run {
        let audit = AuditEntry { forced: options.force.forced(), reason: options.force.reason.clone(), details: applied.audit };
        match commit(ctx, command, run, applied.commit, audit).await? {
            Ok(phase) => report.phase_after = phase,
            Err(why) => note = Some(why),
        }
        if report.phase_after != report.phase_before {
            command.after_commit(ctx).await?;
        }
    }
    report.warnings.extend(note.clone());
    report.gated_next = gated_next_steps(ctx).await;
    // Settled before the next steps (they may read the details) and after (the details
    // may repeat them).
    command.settle(&mut report, note.as_deref());
    report.next_steps = command.next_steps(&report);
    command.settle(&mut report, note.as_deref());
    Ok(report)
}

fn pass_gate<C: PhaseCommand>(command: &C, gate: Result<Value, String>, force: &Force) -> Result<Value, Refusal> {
    match gate {
        Ok(evidence) => Ok(evidence),
        Err(why) if force.forced() => Ok(json!({"gate_failed": why})),
        Err(why) => Err(Refusal {
            command: command.name(),
            reason: if C::FORCEABLE { format!("{why} (`--force --reason \"...\"` passes this gate; audited)") } else { why },
            next: String::new(),
        }),
    }
}

/// Writes the move (or the run that stayed). `Ok(phase)`: the phase now; `Err(note)`: a
/// late lock could not be had, so the phase was not moved (the command still succeeded).
async fn commit<C: PhaseCommand>(ctx: &Context, command: &C, run: &mut Run, commit: Commit, audit: AuditEntry) -> anyhow::Result<Result<Phase, String>> {
    let from = run.state.phase;
    match commit {
        Commit::Done => return Ok(Ok(run.phase_after)),
        Commit::Nothing => return Ok(Ok(from)),
        Commit::Move(_) | Commit::Stay if run.guard.is_none() => {
            if let Err(note) = late_lock(ctx, run, &command.name()).await {
                return Ok(Err(note));
            }
        }
        _ => {}
    }
    let moves = run.moves();
    let again = Options { dry_run: false, force: Force { reason: audit.reason.clone() } };
    let guard = run.guard()?;
    let committed = match commit {
        Commit::Move(changes) if moves => guard.commit(command.transition(), from, changes, audit).await.map(|()| command.transition().to),
        _ => guard.audit_noop(&command.name(), from, audit.details).await.map(|()| from),
    };
    match committed {
        Ok(phase) => Ok(Ok(phase)),
        // The lock connection died after the work: say so, not only the driver's error.
        Err(error) if run.boundary.lost_lock(&ctx.target, &error).await => Err(Stopped {
            command: command.name(),
            why: Why::LockLost,
            at: "after its work, before it could record it and move the phase".into(),
            resume: rerun_line(command, &again),
            // Paged work finds its checkpoint complete; any other work is done again.
            rerun: if command.stops_at_pages() { Rerun::Resumes } else { Rerun::StartsOver },
        }
        .into()),
        Err(error) => Err(error),
    }
}

/// The command line that runs `command` again as it was given: its own options and the
/// shared ones (`--dry-run`, `--force --reason`).
pub fn rerun_line<C: PhaseCommand + ?Sized>(command: &C, options: &Options) -> String {
    let mut line = command.invocation();
    if options.dry_run {
        line.push_str(" --dry-run");
    }
    if let Some(reason) = &options.force.reason {
        line.push_str(&format!(" --force --reason {}", shell_quoted(reason)));
    }
    line
}

/// `value` as one shell word: as it is when it is plain, else in single quotes.
pub fn shell_quoted(value: &str) -> String {
    let plain = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Takes the lock at the end ([`Locking::AtCommit`]); says why not when it cannot.
async fn late_lock(ctx: &Context, run: &mut Run, command: &str) -> Result<(), String> {
    match PhaseGuard::acquire(&ctx.settings.database.url, command).await {
        Ok(guard) => {
            run.guard = Some(guard);
            Ok(())
        }
        Err(e) => Err(match e.downcast_ref::<super::state::LockHeld>() {
            Some(held) => format!(
                "the phase was not moved: another tsmigrate phase command holds the migration lock (PostgreSQL backend pid {}); run the command again when it has finished",
                held.holder
            ),
            None => format!("the phase was not moved: {e}"),
        }),
    }
}

/// Records a refusal; a failure to record it is logged, never hides the refusal.
async fn audit_refusal(ctx: &Context, run: &mut Run, command: &str, refusal: &Refusal, options: &Options) {
    let details = json!({"dry_run": options.dry_run});
    let phase = run.state.phase;
    let recorded = match run.guard.as_mut() {
        Some(guard) => guard.audit_refusal(command, phase, refusal, details).await,
        None => match ctx.target.acquire().await {
            Ok(mut conn) => super::state::record_refusal(&mut conn, &super::state::actor(), command, phase, refusal, details).await,
            Err(e) => Err(e.into()),
        },
    };
    if let Err(e) = recorded {
        tracing::warn!(error = %format!("{e:#}"), command, "could not record the refusal in the audit log");
    }
}
