//! The persisted migration state, the phase lock and the audit log.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};

pub use crate::state::{load, load_from_pool, MigrationState, PHASE_LOCK_KEY};

use super::{Phase, Refusal, Transition};
use crate::config::SecretUrl;
use crate::store::StorageMode;

/// How long opening the lock connection may take (a hung server must not hang the command).
const LOCK_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a phase command waits for the lock before refusing.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

pub use crate::state::actor;

/// What a committed transition changes besides the phase.
#[derive(Debug, Default, Clone)]
pub struct StateChanges {
    pub storage_mode: Option<StorageMode>,
    pub read_source: Option<&'static str>,
    pub completion_point: Option<Option<DateTime<Utc>>>,
    pub backfilled_until: Option<DateTime<Utc>>,
    pub reads_switched_at: Option<Option<DateTime<Utc>>>,
    pub flush_retired_at: Option<Option<DateTime<Utc>>>,
}

/// One audit entry.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub forced: bool,
    pub reason: Option<String>,
    pub details: Value,
}

/// Held for the whole of a phase command: a dedicated connection with the phase advisory
/// lock. The lock dies with the connection, so a crashed command never leaves it behind;
/// and a command whose connection died (a server restart) must not carry on as if it still
/// held it: its pages confirm the lock by this connection's backend pid
/// ([`crate::stop::Boundary::confirm_lock`]).
pub struct PhaseGuard {
    conn: PgConnection,
    actor: String,
    /// The lock connection's backend pid.
    pid: i32,
}

#[derive(Debug, thiserror::Error)]
#[error("another tsmigrate phase command holds the migration lock (PostgreSQL backend pid {holder})\n  next: wait for it to finish; `SELECT * FROM pg_stat_activity WHERE pid = {holder}` shows what it is doing")]
pub struct LockHeld {
    pub holder: i32,
}

impl PhaseGuard {
    /// Takes the migration lock for `command`. When another command holds it, the refusal
    /// is audited (once the control tables exist) like a gate's, and [`LockHeld`] returned.
    pub async fn acquire(url: &SecretUrl, command: &str) -> anyhow::Result<PhaseGuard> {
        let mut conn = crate::connect::pg_connection(url, LOCK_CONNECT_TIMEOUT).await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await?;
        // A command that just finished may still hold the lock for a moment while its
        // backend exits, so wait briefly before calling the lock held.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        let got = loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))").bind(PHASE_LOCK_KEY).fetch_one(&mut conn).await?;
            if got || std::time::Instant::now() >= deadline {
                break got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        if !got {
            let holder: Option<i32> = sqlx::query_scalar(
                "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                 WHERE l.locktype = 'advisory' AND l.objid = hashtext($1)::oid AND l.granted AND d.datname = current_database() LIMIT 1",
            )
            .bind(PHASE_LOCK_KEY)
            .fetch_optional(&mut conn)
            .await?;
            let held = LockHeld { holder: holder.unwrap_or_default() };
            // Not holding the lock: this guard only writes the audit entry, then is dropped.
            let unlocked = PhaseGuard { conn, actor: actor(), pid };
            if let Err(e) = unlocked.audit_lock_refusal(command, &held).await {
                tracing::warn!(error = %format!("{e:#}"), command, "cannot audit the refusal of a held migration lock");
            }
            return Err(held.into());
        }
        Ok(PhaseGuard { conn, actor: actor(), pid })
    }

    async fn audit_lock_refusal(mut self, command: &str, held: &LockHeld) -> anyhow::Result<()> {
        // The holder may be changing the control tables (prepare, abort): wait for their
        // locks only briefly rather than hang a command that is being refused anyway.
        sqlx::query("SET lock_timeout = '2s'").execute(&mut self.conn).await?;
        let phase = self.state().await?.phase;
        let refusal = Refusal {
            command: command.into(),
            reason: format!("another tsmigrate phase command holds the migration lock (PostgreSQL backend pid {})", held.holder),
            next: "wait for it to finish".into(),
        };
        self.audit_refusal(command, phase, &refusal, serde_json::json!({"lock_holder_pid": held.holder})).await
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The backend pid of the connection holding the lock (what `pg_locks` names).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub async fn state(&mut self) -> anyhow::Result<MigrationState> {
        load(&mut self.conn).await
    }

    pub async fn audit_refusal(&mut self, command: &str, phase: Phase, refusal: &Refusal, details: Value) -> anyhow::Result<()> {
        record_refusal(&mut self.conn, &self.actor, command, phase, refusal, details).await
    }

    /// Moves the state along `transition` and writes the audit entry, in one transaction that
    /// re-checks the phase it starts from.
    pub async fn commit(&mut self, transition: &Transition, from: Phase, changes: StateChanges, audit: AuditEntry) -> anyhow::Result<()> {
        let mut tx = self.conn.begin().await?;
        if from == Phase::New {
            let mode = changes.storage_mode.ok_or_else(|| anyhow::anyhow!("a new migration needs a storage mode"))?;
            sqlx::query("INSERT INTO tsmigrate.migration_state (phase, storage_mode) VALUES ($1, $2)")
                .bind(transition.to.as_str())
                .bind(mode.as_str())
                .execute(&mut *tx)
                .await?;
        } else {
            let updated = sqlx::query(
                "UPDATE tsmigrate.migration_state SET
                    phase = $1,
                    read_source = COALESCE($3, read_source),
                    completion_point = CASE WHEN $4 THEN $5 ELSE completion_point END,
                    backfilled_until = COALESCE($6, backfilled_until),
                    reads_switched_at = CASE WHEN $7 THEN $8 ELSE reads_switched_at END,
                    flush_retired_at = CASE WHEN $9 THEN $10 ELSE flush_retired_at END,
                    updated_at = now()
                 WHERE phase = $2",
            )
            .bind(transition.to.as_str())
            .bind(from.as_str())
            .bind(changes.read_source)
            .bind(changes.completion_point.is_some())
            .bind(changes.completion_point.flatten())
            .bind(changes.backfilled_until)
            .bind(changes.reads_switched_at.is_some())
            .bind(changes.reads_switched_at.flatten())
            .bind(changes.flush_retired_at.is_some())
            .bind(changes.flush_retired_at.flatten())
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() != 1 {
                anyhow::bail!("the migration left phase {from} while {} was running; nothing was changed", transition.command);
            }
        }
        sqlx::query(
            "INSERT INTO tsmigrate.audit_log (actor, command, from_phase, to_phase, outcome, forced, reason, details)
             VALUES ($1, $2, $3, $4, 'done', $5, $6, $7)",
        )
        .bind(&self.actor)
        .bind(transition.command)
        .bind(from.as_str())
        .bind(transition.to.as_str())
        .bind(audit.forced)
        .bind(&audit.reason)
        .bind(&audit.details)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a command that ran without changing the phase (a re-run, a dry run).
    pub async fn audit_noop(&mut self, command: &str, phase: Phase, details: Value) -> anyhow::Result<()> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('tsmigrate.audit_log') IS NOT NULL").fetch_one(&mut self.conn).await?;
        if exists {
            sqlx::query(
                "INSERT INTO tsmigrate.audit_log (actor, command, from_phase, to_phase, outcome, details)
                 VALUES ($1, $2, $3, $3, 'unchanged', $4)",
            )
            .bind(&self.actor)
            .bind(command)
            .bind(phase.as_str())
            .bind(details)
            .execute(&mut self.conn)
            .await?;
        }
        Ok(())
    }
}

/// Writes a refusal into the audit log (nothing before prepare: there is no audit log yet).
pub async fn record_refusal(conn: &mut PgConnection, actor: &str, command: &str, phase: Phase, refusal: &Refusal, details: Value) -> anyhow::Result<()> {
    if phase == Phase::New {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO tsmigrate.audit_log (actor, command, from_phase, to_phase, outcome, reason, details)
         VALUES ($1, $2, $3, NULL, 'refused', $4, $5)",
    )
    .bind(actor)
    .bind(command)
    .bind(phase.as_str())
    .bind(&refusal.reason)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a command that stopped early at a page boundary (interrupted, or its lock
/// connection lost): on a connection of the pool, since the lock's may be the one lost.
pub async fn record_stop(pool: &PgPool, command: &str, phase: Phase, stopped: &crate::stop::Stopped) -> anyhow::Result<()> {
    if phase == Phase::New {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO tsmigrate.audit_log (actor, command, from_phase, to_phase, outcome, reason, details)
         VALUES ($1, $2, $3, $3, $4, $5, $6)",
    )
    .bind(actor())
    .bind(command)
    .bind(phase.as_str())
    .bind(stopped.outcome())
    .bind(crate::state::split_hint(&stopped.to_string()).0)
    .bind(stopped.details())
    .execute(pool)
    .await?;
    Ok(())
}

type ValidationRunRow = (i64, DateTime<Utc>, String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, i64);

/// The latest recorded validation run (the gates' input), with what it covered.
pub async fn latest_validation(conn: &mut PgConnection) -> anyhow::Result<Option<super::gates::LatestValidation>> {
    use crate::validate::window::{Coverage, Span};
    let row: Option<ValidationRunRow> = sqlx::query_as(
        "SELECT id, finished_at, result, depth, window_from, window_to, range_from, range_to, COALESCE((figures->>'extra')::bigint, 0)
         FROM tsmigrate.validation_runs ORDER BY finished_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    let Some((id, finished_at, result, depth, window_from, window_to, range_from, range_to, extra)) = row else { return Ok(None) };
    let span = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| Some(Span { from: from?, to: to? });
    let coverage = span(window_from, window_to).zip(span(range_from, range_to)).map(|(compared, range)| Coverage { compared, range });
    Ok(Some(super::gates::LatestValidation {
        id,
        finished_at,
        verdict: crate::validate::Verdict::parse(&result).ok_or_else(|| anyhow::anyhow!("unknown result {result:?} of validation run #{id}"))?,
        depth: crate::validate::Depth::parse(&depth).ok_or_else(|| anyhow::anyhow!("unknown depth {depth:?} of validation run #{id}"))?,
        coverage,
        extra: extra.max(0) as u64,
    }))
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
pub async fn audit_entries(pool: &PgPool, limit: i64) -> sqlx::Result<(Vec<AuditRecord>, i64)> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('tsmigrate.audit_log') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
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
