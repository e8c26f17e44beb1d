//! The scheduled jobs of `tsmigrate run`. Each job is a plain async function returning a
//! [`JobOutcome`] — tests call [`run_job`] directly; the scheduler only decides when.
//! Every run is recorded in `tsmigrate.job_runs` and counted in metrics.

use chrono::Utc;
use serde_json::{json, Value};
use tokio_cron_scheduler::{Job, JobScheduler};

use super::leader::Lease;
use crate::context::Context;
use crate::ledger::jobs::{self, RunStatus};
use crate::legacy::flush;
use crate::phase::command::validate::Validate;
use crate::phase::Options;
use crate::state::Phase;
use crate::store::user_sets::{self, build::BuildOptions};
use crate::store::{aggregates, Store};

pub use crate::schedule::JobName;

#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Done(Value),
    /// Not applicable now (wrong phase or mode, flush retired...).
    Skipped(String),
    Failed(String),
    /// Another replica holds the jobs lease: nothing ran.
    NotLeader,
}

/// What the jobs share: the daemon's [`Context`] (built once; every run, the hourly
/// validation too, uses its pools) and the jobs lease.
#[derive(Clone)]
pub struct JobContext {
    pub ctx: Context,
    /// Whether this replica runs the jobs now ([`Lease::sole`] for a lone process).
    pub lease: Lease,
}

/// Runs one job now and records the outcome, when this replica holds the jobs lease;
/// otherwise returns [`JobOutcome::NotLeader`] without running or recording anything.
pub async fn run_job(ctx: &JobContext, job: JobName) -> JobOutcome {
    if !ctx.lease.confirm(&ctx.ctx.target).await {
        return JobOutcome::NotLeader;
    }
    let started = Utc::now();
    let outcome = match execute(&ctx.ctx, job).await {
        Ok(outcome) => outcome,
        Err(e) => JobOutcome::Failed(format!("{e:#}")),
    };
    let status = match &outcome {
        JobOutcome::Done(_) => RunStatus::Success,
        JobOutcome::Skipped(_) => RunStatus::Skipped,
        JobOutcome::Failed(_) => RunStatus::Failed,
        JobOutcome::NotLeader => unreachable!("returned above"),
    };
    metrics::counter!("tsmigrate_job_runs_total", "job" => job.as_str(), "status" => status.as_str()).increment(1);
    if let JobOutcome::Failed(error) = &outcome {
        metrics::counter!("tsmigrate_job_failures_total", "job" => job.as_str()).increment(1);
        tracing::warn!(job = job.as_str(), %error, "job failed");
    }
    let error = match &outcome {
        JobOutcome::Failed(e) => Some(e.as_str()),
        _ => None,
    };
    // Which replica ran it, too: `job_runs.replica` and one row per run in `job_run_log`.
    jobs::record(&ctx.ctx.target, &jobs::FinishedRun { job, started, status, error, replica: &ctx.lease.replica }).await;
    outcome
}

async fn execute(ctx: &Context, job: JobName) -> anyhow::Result<JobOutcome> {
    match job {
        JobName::LegacyFlush => legacy_flush(ctx).await,
        _ => {
            let state = crate::ledger::migration::load_from_pool(&ctx.target).await?;
            let Some(mode) = state.storage_mode else {
                return Ok(JobOutcome::Skipped("the target is not prepared".into()));
            };
            upkeep(ctx, job, &*ctx.store(mode), state.phase).await
        }
    }
}

async fn legacy_flush(ctx: &Context) -> anyhow::Result<JobOutcome> {
    let (settings, keys) = (&ctx.settings, &ctx.keys);
    let mut redis = ctx.redis_bulk().await?;
    let retired: Option<String> = redis::cmd("GET").arg(&keys.flush_retired).query_async(&mut redis).await?;
    if retired.as_deref() == Some("1") {
        return Ok(JobOutcome::Skipped("the legacy flush is retired".into()));
    }
    let tz = settings.target.timezone();
    let (from, to) = crate::calendar::last_closed_hour(Utc::now(), tz);
    let legacy = ctx.legacy().await?;
    crate::legacy::schema::ensure(&legacy, &settings.legacy).await?;
    let done = flush::flush_range(&mut redis, &legacy, keys, &settings.legacy, tz, from, to).await?;
    Ok(JobOutcome::Done(json!(done)))
}

/// The jobs that need a prepared target.
async fn upkeep(ctx: &Context, job: JobName, store: &dyn Store, phase: Phase) -> anyhow::Result<JobOutcome> {
    let t = &ctx.settings.target;
    let now = Utc::now();
    match job {
        JobName::RollupRefresh | JobName::PartitionUpkeep | JobName::RawRetention if !store.scheduler_does_upkeep() => {
            Ok(JobOutcome::Skipped("TimescaleDB policies do this".into()))
        }
        JobName::RollupRefresh => {
            let done = aggregates::refresh(store, now - chrono::Duration::hours(3), now, t.timezone(), t.raw_retention_days).await?;
            Ok(JobOutcome::Done(json!(done)))
        }
        JobName::PartitionUpkeep => {
            let created = store.ensure_partitions(now - chrono::Duration::days(1), now + chrono::Duration::days(i64::from(t.partitions_ahead_days))).await?;
            Ok(JobOutcome::Done(json!({"created": created})))
        }
        JobName::RawRetention => {
            let dropped = store.enforce_retention(t, now).await?.dropped_partitions;
            Ok(JobOutcome::Done(json!({"dropped": dropped})))
        }
        JobName::TimescaledbJobHealth => job_health(store).await,
        JobName::LegacyKeyExpiry if phase != Phase::Completed => Ok(JobOutcome::Skipped("the migration is not complete".into())),
        JobName::LegacyKeyExpiry => {
            let set = crate::legacy::expire_keys(&mut ctx.redis_bulk().await?, &ctx.keys, ctx.settings.migration.legacy_key_expiry_days).await?;
            Ok(JobOutcome::Done(json!({"expiries_set": set})))
        }
        JobName::UserSets => user_sets(ctx).await,
        JobName::Validation if phase < Phase::Backfilled => Ok(JobOutcome::Skipped("nothing to validate before backfill".into())),
        JobName::Validation => scheduled_validation(ctx).await,
        JobName::LegacyFlush => unreachable!("handled by execute"),
    }
}

/// Builds the user sets of the buckets closed since the last run, and rebuilds the marked ones.
async fn user_sets(ctx: &Context) -> anyhow::Result<JobOutcome> {
    let options = BuildOptions::from_settings(&ctx.settings.target, false);
    Ok(match user_sets::build::build(&ctx.target, options, Utc::now()).await? {
        Some(built) => JobOutcome::Done(json!(built)),
        None => JobOutcome::Skipped("another build of the user sets is running".into()),
    })
}

/// Are the database's own background jobs failing?
async fn job_health(store: &dyn Store) -> anyhow::Result<JobOutcome> {
    let Some(failing) = store.failing_jobs().await? else {
        return Ok(JobOutcome::Skipped("plain PostgreSQL mode".into()));
    };
    metrics::gauge!("tsmigrate_timescaledb_failing_jobs").set(failing.len() as f64);
    if failing.is_empty() {
        Ok(JobOutcome::Done(json!({"failing": 0})))
    } else {
        Ok(JobOutcome::Failed(failing.join("; ")))
    }
}

/// The hourly consistency check: `tsmigrate validate` with the defaults, recorded like any
/// run, on the daemon's pools and connections.
async fn scheduled_validation(ctx: &Context) -> anyhow::Result<JobOutcome> {
    let options = crate::validate::run::ValidateOptions {
        from: None,
        to: None,
        depth: crate::validate::Depth::Events,
        settle: chrono::Duration::seconds(ctx.settings.migration.settle_secs as i64),
        refresh: true,
        limit: crate::validate::run::DEFAULT_LIMIT,
        command_line: "tsmigrate validate".into(),
    };
    let report = crate::phase::runner::run(ctx, &Validate { options }, &Options::default()).await?.details;
    Ok(match report.verdict() {
        crate::validate::Verdict::Clean => JobOutcome::Done(report.figures()),
        crate::validate::Verdict::Differences => {
            JobOutcome::Failed(format!("validation run #{} found differences: {}", report.run_id.unwrap_or_default(), report.figures()))
        }
        crate::validate::Verdict::Incomplete => {
            let missing: Vec<String> = report.could_not_run().iter().map(|(check, reason, hint)| format!("{check}: {reason} (fix: {hint})")).collect();
            JobOutcome::Failed(format!("validation run #{} could not run every check: {}", report.run_id.unwrap_or_default(), missing.join("; ")))
        }
    })
}

/// A scheduled run: claims `tick` for this job first, so a tick runs at most once across
/// replicas even when the lease moves between the old holder's run and the new holder's
/// firing of the same tick. Without the claim table (target not prepared) it just runs.
pub async fn run_scheduled(ctx: &JobContext, job: JobName, tick: Option<chrono::DateTime<Utc>>) -> JobOutcome {
    if !ctx.lease.confirm(&ctx.ctx.target).await {
        return JobOutcome::NotLeader;
    }
    if let Some(tick) = tick {
        let claimed = jobs::claim_tick(&ctx.ctx.target, job, tick, &ctx.lease.replica).await;
        if matches!(claimed, Ok(false)) {
            return JobOutcome::Skipped(format!("the tick {tick} already ran on another replica"));
        }
    }
    run_job(ctx, job).await
}

/// Registers every job on a started scheduler, on its default schedule unless
/// `jobs.schedules` names another. Each run happens only where the lease is held.
pub async fn schedule(ctx: JobContext) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    for job in JobName::ALL {
        let ctx = ctx.clone();
        let when = ctx.ctx.settings.jobs.schedules.get(job.as_str()).cloned().unwrap_or_else(|| job.schedule().to_string());
        let ticks = croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Required).build().parse(&when).ok();
        let cron = Job::new_async(when.as_str(), move |_, _| {
            let (ctx, ticks) = (ctx.clone(), ticks.clone());
            Box::pin(async move {
                // The tick this firing is for: the latest one at or before now.
                let tick = ticks.and_then(|c| c.find_previous_occurrence(&Utc::now(), true).ok());
                run_scheduled(&ctx, job, tick).await;
            })
        })
        .map_err(|e| anyhow::anyhow!("jobs.schedules.{} {when:?} is not a cron expression with seconds ({e}); for example \"0 5 * * * *\"", job.as_str()))?;
        scheduler.add(cron).await?;
    }
    scheduler.start().await?;
    Ok(scheduler)
}
