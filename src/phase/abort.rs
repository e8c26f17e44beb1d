//! `tsmigrate abort`: before reads are switched, removes everything `prepare` created
//! (target tables, aggregates, policies, control tables except the audit log) and turns
//! dual-write off, returning the migration to `new`. The legacy system is untouched.

use serde_json::json;

use super::state::PhaseGuard;
use super::{PhaseReport, Refusal, ABORT};
use crate::config::Settings;
use crate::legacy::LegacyKeys;
use crate::target::schema::MIGRATIONS_TABLE;
use crate::target::StorageMode;

/// What abort drops, in order (views before the table they read).
pub fn drop_statements(mode: StorageMode) -> Vec<String> {
    let mut statements: Vec<String> = match mode {
        StorageMode::Timescaledb => vec![
            "DROP MATERIALIZED VIEW IF EXISTS analytics_asset_popularity_ts CASCADE".into(),
            "DROP MATERIALIZED VIEW IF EXISTS analytics_daily CASCADE".into(),
            "DROP MATERIALIZED VIEW IF EXISTS analytics_hourly CASCADE".into(),
        ],
        StorageMode::Postgres => vec!["DROP TABLE IF EXISTS analytics_asset_popularity_ts, analytics_daily, analytics_hourly CASCADE".into()],
    };
    statements.push("DROP TABLE IF EXISTS analytics_events_ts CASCADE".into());
    statements.push(
        "DROP TABLE IF EXISTS tsmigrate.migration_state, tsmigrate.checkpoints, tsmigrate.validation_runs, tsmigrate.dead_letter, \
         tsmigrate.history_hourly, tsmigrate.history_asset_popularity, tsmigrate.job_runs, tsmigrate.outbox_gaps CASCADE"
            .into(),
    );
    statements.push("DROP FUNCTION IF EXISTS tsmigrate.ensure_partitions, tsmigrate.drop_partitions_before, tsmigrate.refresh_rollups".into());
    statements.push(format!("DROP TABLE IF EXISTS {MIGRATIONS_TABLE}"));
    statements
}

pub async fn run(settings: &Settings, dry_run: bool, confirmed: bool) -> anyhow::Result<PhaseReport> {
    let mut guard = PhaseGuard::acquire(&settings.database.url, ABORT.command).await?;
    let state = guard.check(&ABORT, json!({"dry_run": dry_run})).await?;
    let mode = state.storage_mode.unwrap_or(StorageMode::Postgres);
    let statements = drop_statements(mode);
    let keys = LegacyKeys::from_settings(settings);
    let details = json!({
        "drops": statements,
        "redis_keys_deleted": [&keys.dual_write_flag, &keys.outbox],
        "kept": ["tsmigrate.audit_log", "the legacy Redis keys and tables"],
    });
    let mut report = PhaseReport::for_transition(&ABORT, state.phase, dry_run, details.clone());
    if dry_run {
        report.next_steps = vec!["tsmigrate abort --yes".into()];
    }
    if dry_run {
        return Ok(report);
    }
    if !confirmed {
        return Err(Refusal {
            command: "abort".into(),
            reason: "abort drops the target tables and every migrated row; it needs confirmation".into(),
            next: "tsmigrate abort --dry-run   # to see what would be dropped, then: tsmigrate abort --yes".into(),
        }
        .into());
    }
    // Ingest stops feeding the outbox first, so nothing lands in a table about to vanish.
    let mut redis = crate::db::redis(settings).await?;
    redis::cmd("DEL").arg(&keys.dual_write_flag).arg(&keys.outbox).query_async::<()>(&mut redis).await?;
    let actor = guard.actor().to_string();
    let conn = guard.conn();
    let mut tx = sqlx::Connection::begin(conn).await?;
    for statement in &statements {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    sqlx::query("INSERT INTO tsmigrate.audit_log (actor, command, from_phase, to_phase, outcome, details) VALUES ($1, 'abort', $2, 'new', 'done', $3)")
        .bind(&actor)
        .bind(state.phase.as_str())
        .bind(&details)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(report)
}
