//! `tsmigrate status`: where the migration stands, what exists, how both systems look,
//! and the next step. Reports what it can: an unreachable Redis is shown, not fatal.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use super::state::{self, MigrationState};
use super::Phase;
use crate::config::Settings;
use crate::dual_write::durability::{self, OutboxDurability};
use crate::dual_write::gaps::{self, OutboxGap};
use crate::legacy::LegacyKeys;
use crate::target::capability::Capabilities;
use crate::target::dead_letter::{self, DeadLetterCount};
use crate::target::schema::{self, ObjectStatus};
use crate::target::StorageMode;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub phase: Phase,
    pub storage_mode: Option<StorageMode>,
    pub read_source: String,
    pub server_version: String,
    pub timescaledb: TimescaleInfo,
    pub completion_point: Option<DateTime<Utc>>,
    pub objects: Vec<ObjectStatus>,
    pub policies: Vec<Policy>,
    pub redis: RedisStatus,
    pub legacy: LegacyStatus,
    pub target: TargetStatus,
    pub last_validation: Option<ValidationSummary>,
    /// Possible losses in dual-write not repaired yet (Redis lost the outbox).
    pub outbox_gaps: Vec<OutboxGap>,
    /// What needs attention: possible gaps, a Redis that cannot keep the outbox.
    pub warnings: Vec<String>,
    pub next_steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimescaleInfo {
    pub available: Option<String>,
    pub installed: Option<String>,
    pub preloaded: bool,
}

/// A background job: a TimescaleDB policy, or (plain mode) a job `tsmigrate run` schedules.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub name: String,
    pub target: String,
    pub schedule: String,
    pub config: Value,
    pub scheduled: bool,
    pub last_status: Option<String>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub failures: i64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RedisStatus {
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub events: u64,
    pub oldest_event: Option<DateTime<Utc>>,
    pub newest_event: Option<DateTime<Utc>>,
    pub dual_write_flag: bool,
    pub outbox_entries: u64,
    pub outbox_pending: u64,
    pub outbox_lag_seconds: Option<f64>,
    pub flush_retired_flag: bool,
    /// Persistence and memory of the Redis holding the outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<OutboxDurability>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct LegacyStatus {
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub hourly_rows: Option<i64>,
    pub hourly_from: Option<DateTime<Utc>>,
    pub hourly_to: Option<DateTime<Utc>>,
    pub asset_rows: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct TargetStatus {
    pub events: Option<i64>,
    pub oldest_event: Option<DateTime<Utc>>,
    pub newest_event: Option<DateTime<Utc>>,
    pub hourly_rows: Option<i64>,
    pub dead_letters: Vec<DeadLetterCount>,
    /// Chunks (TimescaleDB) or partitions (plain mode).
    pub chunks: Option<i64>,
    pub compressed_chunks: Option<i64>,
    pub total_bytes: Option<i64>,
    pub compression_ratio: Option<f64>,
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
}

pub async fn gather(settings: &Settings) -> anyhow::Result<Status> {
    let pool = crate::db::target_pool(settings).await?;
    let caps = Capabilities::detect(&pool).await?;
    let state = state::load_from_pool(&pool).await?;
    let prepared = state.phase > Phase::New;
    let mode = state.storage_mode.or_else(|| caps.choose(settings.target.mode).ok());
    let objects = match mode {
        Some(m) => schema::objects(&pool, m).await?,
        None => vec![],
    };
    let policies = if prepared { policies(&pool, state.storage_mode.unwrap_or(StorageMode::Postgres)).await? } else { vec![] };
    let target = if prepared { target_status(&pool, &state).await? } else { TargetStatus::default() };
    let last_validation = if prepared { last_validation(&pool).await? } else { None };
    let redis = redis_status(settings).await;
    let legacy = legacy_status(settings).await;
    let outbox_gaps = if prepared { gaps::open(&pool).await? } else { vec![] };
    let mut warnings: Vec<String> = outbox_gaps.iter().map(|g| format!("{}; repair: {}", g.describe(), g.repair_command())).collect();
    warnings.extend(redis.durability.iter().flat_map(|d| d.warnings.clone()));
    let mut next_steps = state.phase.next_steps();
    next_steps.splice(0..0, outbox_gaps.iter().map(|g| format!("{}   # repair possible gap #{}", g.repair_command(), g.id)));
    Ok(Status {
        phase: state.phase,
        storage_mode: state.storage_mode,
        read_source: state.read_source.clone(),
        server_version: caps.server_version.clone(),
        timescaledb: TimescaleInfo {
            available: caps.timescaledb_available.clone(),
            installed: caps.timescaledb_installed.clone(),
            preloaded: caps.timescaledb_preloaded,
        },
        completion_point: state.completion_point,
        objects,
        policies,
        redis,
        legacy,
        target,
        last_validation,
        outbox_gaps,
        warnings,
        next_steps,
    })
}

type JobRow = (i32, String, String, String, Option<Value>, bool, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<i64>);
type JobRunRow = (String, Option<String>, Option<DateTime<Utc>>, i64);
type ValidationRow = (i64, DateTime<Utc>, String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
type ScoredMembers = Vec<(String, f64)>;

async fn policies(pool: &PgPool, mode: StorageMode) -> anyhow::Result<Vec<Policy>> {
    match mode {
        StorageMode::Timescaledb => {
            let rows: Vec<JobRow> = sqlx::query_as(
                "SELECT j.job_id, j.proc_name::text,
                            coalesce(c.view_name::text, j.hypertable_name::text, ''),
                            j.schedule_interval::text, j.config, j.scheduled,
                            s.last_run_status::text,
                            -- job_stats says -infinity / infinity while a job is starting or paused
                            CASE WHEN isfinite(s.last_run_started_at) THEN s.last_run_started_at END,
                            CASE WHEN isfinite(s.next_start) THEN s.next_start END, s.total_failures
                     FROM timescaledb_information.jobs j
                     LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
                     LEFT JOIN timescaledb_information.continuous_aggregates c
                            ON c.materialization_hypertable_name = j.hypertable_name
                     WHERE j.job_id >= 1000
                     ORDER BY j.job_id",
            )
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(id, proc_name, target, schedule, config, scheduled, last_status, last_run_at, next_run_at, failures)| Policy {
                    name: format!("{proc_name} [job {id}]"),
                    target,
                    schedule,
                    config: config.unwrap_or(Value::Null),
                    scheduled,
                    last_status,
                    last_run_at,
                    next_run_at,
                    failures: failures.unwrap_or(0),
                })
                .collect())
        }
        StorageMode::Postgres => {
            let runs: Vec<JobRunRow> = sqlx::query_as("SELECT job, last_status, last_started_at, failures FROM tsmigrate.job_runs").fetch_all(pool).await?;
            Ok(crate::daemon::jobs::plain_mode_jobs()
                .into_iter()
                .map(|(name, target, schedule, config)| {
                    let run = runs.iter().find(|r| r.0 == name);
                    Policy {
                        name: name.to_string(),
                        target: target.to_string(),
                        schedule: schedule.to_string(),
                        config,
                        scheduled: true,
                        last_status: run.and_then(|r| r.1.clone()),
                        last_run_at: run.and_then(|r| r.2),
                        next_run_at: None,
                        failures: run.map(|r| r.3).unwrap_or(0),
                    }
                })
                .collect())
        }
    }
}

async fn target_status(pool: &PgPool, state: &MigrationState) -> anyhow::Result<TargetStatus> {
    let mut conn = pool.acquire().await?;
    let mut status = TargetStatus::default();
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
    status.dead_letters = dead_letter::counts(&mut conn).await?;
    match state.storage_mode {
        Some(StorageMode::Timescaledb) => {
            let row: Option<(i64, i64)> = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE is_compressed) FROM timescaledb_information.chunks WHERE hypertable_name = 'analytics_events_ts'",
            )
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((chunks, compressed)) = row {
                status.chunks = Some(chunks);
                status.compressed_chunks = Some(compressed);
            }
            status.total_bytes = sqlx::query_scalar("SELECT hypertable_size('analytics_events_ts')::bigint").fetch_one(&mut *conn).await.ok();
            let ratio: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT sum(before_compression_total_bytes)::bigint, sum(after_compression_total_bytes)::bigint
                 FROM hypertable_compression_stats('analytics_events_ts')",
            )
            .fetch_optional(&mut *conn)
            .await
            .ok()
            .flatten();
            if let Some((Some(before), Some(after))) = ratio {
                if after > 0 {
                    status.compression_ratio = Some(before as f64 / after as f64);
                }
            }
        }
        _ => {
            status.chunks =
                sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'analytics_events_ts'::regclass").fetch_one(&mut *conn).await.ok();
            status.total_bytes = sqlx::query_scalar(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint FROM pg_inherits WHERE inhparent = 'analytics_events_ts'::regclass",
            )
            .fetch_one(&mut *conn)
            .await
            .ok();
        }
    }
    Ok(status)
}

async fn last_validation(pool: &PgPool) -> anyhow::Result<Option<ValidationSummary>> {
    let row: Option<ValidationRow> =
        sqlx::query_as("SELECT id, finished_at, result, depth, window_from, window_to FROM tsmigrate.validation_runs ORDER BY finished_at DESC LIMIT 1")
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, finished_at, result, depth, window_from, window_to)| ValidationSummary {
        id,
        finished_at,
        age_seconds: (Utc::now() - finished_at).num_seconds(),
        result,
        depth,
        window_from,
        window_to,
    }))
}

async fn redis_status(settings: &Settings) -> RedisStatus {
    let keys = LegacyKeys::from_settings(settings);
    let result: anyhow::Result<RedisStatus> = async {
        let mut conn = crate::db::redis(settings).await?;
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
        let lag = crate::dual_write::outbox::lag(&mut conn, &keys, &settings.redis.outbox_group).await?;
        let durability = durability::inspect_or_warn(&mut conn).await;
        Ok(RedisStatus {
            reachable: true,
            error: None,
            events,
            oldest_event: oldest.first().and_then(|(_, s)| DateTime::from_timestamp_millis(*s as i64)),
            newest_event: newest.first().and_then(|(_, s)| DateTime::from_timestamp_millis(*s as i64)),
            dual_write_flag: flag.as_deref() == Some("1"),
            outbox_entries: lag.entries,
            outbox_pending: lag.pending,
            outbox_lag_seconds: lag.oldest_age_seconds,
            flush_retired_flag: retired.as_deref() == Some("1"),
            durability: Some(durability),
        })
    }
    .await;
    result.unwrap_or_else(|e| RedisStatus { reachable: false, error: Some(e.to_string()), ..Default::default() })
}

async fn legacy_status(settings: &Settings) -> LegacyStatus {
    let result: anyhow::Result<LegacyStatus> = async {
        let pool = crate::db::legacy_pool(settings).await?;
        let table = &settings.legacy.hourly_table;
        let (rows, from, to): (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            sqlx::query_as(&format!("SELECT count(*), min(hour), max(hour) FROM {table}")).fetch_one(&pool).await?;
        let assets: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", settings.legacy.asset_table)).fetch_one(&pool).await?;
        Ok(LegacyStatus { reachable: true, error: None, hourly_rows: Some(rows), hourly_from: from, hourly_to: to, asset_rows: Some(assets) })
    }
    .await;
    result.unwrap_or_else(|e| {
        let message = first_line(&e.to_string());
        let error = if message.contains("does not exist") {
            format!("{message} (run `tsmigrate legacy setup`, or point LEGACY_DATABASE_URL / legacy.hourly_table at the legacy tables)")
        } else {
            message
        };
        LegacyStatus { reachable: false, error: Some(error), ..Default::default() }
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

impl Status {
    /// What could not be reached (everything else is still reported); `None` when all was.
    /// The legacy tables are not counted: they may not exist yet, and status says so.
    pub fn unreachable(&self) -> Option<String> {
        (!self.redis.reachable).then(|| format!("Redis is unreachable: {}", opt(&self.redis.error)))
    }

    pub fn human(&self) -> String {
        let mut o = String::new();
        o.push_str(&format!("phase:          {}\n", self.phase));
        o.push_str(&format!("storage mode:   {}\n", self.storage_mode.map(|m| m.to_string()).unwrap_or_else(|| "(not prepared)".into())));
        o.push_str(&format!("reads from:     {}\n", self.read_source));
        o.push_str(&format!(
            "server:         PostgreSQL {}; TimescaleDB {}\n",
            self.server_version,
            match (&self.timescaledb.installed, &self.timescaledb.available) {
                (Some(v), _) => format!("{v} (installed)"),
                (None, Some(v)) => format!("{v} (available{})", if self.timescaledb.preloaded { ", preloaded" } else { ", not preloaded" }),
                _ => "not available".into(),
            }
        ));
        if let Some(t) = self.completion_point {
            o.push_str(&format!("completion pt:  {t}\n"));
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
                    "  {:<44} on {:<30} every {:<10} last: {} ({}) failures: {}  {}\n",
                    p.name,
                    p.target,
                    p.schedule,
                    opt(&p.last_status),
                    opt(&p.last_run_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string())),
                    p.failures,
                    if p.config.is_null() { String::new() } else { p.config.to_string() }
                ));
            }
        }
        let r = &self.redis;
        if r.reachable {
            o.push_str(&format!(
                "redis:          {} events ({} .. {}); outbox {} entries, {} pending, lag {}s; dual-write flag {}\n",
                r.events,
                opt(&r.oldest_event),
                opt(&r.newest_event),
                r.outbox_entries,
                r.outbox_pending,
                r.outbox_lag_seconds.map(|s| format!("{s:.1}")).unwrap_or_else(|| "0".into()),
                if r.dual_write_flag { "on" } else { "off" }
            ));
        } else {
            o.push_str(&format!("redis:          UNREACHABLE: {}\n", opt(&r.error)));
        }
        let l = &self.legacy;
        if l.reachable {
            o.push_str(&format!(
                "legacy tables:  {} hourly rows ({} .. {}), {} asset rows\n",
                opt(&l.hourly_rows),
                opt(&l.hourly_from),
                opt(&l.hourly_to),
                opt(&l.asset_rows)
            ));
        } else {
            o.push_str(&format!("legacy tables:  unavailable: {}\n", opt(&l.error)));
        }
        let t = &self.target;
        if self.phase > Phase::New {
            o.push_str(&format!(
                "target:         {} events ({} .. {}), {} hourly rows, {} chunks/partitions, {}\n",
                opt(&t.events),
                opt(&t.oldest_event),
                opt(&t.newest_event),
                opt(&t.hourly_rows),
                opt(&t.chunks),
                t.total_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1_048_576.0)).unwrap_or_else(|| "-".into())
            ));
            if let Some(ratio) = t.compression_ratio {
                o.push_str(&format!("compression:    {ratio:.1}x ({} chunks compressed)\n", opt(&t.compressed_chunks)));
            }
            let dead: i64 = t.dead_letters.iter().map(|d| d.count).sum();
            o.push_str(&format!("dead letters:   {dead}"));
            if dead > 0 {
                let parts: Vec<String> = t.dead_letters.iter().map(|d| format!("{} {}", d.count, d.reason_code)).collect();
                o.push_str(&format!(" ({})", parts.join(", ")));
            }
            o.push('\n');
        }
        for warning in &self.warnings {
            o.push_str(&format!("WARNING: {warning}\n"));
        }
        match &self.last_validation {
            Some(v) => o.push_str(&format!("last validation: #{} {} ({} depth), {} ago\n", v.id, v.result, v.depth, humanize_secs(v.age_seconds))),
            None if self.phase > Phase::New => o.push_str("last validation: none yet\n"),
            None => {}
        }
        o.push_str("next:\n");
        for step in &self.next_steps {
            o.push_str(&format!("  {step}\n"));
        }
        o
    }
}

fn humanize_secs(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
