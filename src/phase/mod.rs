//! The migration as a state machine:
//!
//! `new → prepared → dual_writing → backfilled → validated → reads_switched → flush_retired → completed`
//!
//! Every phase change goes through [`state::PhaseGuard::commit`], which holds the phase
//! advisory lock, re-checks the expected phase in the same transaction, and writes the
//! audit log. The gate logic here is pure, so it is tested without a database.

pub mod abort;
pub mod backfill;
pub mod dual_write;
pub mod history;
pub mod lifecycle;
pub mod optimize;
pub mod prepare;
pub mod repair;
pub mod state;
pub mod status;
pub mod validate;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    New,
    Prepared,
    DualWriting,
    Backfilled,
    Validated,
    ReadsSwitched,
    FlushRetired,
    Completed,
}

impl Phase {
    pub const ALL: [Phase; 8] =
        [Phase::New, Phase::Prepared, Phase::DualWriting, Phase::Backfilled, Phase::Validated, Phase::ReadsSwitched, Phase::FlushRetired, Phase::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::New => "new",
            Phase::Prepared => "prepared",
            Phase::DualWriting => "dual_writing",
            Phase::Backfilled => "backfilled",
            Phase::Validated => "validated",
            Phase::ReadsSwitched => "reads_switched",
            Phase::FlushRetired => "flush_retired",
            Phase::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Dual-write is on in this phase and every later one.
    pub fn dual_write_active(self) -> bool {
        self >= Phase::DualWriting
    }

    /// What an operator does next from here.
    pub fn next_steps(self) -> Vec<String> {
        let steps: &[&str] = match self {
            Phase::New => &["tsmigrate prepare            # create the target schema (add --dry-run to see the SQL first)"],
            Phase::Prepared => &["tsmigrate dual-write start   # new events go to Redis and the target from now on"],
            Phase::DualWriting => &[
                "tsmigrate run                # keep the relay running so dual-written events reach the target",
                "tsmigrate backfill           # copy the events Redis already holds",
            ],
            Phase::Backfilled => &["tsmigrate validate           # compare Redis and the target; clean opens the cutover gate"],
            Phase::Validated => &["tsmigrate cutover            # serve reads from the target (reversible with `tsmigrate reverse`)"],
            Phase::ReadsSwitched => {
                &["wait for the soak period, then: tsmigrate validate", "tsmigrate retire-flush       # stop the legacy hourly flush worker"]
            }
            Phase::FlushRetired => &["tsmigrate optimize           # retention, compression report", "tsmigrate complete"],
            Phase::Completed => &["nothing: the migration is complete"],
        };
        steps.iter().map(|s| s.to_string()).collect()
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phase command that moves the state: which phases it starts from, where it goes.
#[derive(Debug, Clone, Copy)]
pub struct Transition {
    pub command: &'static str,
    pub from: &'static [Phase],
    pub to: Phase,
}

pub const PREPARE: Transition = Transition { command: "prepare", from: &[Phase::New], to: Phase::Prepared };
pub const DUAL_WRITE_START: Transition = Transition { command: "dual-write start", from: &[Phase::Prepared], to: Phase::DualWriting };
pub const DUAL_WRITE_STOP: Transition = Transition { command: "dual-write stop", from: &[Phase::DualWriting], to: Phase::Prepared };
pub const BACKFILL: Transition = Transition { command: "backfill", from: &[Phase::DualWriting, Phase::Backfilled], to: Phase::Backfilled };
/// A clean validation after backfill opens the cutover gate. Validation itself runs in any
/// phase from dual_writing on; only this move is gated.
pub const VALIDATE: Transition = Transition { command: "validate", from: &[Phase::Backfilled], to: Phase::Validated };
pub const CUTOVER: Transition = Transition { command: "cutover", from: &[Phase::Validated], to: Phase::ReadsSwitched };
pub const REVERSE: Transition = Transition { command: "reverse", from: &[Phase::ReadsSwitched, Phase::FlushRetired], to: Phase::Validated };
pub const RETIRE_FLUSH: Transition = Transition { command: "retire-flush", from: &[Phase::ReadsSwitched], to: Phase::FlushRetired };
pub const COMPLETE: Transition = Transition { command: "complete", from: &[Phase::FlushRetired], to: Phase::Completed };
/// Abort is possible only while reads still come from the legacy path.
pub const ABORT: Transition =
    Transition { command: "abort", from: &[Phase::Prepared, Phase::DualWriting, Phase::Backfilled, Phase::Validated], to: Phase::New };

/// What a phase command did, for text and `--json` output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseReport {
    pub command: String,
    pub dry_run: bool,
    pub phase_before: Phase,
    pub phase_after: Phase,
    pub forced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the command found and did (gate evidence, objects dropped, figures).
    pub details: serde_json::Value,
    /// Risks the command noticed but that did not stop it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub next_steps: Vec<String>,
}

impl PhaseReport {
    /// The report of `transition` run from `phase_before` (not forced).
    pub fn for_transition(transition: &Transition, phase_before: Phase, dry_run: bool, details: serde_json::Value) -> PhaseReport {
        PhaseReport {
            command: transition.command.into(),
            dry_run,
            phase_before,
            phase_after: transition.to,
            forced: false,
            reason: None,
            details,
            warnings: vec![],
            next_steps: if dry_run { vec![format!("tsmigrate {}   # without --dry-run", transition.command)] } else { transition.to.next_steps() },
        }
    }

    pub fn human(&self) -> String {
        let mut o = String::new();
        if self.dry_run {
            o.push_str(&format!(
                "dry run: {} can run; it would move {} -> {}; nothing was changed
",
                self.command, self.phase_before, self.phase_after
            ));
        } else if self.phase_before != self.phase_after {
            o.push_str(&format!(
                "{}: phase {} -> {}
",
                self.command, self.phase_before, self.phase_after
            ));
        } else {
            o.push_str(&format!(
                "{}: done (phase stays {})
",
                self.command, self.phase_after
            ));
        }
        if self.forced {
            o.push_str(&format!(
                "FORCED past the gate; reason recorded in the audit log: {}
",
                self.reason.as_deref().unwrap_or("")
            ));
        }
        if let serde_json::Value::Object(map) = &self.details {
            for (key, value) in map {
                let shown = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                o.push_str(&format!("  {key}: {shown}\n"));
            }
        }
        for warning in &self.warnings {
            o.push_str(&format!("WARNING: {warning}\n"));
        }
        o.push_str("next:\n");
        for s in &self.next_steps {
            o.push_str(&format!("  {s}\n"));
        }
        o
    }
}

/// A command refused by a gate. Shown to the operator as is, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{command} refused: {reason}\n  next: {next}")]
pub struct Refusal {
    pub command: String,
    pub reason: String,
    pub next: String,
}

impl Transition {
    /// The phase gate: may this command run from `current`? Pure.
    pub fn check(&self, current: Phase) -> Result<(), Refusal> {
        if self.from.contains(&current) {
            return Ok(());
        }
        let expected: Vec<&str> = self.from.iter().map(|p| p.as_str()).collect();
        Err(Refusal {
            command: self.command.to_string(),
            reason: format!("the migration is in phase {current}; this step needs phase {}", expected.join(" or ")),
            next: current.next_steps().first().cloned().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_are_ordered() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
            assert!(!p.next_steps().is_empty());
        }
        assert!(Phase::New < Phase::Completed);
        assert!(Phase::Validated.dual_write_active());
        assert!(!Phase::Prepared.dual_write_active());
    }

    #[test]
    fn gates_refuse_out_of_order_with_the_next_step() {
        assert!(PREPARE.check(Phase::New).is_ok());
        let refusal = BACKFILL.check(Phase::Prepared).unwrap_err();
        assert!(refusal.reason.contains("phase prepared"), "{refusal}");
        assert!(refusal.reason.contains("dual_writing"), "{refusal}");
        assert!(refusal.next.contains("dual-write start"), "{refusal}");
        assert!(DUAL_WRITE_START.check(Phase::New).unwrap_err().next.contains("prepare"));
    }
}
