//! The phase lock and the phase commands' audited changes of the migration state (the
//! records themselves are the ledger's: `crate::ledger::{migration, audit}`).

use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};

pub use crate::ledger::migration::{load, load_from_pool, StateChanges};
pub use crate::state::{MigrationState, PHASE_LOCK_KEY};

use super::{Phase, Refusal, Transition};
use crate::config::SecretUrl;
use crate::ledger::audit::{self, Outcome};
use crate::ledger::migration;

/// How long opening the lock connection may take (a hung server must not hang the command).
const LOCK_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a phase command waits for the lock before refusing.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

pub use crate::state::actor;

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
            migration::create(&mut tx, transition.to, mode).await?;
        } else if !migration::advance(&mut tx, from, transition.to, &changes).await? {
            anyhow::bail!("the migration left phase {from} while {} was running; nothing was changed", transition.command);
        }
        let entry = audit::Entry {
            actor: &self.actor,
            command: transition.command,
            from,
            to: Some(transition.to),
            outcome: Outcome::Done,
            forced: audit.forced,
            reason: audit.reason.as_deref(),
            details: &audit.details,
        };
        audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a command that ran without changing the phase (a re-run, a dry run).
    pub async fn audit_noop(&mut self, command: &str, phase: Phase, details: Value) -> anyhow::Result<()> {
        let entry = audit::Entry {
            actor: &self.actor,
            command,
            from: phase,
            to: Some(phase),
            outcome: Outcome::Unchanged,
            forced: false,
            reason: None,
            details: &details,
        };
        Ok(audit::record(&mut self.conn, &entry).await?)
    }
}

/// Writes a refusal into the audit log (nothing before prepare: there is no audit log yet).
pub async fn record_refusal(conn: &mut PgConnection, actor: &str, command: &str, phase: Phase, refusal: &Refusal, details: Value) -> anyhow::Result<()> {
    let entry =
        audit::Entry { actor, command, from: phase, to: None, outcome: Outcome::Refused, forced: false, reason: Some(&refusal.reason), details: &details };
    Ok(audit::record(conn, &entry).await?)
}

/// Records a command that stopped early at a page boundary (interrupted, or its lock
/// connection lost): on a connection of the pool, since the lock's may be the one lost.
pub async fn record_stop(pool: &PgPool, command: &str, phase: Phase, stopped: &crate::stop::Stopped) -> anyhow::Result<()> {
    let outcome = match stopped.why {
        crate::stop::Why::LockLost => Outcome::LockLost,
        crate::stop::Why::Interrupted(_) => Outcome::Interrupted,
    };
    let (actor, reason, details) = (actor(), crate::state::split_hint(&stopped.to_string()).0, stopped.details());
    let entry = audit::Entry { actor: &actor, command, from: phase, to: Some(phase), outcome, forced: false, reason: Some(&reason), details: &details };
    Ok(audit::record(&mut *pool.acquire().await?, &entry).await?)
}

/// The latest validation as the gates read it (the ledger's one reading of it).
pub async fn latest_validation(conn: &mut PgConnection) -> anyhow::Result<Option<super::gates::LatestValidation>> {
    Ok(crate::ledger::validation::latest(conn).await?.as_ref().map(super::gates::LatestValidation::from))
}
