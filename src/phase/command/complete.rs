//! `tsmigrate complete`: the migration is finished (flush_retired → completed); then the
//! legacy Redis keys get an expiry. There is no way back (`reverse` is gone), so it needs `--yes`.

use serde_json::{json, Value};

use crate::context::Context;
use crate::phase::report::PhaseReport;
use crate::phase::runner::{confirmed, Applied, Commit, PhaseCommand, Run};
use crate::phase::state::StateChanges;
use crate::phase::{Transition, COMPLETE};

pub struct Complete {
    /// `--yes`: the legacy keys will expire and reads can no longer be reversed.
    pub confirmed: bool,
}

impl PhaseCommand for Complete {
    type Details = Value;

    fn transition(&self) -> &'static Transition {
        &COMPLETE
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<Value>> {
        let keys = &ctx.keys;
        let details = json!({
            "legacy_keys_expire_after_days": ctx.settings.migration.legacy_key_expiry_days,
            "legacy_keys": [keys.events, keys.event_counters, keys.category_counters, keys.sessions],
        });
        if !run.dry_run {
            confirmed(self.confirmed, "complete", "complete ends the migration: the legacy Redis keys get an expiry and reads can no longer be reversed")?;
        }
        Ok(Applied::new(details, Commit::Move(StateChanges::default())))
    }

    fn command_line(&self, _report: &PhaseReport) -> String {
        "tsmigrate complete --yes".into()
    }

    async fn after_commit(&self, ctx: &Context) -> anyhow::Result<()> {
        let mut redis = ctx.redis().await?;
        crate::legacy::expire_keys(&mut redis, &ctx.keys, ctx.settings.migration.legacy_key_expiry_days).await?;
        Ok(())
    }
}
