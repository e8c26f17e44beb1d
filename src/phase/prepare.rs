//! `tsmigrate prepare`: detect the server, choose the storage mode, apply the versioned
//! migrations, and move `new → prepared`. Re-running applies only what is missing.

use serde::Serialize;
use serde_json::json;

use super::state::{AuditEntry, PhaseGuard, StateChanges};
use super::{Phase, PREPARE};
use crate::config::{ModeChoice, Settings};
use crate::target::capability::{Capabilities, ModeError};
use crate::target::schema::{self, ObjectStatus, PlannedMigration};
use crate::target::StorageMode;

#[derive(Debug, Clone, Serialize)]
pub struct MigrationSummary {
    pub version: i64,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    pub dry_run: bool,
    pub mode: StorageMode,
    pub capabilities: Capabilities,
    pub phase_before: Phase,
    pub phase_after: Phase,
    /// Migrations applied by this run (or that would be, with --dry-run).
    pub applied: Vec<MigrationSummary>,
    pub already_applied: Vec<i64>,
    /// The SQL that would run (dry run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<Vec<PlannedMigration>>,
    pub changed: bool,
    pub objects: Vec<ObjectStatus>,
    /// Whether the Redis that will hold the outbox can keep it (persistence, memory).
    pub warnings: Vec<String>,
    pub next_steps: Vec<String>,
}

pub async fn run(settings: &Settings, choice: ModeChoice, dry_run: bool) -> anyhow::Result<PrepareReport> {
    let pool = crate::db::target_pool(settings).await?;
    let mut guard = PhaseGuard::acquire(&settings.database.url, PREPARE.command).await?;
    let capabilities = Capabilities::detect(&pool).await?;
    let state = guard.state().await?;
    let mode = match state.storage_mode {
        // Once prepared, the mode is what was prepared; asking for the other one is an error.
        Some(prepared) => match choice {
            ModeChoice::Auto => prepared,
            _ => {
                let requested = capabilities.choose(choice)?;
                if requested != prepared {
                    return Err(ModeError::Conflicting { prepared, requested }.into());
                }
                prepared
            }
        },
        None => capabilities.choose(choice)?,
    };
    let plan = schema::plan(&pool, mode, &settings.target).await?;
    let applied: Vec<MigrationSummary> = plan.pending.iter().map(|m| MigrationSummary { version: m.version, description: m.description.clone() }).collect();
    let transition = state.phase == Phase::New;
    if dry_run {
        return Ok(PrepareReport {
            dry_run,
            mode,
            capabilities,
            phase_before: state.phase,
            phase_after: state.phase,
            changed: false,
            already_applied: plan.applied.clone(),
            objects: schema::objects(&pool, mode).await?,
            sql: Some(plan.pending),
            applied,
            warnings: crate::dual_write::durability::warnings_for(settings).await,
            next_steps: vec![format!("tsmigrate prepare --mode {mode}   # apply what is listed above")],
        });
    }
    schema::apply(&pool, mode, &settings.target).await?;
    let details = json!({ "mode": mode, "applied": applied.iter().map(|m| m.version).collect::<Vec<_>>() });
    let phase_after = if transition {
        guard
            .commit(&PREPARE, Phase::New, StateChanges { storage_mode: Some(mode), ..Default::default() }, AuditEntry { details, ..Default::default() })
            .await?;
        Phase::Prepared
    } else {
        guard.audit_noop(PREPARE.command, state.phase, details).await?;
        state.phase
    };
    if mode == StorageMode::Postgres {
        let now = chrono::Utc::now();
        crate::target::writer::ensure_partition_range(
            &pool,
            now - chrono::Duration::days(1),
            now + chrono::Duration::days(i64::from(settings.target.partitions_ahead_days)),
        )
        .await?;
    }
    Ok(PrepareReport {
        dry_run,
        mode,
        capabilities,
        phase_before: state.phase,
        phase_after,
        changed: !applied.is_empty() || transition,
        already_applied: plan.applied,
        sql: None,
        applied,
        objects: schema::objects(&pool, mode).await?,
        warnings: crate::dual_write::durability::warnings_for(settings).await,
        next_steps: phase_after.next_steps(),
    })
}

impl PrepareReport {
    fn warning_lines(&self) -> String {
        self.warnings.iter().map(|w| format!("WARNING: {w}\n")).collect()
    }

    pub fn human(&self) -> String {
        let mut out = String::new();
        let ts = match (&self.capabilities.timescaledb_installed, &self.capabilities.timescaledb_available) {
            (Some(v), _) => format!("TimescaleDB {v} installed"),
            (None, Some(v)) if self.capabilities.timescaledb_preloaded => format!("TimescaleDB {v} available"),
            (None, Some(v)) => format!("TimescaleDB {v} packaged but not preloaded"),
            (None, None) => "TimescaleDB not available".into(),
        };
        out.push_str(&format!("storage mode: {} (PostgreSQL {}, {ts})\n", self.mode, self.capabilities.server_version));
        if self.dry_run {
            if self.applied.is_empty() {
                out.push_str("dry run: nothing to apply; the target is already prepared\n");
            } else {
                out.push_str(&format!("dry run: can apply {} migration(s); nothing was changed\n", self.applied.len()));
                for m in self.sql.iter().flatten() {
                    out.push_str(&format!("\n-- migration {:04}: {}\n{}\n", m.version, m.description, m.sql.trim_end()));
                }
            }
            out.push_str(&self.warning_lines());
            return out;
        }
        if self.applied.is_empty() {
            out.push_str(&format!("nothing to do: all {} migrations were already applied\n", self.already_applied.len()));
        } else {
            for m in &self.applied {
                out.push_str(&format!("applied migration {:04}: {}\n", m.version, m.description));
            }
        }
        if self.phase_before != self.phase_after {
            out.push_str(&format!("phase: {} -> {}\n", self.phase_before, self.phase_after));
        } else {
            out.push_str(&format!("phase: {} (unchanged)\n", self.phase_after));
        }
        out.push_str("objects:\n");
        for o in &self.objects {
            out.push_str(&format!("  {} {:<38} {}\n", if o.present { "ok     " } else { "MISSING" }, o.name, o.kind));
        }
        out.push_str(&self.warning_lines());
        out.push_str("next:\n");
        for step in &self.next_steps {
            out.push_str(&format!("  {step}\n"));
        }
        out
    }
}
