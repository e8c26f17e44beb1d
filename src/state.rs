//! The migration's vocabulary every layer shares: the phase, the storage mode, where reads
//! come from, the migration state as a record, and the "next:" steps. Pure: the state is read
//! and written by the ledger (`crate::ledger::migration`); only `phase` changes it (through
//! `PhaseGuard::commit`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Key of the session advisory lock every phase command holds.
pub const PHASE_LOCK_KEY: &str = "tsmigrate.phase";

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
}

/// One thing the operator can do next: a command to run (none for an instruction that is
/// not one, like waiting), and why. Text shows it as `command   # why`; JSON as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextStep {
    pub command: Option<String>,
    pub why: String,
}

impl NextStep {
    pub fn run(command: impl Into<String>, why: impl Into<String>) -> NextStep {
        NextStep { command: Some(command.into()), why: why.into() }
    }

    /// An instruction that is not a command.
    pub fn note(why: impl Into<String>) -> NextStep {
        NextStep { command: None, why: why.into() }
    }
}

impl std::fmt::Display for NextStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.command {
            Some(command) if self.why.is_empty() => f.write_str(command),
            Some(command) => write!(f, "{command:<28} # {}", self.why),
            None => f.write_str(&self.why),
        }
    }
}

/// Who ran a command: `TSMIGRATE_ACTOR`, else `user@host`.
pub fn actor() -> String {
    if let Ok(actor) = std::env::var("TSMIGRATE_ACTOR") {
        if !actor.is_empty() {
            return actor;
        }
    }
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok().or_else(login_from_uid).unwrap_or_else(|| "unknown".into());
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown-host".into());
    format!("{user}@{host}")
}

/// The login name of this process's user from /etc/passwd (cron and CI often set no USER).
fn login_from_uid() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 2 && f[2] == uid).map(|f| f[0].to_string())
}

/// Errors end their text with `\n  next: <what to do>`:
/// `"what failed\n  next: what to do"` → ("what failed", Some("what to do")).
pub fn split_hint(text: &str) -> (String, Option<String>) {
    match text.split_once("\n  next: ") {
        Some((message, hint)) => (message.trim().to_string(), Some(hint.trim().to_string())),
        None => (text.trim().to_string(), None),
    }
}

/// Each command once, in the order first given; the reasons of a command given several times
/// are joined (`repair` for missing, different and aggregate differences is one step), and an
/// instruction that is not a command is kept once.
pub fn dedupe_next_steps(steps: Vec<NextStep>) -> Vec<NextStep> {
    let mut out: Vec<NextStep> = Vec::with_capacity(steps.len());
    for step in steps {
        match out.iter_mut().find(|s| s.command == step.command && (s.command.is_some() || s.why == step.why)) {
            Some(same) if !same.why.split("; ").any(|w| w == step.why) && !step.why.is_empty() => {
                same.why = if same.why.is_empty() { step.why } else { format!("{}; {}", same.why, step.why) };
            }
            Some(_) => {}
            None => out.push(step),
        }
    }
    out
}

/// The "next:" block every report ends with (phase commands, status, validation).
pub fn render_next_steps(steps: &[NextStep]) -> String {
    let mut o = String::from("next:\n");
    for step in &dedupe_next_steps(steps.to_vec()) {
        o.push_str(&format!("  {step}\n"));
    }
    o
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MigrationState {
    pub phase: Phase,
    pub storage_mode: Option<StorageMode>,
    /// Where the read API answers from.
    pub read_source: ReadSource,
    pub shadow: bool,
    /// When dual-write started: backfill covers every event stored before it.
    pub completion_point: Option<DateTime<Utc>>,
    pub backfilled_until: Option<DateTime<Utc>>,
    pub reads_switched_at: Option<DateTime<Utc>>,
    pub flush_retired_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl MigrationState {
    /// The storage mode `prepare` chose: every command past `new` works in it.
    pub fn mode(&self) -> anyhow::Result<StorageMode> {
        self.storage_mode.ok_or_else(|| anyhow::anyhow!("storage mode missing from the migration state"))
    }

    /// The state of a target nobody has prepared.
    pub fn new_migration() -> Self {
        MigrationState {
            phase: Phase::New,
            storage_mode: None,
            read_source: ReadSource::Legacy,
            shadow: false,
            completion_point: None,
            backfilled_until: None,
            reads_switched_at: None,
            flush_retired_at: None,
            updated_at: None,
        }
    }
}

/// How the target stores events and aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// Hypertable, continuous aggregates, columnstore and retention policies.
    Timescaledb,
    /// Native range partitions and rollup tables maintained by tsmigrate's scheduler.
    Postgres,
}

impl StorageMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timescaledb => "timescaledb",
            Self::Postgres => "postgres",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Timescaledb, Self::Postgres].into_iter().find(|m| m.as_str() == s)
    }
}

impl std::fmt::Display for StorageMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where reads are answered from (`tsmigrate.migration_state.read_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadSource {
    /// Redis plus the legacy hourly tables and function.
    Legacy,
    /// The target: raw table, aggregates and imported history.
    Target,
}

impl ReadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadSource::Legacy => "legacy",
            ReadSource::Target => "target",
        }
    }

    pub fn parse(s: &str) -> Option<ReadSource> {
        [ReadSource::Legacy, ReadSource::Target].into_iter().find(|r| r.as_str() == s)
    }

    /// The side shadow mode compares with.
    pub fn other(self) -> ReadSource {
        match self {
            ReadSource::Legacy => ReadSource::Target,
            ReadSource::Target => ReadSource::Legacy,
        }
    }
}

impl std::fmt::Display for ReadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shadow reads: compare every answer with the other source, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shadow {
    On,
    Off,
}

impl Shadow {
    pub fn is_on(self) -> bool {
        self == Shadow::On
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Shadow::On => "on",
            Shadow::Off => "off",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_are_ordered() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert!(Phase::New < Phase::Completed);
        assert!(Phase::Validated.dual_write_active());
        assert!(!Phase::Prepared.dual_write_active());
    }
}
