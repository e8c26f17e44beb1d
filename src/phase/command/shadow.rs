//! `tsmigrate shadow on|off`: serve reads from the current source and compare every answer
//! with the other one. Needs a complete target (backfilled or later); the phase stays.

use serde_json::{json, Value};

use crate::context::Context;
use crate::phase::report::PhaseReport;
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::{Transition, SHADOW};

pub struct Shadow {
    pub state: crate::state::Shadow,
}

impl PhaseCommand for Shadow {
    type Details = Value;

    fn transition(&self) -> &'static Transition {
        &SHADOW
    }

    fn name(&self) -> String {
        format!("shadow {}", self.state.as_str())
    }

    async fn apply(&self, _ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<Value>> {
        if !run.dry_run {
            crate::ledger::migration::set_shadow(run.guard()?.conn(), self.state).await?;
        }
        let serving = run.state.read_source;
        let details = json!({"serving": serving, "comparing_with": self.state.is_on().then_some(serving.other())});
        Ok(Applied { audit: json!({"shadow": self.state.is_on()}), ..Applied::new(details, Commit::Stay) })
    }

    fn command_line(&self, _report: &PhaseReport) -> String {
        format!("tsmigrate shadow {}", self.state.as_str())
    }
}
