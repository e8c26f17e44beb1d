//! `tsmigrate prepare`: detect the server, choose the storage mode, apply the versioned
//! migrations, and move `new → prepared`. Re-running applies only what is missing.

use serde::Serialize;
use serde_json::json;

use crate::config::ModeChoice;
use crate::context::Context;
use crate::phase::report::{Details, PhaseReport};
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::state::{MigrationState, StateChanges};
use crate::phase::{Transition, PREPARE};
use crate::store::capability::{Capabilities, ModeError};
use crate::store::schema::{self, PlannedMigration};
use crate::store::{ObjectStatus, StorageMode};

pub struct Prepare {
    /// `--mode`, or `target.mode` from the settings.
    pub choice: ModeChoice,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationSummary {
    pub version: i64,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrepareDetails {
    pub mode: StorageMode,
    pub capabilities: Capabilities,
    /// Migrations applied by this run (or that would be, with --dry-run).
    pub applied: Vec<MigrationSummary>,
    pub already_applied: Vec<i64>,
    /// Versions whose history an earlier tsmigrate kept in `_sqlx_migrations`, moved (or,
    /// with --dry-run, to be moved) into `tsmigrate.schema_history`.
    pub history_moved: Vec<i64>,
    /// The SQL that would run (dry run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<Vec<PlannedMigration>>,
    pub changed: bool,
    pub objects: Vec<ObjectStatus>,
}

impl PhaseCommand for Prepare {
    type Details = PrepareDetails;

    fn transition(&self) -> &'static Transition {
        &PREPARE
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<PrepareDetails>> {
        let capabilities = Capabilities::detect(&ctx.target).await?;
        let mode = self.mode(&capabilities, &run.state)?;
        let store = ctx.store(mode);
        let plan = schema::plan(&ctx.target, mode, &ctx.settings.target).await?;
        let applied: Vec<MigrationSummary> = plan.pending.iter().map(|m| MigrationSummary { version: m.version, description: m.description.clone() }).collect();
        let mut details = PrepareDetails {
            mode,
            capabilities,
            applied,
            already_applied: plan.applied,
            history_moved: plan.adopted.clone(),
            sql: None,
            changed: false,
            objects: vec![],
        };
        let warnings = crate::dual_write::durability::warnings_for(ctx).await;
        if run.dry_run {
            details.sql = Some(plan.pending);
            details.objects = crate::store::object_status(&*store).await?;
            return Ok(Applied { warnings, ..Applied::new(details, Commit::Nothing) });
        }
        schema::apply(&ctx.target, mode, &ctx.settings.target, &crate::phase::state::actor()).await?;
        store.after_prepare(&ctx.settings.target).await?;
        details.changed = !details.applied.is_empty() || !details.history_moved.is_empty() || run.moves();
        details.objects = crate::store::object_status(&*store).await?;
        let audit = json!({ "mode": mode, "applied": details.applied.iter().map(|m| m.version).collect::<Vec<_>>() });
        let changes = StateChanges { storage_mode: Some(mode), ..Default::default() };
        Ok(Applied { audit, warnings, ..Applied::new(details, Commit::Move(changes)) })
    }

    /// The new migration's identity, made and written to Redis now rather than by the next command.
    async fn after_commit(&self, ctx: &Context) -> anyhow::Result<()> {
        crate::identity::verify(ctx).await?;
        Ok(())
    }

    fn command_line(&self, report: &PhaseReport<PrepareDetails>) -> String {
        format!("tsmigrate prepare --mode {}", report.details.mode)
    }
}

impl Prepare {
    /// Once prepared, the mode is what was prepared; asking for the other one is an error.
    fn mode(&self, capabilities: &Capabilities, state: &MigrationState) -> Result<StorageMode, ModeError> {
        match (state.storage_mode, self.choice) {
            (None, choice) => capabilities.choose(choice),
            (Some(prepared), ModeChoice::Auto) => Ok(prepared),
            (Some(prepared), choice) => match capabilities.choose(choice)? {
                requested if requested != prepared => Err(ModeError::Conflicting { prepared, requested }),
                _ => Ok(prepared),
            },
        }
    }
}

impl Details for PrepareDetails {
    fn text(&self) -> String {
        let caps = &self.capabilities;
        let ts = match (&caps.timescaledb_installed, &caps.timescaledb_available) {
            (Some(v), _) => format!("TimescaleDB {v} installed"),
            (None, Some(v)) if caps.timescaledb_preloaded => format!("TimescaleDB {v} available"),
            (None, Some(v)) => format!("TimescaleDB {v} packaged but not preloaded"),
            (None, None) => "TimescaleDB not available".into(),
        };
        let mut out = format!("storage mode: {} (PostgreSQL {}, {ts})\n", self.mode, caps.server_version);
        if !self.history_moved.is_empty() {
            let verb = if self.sql.is_some() { "would move" } else { "moved" };
            out.push_str(&format!(
                "{verb} tsmigrate's history of {} migration(s) from _sqlx_migrations to tsmigrate.schema_history (the application's rows stay)\n",
                self.history_moved.len()
            ));
        }
        match &self.sql {
            Some(_) if self.applied.is_empty() => out.push_str("nothing to apply; the target is already prepared\n"),
            Some(sql) => {
                out.push_str(&format!("can apply {} migration(s)\n", self.applied.len()));
                for m in sql {
                    out.push_str(&format!("\n-- migration {:04}: {}\n{}\n", m.version, m.description, m.sql.trim_end()));
                }
                return out;
            }
            None if self.applied.is_empty() => out.push_str(&format!("nothing to do: all {} migrations were already applied\n", self.already_applied.len())),
            None => self.applied.iter().for_each(|m| out.push_str(&format!("applied migration {:04}: {}\n", m.version, m.description))),
        }
        if self.sql.is_none() {
            out.push_str("objects:\n");
            for o in &self.objects {
                out.push_str(&format!("  {} {:<38} {}\n", if o.present { "ok     " } else { "MISSING" }, o.name, o.kind));
            }
        }
        out
    }
}
