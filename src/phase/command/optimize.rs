//! `tsmigrate optimize`: after the flush is retired — make sure retention is in force
//! (raw 90 d, hourly 1 y, daily 5 y by default), refresh the asset popularity aggregate,
//! optionally compress eligible chunks now, and report what storage it all takes.

use chrono::{Duration, Utc};
use serde::Serialize;
use serde_json::json;

use crate::context::Context;
use crate::phase::report::Details;
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::{Transition, OPTIMIZE};
use crate::store::{aggregates, StorageFigures, StorageMode, ASSET_VIEW};

pub struct Optimize {
    /// Compress every chunk older than `target.columnstore_after_days` now.
    pub compress_now: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct OptimizeDetails {
    pub mode: StorageMode,
    pub retention: serde_json::Value,
    #[serde(flatten)]
    pub storage: StorageFigures,
    pub compressed_now: i64,
    pub dropped_partitions: i32,
    pub asset_popularity_rows: i64,
}

impl PhaseCommand for Optimize {
    type Details = OptimizeDetails;

    fn transition(&self) -> &'static Transition {
        &OPTIMIZE
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<OptimizeDetails>> {
        let mode = run.state.storage_mode.unwrap_or(StorageMode::Postgres);
        let store = ctx.store(mode);
        let t = &ctx.settings.target;
        let (mut dropped_partitions, mut compressed_now) = (0, 0);
        if !run.dry_run {
            dropped_partitions = store.enforce_retention(t, Utc::now()).await?.dropped_partitions;
            if self.compress_now {
                compressed_now = store.compress_older_than(t.columnstore_after_days).await?;
            }
        }
        let storage = store.storage().await?;
        if !run.dry_run {
            let to = Utc::now();
            aggregates::refresh(&*store, to - Duration::days(i64::from(t.raw_retention_days)), to, t.timezone(), t.raw_retention_days).await?;
        }
        let asset_popularity_rows = sqlx::query_scalar(&format!("SELECT count(*) FROM {ASSET_VIEW}")).fetch_one(&ctx.target).await?;
        let retention = json!({
            "raw_days": t.raw_retention_days,
            "hourly_days": t.hourly_retention_days,
            "daily_days": t.daily_retention_days,
            "columnstore_after_days": t.columnstore_after_days,
        });
        let details = OptimizeDetails { mode, retention, storage, compressed_now, dropped_partitions, asset_popularity_rows };
        Ok(Applied::new(details, Commit::Stay))
    }
}

impl Details for OptimizeDetails {
    fn text(&self) -> String {
        let s = &self.storage;
        let mut o = format!("storage mode {}: retention {}\n", self.mode, self.retention);
        match self.mode {
            StorageMode::Timescaledb => {
                o.push_str(&format!(
                    "columnstore: {} of {} chunks compressed ({} just now)\n",
                    s.compressed_chunks.unwrap_or(0),
                    s.chunks,
                    self.compressed_now
                ));
                match (s.bytes_before_compression, s.bytes_after_compression, s.compression_ratio) {
                    (Some(b), Some(a), Some(r)) => o.push_str(&format!("compression: {:.1} MiB -> {:.1} MiB ({r:.1}x)\n", mib(b), mib(a))),
                    _ => o.push_str("compression: no chunk is old enough yet (or run with --compress-now)\n"),
                }
            }
            StorageMode::Postgres => {
                o.push_str(&format!("partitions: {} ({} dropped by raw retention); plain PostgreSQL has no columnstore\n", s.chunks, self.dropped_partitions));
            }
        }
        o.push_str(&format!("raw storage: {:.1} MiB; asset popularity rows: {}\n", mib(s.total_bytes), self.asset_popularity_rows));
        o
    }
}

pub fn mib(bytes: i64) -> f64 {
    bytes as f64 / 1_048_576.0
}
