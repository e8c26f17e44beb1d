use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::legacy::{schema, seed};
use crate::progress::Progress;

use super::{emit, parse_time, Outcome};

/// Generate realistic legacy traffic: N events over D days for U users, written through
/// the legacy write path (sorted set, counters, sessions, cap trim), with the hourly
/// flush run for each closed hour. Deterministic for a given --seed and --end.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of events.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Days of history, ending at --end.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Number of distinct users.
    #[arg(long, default_value_t = 500)]
    pub users: u32,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Add what real legacy data holds: missing ids, epoch-number timestamps, members
    /// that are not JSON, identical members, late events.
    #[arg(long)]
    pub messy: bool,
    /// Newest event time (RFC 3339, a date, now, or -2h). Default: now.
    #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
    pub end: Option<DateTime<Utc>>,
    /// Do not run the legacy hourly flush.
    #[arg(long)]
    pub no_flush: bool,
}

pub async fn run(args: Args, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    if args.events == 0 || args.users == 0 || args.days == 0 {
        anyhow::bail!("--events, --days and --users must be at least 1");
    }
    let mut redis = crate::db::redis(settings).await?;
    let legacy = crate::db::legacy_pool(settings).await?;
    schema::ensure(&legacy, &settings.legacy).await?;
    let options = seed::SeedOptions {
        events: args.events,
        days: args.days,
        users: args.users,
        seed: args.seed,
        messy: args.messy,
        end: args.end.unwrap_or_else(Utc::now),
        flush: !args.no_flush,
    };
    let progress = Progress::new("seed", args.events, json);
    let outcome = seed::run(&mut redis, &legacy, settings, options, |n| progress.set(n)).await?;
    progress.finish();
    emit(json, &outcome, |o| {
        format!(
            "seeded {} events in {} batches ({} .. {})\n  messy: {} without id, {} epoch timestamps, {} not JSON, {} identical resends, {} late\n  legacy flush: {} hours\nnext:\n  tsmigrate prepare\n",
            o.events_generated,
            o.batches,
            o.from.map(|t| t.to_rfc3339()).unwrap_or_default(),
            o.to.map(|t| t.to_rfc3339()).unwrap_or_default(),
            o.without_id,
            o.epoch_timestamps,
            o.not_json,
            o.identical_resends,
            o.late,
            o.hours_flushed
        )
    })?;
    Ok(Outcome::Success)
}
