//! The gates past the phase order, pure: given what the validation runs and the state
//! say, may the command run — and so, what is the next step? Tested without a database.
//! This is the one place advice comes from: `status`, every report ([`outlook`]) and every
//! refusal ([`after_refusal`]) take their "next:" from here, so what they advise is what the
//! gates will let through.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::ledger::validation::{Depth, ValidationRun, Verdict};
use crate::state::{MigrationState, NextStep, Phase};
use crate::validate::window::{Coverage, Span};

/// A recorded validation run, as the gates read it.
#[derive(Debug, Clone)]
pub struct LatestValidation {
    pub id: i64,
    pub finished_at: DateTime<Utc>,
    pub verdict: Verdict,
    pub depth: Depth,
    /// What it compared of the whole migrated range; `None` when that was not recorded (a
    /// run that failed before choosing its window, or one recorded by an earlier tsmigrate).
    pub coverage: Option<Coverage>,
    /// Events only the target holds that it found (what `repair --delete-extra` deletes).
    pub extra: u64,
}

impl From<&ValidationRun> for LatestValidation {
    /// The gates' view of the latest run as the ledger records it.
    fn from(run: &ValidationRun) -> LatestValidation {
        let span = |(from, to): (DateTime<Utc>, DateTime<Utc>)| Span { from, to };
        LatestValidation {
            id: run.id,
            finished_at: run.finished_at,
            verdict: run.verdict,
            depth: run.depth,
            coverage: run.window.zip(run.range).map(|(compared, range)| Coverage { compared: span(compared), range: span(range) }),
            extra: run.figures.extra,
        }
    }
}

impl LatestValidation {
    fn clean(&self) -> bool {
        self.verdict == Verdict::Clean
    }

    /// Why this run cannot open a gate because of what it compared; `None` when it compared
    /// the whole migrated range.
    fn narrow(&self) -> Option<String> {
        match &self.coverage {
            None => Some(format!(
                "the latest validation (#{}) has no record of what it covered of the migrated range (recorded by an earlier tsmigrate), so it opens no gate",
                self.id
            )),
            Some(coverage) => coverage.narrow_because().map(|why| format!("the latest validation (#{}) opens no gate: {why}", self.id)),
        }
    }
}

/// What the gates require, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct GateRules {
    /// How recent the clean validation that opens the cutover gate must be.
    pub freshness: Duration,
    /// How long reads stay switched before the flush may be retired.
    pub soak: Duration,
    /// Whether a validation at counts depth (which cannot see an altered event) opens gates.
    pub counts_depth_opens_gates: bool,
}

impl GateRules {
    pub fn from_settings(m: &crate::config::MigrationSettings) -> GateRules {
        GateRules {
            freshness: Duration::hours(i64::from(m.validation_freshness_hours)),
            soak: Duration::hours(i64::from(m.soak_hours)),
            counts_depth_opens_gates: m.counts_depth_opens_gates,
        }
    }

    /// Why `v` cannot open a gate although it is clean; `None` when it can.
    fn too_shallow(&self, v: &LatestValidation) -> Option<String> {
        (v.depth == Depth::Counts && !self.counts_depth_opens_gates).then(|| {
            format!(
                "the latest validation (#{}) ran at counts depth, which cannot see an altered event; \
                 gates open only after an events-depth validation (or set migration.counts_depth_opens_gates = true)",
                v.id
            )
        })
    }
}

/// The cutover gate: the latest validation is clean, deep enough, covers the whole migrated
/// range, and is fresher than `rules.freshness`. Pure.
pub fn cutover_gate(latest: Option<&LatestValidation>, now: DateTime<Utc>, rules: &GateRules) -> Result<serde_json::Value, String> {
    match latest {
        None => Err("no validation has run yet".into()),
        Some(v) if v.verdict == Verdict::Incomplete => Err(format!("the latest validation (#{}, {}) could not run", v.id, v.finished_at)),
        Some(v) if !v.clean() => Err(format!("the latest validation (#{}, {}) found {}", v.id, v.finished_at, v.verdict.as_str())),
        Some(v) if rules.too_shallow(v).is_some() => Err(rules.too_shallow(v).unwrap_or_default()),
        Some(v) if v.narrow().is_some() => Err(v.narrow().unwrap_or_default()),
        Some(v) if now - v.finished_at > rules.freshness => Err(format!(
            "the latest clean validation (#{}) finished {} ago; the gate needs one from the last {}",
            v.id,
            humanize(now - v.finished_at),
            humanize(rules.freshness)
        )),
        Some(v) => Ok(json!({"validation": v.id, "validated_at": v.finished_at, "depth": v.depth, "range": v.coverage.map(|c| c.range)})),
    }
}

/// The retire gate: reads switched for the soak period, and a clean, deep enough validation
/// since the switch. Pure.
pub fn retire_gate(state: &MigrationState, latest: Option<&LatestValidation>, now: DateTime<Utc>, rules: &GateRules) -> Result<serde_json::Value, String> {
    let switched = state.reads_switched_at.ok_or("reads were never switched")?;
    if now - switched < rules.soak {
        return Err(format!("reads switched {} ago; the soak period is {}", humanize(now - switched), humanize(rules.soak)));
    }
    match latest {
        Some(v) if v.finished_at <= switched => Err("no validation has run since reads were switched".into()),
        None => Err("no validation has run since reads were switched".into()),
        Some(v) if v.verdict == Verdict::Incomplete => Err(format!("the latest validation since the switch (#{}) could not run", v.id)),
        Some(v) if !v.clean() => Err(format!("the latest validation since the switch (#{}) found {}", v.id, v.verdict.as_str())),
        Some(v) => match rules.too_shallow(v).or_else(|| v.narrow()) {
            Some(why) => Err(why),
            None => Ok(json!({"validation": v.id, "reads_switched_at": switched, "depth": v.depth, "range": v.coverage.map(|c| c.range)})),
        },
    }
}

/// Where the migration can go from here, as the gates see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlook {
    pub next_steps: Vec<NextStep>,
    /// The next move is held back by a gate that only work can open (repair, a validation
    /// that could not run, a stale validation); waiting for time to pass is not blocked.
    pub blocked: Option<String>,
    /// The soak period ends then (reads switched, soak not over).
    pub soak_ends_at: Option<DateTime<Utc>>,
}

impl Outlook {
    fn open(next_steps: Vec<NextStep>) -> Outlook {
        Outlook { next_steps, blocked: None, soak_ends_at: None }
    }

    fn blocked(why: String, next_steps: Vec<NextStep>) -> Outlook {
        Outlook { next_steps, blocked: Some(why), soak_ends_at: None }
    }
}

/// The next steps from the state and the latest validation, respecting the gates. Pure.
pub fn outlook(state: &MigrationState, latest: Option<&LatestValidation>, now: DateTime<Utc>, rules: &GateRules) -> Outlook {
    match state.phase {
        Phase::Backfilled => match latest {
            Some(v) if v.verdict == Verdict::Differences && v.finished_at >= backfilled_at(state) => {
                Outlook::blocked(format!("the latest validation (#{}) found differences", v.id), repair_steps(v))
            }
            Some(v) if v.verdict == Verdict::Incomplete => Outlook::blocked(format!("the latest validation (#{}) could not run", v.id), revalidate_steps()),
            // Validating deeper or the rest is the next step anyway: not blocked.
            Some(v) if v.clean() && rules.too_shallow(v).is_some() => Outlook::open(events_depth_steps()),
            Some(v) if v.clean() && v.narrow().is_some() => Outlook::open(whole_range_steps(v)),
            _ => Outlook::open(phase_steps(state.phase)),
        },
        Phase::Validated => match cutover_gate(latest, now, rules) {
            Ok(_) => Outlook::open(phase_steps(state.phase)),
            Err(why) => Outlook::blocked(format!("cutover gate closed: {why}"), fixes(latest, rules)),
        },
        Phase::ReadsSwitched => reads_switched(state, latest, now, rules),
        phase => Outlook::open(phase_steps(phase)),
    }
}

/// What an operator does next from a phase when nothing holds the migration back. Every
/// first step is a command the phase order accepts in that phase (tested below).
fn phase_steps(phase: Phase) -> Vec<NextStep> {
    match phase {
        Phase::New => vec![NextStep::run("tsmigrate prepare", "create the target schema (add --dry-run to see the SQL first)")],
        Phase::Prepared => vec![NextStep::run("tsmigrate dual-write start", "new events go to Redis and the target from now on")],
        Phase::DualWriting => vec![
            NextStep::run("tsmigrate backfill", "copy the events Redis already holds"),
            NextStep::run("tsmigrate run", "keep the relay running so dual-written events reach the target"),
        ],
        Phase::Backfilled => vec![NextStep::run("tsmigrate validate", "compare Redis and the target; a clean run over the whole range opens the cutover gate")],
        Phase::Validated => vec![NextStep::run("tsmigrate cutover", "serve reads from the target (reversible with `tsmigrate reverse`)")],
        Phase::ReadsSwitched => vec![NextStep::run("tsmigrate retire-flush", "stop the legacy hourly flush worker")],
        Phase::FlushRetired => vec![
            NextStep::run("tsmigrate optimize", "retention, compression report"),
            // Never the irreversible command itself: its dry run, whose next step is `--yes`.
            NextStep::run("tsmigrate complete --dry-run", "see what ending the migration does (it cannot be undone), then run it with --yes"),
        ],
        Phase::Completed => vec![NextStep::note(
            "nothing: the migration is complete and reads can no longer be switched back by tsmigrate; \
             if the target must be left in an emergency, follow runbooks/08-after-complete.md",
        )],
    }
}

/// What a refusal points to: the first step the gates advise from where the migration
/// stands — for a refused `repair`, the validation that lists what it fixes. `outlook` is
/// computed with the refused command's own rules (`retire-flush --soak`).
pub fn after_refusal(command: &str, gate_refused: bool, outlook: &Outlook) -> NextStep {
    if gate_refused && command == super::REPAIR.command {
        return NextStep::run("tsmigrate validate --depth events", "list the differences, which repair then fixes");
    }
    outlook.next_steps.first().cloned().unwrap_or_else(|| NextStep::note("nothing to do"))
}

fn reads_switched(state: &MigrationState, latest: Option<&LatestValidation>, now: DateTime<Utc>, rules: &GateRules) -> Outlook {
    let soak_ends_at = state.reads_switched_at.map(|at| at + rules.soak);
    if let Some(ends) = soak_ends_at.filter(|ends| now < *ends) {
        let steps = vec![
            NextStep::note(format!(
                "wait for the soak period to end at {} (in {}); `tsmigrate retire-flush --soak DURATION` asks for a shorter one",
                ends.format("%Y-%m-%d %H:%M UTC"),
                humanize(ends - now)
            )),
            NextStep::run("tsmigrate validate", "after the soak: a clean validation since the switch opens the retire gate"),
            NextStep::run("tsmigrate retire-flush", "then stop the legacy hourly flush"),
        ];
        return Outlook { next_steps: steps, blocked: None, soak_ends_at: Some(ends) };
    }
    let outlook = match retire_gate(state, latest, now, rules) {
        Ok(_) => Outlook::open(vec![NextStep::run("tsmigrate retire-flush", "stop the legacy hourly flush worker")]),
        Err(why) if why.contains("no validation has run since") => {
            Outlook::open(vec![NextStep::run("tsmigrate validate", "a clean validation since the switch opens the retire gate")])
        }
        Err(why) => Outlook::blocked(format!("retire gate closed: {why}"), fixes(latest, rules)),
    };
    Outlook { soak_ends_at, ..outlook }
}

/// What opens a gate that the latest validation keeps closed.
fn fixes(latest: Option<&LatestValidation>, rules: &GateRules) -> Vec<NextStep> {
    match latest {
        Some(v) if v.verdict == Verdict::Differences => repair_steps(v),
        Some(v) if v.clean() && rules.too_shallow(v).is_some() => events_depth_steps(),
        Some(v) if v.clean() && v.narrow().is_some() => whole_range_steps(v),
        _ => revalidate_steps(),
    }
}

fn events_depth_steps() -> Vec<NextStep> {
    vec![NextStep::run("tsmigrate validate --depth events", "a validation that compares every event opens the gate")]
}

/// After a clean run over part of the migrated range: the whole range, in one run.
fn whole_range_steps(v: &LatestValidation) -> Vec<NextStep> {
    let left = match &v.coverage {
        Some(coverage) => format!("run #{} left {} unchecked", v.id, coverage.show_unchecked()),
        None => format!("run #{} did not record what it covered", v.id),
    };
    vec![NextStep::run("tsmigrate validate", format!("compare the whole migrated range (no --from/--to) to open the gate; {left}"))]
}

fn repair_steps(v: &LatestValidation) -> Vec<NextStep> {
    // At counts depth a run lists no events: repair would have nothing to work from.
    if v.depth == Depth::Counts {
        return vec![
            NextStep::run("tsmigrate validate --depth events", "counts differ: list the differing events, which repair then fixes"),
            NextStep::run("tsmigrate repair", "then fix what it found"),
        ];
    }
    let mut steps = vec![NextStep::run("tsmigrate repair", "fix exactly what the latest validation found (--dry-run first to see it)")];
    if v.extra > 0 {
        steps.push(NextStep::run(
            "tsmigrate repair --delete-extra",
            format!("also delete the {} only the target holds, if they should go (find out why they are there first)", crate::human::plural(v.extra, "event")),
        ));
    }
    steps.push(NextStep::run("tsmigrate validate", "then compare again"));
    steps
}

fn revalidate_steps() -> Vec<NextStep> {
    vec![NextStep::run("tsmigrate validate", "a fresh clean validation opens the gate")]
}

/// When the backfill finished (the state's last update in phase backfilled): differences
/// found before it are no longer the news.
fn backfilled_at(state: &MigrationState) -> DateTime<Utc> {
    state.updated_at.unwrap_or(DateTime::<Utc>::MIN_UTC)
}

use crate::duration::show as humanize;

#[cfg(test)]
mod tests {
    use super::*;

    use crate::validate::window::Span;

    /// The whole migrated range of these tests: the last four days.
    fn range(now: DateTime<Utc>) -> Span {
        Span { from: now - Duration::days(4), to: now - Duration::hours(1) }
    }

    fn run(id: i64, ago_h: i64, result: &str, now: DateTime<Utc>) -> LatestValidation {
        LatestValidation {
            id,
            finished_at: now - Duration::hours(ago_h),
            verdict: Verdict::parse(result).unwrap(),
            depth: Depth::Events,
            coverage: Some(Coverage { compared: range(now), range: range(now) }),
            extra: 0,
        }
    }

    /// A clean run over a few hours of the range only.
    fn narrow(id: i64, now: DateTime<Utc>) -> LatestValidation {
        let compared = Span { from: now - Duration::hours(5), to: now - Duration::hours(3) };
        LatestValidation { coverage: Some(Coverage { compared, range: range(now) }), ..run(id, 1, "clean", now) }
    }

    fn rules() -> GateRules {
        GateRules { freshness: Duration::hours(24), soak: Duration::hours(24), counts_depth_opens_gates: false }
    }

    #[test]
    fn cutover_needs_a_fresh_clean_deep_validation() {
        let now = Utc::now();
        assert!(cutover_gate(None, now, &rules()).unwrap_err().contains("no validation"));
        assert!(cutover_gate(Some(&run(1, 1, "differences", now)), now, &rules()).unwrap_err().contains("found differences"));
        assert!(cutover_gate(Some(&run(1, 1, "error", now)), now, &rules()).unwrap_err().contains("could not run"));
        assert!(cutover_gate(Some(&run(2, 30, "clean", now)), now, &rules()).unwrap_err().contains("30h ago"));
        assert!(cutover_gate(Some(&run(3, 2, "clean", now)), now, &rules()).is_ok());
        let counts = LatestValidation { depth: Depth::Counts, ..run(4, 1, "clean", now) };
        assert!(cutover_gate(Some(&counts), now, &rules()).unwrap_err().contains("counts depth"));
        assert!(cutover_gate(Some(&counts), now, &GateRules { counts_depth_opens_gates: true, ..rules() }).is_ok());
    }

    #[test]
    fn only_a_validation_of_the_whole_range_opens_a_gate() {
        let now = Utc::now();
        let why = cutover_gate(Some(&narrow(5, now)), now, &rules()).unwrap_err();
        assert!(why.contains("(#5) opens no gate") && why.contains("still unchecked"), "{why}");
        let unrecorded = LatestValidation { coverage: None, ..run(6, 1, "clean", now) };
        assert!(cutover_gate(Some(&unrecorded), now, &rules()).unwrap_err().contains("no record of what it covered"));
        let mut state = MigrationState::new_migration();
        state.reads_switched_at = Some(now - Duration::hours(30));
        assert!(retire_gate(&state, Some(&narrow(7, now)), now, &rules()).unwrap_err().contains("still unchecked"));

        state.phase = Phase::Backfilled;
        let next = outlook(&state, Some(&narrow(8, now)), now, &rules());
        assert_eq!(commands(&next), ["tsmigrate validate"]);
        assert!(next.next_steps[0].why.contains("whole migrated range") && next.next_steps[0].why.contains("unchecked"), "{next:?}");
        state.phase = Phase::Validated;
        let next = outlook(&state, Some(&narrow(9, now)), now, &rules());
        assert!(next.blocked.as_deref().unwrap().contains("still unchecked"), "{next:?}");
        assert_eq!(commands(&next), ["tsmigrate validate"]);
    }

    #[test]
    fn retire_needs_the_soak_and_a_clean_validation_after_the_switch() {
        let now = Utc::now();
        let mut state = MigrationState::new_migration();
        state.reads_switched_at = Some(now - Duration::hours(30));
        assert!(retire_gate(&state, Some(&run(1, 31, "clean", now)), now, &rules()).unwrap_err().contains("since reads were switched"));
        assert!(retire_gate(&state, Some(&run(2, 1, "differences", now)), now, &rules()).unwrap_err().contains("found differences"));
        assert!(retire_gate(&state, Some(&run(3, 1, "clean", now)), now, &rules()).is_ok());
        state.reads_switched_at = Some(now - Duration::hours(2));
        assert!(retire_gate(&state, Some(&run(4, 1, "clean", now)), now, &rules()).unwrap_err().contains("soak period"));
    }

    fn commands(outlook: &Outlook) -> Vec<String> {
        outlook.next_steps.iter().map(|s| s.command.clone().unwrap_or_else(|| format!("({})", s.why))).collect()
    }

    #[test]
    fn the_next_step_respects_the_gates() {
        let now = Utc::now();
        let mut state = MigrationState::new_migration();
        state.phase = Phase::Validated;
        state.updated_at = Some(now - Duration::hours(5));
        let dirty = run(7, 1, "differences", now);
        let outlook = outlook(&state, Some(&dirty), now, &rules());
        assert_eq!(commands(&outlook), ["tsmigrate repair", "tsmigrate validate"], "after a dirty validation: repair, not cutover");
        assert!(outlook.blocked.as_deref().unwrap().contains("found differences"));
        let clean = run(8, 1, "clean", now);
        assert_eq!(commands(&super::outlook(&state, Some(&clean), now, &rules())), ["tsmigrate cutover"]);
        let stale = run(9, 30, "clean", now);
        assert_eq!(commands(&super::outlook(&state, Some(&stale), now, &rules())), ["tsmigrate validate"]);
        let shallow = LatestValidation { depth: Depth::Counts, ..clean.clone() };
        assert_eq!(commands(&super::outlook(&state, Some(&shallow), now, &rules())), ["tsmigrate validate --depth events"]);

        state.phase = Phase::Backfilled;
        assert_eq!(commands(&super::outlook(&state, Some(&dirty), now, &rules())), ["tsmigrate repair", "tsmigrate validate"]);
        let before_backfill = run(6, 9, "differences", now);
        assert_eq!(commands(&super::outlook(&state, Some(&before_backfill), now, &rules())), ["tsmigrate validate"], "older news");
    }

    /// Whether the gates accept `step` now: its command passes the phase order and its gate
    /// (as far as a pure function can tell: repair needs a validation that listed events),
    /// or it is a note saying what to wait for or where the way on is written.
    fn accepted(step: &NextStep, state: &MigrationState, latest: Option<&LatestValidation>, now: DateTime<Utc>) -> Result<(), String> {
        let Some(line) = &step.command else {
            return (step.why.contains("wait") || step.why.contains("runbooks/"))
                .then_some(())
                .ok_or(format!("a note that says neither what to wait for nor where to read on: {step}"));
        };
        let transition = crate::phase::transition_of(line).ok_or(format!("{line:?} is not a phase command"))?;
        transition.check(state.phase).map_err(|r| r.to_string())?;
        match transition.command {
            "cutover" => cutover_gate(latest, now, &rules()).map(drop),
            "retire-flush" => retire_gate(state, latest, now, &rules()).map(drop),
            "repair" if !latest.is_some_and(|v| v.verdict == Verdict::Differences && v.depth == Depth::Events) => {
                Err(format!("repair after {latest:?} has nothing listed to repair"))
            }
            _ => Ok(()),
        }
    }

    #[test]
    fn every_refusal_points_to_a_step_the_gates_accept() {
        let now = Utc::now();
        let counts_dirty = LatestValidation { depth: Depth::Counts, ..run(5, 1, "differences", now) };
        let counts_clean = LatestValidation { depth: Depth::Counts, ..run(6, 1, "clean", now) };
        let with_extra = LatestValidation { extra: 3, ..run(7, 1, "differences", now) };
        let latests = [
            None,
            Some(run(1, 1, "clean", now)),
            Some(run(2, 1, "differences", now)),
            Some(run(3, 1, "error", now)),
            Some(narrow(4, now)),
            Some(counts_dirty),
            Some(counts_clean),
            Some(with_extra),
            Some(run(8, 30, "clean", now)),
        ];
        let mut walked = 0;
        for phase in Phase::ALL {
            for latest in latests.iter().map(Option::as_ref) {
                // In the soak and after it.
                for switched_ago in [2, 40] {
                    let mut state = MigrationState::new_migration();
                    state.phase = phase;
                    state.updated_at = Some(now - Duration::hours(5));
                    state.reads_switched_at = (phase >= Phase::ReadsSwitched).then(|| now - Duration::hours(switched_ago));
                    let outlook = outlook(&state, latest, now, &rules());
                    let mut refused: Vec<(&str, bool)> = crate::phase::ALL.iter().filter(|t| t.check(phase).is_err()).map(|t| (t.command, false)).collect();
                    if phase == Phase::Validated && cutover_gate(latest, now, &rules()).is_err() {
                        refused.push(("cutover", true));
                    }
                    if phase == Phase::ReadsSwitched && retire_gate(&state, latest, now, &rules()).is_err() {
                        refused.push(("retire-flush", true));
                    }
                    if crate::phase::REPAIR.check(phase).is_ok() && !latest.is_some_and(|v| v.depth == Depth::Events) {
                        refused.push(("repair", true));
                    }
                    for (command, by_gate) in refused {
                        let step = after_refusal(command, by_gate, &outlook);
                        if let Err(why) = accepted(&step, &state, latest, now) {
                            panic!("{command} refused in {phase} (by its gate: {by_gate}) after {latest:?}: next `{step}` is not accepted: {why}");
                        }
                        walked += 1;
                    }
                }
            }
        }
        assert!(walked > 300, "walked {walked} refusals");
    }

    #[test]
    fn the_way_on_after_complete_is_the_runbook() {
        let mut state = MigrationState::new_migration();
        state.phase = Phase::Completed;
        let step = after_refusal("reverse", false, &outlook(&state, None, Utc::now(), &rules()));
        assert!(step.command.is_none() && step.why.contains("runbooks/08-after-complete.md"), "{step}");
    }

    #[test]
    fn during_the_soak_the_next_step_says_when_it_ends() {
        let now = Utc::now();
        let mut state = MigrationState::new_migration();
        state.phase = Phase::ReadsSwitched;
        state.reads_switched_at = Some(now - Duration::hours(2));
        let soaking = outlook(&state, Some(&run(1, 1, "clean", now)), now, &rules());
        assert_eq!(soaking.soak_ends_at, Some(now + Duration::hours(22)));
        assert!(soaking.blocked.is_none(), "waiting is not blocked");
        assert!(soaking.next_steps[0].why.contains("in 22h"), "{:?}", soaking.next_steps);
        state.reads_switched_at = Some(now - Duration::hours(30));
        assert_eq!(commands(&outlook(&state, Some(&run(2, 1, "clean", now)), now, &rules())), ["tsmigrate retire-flush"]);
        assert_eq!(commands(&outlook(&state, Some(&run(3, 40, "clean", now)), now, &rules())), ["tsmigrate validate"]);
        assert_eq!(commands(&outlook(&state, Some(&run(4, 1, "differences", now)), now, &rules())), ["tsmigrate repair", "tsmigrate validate"]);
    }
}
