//! `tsmigrate cutover`: reads come from the target (validated → reads_switched).
//! Gate: the latest validation is clean and fresher than `migration.validation_freshness_hours`.

use chrono::Utc;
use serde_json::{json, Value};

use crate::context::Context;
use crate::phase::gates::{cutover_gate, GateRules};
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::state::{latest_validation, StateChanges};
use crate::phase::{Transition, CUTOVER};

pub struct Cutover;

impl PhaseCommand for Cutover {
    type Details = Value;

    fn transition(&self) -> &'static Transition {
        &CUTOVER
    }

    const FORCEABLE: bool = true;

    async fn gate(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Result<Value, String>> {
        let latest = latest_validation(run.guard()?.conn()).await?;
        Ok(cutover_gate(latest.as_ref(), Utc::now(), &GateRules::from_settings(&ctx.settings.migration)))
    }

    async fn apply(&self, _ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<Value>> {
        let details = json!({"reads_from": "target", "gate": run.gate});
        let changes = StateChanges { read_source: Some(crate::state::ReadSource::Target), reads_switched_at: Some(Some(Utc::now())), ..Default::default() };
        Ok(Applied::new(details, Commit::Move(changes)))
    }
}
