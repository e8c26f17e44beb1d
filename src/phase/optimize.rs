//! `tsmigrate optimize`: after the flush is retired — make sure retention is in force
//! (raw 90 d, hourly 1 y, daily 5 y by default), refresh the asset popularity aggregate,
//! optionally compress eligible chunks now, and report what storage it all takes.

use chrono::{Duration, Utc};
use serde::Serialize;
use serde_json::json;

use super::state::PhaseGuard;
use super::{Phase, Refusal};
use crate::config::Settings;
use crate::target::StorageMode;

#[derive(Debug, Clone, Serialize)]
pub struct OptimizeReport {
    pub dry_run: bool,
    pub mode: StorageMode,
    pub phase: Phase,
    pub retention: serde_json::Value,
    pub chunks: i64,
    pub compressed_chunks: i64,
    pub compressed_now: i64,
    pub bytes_before_compression: Option<i64>,
    pub bytes_after_compression: Option<i64>,
    pub compression_ratio: Option<f64>,
    pub total_bytes: i64,
    pub dropped_partitions: i32,
    pub asset_popularity_rows: i64,
    pub next_steps: Vec<String>,
}

pub async fn run(settings: &Settings, dry_run: bool, compress_now: bool) -> anyhow::Result<OptimizeReport> {
    let mut guard = PhaseGuard::acquire(&settings.database.url, "optimize").await?;
    let state = guard.state().await?;
    if state.phase < Phase::FlushRetired {
        let refusal = Refusal {
            command: "optimize".into(),
            reason: format!("the migration is in phase {}; optimize runs once the legacy flush is retired", state.phase),
            next: state.phase.next_steps().first().cloned().unwrap_or_default(),
        };
        guard.audit_refusal("optimize", state.phase, &refusal, json!({})).await?;
        return Err(refusal.into());
    }
    let mode = state.storage_mode.unwrap_or(StorageMode::Postgres);
    let t = &settings.target;
    let retention = json!({
        "raw_days": t.raw_retention_days,
        "hourly_days": t.hourly_retention_days,
        "daily_days": t.daily_retention_days,
        "columnstore_after_days": t.columnstore_after_days,
    });
    let pool = crate::db::target_pool(settings).await?;
    let mut report = OptimizeReport {
        dry_run,
        mode,
        phase: state.phase,
        retention,
        chunks: 0,
        compressed_chunks: 0,
        compressed_now: 0,
        bytes_before_compression: None,
        bytes_after_compression: None,
        compression_ratio: None,
        total_bytes: 0,
        dropped_partitions: 0,
        asset_popularity_rows: 0,
        next_steps: if state.phase == Phase::FlushRetired { vec!["tsmigrate complete".into()] } else { state.phase.next_steps() },
    };
    match mode {
        StorageMode::Timescaledb => {
            if !dry_run {
                // prepare created these; if_not_exists makes this a check that they are still in force.
                for (relation, days) in [
                    ("analytics_events_ts", t.raw_retention_days),
                    ("analytics_hourly", t.hourly_retention_days),
                    ("analytics_daily", t.daily_retention_days),
                    ("analytics_asset_popularity_ts", t.daily_retention_days),
                ] {
                    sqlx::query("SELECT add_retention_policy($1::regclass, make_interval(days => $2), if_not_exists => true)")
                        .bind(relation)
                        .bind(days as i32)
                        .execute(&pool)
                        .await?;
                }
                if compress_now {
                    report.compressed_now = sqlx::query_scalar(
                        "SELECT count(compress_chunk(c, if_not_compressed => true))
                         FROM show_chunks('analytics_events_ts', older_than => make_interval(days => $1)) c",
                    )
                    .bind(t.columnstore_after_days as i32)
                    .fetch_one(&pool)
                    .await?;
                }
            }
            let (chunks, compressed): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE is_compressed) FROM timescaledb_information.chunks WHERE hypertable_name = 'analytics_events_ts'",
            )
            .fetch_one(&pool)
            .await?;
            report.chunks = chunks;
            report.compressed_chunks = compressed;
            let (before, after): (Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT sum(before_compression_total_bytes)::bigint, sum(after_compression_total_bytes)::bigint FROM hypertable_compression_stats('analytics_events_ts')",
            )
            .fetch_one(&pool)
            .await?;
            report.bytes_before_compression = before;
            report.bytes_after_compression = after;
            report.compression_ratio = match (before, after) {
                (Some(b), Some(a)) if a > 0 => Some(b as f64 / a as f64),
                _ => None,
            };
            report.total_bytes = sqlx::query_scalar("SELECT hypertable_size('analytics_events_ts')::bigint").fetch_one(&pool).await?;
        }
        StorageMode::Postgres => {
            if !dry_run {
                let now = Utc::now();
                report.dropped_partitions = sqlx::query_scalar("SELECT tsmigrate.drop_partitions_before($1)")
                    .bind(now - Duration::days(i64::from(t.raw_retention_days)))
                    .fetch_one(&pool)
                    .await?;
                sqlx::query("DELETE FROM analytics_hourly WHERE bucket < $1")
                    .bind(now - Duration::days(i64::from(t.hourly_retention_days)))
                    .execute(&pool)
                    .await?;
                for table in ["analytics_daily", "analytics_asset_popularity_ts"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE bucket < $1"))
                        .bind(now - Duration::days(i64::from(t.daily_retention_days)))
                        .execute(&pool)
                        .await?;
                }
            }
            report.chunks = sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'analytics_events_ts'::regclass").fetch_one(&pool).await?;
            report.total_bytes = sqlx::query_scalar(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint FROM pg_inherits WHERE inhparent = 'analytics_events_ts'::regclass",
            )
            .fetch_one(&pool)
            .await?;
        }
    }
    if !dry_run {
        let to = Utc::now();
        let from = to - Duration::days(i64::from(t.raw_retention_days));
        crate::target::aggregates::refresh(&pool, mode, from, to, t.timezone(), t.raw_retention_days).await?;
    }
    report.asset_popularity_rows = sqlx::query_scalar("SELECT count(*) FROM analytics_asset_popularity_ts").fetch_one(&pool).await?;
    guard.audit_noop("optimize", state.phase, serde_json::to_value(&report)?).await?;
    Ok(report)
}

impl OptimizeReport {
    pub fn human(&self) -> String {
        let mut o = String::new();
        if self.dry_run {
            o.push_str("dry run: nothing was changed\n");
        }
        o.push_str(&format!("storage mode {}: retention {}\n", self.mode, self.retention));
        match self.mode {
            StorageMode::Timescaledb => {
                o.push_str(&format!("columnstore: {} of {} chunks compressed ({} just now)\n", self.compressed_chunks, self.chunks, self.compressed_now));
                match (self.bytes_before_compression, self.bytes_after_compression, self.compression_ratio) {
                    (Some(b), Some(a), Some(r)) => {
                        o.push_str(&format!("compression: {:.1} MiB -> {:.1} MiB ({r:.1}x)\n", b as f64 / 1_048_576.0, a as f64 / 1_048_576.0))
                    }
                    _ => o.push_str("compression: no chunk is old enough yet (or run with --compress-now)\n"),
                }
            }
            StorageMode::Postgres => {
                o.push_str(&format!(
                    "partitions: {} ({} dropped by raw retention); plain PostgreSQL has no columnstore\n",
                    self.chunks, self.dropped_partitions
                ));
            }
        }
        o.push_str(&format!("raw storage: {:.1} MiB; asset popularity rows: {}\n", self.total_bytes as f64 / 1_048_576.0, self.asset_popularity_rows));
        o.push_str("next:\n");
        for s in &self.next_steps {
            o.push_str(&format!("  {s}\n"));
        }
        o
    }
}
