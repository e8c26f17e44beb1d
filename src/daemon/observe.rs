//! The gauges that come from the servers rather than from this process's own work: phase
//! and read source, backfill progress, failing TimescaleDB jobs, the last validation, dead
//! letters by reason, outbox lag, and whether Redis can keep the outbox. Every replica refreshes them, so any one of
//! them answers a dashboard; each read is small (one row, `INFO`, `XLEN`).

use std::time::Duration;

use crate::connect::RedisConn;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::dual_write::{durability, outbox};
use crate::ledger::validation::{self, Verdict};
use crate::ledger::{checkpoint, dead_letter, gaps};
use crate::legacy::LegacyKeys;
use crate::phase::Phase;
use crate::telemetry::{self, DEAD_LETTER_REASONS};

/// How often the gauges are refreshed: a scrape interval's worth.
pub const EVERY: Duration = Duration::from_secs(15);

/// What the refresh reads from.
pub struct Sources {
    pub target: PgPool,
    pub redis: RedisConn,
    pub keys: LegacyKeys,
    pub group: String,
}

/// Refreshes every `every` until `stop` changes. A server that does not answer leaves its
/// gauges at their last value (the alerts on staleness cover that).
pub async fn run(mut sources: Sources, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        if tokio::time::timeout(every.max(Duration::from_secs(5)), refresh(&mut sources)).await.is_err() {
            tracing::debug!("refreshing the metrics from the servers timed out; next try soon");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {},
            _ = stop.changed() => return,
        }
    }
}

/// One refresh of every server-side gauge; each part on its own, so one failing read
/// does not hold back the others.
pub async fn refresh(sources: &mut Sources) {
    if let Err(e) = migration(&sources.target).await {
        tracing::debug!(error = %format!("{e:#}"), "cannot read the migration state for metrics");
    }
    if let Err(e) = validation(&sources.target).await {
        tracing::debug!(error = %format!("{e:#}"), "cannot read the last validation for metrics");
    }
    if let Err(e) = dead_letters(&sources.target).await {
        tracing::debug!(error = %format!("{e:#}"), "cannot count dead letters for metrics");
    }
    if let Err(e) = redis(sources).await {
        tracing::debug!(error = %format!("{e:#}"), "cannot read Redis for metrics");
    }
}

async fn migration(target: &PgPool) -> anyhow::Result<()> {
    let state = crate::ledger::migration::load_from_pool(target).await?;
    let phases: Vec<&'static str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    telemetry::set_one_hot("tsmigrate_phase", "phase", &phases, state.phase.as_str());
    telemetry::set_one_hot("tsmigrate_read_source", "source", &telemetry::SOURCES, state.read_source.as_str());
    if state.phase == Phase::New {
        return Ok(());
    }
    if let Some(failing) = crate::store::open(state.storage_mode.unwrap_or(crate::store::StorageMode::Postgres), target.clone()).failing_jobs().await? {
        metrics::gauge!("tsmigrate_timescaledb_failing_jobs").set(failing.len() as f64);
    }
    let mut conn = target.acquire().await?;
    if let Some(mut position) = checkpoint::backfill(&mut conn).await? {
        // A copy in several streams keeps its counts in each stream's checkpoint.
        crate::backfill::parts::load_on(&mut conn, &mut position).await?;
        metrics::gauge!("tsmigrate_backfill_read_events").set(position.read as f64);
        metrics::gauge!("tsmigrate_backfill_inserted_events").set(position.inserted as f64);
        metrics::gauge!("tsmigrate_backfill_finished").set(f64::from(u8::from(position.finished)));
    }
    Ok(())
}

async fn validation(target: &PgPool) -> anyhow::Result<()> {
    let Some(last) = validation::latest_from_pool(target).await? else {
        return Ok(());
    };
    // Differences: events missing, extra or different, plus legacy hourly rows that differ.
    let f = &last.figures;
    let differences = f.missing + f.extra + f.different + f.hourly_differences;
    // A run that found differences the sum does not name still counts as one.
    let differences = if last.verdict == Verdict::Differences { differences.max(1) } else { differences };
    metrics::gauge!("tsmigrate_validation_differences").set(differences as f64);
    metrics::gauge!("tsmigrate_last_validation_clean").set(f64::from(u8::from(last.verdict == Verdict::Clean)));
    metrics::gauge!("tsmigrate_last_validation_timestamp_seconds").set(last.finished_at.timestamp_millis() as f64 / 1000.0);
    Ok(())
}

async fn dead_letters(target: &PgPool) -> anyhow::Result<()> {
    let counts = dead_letter::counts(&mut *target.acquire().await?).await?;
    for reason in DEAD_LETTER_REASONS {
        let n = counts.iter().find(|c| c.reason_code == reason).map_or(0, |c| c.count);
        metrics::gauge!("tsmigrate_dead_letter_rows", "reason" => reason).set(n as f64);
    }
    Ok(())
}

async fn redis(sources: &mut Sources) -> anyhow::Result<()> {
    let lag = outbox::lag(&mut sources.redis, &sources.keys, &sources.group).await?;
    metrics::gauge!("tsmigrate_outbox_entries").set(lag.entries as f64);
    metrics::gauge!("tsmigrate_outbox_lag_seconds").set(lag.oldest_age_seconds.unwrap_or(0.0));
    let facts = durability::inspect(&mut sources.redis).await?;
    // Unknown RDB rules (CONFIG not allowed) count as persisted: the warning says so in words.
    let rdb = facts.rdb_save.as_deref().is_none_or(|rules| !rules.trim().is_empty());
    metrics::gauge!("tsmigrate_redis_persistence_enabled").set(f64::from(u8::from(facts.aof == Some(true) || rdb)));
    metrics::gauge!("tsmigrate_redis_memory_used_bytes").set(facts.used_memory.unwrap_or(0) as f64);
    metrics::gauge!("tsmigrate_redis_memory_max_bytes").set(facts.maxmemory.unwrap_or(0) as f64);
    metrics::gauge!("tsmigrate_redis_evicting").set(f64::from(u8::from(facts.evicting)));
    // A cluster master replaced during dual-write (failover, restart) may have taken
    // acknowledged writes with it: recorded as a possible gap with its window. (A single
    // server that restarts without its data is noticed by the relay: its group is gone.)
    let masters: Vec<String> = facts.masters.iter().map(|m| format!("{} {}", m.address, m.run_id.as_deref().unwrap_or("?"))).collect();
    if sources.redis.is_cluster() && !masters.is_empty() {
        if let Some(gap) = gaps::record_master_change(&sources.target, &sources.group, &masters, chrono::Utc::now()).await? {
            metrics::counter!("tsmigrate_outbox_gaps_total").increment(1);
            tracing::error!(
                window_from = ?gap.window_from,
                window_to = %gap.window_to,
                repair = %gap.repair_command(),
                "a Redis master changed while dual-write is on (failover or restart): writes it acknowledged may be lost (possible gap recorded in tsmigrate.outbox_gaps)"
            );
        }
    }
    if let Some(evicted) = facts.evicted_keys {
        metrics::gauge!("tsmigrate_redis_evicted_keys").set(evicted as f64);
        // Evictions during dual-write are a possible loss: recorded with their window.
        if let Some(gap) = gaps::record_evictions(&sources.target, &sources.group, evicted, chrono::Utc::now()).await? {
            metrics::counter!("tsmigrate_outbox_gaps_total").increment(1);
            tracing::error!(
                evicted_keys = gap.evicted_keys,
                window_from = ?gap.window_from,
                window_to = %gap.window_to,
                repair = %gap.repair_command(),
                "Redis evicted keys while dual-write is on: accepted events may be in neither system (possible loss recorded in tsmigrate.outbox_gaps)"
            );
        }
    }
    Ok(())
}
