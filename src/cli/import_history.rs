use crate::config::Settings;
use crate::legacy::LegacyKeys;
use crate::phase::history;

use super::{emit, Outcome};

/// Copy legacy hourly and asset rows older than the oldest event Redis holds into
/// tsmigrate.history_hourly / history_asset_popularity, so long-range reads stay complete
/// after cutover. Idempotent; `backfill` runs it too.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let target = crate::db::target_pool(settings).await?;
    let state = crate::phase::state::load_from_pool(&target).await?;
    if state.phase == crate::phase::Phase::New {
        return Err(
            crate::phase::Refusal { command: "import-history".into(), reason: "the target is not prepared".into(), next: "tsmigrate prepare".into() }.into()
        );
    }
    let legacy = crate::db::legacy_pool(settings).await?;
    let mut redis = crate::db::redis(settings).await?;
    let keys = LegacyKeys::from_settings(settings);
    let horizon = match history::redis_horizon(&mut redis, &keys).await? {
        Some(h) => h,
        None => state.completion_point.unwrap_or_else(chrono::Utc::now),
    };
    let report = history::import(settings, &target, &legacy, horizon).await?;
    emit(json, &report, |r| {
        format!(
            "history imported (through the hour of {}): {} hourly rows, {} asset rows\n",
            r.horizon.map(|t| t.to_string()).unwrap_or_default(),
            r.hourly_rows,
            r.asset_rows
        )
    })?;
    Ok(Outcome::Success)
}
