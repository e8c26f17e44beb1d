use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::legacy::{schema, seed};
use crate::progress::Progress;

use super::{parse_time, Reply};

/// Generate realistic legacy traffic: N events over D days for U users, written through
/// the legacy write path (sorted set, counters, sessions, cap trim), with the hourly
/// flush run for each closed hour. Deterministic for a given --seed and --end.
///
/// For demos and tests: it refuses to write into keys that already hold events, or while
/// a migration has started on the target, unless --yes.
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
    #[command(flatten)]
    pub confirm: super::options::Confirm,
}

pub async fn run(args: Args, settings: &Settings, json: bool) -> anyhow::Result<Reply> {
    if args.events == 0 || args.users == 0 || args.days == 0 {
        anyhow::bail!("--events, --days and --users must be at least 1");
    }
    let mut redis = crate::db::redis(settings).await?;
    let legacy = crate::db::legacy_pool(settings).await?;
    // Seeding writes the legacy system only, but into the Redis of the target's migration:
    // refused when they differ. A target that cannot be reached is not needed here.
    let keys = crate::legacy::LegacyKeys::from_settings(settings);
    let target = crate::db::target_pool_lazy(settings)?;
    crate::identity::verify_with(&target, &mut redis, &keys, &settings.database.url.redacted(), &settings.redis.url.redacted()).await?;
    if !args.confirm.yes {
        refuse_live_data(&mut redis, settings).await?;
    }
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
    let o = &outcome;
    let text = format!(
            "seeded {} events in {} batches ({} .. {})\n  messy: {} without id, {} epoch timestamps, {} not JSON, {} identical resends, {} late\n  legacy flush: {}\n",
            o.events_generated,
            o.batches,
            o.from.map(crate::human::utc).unwrap_or_default(),
            o.to.map(crate::human::utc).unwrap_or_default(),
            o.without_id,
            o.epoch_timestamps,
            o.not_json,
            o.identical_resends,
            o.late,
            crate::human::plural(o.hours_flushed as u64, "hour")
        );
    let next = vec![crate::state::NextStep::run("tsmigrate prepare", "create the target")];
    Ok(Reply::done(&outcome, text + &crate::state::render_next_steps(&next)).with_next_steps(next))
}

/// Seeding writes events into the legacy keys and re-runs the legacy flush: into the keys of
/// a live system or of a migration under way, that is made-up traffic among real events.
async fn refuse_live_data(redis: &mut crate::connect::RedisConn, settings: &Settings) -> anyhow::Result<()> {
    let refuse = |reason: String| crate::phase::Refusal {
        command: "seed".into(),
        reason,
        next: "use an empty key prefix (TSMIGRATE_REDIS_PREFIX) and database, or pass --yes to add made-up events anyway".into(),
    };
    let events_key = crate::legacy::LegacyKeys::from_settings(settings).events;
    let held: u64 = redis::cmd("ZCARD").arg(&events_key).query_async(redis).await?;
    if held > 0 {
        return Err(refuse(format!("{events_key} already holds {held} events")).into());
    }
    let target = crate::db::target_pool_lazy(settings)?;
    let state = tokio::time::timeout(std::time::Duration::from_secs(5), crate::ledger::migration::load_from_pool(&target)).await;
    match state {
        Ok(Ok(state)) if state.phase > crate::state::Phase::New => Err(refuse(format!("a migration has started on the target (phase {})", state.phase)).into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(refuse(format!("cannot tell whether a migration has started on the target: {e}")).into()),
        Err(_) => Err(refuse("cannot tell whether a migration has started on the target: it did not answer within 5 s".into()).into()),
    }
}
