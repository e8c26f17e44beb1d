//! `tsmigrate reverse`: reads go back to the legacy path (reads_switched or flush_retired →
//! validated). After retire-flush it brings the legacy flush back and fills the hours it skipped.

use chrono::{Duration, Utc};
use serde_json::{json, Value};

use crate::context::Context;
use crate::legacy::flush;
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::state::StateChanges;
use crate::phase::{Phase, Transition, REVERSE};

pub struct Reverse;

impl PhaseCommand for Reverse {
    type Details = Value;

    fn transition(&self) -> &'static Transition {
        &REVERSE
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<Value>> {
        let mut details = json!({"reads_from": "legacy"});
        if !run.dry_run && run.state.phase == Phase::FlushRetired {
            // Legacy reads need the legacy tables: bring the flush back and fill the hours it skipped.
            let mut redis = ctx.redis_bulk().await?;
            redis::cmd("DEL").arg(&ctx.keys.flush_retired).query_async::<()>(&mut redis).await?;
            let legacy = ctx.legacy().await?;
            let from = run.state.flush_retired_at.unwrap_or_else(Utc::now) - Duration::hours(1);
            let tz = ctx.settings.target.timezone();
            let refill = flush::flush_range(&mut redis, &legacy, &ctx.keys, &ctx.settings.legacy, tz, from, Utc::now()).await?;
            details["legacy_flush_restored"] = json!({"hours_refilled": refill.hours});
        }
        let changes = StateChanges {
            read_source: Some(crate::state::ReadSource::Legacy),
            reads_switched_at: Some(None),
            flush_retired_at: Some(None),
            ..Default::default()
        };
        Ok(Applied::new(details, Commit::Move(changes)))
    }
}
