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

/// The "next:" block every report ends with (phase commands, status, validation).
pub fn render_next_steps(steps: &[String]) -> String {
    let mut o = String::from("next:\n");
    for step in steps {
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
            assert!(!p.next_steps().is_empty());
        }
        assert!(Phase::New < Phase::Completed);
        assert!(Phase::Validated.dual_write_active());
        assert!(!Phase::Prepared.dual_write_active());
    }
}
