use crate::context::Context;
use crate::phase::command::backfill::Backfill;
use crate::phase::command::backfill_window::BackfillWindow;
use crate::phase::Options;

use super::options::DryRun;
use super::{parse_time, positive, reason, run_phase, Reply};

/// Copy the events Redis held before the completion point into the target
/// (dual_writing → backfilled). Refused unless dual-write is active.
///
/// Reads the sorted set oldest → newest in pages and writes them with COPY; every page
/// commits with its checkpoint, so after a crash or kill a re-run resumes with no gap and
/// no duplicate. Members that are not valid events go to tsmigrate.dead_letter. Then the
/// aggregates are refreshed over exactly the backfilled range (never further back than raw
/// retention) and legacy history older than the Redis horizon is imported.
///
/// With --from and --to, copy the events Redis holds in that window instead (idempotent,
/// no phase change): the repair for a possible gap in dual-write that `tsmigrate status` lists.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events per page (one transaction each). Default: migration.backfill_page_size.
    #[arg(long, value_parser = positive)]
    pub page_size: Option<usize>,
    /// At most this many events per second, to spare a busy server (a window copy too).
    #[arg(long, value_parser = positive)]
    pub max_rate: Option<usize>,
    /// Skip importing the legacy history older than the Redis horizon.
    #[arg(long)]
    pub no_history: bool,
    /// Parallel copy streams over disjoint time ranges, each with its own checkpoint (at
    /// most 8; one target connection each). A resumed copy keeps the streams it started with.
    #[arg(long, value_parser = positive, conflicts_with_all = ["from"])]
    pub streams: Option<usize>,
    #[command(flatten)]
    pub dry_run: DryRun,
    /// Repair a window: copy the events scored from this time (RFC 3339, a date, or -6h).
    #[arg(long, value_parser = parse_time, requires = "to", allow_hyphen_values = true, conflicts_with_all = ["dry_run", "no_history"])]
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Repair a window: ... up to this time (inclusive).
    #[arg(long, value_parser = parse_time, requires = "from", allow_hyphen_values = true)]
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// With --from --to: close the recorded gaps in the window that Redis holds no events of,
    /// accepting their events as lost; the reason is recorded in the audit log.
    #[arg(long, value_name = "REASON", requires = "from", value_parser = reason)]
    pub accept_loss: Option<String>,
}

pub async fn run(args: Args, ctx: &Context, json: bool) -> anyhow::Result<Reply> {
    let page_size = args.page_size.unwrap_or(ctx.settings.migration.backfill_page_size);
    if let (Some(from), Some(to)) = (args.from, args.to) {
        return run_phase(
            ctx,
            &BackfillWindow { from, to, page_size, max_rate: args.max_rate.map(|r| r as u64), accept_loss: args.accept_loss },
            &Options::default(),
        )
        .await;
    }
    let streams = args.streams.unwrap_or(crate::store::bulk::DEFAULT_STREAMS);
    if streams > crate::store::bulk::MAX_STREAMS {
        anyhow::bail!(
            "--streams {streams}: at most {} streams (each holds a target connection)\n  next: run again with --streams {}",
            crate::store::bulk::MAX_STREAMS,
            crate::store::bulk::MAX_STREAMS
        );
    }
    let command = Backfill { page_size, max_rate: args.max_rate.map(|r| r as u64), import_history: !args.no_history, quiet: json, streams };
    run_phase(ctx, &command, &args.dry_run.options()).await
}
