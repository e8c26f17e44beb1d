use crate::config::ModeChoice;
use crate::context::Context;
use crate::phase::command::prepare::Prepare;

use super::options::{DryRun, ModeArg};
use super::{run_phase, Reply};

/// Create everything the target needs, in TimescaleDB mode or plain-PostgreSQL mode.
///
/// Applies the versioned migrations under sql/ (checksummed; a changed setting that a
/// migration depends on is refused). Running it again applies only what is missing and
/// says so. Moves the phase new → prepared. With --dry-run, prints the SQL that would run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Storage mode: auto uses TimescaleDB when the server can load it.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    #[command(flatten)]
    pub dry_run: DryRun,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<Reply> {
    let choice = args.mode.map(ModeChoice::from).unwrap_or(ctx.settings.target.mode);
    run_phase(ctx, &Prepare { choice }, &args.dry_run.options()).await
}
