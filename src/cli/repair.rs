use crate::context::Context;
use crate::phase::command::repair::Repair;

use super::options::DryRun;
use super::{run_phase, Reply};

/// Fix exactly what the latest validation found, from Redis: copy the events missing in
/// the target, rewrite the events it holds in another version, and (only with
/// --delete-extra) delete the events only the target has. Events Redis no longer holds
/// (trimmed by its cap) are named, not pretended repaired. Then the aggregates over what
/// changed are refreshed; validate again afterwards.
///
/// Idempotent and resumable (each batch commits with its checkpoint), audited, and allowed
/// in every phase from dual_writing until complete, while dual-write goes on.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also delete the events only the target holds (find out why they are there first).
    #[arg(long)]
    pub delete_extra: bool,
    #[command(flatten)]
    pub dry_run: DryRun,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<Reply> {
    run_phase(ctx, &Repair { delete_extra: args.delete_extra }, &args.dry_run.options()).await
}
