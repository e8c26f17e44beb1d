//! `tsmigrate retire-flush`: the legacy hourly flush stops (reads_switched → flush_retired);
//! the control key tells external workers. Gate: reads switched for the soak period and a
//! clean validation since.

use chrono::{Duration, Utc};
use serde_json::{json, Value};

use crate::context::Context;
use crate::phase::gates::{retire_gate, GateRules};
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::state::{latest_validation, StateChanges};
use crate::phase::{Transition, RETIRE_FLUSH};

pub struct RetireFlush {
    /// The soak period to require instead of `migration.soak_hours`.
    pub soak: Option<Duration>,
}

impl RetireFlush {
    fn soak(&self, ctx: &Context) -> Duration {
        self.soak.unwrap_or_else(|| Duration::hours(i64::from(ctx.settings.migration.soak_hours)))
    }
}

impl PhaseCommand for RetireFlush {
    type Details = Value;

    fn transition(&self) -> &'static Transition {
        &RETIRE_FLUSH
    }

    const FORCEABLE: bool = true;

    fn gate_rules(&self, ctx: &Context) -> GateRules {
        GateRules { soak: self.soak(ctx), ..GateRules::from_settings(&ctx.settings.migration) }
    }

    async fn gate(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Result<Value, String>> {
        let latest = latest_validation(run.guard()?.conn()).await?;
        Ok(retire_gate(&run.state, latest.as_ref(), Utc::now(), &self.gate_rules(ctx)))
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<Value>> {
        let key = &ctx.keys.flush_retired;
        let details = json!({
            "gate": run.gate,
            "soak_seconds": self.soak(ctx).num_seconds(),
            "control_key": key,
            "external_workers": format!("check `GET {key}` (\"1\" = retired) before flushing; see runbooks/05-retire-flush.md"),
        });
        if !run.dry_run {
            let mut redis = ctx.redis().await?;
            redis::cmd("SET").arg(key).arg("1").query_async::<()>(&mut redis).await?;
        }
        Ok(Applied::new(details, Commit::Move(StateChanges { flush_retired_at: Some(Some(Utc::now())), ..Default::default() })))
    }
}
