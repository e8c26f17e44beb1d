use crate::config::Settings;
use crate::phase::dual_write;

use super::{emit, Outcome};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start dual-write (prepared → dual_writing): ingest appends every event to the outbox
    /// stream in the same MULTI as the legacy write, and the completion point T is recorded.
    /// Keep `tsmigrate run` (or `tsmigrate relay`) running so the outbox reaches the target.
    Start(Args),
    /// Stop dual-write (dual_writing → prepared): ingest stops appending to the outbox.
    Stop(Args),
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Say what would happen, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(command: Command, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let report = match command {
        Command::Start(args) => dual_write::start(settings, args.dry_run).await?,
        Command::Stop(args) => dual_write::stop(settings, args.dry_run).await?,
    };
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}
