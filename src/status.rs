//! `tsmigrate status` (and `GET /api/v1/admin/status`): for on-call, a verdict first —
//! healthy, lagging, blocked or failing, with the reason — then the phase, the outbox lag,
//! both systems' counts, the last validation, the jobs, which target it is looking at, any
//! long work running (from `tsmigrate.progress`), and the next step as the gates see it.
//! The rest (objects, policies, storage, dead letters, Redis durability) is in the JSON and
//! behind `-v`. It reports what it can: an unreachable server is shown, not fatal, and a
//! figure that could not be read is `null`, never 0.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::context::Context;
use crate::dual_write::durability::{self, OutboxDurability};
use crate::human::plural;
use crate::ledger::dead_letter::{self, DeadLetterCount};
use crate::ledger::gaps::{self, OutboxGap};
use crate::ledger::progress::{self, TaskProgress};
use crate::ledger::validation::{self, ValidationRun};
use crate::phase::gates::{self, GateRules, LatestValidation};
use crate::state::{self, render_next_steps, MigrationState, NextStep, Phase};
use crate::store::capability::Capabilities;
use crate::store::user_sets::{self, report::UserSetsStatus};
use crate::store::{self, ObjectStatus, Policy, StorageMode, Store};

/// An outbox whose oldest entry is older than this means the relay is not keeping up.
pub const LAGGING_AFTER_SECONDS: f64 = 60.0;

/// The one-word answer on-call reads first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing needs anyone.
    Healthy,
    /// Behind, and catching up or not: the outbox is growing old.
    Lagging,
    /// The next step is held by a gate only work opens (repair, a validation that could not run).
    Blocked,
    /// Something is broken: a server unreachable, jobs failing, a possible gap in dual-write.
    Failing,
}

impl Verdict {
    /// `status --check`'s exit code: 0 healthy; 1 lagging; 3 blocked (like a refusal); 2 failing.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Healthy => crate::exit::SUCCESS,
            Verdict::Lagging => crate::exit::DIFFERENCES,
            Verdict::Blocked => crate::exit::REFUSED,
            Verdict::Failing => crate::exit::ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Lagging => "lagging",
            Verdict::Blocked => "blocked",
            Verdict::Failing => "failing",
        }
    }

    /// As the text shows it: loud unless healthy.
    fn word(self) -> String {
        match self {
            Verdict::Healthy => self.as_str().to_string(),
            other => other.as_str().to_uppercase(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub verdict: Verdict,
    pub verdict_reason: String,
    /// `None` when the target could not be read.
    pub phase: Option<Phase>,
    pub storage_mode: Option<StorageMode>,
    pub read_source: Option<crate::reads::ReadSource>,
    pub completion_point: Option<DateTime<Utc>>,
    /// Age of the oldest outbox entry (how far behind the relay is); `None` when Redis could not be read.
    pub lag_seconds: Option<f64>,
    pub target: TargetStatus,
    pub redis: RedisStatus,
    pub legacy: LegacyStatus,
    /// The read replica (`database.read_url`), its lag and where the target's reads go;
    /// `None` when no replica is set.
    pub read_replica: Option<crate::reads::replica::ReplicaView>,
    pub last_validation: Option<ValidationSummary>,
    /// When the soak period ends (reads switched, soak not over).
    pub soak_ends_at: Option<DateTime<Utc>>,
    /// tsmigrate's scheduled jobs and TimescaleDB's policy jobs; `None` when they could not be read.
    pub jobs: Option<Vec<JobHealth>>,
    /// Long work not finished: running, or stopped early (not running: interrupted, its
    /// process or connection died).
    pub running: Vec<TaskProgress>,
    /// Migrations of this tsmigrate the prepared target has not applied (an upgrade waiting
    /// for `prepare`); `None` when not prepared or not readable.
    pub migrations_pending: Option<Vec<i64>>,
    /// The user sets reads count unique users with (`None` before prepare, or on a target
    /// prepared by a tsmigrate without them until `prepare` runs again).
    pub user_sets: Option<UserSetsStatus>,
    pub objects: Vec<ObjectStatus>,
    pub policies: Vec<Policy>,
    /// Possible losses in dual-write not repaired yet (Redis lost the outbox).
    pub outbox_gaps: Vec<OutboxGap>,
    /// Whether the target and Redis belong to the same migration; `None` when they could not
    /// be compared (a server unreachable).
    pub identity: Option<crate::identity::Outcome>,
    /// The target and Redis belong to different migrations: the figures above mix two.
    pub identity_mismatch: Option<crate::identity::Mismatch>,
    /// What needs attention besides the verdict: possible gaps, a Redis that cannot keep the outbox.
    pub warnings: Vec<String>,
    /// Why the next move is held by a gate only work opens (see `gates::Outlook`).
    #[serde(skip)]
    pub blocked: Option<String>,
    #[serde(skip)]
    pub next_steps: Vec<NextStep>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct TargetStatus {
    /// The target database's URL, password redacted.
    pub url: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// What to do about `error`.
    pub hint: Option<String>,
    pub server_version: Option<String>,
    pub timescaledb: Option<TimescaleInfo>,
    pub events: Option<i64>,
    pub oldest_event: Option<DateTime<Utc>>,
    pub newest_event: Option<DateTime<Utc>>,
    pub hourly_rows: Option<i64>,
    pub dead_letters: Option<Vec<DeadLetterCount>>,
    /// Chunks (TimescaleDB) or partitions (plain mode).
    pub chunks: Option<i64>,
    pub compressed_chunks: Option<i64>,
    pub total_bytes: Option<i64>,
    pub compression_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimescaleInfo {
    pub available: Option<String>,
    pub installed: Option<String>,
    pub preloaded: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RedisStatus {
    pub reachable: bool,
    pub error: Option<String>,
    /// What to do about `error` (by its cause: start Redis, fix the credentials...).
    pub hint: Option<String>,
    pub events: Option<u64>,
    pub oldest_event: Option<DateTime<Utc>>,
    pub newest_event: Option<DateTime<Utc>>,
    pub dual_write_flag: Option<bool>,
    pub outbox_entries: Option<u64>,
    pub outbox_pending: Option<u64>,
    pub flush_retired_flag: Option<bool>,
    /// Persistence and memory of the Redis holding the outbox.
    pub durability: Option<OutboxDurability>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct LegacyStatus {
    pub reachable: bool,
    pub error: Option<String>,
    pub hourly_rows: Option<i64>,
    pub hourly_from: Option<DateTime<Utc>>,
    pub hourly_to: Option<DateTime<Utc>>,
    pub asset_rows: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidationSummary {
    pub id: i64,
    pub finished_at: DateTime<Utc>,
    pub age_seconds: i64,
    pub result: String,
    pub depth: String,
    pub window_from: Option<DateTime<Utc>>,
    pub window_to: Option<DateTime<Utc>>,
    /// Whether it compared the whole migrated range (only such a run opens a gate); `None`
    /// when that was not recorded.
    pub whole_range: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobHealth {
    pub name: String,
    /// `tsmigrate run` (the scheduled jobs) or `timescaledb` (its policy jobs).
    pub runs_in: &'static str,
    pub last_status: Option<String>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub failures: i64,
    pub failing: bool,
    pub last_error: Option<String>,
}

/// Everything status shows. `target_down` is why the target could not be connected (the
/// rest is still read: Redis, and the legacy tables when they live elsewhere).
pub async fn gather(ctx: &Context, target_down: Option<String>) -> Status {
    let now = Utc::now();
    let mut status = Status::empty(ctx);
    let (redis, legacy, replica) = tokio::join!(redis_status(ctx), legacy_status(ctx), crate::reads::replica::check(ctx, [None, None]));
    if let Some(view) = replica.as_ref().filter(|v| !v.serving()) {
        status.warnings.push(format!("reads of the target go to the primary, not the read replica: {}", view.line()));
    }
    status.read_replica = replica;
    status.lag_seconds = redis.lag;
    status.redis = redis.status;
    status.legacy = legacy;
    let unreadable = match target_down {
        Some(error) => Some(error),
        None => read_target(ctx, &mut status, now).await.err().map(|e| format!("{e:#}")),
    };
    if let Some(error) = unreadable {
        // The message is the reason; its advice is the next step.
        let (message, hint) = state::split_hint(&error);
        status.target.reachable = false;
        status.target.error = Some(first_line(&message));
        status.next_steps = hint.iter().cloned().map(NextStep::note).collect();
        status.target.hint = hint;
        if ctx.settings.database.legacy_url.is_none() {
            // The same database, the same failure: said once, about DATABASE_URL.
            status.legacy = LegacyStatus {
                reachable: false,
                error: Some("not read: the legacy tables are in the target database (LEGACY_DATABASE_URL is not set), which is unreachable".into()),
                ..Default::default()
            };
        }
    }
    if !status.redis.reachable {
        // A Redis that is down comes before any phase step: advice for its cause, first.
        status.next_steps.retain(|step| step.command.is_none());
        status.next_steps.splice(0..0, status.redis.hint.iter().cloned().map(NextStep::note));
    }
    status.warnings.extend(status.redis.durability.iter().flat_map(|d| d.warnings.clone()));
    if status.target.reachable && status.redis.reachable {
        match crate::identity::verify(ctx).await {
            Ok(outcome) => {
                status.warnings.extend(outcome.warning(&ctx.keys));
                status.identity = Some(outcome);
            }
            Err(mismatch) => {
                // Nothing else applies until the pair is one migration's.
                status.next_steps = state::split_hint(&mismatch.to_string()).1.into_iter().map(NextStep::note).collect();
                status.identity_mismatch = Some(mismatch);
            }
        }
    }
    (status.verdict, status.verdict_reason) = verdict(&status, now);
    status
}

impl Status {
    fn empty(ctx: &Context) -> Status {
        Status {
            verdict: Verdict::Failing,
            verdict_reason: String::new(),
            phase: None,
            storage_mode: None,
            read_source: None,
            completion_point: None,
            lag_seconds: None,
            target: TargetStatus { url: ctx.settings.database.url.redacted(), ..TargetStatus::default() },
            redis: RedisStatus::default(),
            legacy: LegacyStatus::default(),
            read_replica: None,
            last_validation: None,
            soak_ends_at: None,
            jobs: None,
            running: vec![],
            migrations_pending: None,
            user_sets: None,
            objects: vec![],
            policies: vec![],
            outbox_gaps: vec![],
            identity: None,
            identity_mismatch: None,
            warnings: vec![],
            blocked: None,
            next_steps: vec![],
        }
    }
}

/// The target's side: state, objects, figures, validations, jobs, progress, the next steps.
async fn read_target(ctx: &Context, status: &mut Status, now: DateTime<Utc>) -> anyhow::Result<()> {
    let pool = &ctx.target;
    let caps = Capabilities::detect(pool).await?;
    status.target.reachable = true;
    status.target.server_version = Some(caps.server_version.clone());
    status.target.timescaledb = Some(TimescaleInfo {
        available: caps.timescaledb_available.clone(),
        installed: caps.timescaledb_installed.clone(),
        preloaded: caps.timescaledb_preloaded,
    });
    let state = crate::ledger::migration::load_from_pool(pool).await?;
    status.phase = Some(state.phase);
    status.storage_mode = state.storage_mode;
    status.read_source = Some(state.read_source);
    status.completion_point = state.completion_point;
    if let Some(mode) = state.storage_mode.or_else(|| caps.choose(ctx.settings.target.mode).ok()) {
        status.objects = store::object_status(&*ctx.store(mode)).await?;
    }
    let latest = if state.phase > Phase::New { prepared_figures(ctx, &state, status).await? } else { None };
    if let (Some(mode), true) = (state.storage_mode, state.phase > Phase::New) {
        let plan = crate::store::schema::plan(pool, mode, &ctx.settings.target).await;
        status.migrations_pending = plan.ok().map(|p| p.pending.iter().map(|m| m.version).collect());
    }
    let outlook = gates::outlook(&state, latest.as_ref(), now, &GateRules::from_settings(&ctx.settings.migration));
    status.soak_ends_at = outlook.soak_ends_at;
    status.next_steps = status.outbox_gaps.iter().map(|g| NextStep::run(g.repair_command(), format!("repair possible gap #{}", g.id))).collect();
    status.next_steps.extend(outlook.next_steps);
    status.blocked = outlook.blocked;
    Ok(())
}

/// What exists once prepared; returns the latest validation for the gates.
async fn prepared_figures(ctx: &Context, state: &MigrationState, status: &mut Status) -> anyhow::Result<Option<LatestValidation>> {
    let pool = &ctx.target;
    let store = ctx.store(state.storage_mode.unwrap_or(StorageMode::Postgres));
    let (policies, target, last_validation, gaps, running, jobs, sets) = tokio::join!(
        store.policies(),
        target_figures(&*store),
        validation::latest_from_pool(pool),
        gaps::open(pool),
        progress::unfinished(pool),
        job_health(pool, &*store),
        user_sets::report::status(pool, Utc::now())
    );
    status.user_sets = sets.ok();
    status.policies = policies.unwrap_or_default();
    let url = std::mem::take(&mut status.target.url);
    status.target =
        TargetStatus { url, reachable: true, server_version: status.target.server_version.take(), timescaledb: status.target.timescaledb.take(), ..target };
    let latest = last_validation?;
    status.last_validation = latest.as_ref().map(|run| validation_summary(run, Utc::now()));
    status.outbox_gaps = gaps?;
    status.warnings.extend(status.outbox_gaps.iter().map(|g| format!("{}; repair: {}", g.describe(), g.repair_command())));
    status.running = running?;
    status.jobs = jobs.ok();
    // The gates read the run as the phase commands do, coverage included.
    Ok(latest.as_ref().map(LatestValidation::from))
}

/// What the target holds; a figure it cannot read (a table not there yet) stays `None`.
async fn target_figures(store: &dyn Store) -> TargetStatus {
    let mut status = TargetStatus::default();
    let Ok(mut conn) = store.pool().acquire().await else { return status };
    if let Ok((count, oldest, newest)) =
        sqlx::query_as::<_, (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>)>("SELECT count(*), min(time), max(time) FROM analytics_events_ts")
            .fetch_one(&mut *conn)
            .await
    {
        status.events = Some(count);
        status.oldest_event = oldest;
        status.newest_event = newest;
    }
    status.hourly_rows = sqlx::query_scalar("SELECT count(*) FROM analytics_hourly").fetch_one(&mut *conn).await.ok();
    status.dead_letters = dead_letter::counts(&mut conn).await.ok();
    if let Ok(storage) = store.storage().await {
        status.chunks = Some(storage.chunks);
        status.compressed_chunks = storage.compressed_chunks;
        status.total_bytes = Some(storage.total_bytes);
        status.compression_ratio = storage.compression_ratio;
    }
    status
}

fn validation_summary(run: &ValidationRun, now: DateTime<Utc>) -> ValidationSummary {
    ValidationSummary {
        id: run.id,
        finished_at: run.finished_at,
        age_seconds: (now - run.finished_at).num_seconds(),
        result: run.verdict.as_str().into(),
        depth: run.depth.as_str().into(),
        window_from: run.window.map(|w| w.0),
        window_to: run.window.map(|w| w.1),
        whole_range: run.whole_range(),
    }
}

/// tsmigrate's scheduled jobs (from their last runs) and TimescaleDB's policy jobs.
async fn job_health(pool: &PgPool, store: &dyn Store) -> anyhow::Result<Vec<JobHealth>> {
    let runs = crate::ledger::jobs::last_runs(pool).await?;
    let mut jobs: Vec<JobHealth> = runs
        .into_iter()
        .map(|run| JobHealth {
            failing: run.last_status.as_deref() == Some(crate::ledger::jobs::RunStatus::Failed.as_str()),
            name: run.job,
            runs_in: "tsmigrate run",
            last_status: run.last_status,
            last_run_at: run.last_finished_at,
            failures: run.failures,
            last_error: run.last_error,
        })
        .collect();
    if !store.scheduler_does_upkeep() {
        let failing = store.failing_jobs().await?.unwrap_or_default();
        for policy in store.policies().await? {
            let error = failing.iter().find(|f| policy.name.contains(f.split(':').next().unwrap_or_default())).cloned();
            jobs.push(JobHealth {
                failing: policy.last_status.as_deref() == Some("Failed"),
                name: policy.name,
                runs_in: "timescaledb",
                last_status: policy.last_status,
                last_run_at: policy.last_run_at,
                failures: policy.failures,
                last_error: error,
            });
        }
    }
    Ok(jobs)
}

/// Redis's side, and the outbox lag.
struct RedisSide {
    status: RedisStatus,
    lag: Option<f64>,
}

type ScoredMembers = Vec<(String, f64)>;

async fn redis_status(ctx: &Context) -> RedisSide {
    let (keys, settings) = (&ctx.keys, &ctx.settings);
    let result: anyhow::Result<RedisSide> = async {
        let mut conn = ctx.redis().await?;
        let (events, oldest, newest, flag, retired): (u64, ScoredMembers, ScoredMembers, Option<String>, Option<String>) = redis::pipe()
            .zcard(&keys.events)
            .cmd("ZRANGE")
            .arg(&keys.events)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("ZRANGE")
            .arg(&keys.events)
            .arg(-1)
            .arg(-1)
            .arg("WITHSCORES")
            .get(&keys.dual_write_flag)
            .get(&keys.flush_retired)
            .query_async(&mut conn)
            .await?;
        let lag = crate::dual_write::outbox::lag(&mut conn, keys, &settings.redis.outbox_group).await?;
        let durability = durability::inspect_or_warn(&mut conn).await;
        let status = RedisStatus {
            reachable: true,
            error: None,
            hint: None,
            events: Some(events),
            oldest_event: oldest.first().and_then(|(_, s)| DateTime::from_timestamp_millis(*s as i64)),
            newest_event: newest.first().and_then(|(_, s)| DateTime::from_timestamp_millis(*s as i64)),
            dual_write_flag: Some(flag.as_deref() == Some("1")),
            outbox_entries: Some(lag.entries),
            outbox_pending: Some(lag.pending),
            flush_retired_flag: Some(retired.as_deref() == Some("1")),
            durability: Some(durability),
        };
        Ok(RedisSide { status, lag: Some(lag.oldest_age_seconds.unwrap_or(0.0)) })
    }
    .await;
    result.unwrap_or_else(|e| {
        let (message, hint) = state::split_hint(&e.to_string());
        RedisSide { status: RedisStatus { reachable: false, error: Some(first_line(&message)), hint, ..Default::default() }, lag: None }
    })
}

async fn legacy_status(ctx: &Context) -> LegacyStatus {
    let settings = &ctx.settings;
    let result: anyhow::Result<LegacyStatus> = async {
        let pool = ctx.legacy().await?;
        let table = &settings.legacy.hourly_table;
        let (rows, from, to): (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            sqlx::query_as(&format!("SELECT count(*), min(hour), max(hour) FROM {table}")).fetch_one(&pool).await?;
        let assets: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", settings.legacy.asset_table)).fetch_one(&pool).await?;
        Ok(LegacyStatus { reachable: true, error: None, hourly_rows: Some(rows), hourly_from: from, hourly_to: to, asset_rows: Some(assets) })
    }
    .await;
    result.unwrap_or_else(|e| {
        let message = first_line(&e.to_string());
        let missing_table = e.downcast_ref::<sqlx::Error>().and_then(|e| e.as_database_error()).and_then(|d| d.code()).is_some_and(|c| c == "42P01");
        let error = if missing_table {
            format!(
                "{message} in {} (run `tsmigrate legacy setup`, or point LEGACY_DATABASE_URL / legacy.hourly_table at the legacy tables)",
                settings.database.legacy_url().redacted()
            )
        } else {
            message
        };
        LegacyStatus { reachable: false, error: Some(error), ..Default::default() }
    })
}

/// The verdict and its reason, worst first. Pure.
fn verdict(s: &Status, _now: DateTime<Utc>) -> (Verdict, String) {
    if !s.target.reachable {
        return (Verdict::Failing, format!("the target database is unreachable: {}", opt(&s.target.error)));
    }
    if !s.redis.reachable {
        return (Verdict::Failing, format!("Redis is unreachable: {}", opt(&s.redis.error)));
    }
    if let Some(mismatch) = &s.identity_mismatch {
        return (Verdict::Failing, state::split_hint(&mismatch.to_string()).0);
    }
    if let Some(why) = s.redis.durability.as_ref().and_then(|d| d.refusing_writes_reason()) {
        return (Verdict::Failing, why);
    }
    if let Some(gap) = s.outbox_gaps.first() {
        return (Verdict::Failing, format!("{} possible gap(s) in dual-write not repaired: {}", s.outbox_gaps.len(), gap.describe()));
    }
    // Evicting is a loss waiting to happen while the outbox holds events the target has not.
    let evicting = s.redis.durability.as_ref().and_then(|d| d.evicting_reason());
    if let Some(why) = evicting.filter(|_| s.phase.is_some_and(Phase::dual_write_active)) {
        return (Verdict::Failing, why);
    }
    let failing: Vec<&JobHealth> = s.jobs.iter().flatten().filter(|j| j.failing).collect();
    if let Some(pending) = s.migrations_pending.as_ref().filter(|p| !p.is_empty()) {
        return (
            Verdict::Failing,
            format!(
                "this target lacks {} of this tsmigrate's migrations ({pending:?}): writes fail until `tsmigrate prepare` applies them (only what is missing)",
                pending.len()
            ),
        );
    }
    if let Some(job) = failing.first() {
        return (Verdict::Failing, format!("{} job(s) failing, first {} ({}): {}", failing.len(), job.name, job.runs_in, opt(&job.last_error)));
    }
    // Known at once from the lock the run holds while it works, not from a heartbeat's age.
    if let Some(stopped) = s.running.iter().find(|t| t.stopped()) {
        return (
            Verdict::Blocked,
            format!(
                "{} stopped at {} of {} {} and is not running (interrupted, or its process or connection died at {}); `{}` {}",
                stopped.task,
                stopped.done,
                opt(&stopped.total),
                stopped.unit,
                stopped.updated_at,
                stopped.resume_command(),
                stopped.rerun.does()
            ),
        );
    }
    if let Some(blocked) = &s.blocked {
        return (Verdict::Blocked, blocked.clone());
    }
    let needs_legacy = s.phase.is_some_and(|p| p >= Phase::DualWriting && p < Phase::FlushRetired);
    if needs_legacy && !s.legacy.reachable {
        return (Verdict::Blocked, format!("the legacy tables cannot be read, so validation cannot run: {}", opt(&s.legacy.error)));
    }
    if let Some(lag) = s.lag_seconds.filter(|l| *l > LAGGING_AFTER_SECONDS && s.phase.is_some_and(Phase::dual_write_active)) {
        return (
            Verdict::Lagging,
            format!(
                "the outbox's oldest entry is {} old: the relay is behind (is `tsmigrate run` running?)",
                crate::duration::show(chrono::Duration::seconds(lag as i64))
            ),
        );
    }
    match (s.phase, s.soak_ends_at) {
        (Some(phase), Some(ends)) => (Verdict::Healthy, format!("{phase}: soaking until {}", ends.format("%Y-%m-%d %H:%M UTC"))),
        (Some(phase), None) => (Verdict::Healthy, format!("{phase}: nothing needs attention")),
        (None, _) => (Verdict::Failing, "the migration state could not be read".into()),
    }
}

fn user_sets_text(s: &UserSetsStatus) -> String {
    let show = |secs: i64| crate::duration::show(chrono::Duration::seconds(secs));
    format!(
        "{}, {}, {} built through {} (lag {}); stale: {} marked, {} / {} differ from the aggregates; {} per day",
        plural(s.days, "day"),
        plural(s.hours, "hour"),
        plural(s.minutes, "minute"),
        time(&s.built_through),
        s.lag_seconds.map(show).unwrap_or_else(|| "-".into()),
        plural(s.marked_minutes, "minute"),
        plural(s.hours_differing, "hour"),
        plural(s.days_differing, "day"),
        s.bytes_per_day.map(crate::human::bytes_i64).unwrap_or_else(|| "-".into())
    )
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn time(t: &Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into())
}

impl Status {
    /// What could not be reached, and what to do about it (everything else is still
    /// reported); `None` when all was. The legacy tables are not counted: they may not exist
    /// yet, and status says so.
    pub fn unreachable(&self) -> Option<(String, Option<String>)> {
        if !self.target.reachable {
            return Some((format!("the target database is unreachable: {}", opt(&self.target.error)), self.target.hint.clone()));
        }
        (!self.redis.reachable).then(|| (format!("Redis is unreachable: {}", opt(&self.redis.error)), self.redis.hint.clone()))
    }

    /// The text for people: the verdict and what on-call needs, then with `verbose` the rest.
    pub fn human(&self, verbose: bool) -> String {
        let mut o = format!("verdict:    {}: {}\n", self.verdict.word(), self.verdict_reason);
        match self.phase {
            Some(phase) => o.push_str(&format!(
                "phase:      {phase} (storage mode {}, reads from {})\n",
                self.storage_mode.map(|m| m.to_string()).unwrap_or_else(|| "not prepared".into()),
                opt(&self.read_source)
            )),
            None => o.push_str("phase:      unknown (the target could not be read)\n"),
        }
        o.push_str(&format!("target:     {} ({})\n", self.target.url, self.server_text()));
        if let Some(replica) = &self.read_replica {
            o.push_str(&format!("replica:    {}\n", replica.line()));
        }
        o.push_str(&self.lag_text());
        o.push_str(&format!(
            "events:     redis {}; target {}; legacy hourly table {}\n",
            self.redis_events_text(),
            self.target_events_text(),
            self.legacy_text()
        ));
        o.push_str(&format!("validation: {}\n", self.validation_text()));
        o.push_str(&format!("jobs:       {}\n", self.jobs_text()));
        for task in &self.running {
            o.push_str(&format!("running:    {}\n", task.line(Utc::now())));
        }
        if self.phase.is_some_and(|p| p > Phase::New) {
            o.push_str(&format!(
                "user sets:  {}\n",
                self.user_sets.as_ref().map(user_sets_text).unwrap_or_else(|| "not set up (run `tsmigrate prepare`)".into())
            ));
        }
        if verbose {
            o.push_str(&self.details_text());
        }
        for warning in &self.warnings {
            o.push_str(&format!("WARNING: {warning}\n"));
        }
        o.push_str(&render_next_steps(&self.next_steps));
        o
    }

    fn server_text(&self) -> String {
        let Some(version) = &self.target.server_version else {
            return format!("UNREACHABLE: {}", opt(&self.target.error));
        };
        let ts = match &self.target.timescaledb {
            Some(TimescaleInfo { installed: Some(v), .. }) => format!("TimescaleDB {v}"),
            Some(TimescaleInfo { available: Some(v), preloaded, .. }) => {
                format!("TimescaleDB {v} available{}", if *preloaded { "" } else { ", not preloaded" })
            }
            _ => "no TimescaleDB".into(),
        };
        format!("PostgreSQL {version}, {ts}")
    }

    fn lag_text(&self) -> String {
        let r = &self.redis;
        if !r.reachable {
            return format!("lag:        unknown (Redis UNREACHABLE: {})\n", opt(&r.error));
        }
        format!(
            "lag:        outbox {} entries, {} pending, oldest {}; dual-write flag {}\n",
            opt(&r.outbox_entries),
            opt(&r.outbox_pending),
            self.lag_seconds.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into()),
            if r.dual_write_flag == Some(true) { "on" } else { "off" }
        )
    }

    fn redis_events_text(&self) -> String {
        match self.redis.events {
            Some(n) => format!("{} ({} .. {})", crate::human::count(n), time(&self.redis.oldest_event), time(&self.redis.newest_event)),
            None => "unknown".into(),
        }
    }

    fn target_events_text(&self) -> String {
        // Redis members that are not events never become rows: the count says so, or the two
        // systems' figures would differ unexplained.
        let dead: i64 = self.target.dead_letters.iter().flatten().map(|d| d.count).sum();
        let dead = if dead > 0 { format!(", + {} not events (dead letters)", plural(dead, "member")) } else { String::new() };
        match self.target.events {
            Some(n) => format!("{} ({} .. {}){dead}", crate::human::count(n), time(&self.target.oldest_event), time(&self.target.newest_event)),
            None => "unknown".into(),
        }
    }

    fn legacy_text(&self) -> String {
        match (&self.legacy.hourly_rows, &self.legacy.error) {
            (Some(rows), _) => format!("{} rows", crate::human::count(*rows)),
            (None, error) => format!("unavailable ({})", opt(error)),
        }
    }

    fn validation_text(&self) -> String {
        match &self.last_validation {
            Some(v) => format!(
                "#{} {} at {} depth, {} ago{}",
                v.id,
                v.result,
                v.depth,
                crate::duration::show(chrono::Duration::seconds(v.age_seconds)),
                if v.whole_range == Some(false) { ", over part of the migrated range only" } else { "" }
            ),
            None if self.phase.is_some_and(|p| p > Phase::New) => "none yet".into(),
            None => "-".into(),
        }
    }

    fn jobs_text(&self) -> String {
        let Some(jobs) = &self.jobs else {
            return if self.phase.is_some_and(|p| p > Phase::New) { "unknown".into() } else { "-".into() };
        };
        let failing: Vec<String> =
            jobs.iter().filter(|j| j.failing).map(|j| format!("{} ({}, {} failures): {}", j.name, j.runs_in, j.failures, opt(&j.last_error))).collect();
        match failing.len() {
            0 => format!("{} ok", jobs.len()),
            n => format!("{} ok, {n} FAILING: {}", jobs.len() - n, failing.join("; ")),
        }
    }

    /// `-v`: completion point, objects, policies, storage, dead letters, Redis durability.
    fn details_text(&self) -> String {
        let mut o = String::new();
        if let Some(t) = self.completion_point {
            o.push_str(&format!("completion point: {}\n", crate::human::utc(t)));
        }
        use crate::identity::Outcome;
        match &self.identity {
            Some(Outcome::Matched { id } | Outcome::Published { id } | Outcome::Restored { id }) => {
                o.push_str(&format!("migration id: {id} (the target and Redis agree)\n"))
            }
            Some(Outcome::Unchecked { reason }) => o.push_str(&format!("migration id: not compared ({reason})\n")),
            Some(Outcome::NotPrepared) | None => {}
        }
        if !self.objects.is_empty() {
            o.push_str("objects:\n");
            for obj in &self.objects {
                o.push_str(&format!("  {} {:<38} {}\n", if obj.present { "ok     " } else { "missing" }, obj.name, obj.kind));
            }
        }
        if !self.policies.is_empty() {
            o.push_str("policies / jobs:\n");
            for p in &self.policies {
                o.push_str(&format!(
                    "  {:<44} on {:<30} {:<16} last: {} ({}) failures: {}  {}\n",
                    p.name,
                    p.target,
                    // Schedules read "every 5 minutes" or "hourly"; an interval alone gets "every".
                    if p.schedule.starts_with("every") || !p.schedule.starts_with(|c: char| c.is_ascii_digit()) {
                        p.schedule.clone()
                    } else {
                        format!("every {}", p.schedule)
                    },
                    opt(&p.last_status),
                    time(&p.last_run_at),
                    p.failures,
                    if p.config.is_null() { String::new() } else { p.config.to_string() }
                ));
            }
        }
        let t = &self.target;
        o.push_str(&format!(
            "storage:    {} hourly rows, {} chunks/partitions, {}",
            opt(&t.hourly_rows),
            opt(&t.chunks),
            t.total_bytes.map(crate::human::bytes_i64).unwrap_or_else(|| "-".into())
        ));
        if let Some(ratio) = t.compression_ratio {
            o.push_str(&format!(", compression {ratio:.1}x ({} chunks compressed)", opt(&t.compressed_chunks)));
        }
        o.push('\n');
        if let Some(dead) = &t.dead_letters {
            let total: i64 = dead.iter().map(|d| d.count).sum();
            let parts: Vec<String> = dead.iter().map(|d| format!("{} {}", d.count, d.reason_code)).collect();
            o.push_str(&format!("dead letters: {total}{}\n", if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }));
        }
        if let Some(d) = &self.redis.durability {
            let memory = |used: Option<u64>, max: Option<u64>| {
                format!(
                    "{} of {}",
                    used.map(crate::human::bytes).unwrap_or_else(|| "-".into()),
                    max.map(|m| if m == 0 { "no limit".to_string() } else { crate::human::bytes(m) }).unwrap_or_else(|| "-".into())
                )
            };
            o.push_str(&format!(
                "redis:      aof {}, rdb save {:?}, memory {} ({})\n",
                opt(&d.aof),
                d.rdb_save.as_deref().unwrap_or("-"),
                memory(d.used_memory, d.maxmemory),
                d.maxmemory_policy.as_deref().unwrap_or("-")
            ));
            if d.masters.len() > 1 {
                for m in &d.masters {
                    o.push_str(&format!(
                        "  master {}: aof {}, rdb save {:?}, memory {} ({})\n",
                        m.address,
                        opt(&m.aof),
                        m.rdb_save.as_deref().unwrap_or("-"),
                        memory(m.used_memory, m.maxmemory),
                        m.maxmemory_policy.as_deref().unwrap_or("-")
                    ));
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(phase: Phase) -> Status {
        let mut s = Status {
            verdict: Verdict::Healthy,
            verdict_reason: String::new(),
            phase: Some(phase),
            storage_mode: Some(StorageMode::Postgres),
            read_source: Some(crate::reads::ReadSource::Legacy),
            completion_point: None,
            lag_seconds: Some(0.5),
            target: TargetStatus { reachable: true, ..Default::default() },
            redis: RedisStatus { reachable: true, ..Default::default() },
            legacy: LegacyStatus { reachable: true, ..Default::default() },
            read_replica: None,
            last_validation: None,
            soak_ends_at: None,
            jobs: Some(vec![]),
            running: vec![],
            migrations_pending: Some(vec![]),
            user_sets: None,
            objects: vec![],
            policies: vec![],
            outbox_gaps: vec![],
            identity: None,
            identity_mismatch: None,
            warnings: vec![],
            blocked: None,
            next_steps: vec![],
        };
        s.verdict = verdict(&s, Utc::now()).0;
        s
    }

    #[test]
    fn the_verdict_names_the_worst_first() {
        let now = Utc::now();
        assert_eq!(verdict(&healthy(Phase::DualWriting), now).0, Verdict::Healthy);
        let mut s = healthy(Phase::DualWriting);
        s.lag_seconds = Some(600.0);
        assert_eq!(verdict(&s, now).0, Verdict::Lagging);
        s.blocked = Some("cutover gate closed: the latest validation (#3) found differences".into());
        assert_eq!(verdict(&s, now), (Verdict::Blocked, s.blocked.clone().unwrap()));
        s.jobs = Some(vec![JobHealth {
            name: "legacy_flush".into(),
            runs_in: "tsmigrate run",
            last_status: Some("failed".into()),
            last_run_at: None,
            failures: 3,
            failing: true,
            last_error: Some("boom".into()),
        }]);
        let (v, why) = verdict(&s, now);
        assert_eq!(v, Verdict::Failing);
        assert!(why.contains("legacy_flush") && why.contains("boom"), "{why}");
        s.redis.reachable = false;
        assert!(verdict(&s, now).1.starts_with("Redis is unreachable"));
        assert_eq!(Verdict::Lagging.exit_code(), 1);
        assert_eq!(Verdict::Blocked.exit_code(), 3);
        assert_eq!(Verdict::Failing.exit_code(), 2);
    }

    #[test]
    fn lag_matters_only_while_dual_writing() {
        let mut s = healthy(Phase::Prepared);
        s.lag_seconds = Some(600.0);
        assert_eq!(verdict(&s, Utc::now()).0, Verdict::Healthy);
    }
}
