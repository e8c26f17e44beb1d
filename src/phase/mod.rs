//! The migration as a state machine:
//!
//! `new → prepared → dual_writing → backfilled → validated → reads_switched → flush_retired → completed`
//!
//! - [`Transition`]: which phases a command moves from, where to, where it also runs
//!   without moving. Its check is pure, so the phase order is tested without a database.
//! - [`gates`]: the pure gates past the phase order (cutover, retire-flush).
//! - [`runner`]: the one way a phase command runs — lock, phase check, gate, audited
//!   refusals, dry run, commit, report, next steps. See [`runner::PhaseCommand`].
//! - [`command`]: one file per command, each its transition, gate and `apply`.
//! - [`state::PhaseGuard`]: the phase lock and the audit log; only its `commit` (and
//!   `abort`'s drop) changes the phase.
//! - [`report::PhaseReport`]: what every command reports, as text or JSON.

pub mod command;
pub mod gates;
pub mod report;
pub mod runner;
pub mod state;

pub use crate::state::Phase;
pub use report::PhaseReport;
pub use runner::{Force, Options, PhaseCommand};

use Phase::*;

/// A phase command's place in the state machine.
#[derive(Debug, Clone, Copy)]
pub struct Transition {
    pub command: &'static str,
    /// Phases the command moves from, to `to`.
    pub from: &'static [Phase],
    pub to: Phase,
    /// Phases the command also runs in, leaving the phase as it is (re-runs, repairs, reports).
    pub stays_in: &'static [Phase],
    /// Why the phase order is what it is, for a refusal; `None`: "this step needs phase …".
    pub needs: Option<&'static str>,
}

const fn moves(command: &'static str, from: &'static [Phase], to: Phase) -> Transition {
    Transition { command, from, to, stays_in: &[], needs: None }
}

pub const PREPARE: Transition =
    Transition { stays_in: &[Prepared, DualWriting, Backfilled, Validated, ReadsSwitched, FlushRetired, Completed], ..moves("prepare", &[New], Prepared) };
/// Run again while dual-write is on, start repairs what Redis may have lost (flag, group).
pub const DUAL_WRITE_START: Transition = Transition {
    stays_in: &[DualWriting, Backfilled, Validated, ReadsSwitched, FlushRetired, Completed],
    ..moves("dual-write start", &[Prepared], DualWriting)
};
pub const DUAL_WRITE_STOP: Transition = moves("dual-write stop", &[DualWriting], Prepared);
/// Again after backfill (before the flush is retired), a backfill copies once more what Redis
/// holds up to T: rows already there stay single, anything missing goes in.
pub const BACKFILL: Transition = Transition { stays_in: &[Backfilled, Validated, ReadsSwitched], ..moves("backfill", &[DualWriting], Backfilled) };
/// `repair`: fixes what the latest validation found, in any phase from dual-write on, before
/// the migration is complete.
pub const REPAIR: Transition = Transition {
    command: "repair",
    from: &[],
    to: DualWriting,
    stays_in: &[DualWriting, Backfilled, Validated, ReadsSwitched, FlushRetired],
    needs: Some("repair fixes what a validation found, once dual-write is on and until the migration is complete"),
};
/// A repair of one window (`backfill --from --to`): once dual-write is on, any phase.
pub const BACKFILL_WINDOW: Transition = Transition {
    command: "backfill --from --to",
    from: &[],
    to: DualWriting,
    stays_in: &[DualWriting, Backfilled, Validated, ReadsSwitched, FlushRetired, Completed],
    needs: Some("a window is repaired once dual-write is on"),
};
pub const IMPORT_HISTORY: Transition = Transition {
    command: "import-history",
    from: &[],
    to: Prepared,
    stays_in: &[Prepared, DualWriting, Backfilled, Validated, ReadsSwitched, FlushRetired, Completed],
    needs: Some("the target is not prepared"),
};
/// Validation runs in any phase from dual_writing on; a clean run after backfill moves
/// `backfilled → validated` and opens the cutover gate.
pub const VALIDATE: Transition = Transition {
    stays_in: &[DualWriting, Validated, ReadsSwitched, FlushRetired, Completed],
    needs: Some("validation compares Redis with the target once dual-write is on (phase dual_writing or later)"),
    ..moves("validate", &[Backfilled], Validated)
};
pub const CUTOVER: Transition = moves("cutover", &[Validated], ReadsSwitched);
pub const REVERSE: Transition = moves("reverse", &[ReadsSwitched, FlushRetired], Validated);
pub const RETIRE_FLUSH: Transition = moves("retire-flush", &[ReadsSwitched], FlushRetired);
pub const OPTIMIZE: Transition = Transition {
    command: "optimize",
    from: &[],
    to: FlushRetired,
    stays_in: &[FlushRetired, Completed],
    needs: Some("optimize runs once the legacy flush is retired"),
};
pub const COMPLETE: Transition = moves("complete", &[FlushRetired], Completed);
/// Abort is possible only while reads still come from the legacy path.
pub const ABORT: Transition = moves("abort", &[Prepared, DualWriting, Backfilled, Validated], New);
pub const SHADOW: Transition = Transition {
    command: "shadow",
    from: &[],
    to: Backfilled,
    stays_in: &[Backfilled, Validated, ReadsSwitched, FlushRetired, Completed],
    needs: Some("shadow reads compare with the target, which is complete only after backfill"),
};

/// Every phase command's transition.
pub const ALL: [&Transition; 15] = [
    &PREPARE,
    &DUAL_WRITE_START,
    &DUAL_WRITE_STOP,
    &BACKFILL,
    &REPAIR,
    &BACKFILL_WINDOW,
    &IMPORT_HISTORY,
    &VALIDATE,
    &CUTOVER,
    &REVERSE,
    &RETIRE_FLUSH,
    &OPTIMIZE,
    &COMPLETE,
    &ABORT,
    &SHADOW,
];

/// The transition of a suggested command line (`tsmigrate repair --delete-extra`); `None`
/// for one that is not a phase command (`tsmigrate run`, `tsmigrate status`).
pub fn transition_of(command_line: &str) -> Option<&'static Transition> {
    let words = command_line.strip_prefix("tsmigrate ")?;
    if words.starts_with("backfill ") && words.contains("--from") {
        return Some(&BACKFILL_WINDOW);
    }
    let command = words.split(" -").next().unwrap_or_default().trim();
    let command = if command.starts_with("shadow ") { "shadow" } else { command };
    ALL.into_iter().find(|t| t.command == command)
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
    /// The phase order: may this command run from `current`, and in which phase does it
    /// leave the migration? Pure.
    pub fn check(&self, current: Phase) -> Result<Phase, Refusal> {
        if self.from.contains(&current) {
            return Ok(self.to);
        }
        if self.stays_in.contains(&current) {
            return Ok(current);
        }
        let reason = match self.needs {
            Some(needs) => format!("the migration is in phase {current}; {needs}"),
            None => {
                let expected: Vec<&str> = self.from.iter().chain(self.stays_in).map(|p| p.as_str()).collect();
                format!("the migration is in phase {current}; this step needs phase {}", expected.join(" or "))
            }
        };
        // What to do instead is the runner's to say, from the gates (`gates::after_refusal`).
        Err(Refusal { command: self.command.to_string(), reason, next: String::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_refuse_out_of_order_with_the_next_step() {
        assert_eq!(PREPARE.check(Phase::New), Ok(Phase::Prepared));
        assert_eq!(PREPARE.check(Phase::Validated), Ok(Phase::Validated));
        let refusal = BACKFILL.check(Phase::Prepared).unwrap_err();
        assert!(refusal.reason.contains("phase prepared"), "{refusal}");
        assert!(refusal.reason.contains("dual_writing"), "{refusal}");
        assert!(DUAL_WRITE_START.check(Phase::New).unwrap_err().reason.contains("phase new"));
        assert_eq!(DUAL_WRITE_START.check(Phase::Backfilled), Ok(Phase::Backfilled), "a repair, not a move back");
        assert_eq!(BACKFILL.check(Phase::Backfilled), Ok(Phase::Backfilled));
    }

    #[test]
    fn validation_needs_dual_write_and_says_what_to_do() {
        for phase in [Phase::New, Phase::Prepared] {
            let refusal = VALIDATE.check(phase).unwrap_err();
            assert!(refusal.reason.contains("dual_writing"), "{refusal}");
        }
        for phase in [Phase::DualWriting, Phase::Validated, Phase::Completed] {
            assert_eq!(VALIDATE.check(phase), Ok(phase));
        }
        assert_eq!(VALIDATE.check(Phase::Backfilled), Ok(Phase::Validated));
    }

    #[test]
    fn suggested_command_lines_name_their_transition() {
        assert_eq!(transition_of("tsmigrate repair --delete-extra").map(|t| t.command), Some("repair"));
        assert_eq!(transition_of("tsmigrate backfill --from 2026-01-01 --to 2026-01-02").map(|t| t.command), Some("backfill --from --to"));
        assert_eq!(transition_of("tsmigrate backfill").map(|t| t.command), Some("backfill"));
        assert_eq!(transition_of("tsmigrate dual-write start").map(|t| t.command), Some("dual-write start"));
        assert_eq!(transition_of("tsmigrate shadow on").map(|t| t.command), Some("shadow"));
        assert_eq!(transition_of("tsmigrate complete --yes").map(|t| t.command), Some("complete"));
        assert!(transition_of("tsmigrate run").is_none());
    }

    #[test]
    fn every_phase_is_covered_by_a_command_or_two() {
        for phase in Phase::ALL {
            assert!(PREPARE.check(phase).is_ok());
        }
        assert!(OPTIMIZE.check(Phase::ReadsSwitched).unwrap_err().reason.contains("once the legacy flush is retired"));
        assert!(SHADOW.check(Phase::DualWriting).unwrap_err().reason.contains("after backfill"));
    }
}
