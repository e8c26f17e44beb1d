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
    /// `--compress-now` was given (what it did is `compressed_now`, or why it could not).
    pub compress_now_requested: bool,
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
        let compress_now_requested = self.compress_now;
        let details = OptimizeDetails { mode, retention, storage, compressed_now, compress_now_requested, dropped_partitions, asset_popularity_rows };
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
                    (Some(b), Some(a), Some(r)) => {
                        o.push_str(&format!("compression: {} -> {} ({r:.1}x)\n", crate::human::bytes_i64(b), crate::human::bytes_i64(a)))
                    }
                    // Only chunks older than columnstore_after_days are eligible, --compress-now included.
                    _ if self.compress_now_requested => o.push_str(&format!(
                        "compression: none yet: no chunk is older than {} (target.columnstore_after_days), so --compress-now had nothing to compress\n",
                        crate::human::plural(self.retention["columnstore_after_days"].as_i64().unwrap_or(0), "day")
                    )),
                    _ => o.push_str(&format!(
                        "compression: none yet: chunks older than {} are compressed by the columnstore policy (or now with --compress-now)\n",
                        crate::human::plural(self.retention["columnstore_after_days"].as_i64().unwrap_or(0), "day")
                    )),
                }
            }
            StorageMode::Postgres => {
                o.push_str(&format!("partitions: {} ({} dropped by raw retention); plain PostgreSQL has no columnstore\n", s.chunks, self.dropped_partitions));
                if self.compress_now_requested {
                    o.push_str("--compress-now: skipped: plain PostgreSQL has no columnstore, so there is nothing to compress\n");
                }
            }
        }
        o.push_str(&format!(
            "raw storage: {}; asset popularity rows: {}\n",
            crate::human::bytes_i64(s.total_bytes),
            crate::human::count(self.asset_popularity_rows)
        ));
        o
    }
}
