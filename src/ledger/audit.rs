//! `tsmigrate.audit_log`: every phase command's outcome — done, unchanged, refused, stopped
//! early — with who ran it, forced or not, why, and its details. One writer ([`record`]),
//! one reader ([`entries`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;

use crate::state::Phase;

/// How a command ended, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The phase moved (or a command that changes no phase did its work: abort's drop).
    Done,
    /// Ran without changing the phase (a re-run, a dry run, a command that stays).
    Unchanged,
    /// Refused by the phase order, a gate, a missing `--yes` or the lock.
    Refused,
    /// Stopped early at a page boundary: interrupted.
    Interrupted,
    /// Stopped early at a page boundary: its lock connection was lost.
    LockLost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
            Outcome::Interrupted => "interrupted",
            Outcome::LockLost => "lock_lost",
        }
    }
}

/// One entry to write.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub actor: &'a str,
    pub command: &'a str,
    pub from: Phase,
    /// `None` for a refusal (it went nowhere).
    pub to: Option<Phase>,
    pub outcome: Outcome,
    pub forced: bool,
    pub reason: Option<&'a str>,
    pub details: &'a Value,
}

/// Writes `entry`. In phase `new` there may be no audit log yet (before the first prepare):
/// refusals and stops are not recorded there, other entries only once the table exists.
pub async fn record(conn: &mut PgConnection, entry: &Entry<'_>) -> sqlx::Result<()> {
    if entry.from == Phase::New {
        let unrecorded = matches!(entry.outcome, Outcome::Refused | Outcome::Interrupted | Outcome::LockLost);
        if unrecorded || !super::exists(&mut *conn, "audit_log").await? {
            return Ok(());
        }
    }
    sqlx::query(
        "INSERT INTO tsmigrate.audit_log (actor, command, from_phase, to_phase, outcome, forced, reason, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(entry.actor)
    .bind(entry.command)
    .bind(entry.from.as_str())
    .bind(entry.to.map(Phase::as_str))
    .bind(entry.outcome.as_str())
    .bind(entry.forced)
    .bind(entry.reason)
    .bind(entry.details)
    .execute(conn)
    .await?;
    Ok(())
}

/// One entry of the audit log, for `tsmigrate history`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub command: String,
    pub from_phase: Option<String>,
    pub to_phase: Option<String>,
    pub outcome: String,
    pub forced: bool,
    pub reason: Option<String>,
    pub details: Value,
}

type AuditRow = (i64, DateTime<Utc>, String, String, Option<String>, Option<String>, String, bool, Option<String>, Value);

/// The newest `limit` audit entries, newest first, and how many there are in all (none
/// before the first prepare).
pub async fn entries(pool: &sqlx::PgPool, limit: i64) -> sqlx::Result<(Vec<AuditRecord>, i64)> {
    if !super::exists(pool, "audit_log").await? {
        return Ok((vec![], 0));
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log").fetch_one(pool).await?;
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, at, actor, command, from_phase, to_phase, outcome, forced, reason, details FROM tsmigrate.audit_log ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let records = rows
        .into_iter()
        .map(|(id, at, actor, command, from_phase, to_phase, outcome, forced, reason, details)| AuditRecord {
            id,
            at,
            actor,
            command,
            from_phase,
            to_phase,
            outcome,
            forced,
            reason,
            details,
        })
        .collect();
    Ok((records, total))
}
