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

pub use crate::state::Phase;

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
    fn gates_refuse_out_of_order_with_the_next_step() {
        assert!(PREPARE.check(Phase::New).is_ok());
        let refusal = BACKFILL.check(Phase::Prepared).unwrap_err();
        assert!(refusal.reason.contains("phase prepared"), "{refusal}");
        assert!(refusal.reason.contains("dual_writing"), "{refusal}");
        assert!(refusal.next.contains("dual-write start"), "{refusal}");
        assert!(DUAL_WRITE_START.check(Phase::New).unwrap_err().next.contains("prepare"));
    }
}
