//! `tsmigrate dual-write stop`: ingest stops writing the outbox (dual_writing → prepared);
//! the completion point is forgotten, and the relay keeps draining what is there.

use serde_json::{json, Value};

use crate::context::Context;
use crate::dual_write::flag;
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::state::StateChanges;
use crate::phase::{Transition, DUAL_WRITE_STOP};

pub struct DualWriteStop;

impl PhaseCommand for DualWriteStop {
    type Details = Value;

    fn transition(&self) -> &'static Transition {
        &DUAL_WRITE_STOP
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<Value>> {
        let previous = run.state.completion_point;
        let details = json!({"outbox": ctx.keys.outbox, "previous_completion_point": previous});
        if !run.dry_run {
            let mut redis = ctx.redis().await?;
            // "0", not a deleted key: a missing flag means Redis lost it, and the daemon restores it
            // from the migration state; "0" is an explicit off.
            redis::cmd("SET").arg(&ctx.keys.dual_write_flag).arg(flag::OFF).query_async::<()>(&mut redis).await?;
        }
        let changes = StateChanges { completion_point: Some(None), ..Default::default() };
        Ok(Applied { audit: json!({"previous_completion_point": previous}), ..Applied::new(details, Commit::Move(changes)) })
    }
}
