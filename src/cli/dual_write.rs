use crate::context::Context;
use crate::phase::command::{dual_write_start::DualWriteStart, dual_write_stop::DualWriteStop};

use super::options::{DryRun, ForceArgs};
use super::{run_phase, Reply};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start dual-write (prepared → dual_writing): ingest appends every event to the outbox
    /// stream in the same MULTI as the legacy write, and the completion point T is recorded.
    /// Keep `tsmigrate run` (or `tsmigrate relay`) running so the outbox reaches the target.
    /// Refused while the Redis holding the outbox evicts keys when full (an allkeys-* policy).
    Start(StartArgs),
    /// Stop dual-write (dual_writing → prepared): ingest stops appending to the outbox.
    Stop(Args),
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub dry_run: DryRun,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub dry_run: DryRun,
    /// --force --reason: start although Redis evicts keys when full (audited).
    #[command(flatten)]
    pub force: ForceArgs,
}

pub async fn run(command: Command, ctx: &Context) -> anyhow::Result<Reply> {
    match command {
        Command::Start(args) => run_phase(ctx, &DualWriteStart, &args.dry_run.forced(&args.force)).await,
        Command::Stop(args) => run_phase(ctx, &DualWriteStop, &args.dry_run.options()).await,
    }
}
