use crate::config::{ModeChoice, Settings};
use crate::phase::prepare;

use super::{emit, Outcome};

/// Create everything the target needs, in TimescaleDB mode or plain-PostgreSQL mode.
///
/// Applies the versioned migrations under sql/ (checksummed; a changed setting that a
/// migration depends on is refused). Running it again applies only what is missing and
/// says so. Moves the phase new → prepared.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Storage mode: auto uses TimescaleDB when the server can load it.
    #[arg(long, value_enum)]
    pub mode: Option<ModeChoice>,
    /// Print the SQL that would run, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: Args, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let report = prepare::run(settings, args.mode.unwrap_or(settings.target.mode), args.dry_run).await?;
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}
