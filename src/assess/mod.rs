//! `tsmigrate assess`: measure the live system and say whether, when and how to migrate.
//! Read-only and bounded: [`measure`] does every read (and says what it reads); the rest is
//! pure — [`project`] (target size, chunk interval, outbox headroom, durations),
//! [`verdict`] (the seed's criteria with thresholds as data, blockers), [`config_file`]
//! (`--write-config`) and [`report`] (the text).

pub mod config_file;
pub mod measure;
pub mod project;
pub mod report;
pub mod verdict;

use serde::Serialize;

use crate::context::Context;

/// Everything `assess` found: what it read, what it measured, what that projects to, and
/// the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    /// What was read, with its bounds.
    pub reads: Vec<String>,
    pub measured: measure::Measured,
    /// `None` when no volume could be measured.
    pub projected: Option<project::Projection>,
    pub verdict: verdict::Verdict,
}

/// Measures (bounded reads only) and judges.
pub async fn assess(ctx: &Context, days: u32) -> anyhow::Result<Assessment> {
    let measured = measure::measure(ctx, days).await?;
    Ok(judge(&ctx.settings, measured, days))
}

/// The projection and verdict of what was measured. Pure.
pub fn judge(settings: &crate::config::Settings, measured: measure::Measured, days: u32) -> Assessment {
    let projected = project::project(&measured, settings);
    let verdict = verdict::verdict(&measured, projected.as_ref(), &settings.assess);
    Assessment { reads: measure::reads(settings, days), measured, projected, verdict }
}
