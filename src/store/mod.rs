//! The store: the target database in its storage mode. Capability detection, schema
//! (versioned migrations in `sql/`), the idempotent event writer, aggregate refresh,
//! partitions (plain mode), dead letters, checkpoints, history tables, user sets.
//!
//! Everything above this module is the same code in both storage modes. Every statement
//! that differs between TimescaleDB and plain PostgreSQL is behind the [`Store`] trait,
//! implemented once per mode ([`timescaledb::TimescaleStore`], [`postgres::PostgresStore`]),
//! the way sqlx implements its `Migrate` once per database. Nothing outside this module
//! names a TimescaleDB catalog or function (checked by `tests/it/architecture.rs`).

pub mod aggregates;
pub mod bulk;
pub mod capability;
pub mod history;
pub mod objects;
pub mod postgres;
pub mod sample;
pub mod schema;
pub mod timescaledb;
pub mod user_sets;
pub mod write_error;
pub mod writer;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::TargetSettings;
pub use objects::{Object, ObjectStatus, Role};

pub use crate::state::StorageMode;

/// The target table names (fixed: reads and reports depend on them).
pub const EVENTS_TABLE: &str = "analytics_events_ts";
pub const HOURLY_VIEW: &str = "analytics_hourly";
pub const DAILY_VIEW: &str = "analytics_daily";
pub const ASSET_VIEW: &str = "analytics_asset_popularity_ts";

/// `VACUUM` of the events table (its partitions or chunks), after a bulk copy: pages the
/// copy filled are marked all-visible, so counting rows by time (`validate --depth counts`,
/// the aggregates) is an index-only scan instead of a visit of every row, and the planner
/// knows how many rows and pages there are. Pages already all-visible are skipped, so only
/// what changed since the last vacuum is read. Without `ANALYZE`: sampling every chunk's
/// columns costs many times the vacuum (`VACUUM (ANALYZE)` took 3.6 s after a copy of
/// 300 000 events, the vacuum alone of such a table 0.16 s), longer than the refresh it runs
/// beside; the counts need no column statistics, and autovacuum analyzes later. The same
/// statement in both storage modes.
pub async fn vacuum_events(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::raw_sql(&format!("VACUUM {EVENTS_TABLE}")).execute(pool).await?;
    Ok(())
}

/// What one storage mode does differently. One implementation per mode; callers get one
/// from [`open`] and never branch on the mode themselves.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    fn mode(&self) -> StorageMode;
    fn pool(&self) -> &PgPool;
    /// The objects `prepare` creates in this mode (control tables included); `status`
    /// reports them and `abort` drops them.
    fn objects(&self) -> Vec<Object>;
    /// What `abort` runs before its drops, so no background job works on a table being
    /// dropped (TimescaleDB: deleting the policy jobs of these objects). Nothing by default.
    fn before_drop(&self) -> Vec<String> {
        vec![]
    }
    /// Refines presence checks by name: a table of the right name that is not what
    /// prepare built (a plain table where a hypertable belongs) is not present.
    async fn verify(&self, objects: &mut [ObjectStatus]) -> sqlx::Result<()>;
    /// Work after the migrations are applied (plain mode: partitions around now).
    async fn after_prepare(&self, target: &TargetSettings) -> sqlx::Result<()>;
    /// Brings the aggregates up to date over `[from, to)` (one chunk, outside a transaction).
    async fn refresh_chunk(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<()>;
    /// Makes sure the raw events of `[from, to)` have somewhere to go (plain mode: daily
    /// partitions). Returns how many were created.
    async fn ensure_partitions(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<i32>;
    /// Puts retention in force now (policies, or dropped partitions and deleted rollup rows).
    async fn enforce_retention(&self, target: &TargetSettings, now: DateTime<Utc>) -> sqlx::Result<Retention>;
    /// Compresses the chunks older than `days` now; 0 where there is no columnstore.
    async fn compress_older_than(&self, days: u32) -> sqlx::Result<i64>;
    /// Chunks (or partitions), compression and size of the raw events.
    async fn storage(&self) -> sqlx::Result<StorageFigures>;
    /// The background jobs that keep this mode's store in shape, with their last runs.
    async fn policies(&self) -> sqlx::Result<Vec<Policy>>;
    /// Whether `tsmigrate run`'s scheduler does the upkeep (rollups, partitions, retention)
    /// or the database's own policies do.
    fn scheduler_does_upkeep(&self) -> bool;
    /// The database's own background jobs that failed on their last run (`None`: this
    /// mode has none).
    async fn failing_jobs(&self) -> sqlx::Result<Option<Vec<String>>>;
    /// How `events` would be stored in this mode (size, indexes, compression, copy rate),
    /// measured in a table of the target's shape inside a transaction that is rolled back.
    async fn measure_sample(&self, events: &[crate::event::TargetEvent]) -> sqlx::Result<sample::SampleStorage>;
}

/// The reported objects of `store` and whether each is there, as prepare built it.
pub async fn object_status(store: &dyn Store) -> sqlx::Result<Vec<ObjectStatus>> {
    let mut status = objects::present(store.pool(), &store.objects()).await?;
    store.verify(&mut status).await?;
    Ok(status)
}

/// The store of `mode` on `pool`.
pub fn open(mode: StorageMode, pool: PgPool) -> Arc<dyn Store> {
    match mode {
        StorageMode::Timescaledb => Arc::new(timescaledb::TimescaleStore::new(pool)),
        StorageMode::Postgres => Arc::new(postgres::PostgresStore::new(pool)),
    }
}

/// What [`Store::enforce_retention`] did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Retention {
    /// Plain mode: partitions dropped because raw retention passed them.
    pub dropped_partitions: i32,
}

/// How the raw events are stored.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageFigures {
    /// Chunks (TimescaleDB) or partitions (plain mode).
    pub chunks: i64,
    /// `None` where there is no columnstore.
    pub compressed_chunks: Option<i64>,
    pub bytes_before_compression: Option<i64>,
    pub bytes_after_compression: Option<i64>,
    pub compression_ratio: Option<f64>,
    pub total_bytes: i64,
}

impl StorageFigures {
    pub fn ratio(before: Option<i64>, after: Option<i64>) -> Option<f64> {
        match (before, after) {
            (Some(b), Some(a)) if a > 0 => Some(b as f64 / a as f64),
            _ => None,
        }
    }
}

/// A background job: a TimescaleDB policy, or (plain mode) a job `tsmigrate run` schedules.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub name: String,
    pub target: String,
    pub schedule: String,
    pub config: serde_json::Value,
    pub scheduled: bool,
    pub last_status: Option<String>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub failures: i64,
}
