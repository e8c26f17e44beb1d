//! The persisted migration state: the phase, the storage mode, where reads come from.
//! Every layer reads it ([`load`]); only `phase` changes it (through `PhaseGuard::commit`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::store::StorageMode;

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
    /// `legacy` or `target`: where the read API answers from.
    pub read_source: String,
    pub shadow: bool,
    /// When dual-write started: backfill covers every event stored before it.
    pub completion_point: Option<DateTime<Utc>>,
    pub backfilled_until: Option<DateTime<Utc>>,
    pub reads_switched_at: Option<DateTime<Utc>>,
    pub flush_retired_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl MigrationState {
    /// The state of a target nobody has prepared.
    pub fn new_migration() -> Self {
        MigrationState {
            phase: Phase::New,
            storage_mode: None,
            read_source: "legacy".into(),
            shadow: false,
            completion_point: None,
            backfilled_until: None,
            reads_switched_at: None,
            flush_retired_at: None,
            updated_at: None,
        }
    }
}

type StateRow = (String, String, String, bool, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, DateTime<Utc>);

/// Reads the state; a target without control tables is in phase `new`.
pub async fn load(conn: &mut PgConnection) -> anyhow::Result<MigrationState> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('tsmigrate.migration_state') IS NOT NULL").fetch_one(&mut *conn).await?;
    if !exists {
        return Ok(MigrationState::new_migration());
    }
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT phase, storage_mode, read_source, shadow, completion_point, backfilled_until,
                reads_switched_at, flush_retired_at, updated_at
         FROM tsmigrate.migration_state",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some((phase, mode, read_source, shadow, completion_point, backfilled_until, reads_switched_at, flush_retired_at, updated_at)) = row else {
        return Ok(MigrationState::new_migration());
    };
    Ok(MigrationState {
        phase: Phase::parse(&phase).ok_or_else(|| anyhow::anyhow!("unknown phase {phase:?} in tsmigrate.migration_state"))?,
        storage_mode: StorageMode::parse(&mode),
        read_source,
        shadow,
        completion_point,
        backfilled_until,
        reads_switched_at,
        flush_retired_at,
        updated_at: Some(updated_at),
    })
}

pub async fn load_from_pool(pool: &PgPool) -> anyhow::Result<MigrationState> {
    let mut conn = pool.acquire().await?;
    load(&mut conn).await
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
