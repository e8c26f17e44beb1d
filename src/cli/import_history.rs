use crate::context::Context;
use crate::phase::command::import_history::ImportHistory;
use crate::phase::Options;

use super::{run_phase, Reply};

/// Copy legacy hourly and asset rows older than the oldest event Redis holds into
/// tsmigrate.history_hourly / history_asset_popularity, so long-range reads stay complete
/// after cutover. Idempotent; `backfill` runs it too.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, ctx: &Context) -> anyhow::Result<Reply> {
    run_phase(ctx, &ImportHistory, &Options::default()).await
}
