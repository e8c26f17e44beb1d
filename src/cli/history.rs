//! `tsmigrate history`: what was done to this target, like Flyway's `info` — tsmigrate's
//! migrations (applied, with when and by whom, and those still pending) and the audit log.

use serde::Serialize;

use crate::context::Context;
use crate::ledger::audit::{self, AuditRecord};
use crate::store::schema::{self, HISTORY_TABLE};

use super::{positive, Reply};

/// Show tsmigrate's migrations (applied and pending, from tsmigrate.schema_history) and
/// the audit log (every phase command: who, when, what it did or why it was refused),
/// newest first.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// At most this many audit entries, the newest.
    #[arg(long, default_value_t = 50, value_parser = positive)]
    pub limit: usize,
}

#[derive(Debug, Serialize)]
struct MigrationRow {
    version: i64,
    description: String,
    /// `applied` or `pending`.
    state: &'static str,
    installed_on: Option<chrono::DateTime<chrono::Utc>>,
    installed_by: Option<String>,
    execution_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
struct History {
    storage_mode: Option<crate::store::StorageMode>,
    migrations: Vec<MigrationRow>,
    audit_log: Vec<AuditRecord>,
    audit_entries_total: i64,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<Reply> {
    let state = crate::ledger::migration::load_from_pool(&ctx.target).await?;
    let applied = schema::history(&ctx.target).await?;
    let known = state.storage_mode.map(|mode| schema::known(mode, &ctx.settings.target)).unwrap_or_default();
    let mut migrations: Vec<MigrationRow> = applied
        .iter()
        .map(|m| MigrationRow {
            version: m.version,
            description: m.description.clone(),
            state: "applied",
            installed_on: Some(m.installed_on),
            installed_by: Some(m.installed_by.clone()),
            execution_ms: Some(m.execution_ms),
        })
        .collect();
    migrations.extend(known.into_iter().filter(|(v, _)| !applied.iter().any(|m| m.version == *v)).map(|(version, description)| MigrationRow {
        version,
        description,
        state: "pending",
        installed_on: None,
        installed_by: None,
        execution_ms: None,
    }));
    migrations.sort_by_key(|m| m.version);
    let (audit_log, audit_entries_total) = audit::entries(&ctx.target, args.limit as i64).await?;
    let history = History { storage_mode: state.storage_mode, migrations, audit_log, audit_entries_total };
    let text = text(&history);
    Ok(Reply::done(&history, text).with_phase(state.phase))
}

fn text(h: &History) -> String {
    let mut o = format!("migrations ({HISTORY_TABLE}{}):\n", h.storage_mode.map(|m| format!(", {m} mode")).unwrap_or_default());
    if h.migrations.is_empty() {
        o.push_str("  none: the target is not prepared (tsmigrate prepare)\n");
    }
    let migrations = h
        .migrations
        .iter()
        .map(|m| {
            vec![
                m.version.to_string(),
                m.description.clone(),
                m.state.to_string(),
                m.installed_on.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default(),
                m.installed_by.clone().unwrap_or_default(),
                m.execution_ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
            ]
        })
        .collect();
    o.push_str(&crate::human::table("  ", None, migrations));
    o.push_str(&format!("audit log (newest first, {} of {}):\n", h.audit_log.len(), h.audit_entries_total));
    let audit = h
        .audit_log
        .iter()
        .map(|a| {
            let moved = match (&a.from_phase, &a.to_phase) {
                (Some(from), Some(to)) if from != to => format!("{from} -> {to}"),
                (Some(from), _) => from.clone(),
                (None, Some(to)) => to.clone(),
                (None, None) => String::new(),
            };
            let why = match (&a.reason, a.forced) {
                (Some(reason), true) => format!("  FORCED: {reason}"),
                (Some(reason), false) => format!("  {reason}"),
                (None, _) => String::new(),
            };
            vec![format!("#{}", a.id), a.at.format("%Y-%m-%d %H:%M:%S").to_string(), a.actor.clone(), a.command.clone(), moved, format!("{}{why}", a.outcome)]
        })
        .collect();
    o.push_str(&crate::human::table("  ", None, audit));
    o
}
