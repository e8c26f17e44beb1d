//! `tsmigrate status`: where the migration stands, what exists, how both systems look,
//! and the next step. Reports what it can: an unreachable Redis is shown, not fatal.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::context::Context;
use crate::dual_write::durability::{self, OutboxDurability};
use crate::dual_write::gaps::{self, OutboxGap};
use crate::state::{self, render_next_steps, Phase};
use crate::store::capability::Capabilities;
use crate::store::dead_letter::{self, DeadLetterCount};
use crate::store::user_sets::{self, report::UserSetsStatus};
use crate::store::{self, ObjectStatus, Policy, StorageMode, Store};

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
    /// The user sets reads count unique users with (`None` before prepare).
    pub user_sets: Option<UserSetsStatus>,
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

pub async fn gather(ctx: &Context) -> anyhow::Result<Status> {
    let pool = &ctx.target;
    let caps = Capabilities::detect(pool).await?;
    let state = state::load_from_pool(pool).await?;
    let prepared = state.phase > Phase::New;
    let objects = match state.storage_mode.or_else(|| caps.choose(ctx.settings.target.mode).ok()) {
        Some(mode) => store::object_status(&*ctx.store(mode)).await?,
        None => vec![],
    };
    let store = ctx.store(state.storage_mode.unwrap_or(StorageMode::Postgres));
    let policies = if prepared { store.policies().await? } else { vec![] };
    let target = if prepared { target_status(&*store).await? } else { TargetStatus::default() };
    let last_validation = if prepared { last_validation(pool).await? } else { None };
    // A target prepared by an older tsmigrate has no sets until `prepare` runs again.
    let user_sets = if prepared { user_sets::report::status(pool, Utc::now()).await.ok() } else { None };
    let redis = redis_status(ctx).await;
    let legacy = legacy_status(ctx).await;
    let outbox_gaps = if prepared { gaps::open(pool).await? } else { vec![] };
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
        user_sets,
        outbox_gaps,
        warnings,
        next_steps,
    })
}

type ValidationRow = (i64, DateTime<Utc>, String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
type ScoredMembers = Vec<(String, f64)>;

/// What the target holds; figures it cannot read (a table not there yet) stay empty.
async fn target_status(store: &dyn Store) -> anyhow::Result<TargetStatus> {
    let mut conn = store.pool().acquire().await?;
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
    if let Ok(storage) = store.storage().await {
        status.chunks = Some(storage.chunks);
        status.compressed_chunks = storage.compressed_chunks;
        status.total_bytes = Some(storage.total_bytes);
        status.compression_ratio = storage.compression_ratio;
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

async fn redis_status(ctx: &Context) -> RedisStatus {
    let (keys, settings) = (&ctx.keys, &ctx.settings);
    let result: anyhow::Result<RedisStatus> = async {
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
        let mut o = self.head_text();
        o.push_str(&self.objects_text());
        o.push_str(&self.redis.text());
        o.push_str(&self.legacy.text());
        if self.phase > Phase::New {
            o.push_str(&self.target.text());
            o.push_str(&self.user_sets.as_ref().map(user_sets_text).unwrap_or_else(|| "user sets:      not set up (run `tsmigrate prepare`)\n".into()));
        }
        for warning in &self.warnings {
            o.push_str(&format!("WARNING: {warning}\n"));
        }
        match &self.last_validation {
            Some(v) => o.push_str(&format!("last validation: #{} {} ({} depth), {} ago\n", v.id, v.result, v.depth, humanize_secs(v.age_seconds))),
            None if self.phase > Phase::New => o.push_str("last validation: none yet\n"),
            None => {}
        }
        o.push_str(&render_next_steps(&self.next_steps));
        o
    }

    fn head_text(&self) -> String {
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
        o
    }

    fn objects_text(&self) -> String {
        let mut o = String::new();
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
        o
    }
}

impl RedisStatus {
    fn text(&self) -> String {
        if !self.reachable {
            return format!("redis:          UNREACHABLE: {}\n", opt(&self.error));
        }
        format!(
            "redis:          {} events ({} .. {}); outbox {} entries, {} pending, lag {}s; dual-write flag {}\n",
            self.events,
            opt(&self.oldest_event),
            opt(&self.newest_event),
            self.outbox_entries,
            self.outbox_pending,
            self.outbox_lag_seconds.map(|s| format!("{s:.1}")).unwrap_or_else(|| "0".into()),
            if self.dual_write_flag { "on" } else { "off" }
        )
    }
}

impl LegacyStatus {
    fn text(&self) -> String {
        if !self.reachable {
            return format!("legacy tables:  unavailable: {}\n", opt(&self.error));
        }
        format!(
            "legacy tables:  {} hourly rows ({} .. {}), {} asset rows\n",
            opt(&self.hourly_rows),
            opt(&self.hourly_from),
            opt(&self.hourly_to),
            opt(&self.asset_rows)
        )
    }
}

impl TargetStatus {
    fn text(&self) -> String {
        let mut o = format!(
            "target:         {} events ({} .. {}), {} hourly rows, {} chunks/partitions, {}\n",
            opt(&self.events),
            opt(&self.oldest_event),
            opt(&self.newest_event),
            opt(&self.hourly_rows),
            opt(&self.chunks),
            self.total_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1_048_576.0)).unwrap_or_else(|| "-".into())
        );
        if let Some(ratio) = self.compression_ratio {
            o.push_str(&format!("compression:    {ratio:.1}x ({} chunks compressed)\n", opt(&self.compressed_chunks)));
        }
        let dead: i64 = self.dead_letters.iter().map(|d| d.count).sum();
        o.push_str(&format!("dead letters:   {dead}"));
        if dead > 0 {
            let parts: Vec<String> = self.dead_letters.iter().map(|d| format!("{} {}", d.count, d.reason_code)).collect();
            o.push_str(&format!(" ({})", parts.join(", ")));
        }
        o.push('\n');
        o
    }
}

fn user_sets_text(s: &UserSetsStatus) -> String {
    format!(
        "user sets:      {} days, {} hours, {} minutes built through {} (lag {}); stale: {} minutes marked, {} hours / {} days differ from the aggregates; {} per day\n",
        s.days,
        s.hours,
        s.minutes,
        opt(&s.built_through),
        s.lag_seconds.map(humanize_secs).unwrap_or_else(|| "-".into()),
        s.marked_minutes,
        s.hours_differing,
        s.days_differing,
        s.bytes_per_day.map(|b| format!("{:.0} KiB", b as f64 / 1024.0)).unwrap_or_else(|| "-".into())
    )
}

fn humanize_secs(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
