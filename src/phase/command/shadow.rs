//! `tsmigrate shadow on|off`: serve reads from the current source and compare every answer
//! with the other one. Needs a complete target (backfilled or later); the phase stays.

use serde_json::{json, Value};

use crate::context::Context;
use crate::phase::report::PhaseReport;
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::{Transition, SHADOW};

pub struct Shadow {
    pub on: bool,
}

impl PhaseCommand for Shadow {
    type Details = Value;

    fn transition(&self) -> &'static Transition {
        &SHADOW
    }

    fn name(&self) -> String {
        format!("shadow {}", if self.on { "on" } else { "off" })
    }

    async fn apply(&self, _ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<Value>> {
        if !run.dry_run {
            sqlx::query("UPDATE tsmigrate.migration_state SET shadow = $1, updated_at = now()").bind(self.on).execute(run.guard()?.conn()).await?;
        }
        let serving = run.state.read_source.clone();
        let other = if serving == "legacy" { "target" } else { "legacy" };
        let details = json!({"serving": serving, "comparing_with": self.on.then_some(other)});
        Ok(Applied { audit: json!({"shadow": self.on}), ..Applied::new(details, Commit::Stay) })
    }

    fn command_line(&self, _report: &PhaseReport) -> String {
        format!("tsmigrate shadow {}", if self.on { "on" } else { "off" })
    }
}
