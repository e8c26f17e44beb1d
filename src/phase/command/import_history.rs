//! `tsmigrate import-history`: copies the legacy aggregates older than the Redis horizon
//! into the history tables (also part of `backfill`). Any phase once prepared.

use crate::context::Context;
use crate::phase::report::Details;
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::{Transition, IMPORT_HISTORY};
use crate::store::history::{self, HistoryReport};

pub struct ImportHistory;

impl PhaseCommand for ImportHistory {
    type Details = HistoryReport;

    fn transition(&self) -> &'static Transition {
        &IMPORT_HISTORY
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<HistoryReport>> {
        if run.dry_run {
            return Ok(Applied::new(HistoryReport::default(), Commit::Nothing));
        }
        let mut redis = ctx.redis().await?;
        let horizon = match crate::legacy::reader::redis_horizon(&mut redis, &ctx.keys).await? {
            Some(h) => h,
            None => run.state.completion_point.unwrap_or_else(chrono::Utc::now),
        };
        let report = history::import(&ctx.settings, &ctx.target, &ctx.legacy().await?, horizon).await?;
        Ok(Applied::new(report, Commit::Nothing))
    }
}

impl Details for HistoryReport {
    fn text(&self) -> String {
        HistoryReport::text(self)
    }
}
