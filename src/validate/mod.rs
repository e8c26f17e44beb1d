//! Validation: does the target hold exactly what Redis and the legacy tables hold?
//!
//! * [`window`]      which whole hours both systems cover, and why (pure).
//! * [`fingerprint`] the per-event fingerprint both sides compute (pure).
//! * [`diff`]        the diff core: summaries and event lists in, findings out (pure).
//! * [`collect`]     the collectors, one per system; the only I/O here.
//! * [`report`]      renderers: text with a unified diff, JSON, JUnit XML.
//! * [`run`]         one run: collectors → diff core → report, recorded through the ledger
//!   (`crate::ledger::validation`: runs and their findings, what repair fixes and
//!   `tsmigrate findings` shows).
//!
//! The phase command around a run (phase check, moving `backfilled → validated`) is
//! `crate::phase::command::validate`. The rules (what is compared, tolerance, exit codes) are
//! written down in `validation/README.md`.

pub mod collect;
pub mod diff;
/// The per-event fingerprint lives below the store, which stores it with every row.
pub use crate::fingerprint;
pub mod report;
pub mod run;
pub mod window;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::legacy::reader::OutOfRange;
use crate::state::Phase;
use crate::store::aggregates::RefreshOutcome;
use crate::store::StorageMode;
use collect::aggregates::{AssetKey, HourlyKey};
use diff::{AggregateFindings, EventFindings, HourDifference, Listed};
use window::Window;

pub use crate::ledger::validation::{Depth, Verdict};

/// Whether a check ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckState {
    Compared,
    /// Nothing to compare, by design (the legacy flush is retired; no whole day in the window).
    NotApplicable(String),
    /// It should have run and could not: what is missing, and what to change.
    CouldNotRun {
        reason: String,
        hint: String,
    },
}

/// Redis events against the target's raw events.
#[derive(Debug, Clone, Default)]
pub struct EventCheck {
    pub redis_events: u64,
    pub target_events: u64,
    /// Redis members in the window that are not valid events, by reason (information only:
    /// they are in `tsmigrate.dead_letter`, not in the target, by design). At counts depth,
    /// those recorded in `tsmigrate.dead_letter` (ZCOUNT cannot tell them apart).
    pub dead_letters: BTreeMap<String, u64>,
    pub hours_compared: usize,
    /// Hours whose count (or hash) differs.
    pub hours: Listed<HourDifference>,
    /// Events depth: the differing events.
    pub findings: Option<EventFindings>,
    /// Differing hours not narrowed to events (too many events to hold; see the limit).
    pub not_narrowed: Vec<DateTime<Utc>>,
    /// Differing hours in which narrowing found no differing event: they changed while
    /// validating (a late write), or differ only under the tolerance rules.
    pub settled_while_validating: Vec<DateTime<Utc>>,
    /// Redis members scored where no window (and no path into the target) ever reaches:
    /// before 2000 or `-inf`, after now + 1 day or `+inf`. Not differences (they are not
    /// event times), but always reported, in both storage modes and at both depths.
    pub out_of_range: OutOfRange,
}

impl EventCheck {
    pub fn has_differences(&self) -> bool {
        match &self.findings {
            Some(findings) => findings.total() > 0 || !self.not_narrowed.is_empty(),
            None => self.hours.total > 0,
        }
    }

    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}

/// One legacy table against its target aggregate.
#[derive(Debug, Clone)]
pub struct AggregateCheck<K> {
    /// The hours (or whole days' span) compared; `None` when it did not run.
    pub range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub findings: Option<AggregateFindings<K>>,
    pub state: CheckState,
}

impl<K> AggregateCheck<K> {
    pub fn compared(range: (DateTime<Utc>, DateTime<Utc>), findings: AggregateFindings<K>) -> Self {
        AggregateCheck { range: Some(range), findings: Some(findings), state: CheckState::Compared }
    }

    pub fn not_applicable(reason: impl Into<String>) -> Self {
        AggregateCheck { range: None, findings: None, state: CheckState::NotApplicable(reason.into()) }
    }

    pub fn could_not_run(reason: impl Into<String>, hint: impl Into<String>) -> Self {
        AggregateCheck { range: None, findings: None, state: CheckState::CouldNotRun { reason: reason.into(), hint: hint.into() } }
    }

    pub fn has_differences(&self) -> bool {
        self.findings.as_ref().is_some_and(|f| f.differences.total > 0)
    }

    /// The check's status word: clean, differences, not_applicable, could_not_run.
    pub fn status(&self) -> &'static str {
        match (&self.state, self.has_differences()) {
            (CheckState::NotApplicable(_), _) => "not_applicable",
            (CheckState::CouldNotRun { .. }, _) => "could_not_run",
            (CheckState::Compared, true) => "differences",
            (CheckState::Compared, false) => "clean",
        }
    }
}

/// Everything one run found.
#[derive(Debug, Clone)]
pub struct ValidationReport {
    /// `tsmigrate.validation_runs.id`.
    pub run_id: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub depth: Depth,
    pub mode: StorageMode,
    pub window: Window,
    pub events: EventCheck,
    pub hourly: AggregateCheck<HourlyKey>,
    pub assets: AggregateCheck<AssetKey>,
    /// The aggregate refresh done before comparing (`None` with `--no-refresh` or when skipped).
    pub refresh: Option<RefreshOutcome>,
    pub phase_before: Phase,
    pub phase_after: Phase,
    /// Why the phase did not move although it could have (lock held...).
    pub phase_note: Option<String>,
    /// What the run noticed besides its findings (a counts-depth run that opens no gate).
    pub warnings: Vec<String>,
    /// Per-stage wall time in milliseconds, for operators sizing the job.
    pub timings: BTreeMap<&'static str, u64>,
    pub next_steps: Vec<crate::state::NextStep>,
}

impl ValidationReport {
    pub fn verdict(&self) -> Verdict {
        if !self.could_not_run().is_empty() {
            Verdict::Incomplete
        } else if self.events.has_differences() || self.hourly.has_differences() || self.assets.has_differences() {
            Verdict::Differences
        } else {
            Verdict::Clean
        }
    }

    /// The checks that could not run: (check, reason, what to change).
    pub fn could_not_run(&self) -> Vec<(&'static str, &str, &str)> {
        [("legacy hourly", &self.hourly.state), ("asset popularity", &self.assets.state)]
            .into_iter()
            .filter_map(|(check, state)| match state {
                CheckState::CouldNotRun { reason, hint } => Some((check, reason.as_str(), hint.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The figures stored with the run in `tsmigrate.validation_runs.figures`.
    pub fn figures(&self) -> serde_json::Value {
        let findings = self.events.findings.clone().unwrap_or_default();
        let agg = |f: Option<(u64, u64)>| f.map(|(rows, diffs)| json!({"rows_compared": rows, "differences": diffs}));
        json!({
            "storage_mode": self.mode,
            "redis_events": self.events.redis_events,
            "target_events": self.events.target_events,
            "dead_letters": self.events.dead_letter_total(),
            "out_of_range": self.events.out_of_range.total(),
            "hours_compared": self.events.hours_compared,
            "whole_range": self.window.coverage().whole(),
            "hours_differing": self.events.hours.total,
            "missing": findings.missing.total,
            "extra": findings.extra.total,
            "different": findings.different.total,
            "equivalent": findings.equivalent,
            "legacy_hourly": agg(self.hourly.findings.as_ref().map(|f| (f.rows_compared, f.differences.total))),
            "asset_popularity": agg(self.assets.findings.as_ref().map(|f| (f.rows_compared, f.differences.total))),
            "could_not_run": self.could_not_run().iter().map(|(check, reason, _)| format!("{check}: {reason}")).collect::<Vec<_>>(),
            "timings_ms": self.timings,
        })
    }
}
