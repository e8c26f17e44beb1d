use crate::config::Settings;
use crate::phase::status;

use super::{emit, Outcome};

/// Where the migration stands: phase, storage mode, TimescaleDB version, the objects
/// present, policies and their job state, Redis and legacy counts, the target, the last
/// validation, and the next step. With --json, the same as one JSON object.
///
/// When Redis is unreachable, status still prints what it could read, then exits 2.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let status = status::gather(settings).await?;
    emit(json, &status, |s| s.human())?;
    match status.unreachable() {
        Some(down) => Err(anyhow::anyhow!("status is incomplete: {down}")),
        None => Ok(Outcome::Success),
    }
}
