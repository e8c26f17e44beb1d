use crate::config::Settings;
use crate::phase::backfill::{self, BackfillOptions};

use super::{emit, Outcome};

/// Copy the events Redis held before the completion point into the target
/// (dual_writing → backfilled). Refused unless dual-write is active.
///
/// Reads the sorted set oldest → newest in pages and writes them with COPY; every page
/// commits with its checkpoint, so after a crash or kill a re-run resumes with no gap and
/// no duplicate. Members that are not valid events go to tsmigrate.dead_letter. Then the
/// aggregates are refreshed over exactly the backfilled range (never further back than raw
/// retention) and legacy history older than the Redis horizon is imported.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events per page (one transaction each). Default: migration.backfill_page_size.
    #[arg(long)]
    pub page_size: Option<usize>,
    /// At most this many events per second, to spare a busy server.
    #[arg(long)]
    pub max_rate: Option<u64>,
    /// Skip importing the legacy history older than the Redis horizon.
    #[arg(long)]
    pub no_history: bool,
    /// Say what would be copied, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: Args, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let options = BackfillOptions {
        page_size: args.page_size.unwrap_or(settings.migration.backfill_page_size).max(1),
        max_rate: args.max_rate,
        dry_run: args.dry_run,
        import_history: !args.no_history,
        quiet: json,
    };
    let report = backfill::run(settings, options).await?;
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}
