//! `tsmigrate abort`: before reads are switched, removes everything `prepare` created
//! (the store's objects except the audit log) and turns dual-write off, returning the
//! migration to `new`. The legacy system is untouched. Needs `--yes`.

use serde_json::{json, Value};

use crate::context::Context;
use crate::ledger::audit::{self, Outcome};
use crate::phase::report::PhaseReport;
use crate::phase::runner::{confirmed, Applied, Commit, PhaseCommand, Run};
use crate::phase::{Phase, Transition, ABORT};
use crate::store::objects::drop_statements;
use crate::store::StorageMode;

pub struct Abort {
    /// `--yes`: abort deletes every migrated row.
    pub confirmed: bool,
}

impl PhaseCommand for Abort {
    type Details = Value;

    fn transition(&self) -> &'static Transition {
        &ABORT
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<Value>> {
        let mode = run.state.storage_mode.unwrap_or(StorageMode::Postgres);
        let store = ctx.store(mode);
        let statements: Vec<String> = store.before_drop().into_iter().chain(drop_statements(&store.objects())).collect();
        let keys = &ctx.keys;
        let details = json!({
            "drops": statements,
            "redis_keys_deleted": [&keys.dual_write_flag, &keys.outbox, &keys.migration_id],
            "kept": ["tsmigrate.audit_log", "the legacy Redis keys and tables"],
        });
        if run.dry_run {
            return Ok(Applied::new(details, Commit::Nothing));
        }
        confirmed(self.confirmed, "abort", "abort drops the target tables and every migrated row")?;
        // Ingest stops feeding the outbox first, so nothing lands in a table about to vanish.
        // The identity goes with the migration: a new prepare makes a new one.
        let mut redis = ctx.redis().await?;
        redis::cmd("DEL").arg(&keys.dual_write_flag).arg(&keys.outbox).arg(&keys.migration_id).query_async::<()>(&mut redis).await?;
        drop_everything(run, &statements, &details).await?;
        Ok(Applied::new(details, Commit::Done))
    }

    fn command_line(&self, _report: &PhaseReport) -> String {
        "tsmigrate abort --yes".into()
    }
}

/// The drops and the audit entry in one transaction: the state table goes with them, so
/// this is the one move that does not go through `PhaseGuard::commit`. A catalog row that a
/// background job changed meanwhile ("tuple concurrently deleted") makes the transaction
/// roll back whole; it is tried again a few times.
async fn drop_everything(run: &mut Run, statements: &[String], details: &Value) -> anyhow::Result<()> {
    const TRIES: u32 = 3;
    let mut tried = 1;
    loop {
        match drop_once(run, statements, details).await {
            Err(e) if tried < TRIES && concurrent_catalog_change(&e) => {
                tracing::info!(error = %e, "a background job changed the catalog while abort dropped; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500 * u64::from(tried))).await;
                tried += 1;
            }
            outcome => return outcome,
        }
    }
}

fn concurrent_catalog_change(e: &anyhow::Error) -> bool {
    let code = e.downcast_ref::<sqlx::Error>().and_then(|e| e.as_database_error()).and_then(|d| d.code()).map(|c| c.to_string());
    matches!(code.as_deref(), Some("XX000" | "40P01" | "40001"))
}

async fn drop_once(run: &mut Run, statements: &[String], details: &Value) -> anyhow::Result<()> {
    let from = run.state.phase;
    let guard = run.guard()?;
    let actor = guard.actor().to_string();
    let mut tx = sqlx::Connection::begin(guard.conn()).await?;
    for statement in statements {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    let entry = audit::Entry { actor: &actor, command: "abort", from, to: Some(Phase::New), outcome: Outcome::Done, forced: false, reason: None, details };
    audit::record(&mut tx, &entry).await?;
    tx.commit().await?;
    Ok(())
}
