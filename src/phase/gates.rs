//! The gates past the phase order, pure: given what the validation runs and the state
//! say, may the command run — and so, what is the next step? Tested without a database.
//! `status` and every report take their "next:" from [`next_steps`], so what they advise is
//! what the gates will let through.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::state::{MigrationState, NextStep, Phase};

#[derive(Debug, Clone)]
pub struct LatestValidation {
    pub id: i64,
    pub finished_at: DateTime<Utc>,
    /// `clean`, `differences` or `error` (could not run).
    pub result: String,
    /// `events` or `counts`.
    pub depth: String,
}

impl LatestValidation {
    fn clean(&self) -> bool {
        self.result == "clean"
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
        (v.depth == "counts" && !self.counts_depth_opens_gates).then(|| {
            format!(
                "the latest validation (#{}) ran at counts depth, which cannot see an altered event; \
                 gates open only after an events-depth validation (or set migration.counts_depth_opens_gates = true)",
                v.id
            )
        })
    }
}

/// The cutover gate: the latest validation is clean, deep enough, and fresher than
/// `rules.freshness`. Pure.
pub fn cutover_gate(latest: Option<&LatestValidation>, now: DateTime<Utc>, rules: &GateRules) -> Result<serde_json::Value, String> {
    match latest {
        None => Err("no validation has run yet".into()),
        Some(v) if v.result == "error" => Err(format!("the latest validation (#{}, {}) could not run", v.id, v.finished_at)),
        Some(v) if !v.clean() => Err(format!("the latest validation (#{}, {}) found {}", v.id, v.finished_at, v.result)),
        Some(v) if rules.too_shallow(v).is_some() => Err(rules.too_shallow(v).unwrap_or_default()),
        Some(v) if now - v.finished_at > rules.freshness => Err(format!(
            "the latest clean validation (#{}) finished {} ago; the gate needs one from the last {}",
            v.id,
            humanize(now - v.finished_at),
            humanize(rules.freshness)
        )),
        Some(v) => Ok(json!({"validation": v.id, "validated_at": v.finished_at, "depth": v.depth})),
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
        Some(v) if v.result == "error" => Err(format!("the latest validation since the switch (#{}) could not run", v.id)),
        Some(v) if !v.clean() => Err(format!("the latest validation since the switch (#{}) found {}", v.id, v.result)),
        Some(v) => match rules.too_shallow(v) {
            Some(why) => Err(why),
            None => Ok(json!({"validation": v.id, "reads_switched_at": switched, "depth": v.depth})),
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
            Some(v) if v.result == "differences" && v.finished_at >= backfilled_at(state) => {
                Outlook::blocked(format!("the latest validation (#{}) found differences", v.id), repair_steps())
            }
            Some(v) if v.result == "error" => Outlook::blocked(format!("the latest validation (#{}) could not run", v.id), revalidate_steps()),
            _ => Outlook::open(state.phase.next_steps()),
        },
        Phase::Validated => match cutover_gate(latest, now, rules) {
            Ok(_) => Outlook::open(state.phase.next_steps()),
            Err(why) => Outlook::blocked(format!("cutover gate closed: {why}"), fixes(latest, rules)),
        },
        Phase::ReadsSwitched => reads_switched(state, latest, now, rules),
        phase => Outlook::open(phase.next_steps()),
    }
}

fn reads_switched(state: &MigrationState, latest: Option<&LatestValidation>, now: DateTime<Utc>, rules: &GateRules) -> Outlook {
    let soak_ends_at = state.reads_switched_at.map(|at| at + rules.soak);
    if let Some(ends) = soak_ends_at.filter(|ends| now < *ends) {
        let steps = vec![
            NextStep::note(format!("wait for the soak period to end at {} (in {})", ends.format("%Y-%m-%d %H:%M UTC"), humanize(ends - now))),
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
        Some(v) if v.result == "differences" => repair_steps(),
        Some(v) if v.result == "clean" && rules.too_shallow(v).is_some() => {
            vec![NextStep::run("tsmigrate validate --depth events", "a validation that compares every event opens the gate")]
        }
        _ => revalidate_steps(),
    }
}

fn repair_steps() -> Vec<NextStep> {
    vec![
        NextStep::run("tsmigrate repair", "fix exactly what the latest validation found (--dry-run first to see it)"),
        NextStep::run("tsmigrate validate", "then compare again"),
    ]
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

    fn run(id: i64, ago_h: i64, result: &str, now: DateTime<Utc>) -> LatestValidation {
        LatestValidation { id, finished_at: now - Duration::hours(ago_h), result: result.into(), depth: "events".into() }
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
        let counts = LatestValidation { depth: "counts".into(), ..run(4, 1, "clean", now) };
        assert!(cutover_gate(Some(&counts), now, &rules()).unwrap_err().contains("counts depth"));
        assert!(cutover_gate(Some(&counts), now, &GateRules { counts_depth_opens_gates: true, ..rules() }).is_ok());
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
        let shallow = LatestValidation { depth: "counts".into(), ..clean.clone() };
        assert_eq!(commands(&super::outlook(&state, Some(&shallow), now, &rules())), ["tsmigrate validate --depth events"]);

        state.phase = Phase::Backfilled;
        assert_eq!(commands(&super::outlook(&state, Some(&dirty), now, &rules())), ["tsmigrate repair", "tsmigrate validate"]);
        let before_backfill = run(6, 9, "differences", now);
        assert_eq!(commands(&super::outlook(&state, Some(&before_backfill), now, &rules())), ["tsmigrate validate"], "older news");
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
