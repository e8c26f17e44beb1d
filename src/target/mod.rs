//! The target database: capability detection, schema (versioned migrations in `sql/`),
//! the idempotent event writer, aggregate refresh, partitions (plain mode), dead letters.
//!
//! Everything above this module is the same code in both storage modes; the differences
//! live here, behind [`StorageMode`].

pub mod aggregates;
pub mod capability;
pub mod checkpoint;
pub mod dead_letter;
pub mod schema;
pub mod write_error;
pub mod writer;

use serde::{Deserialize, Serialize};

/// How the target stores events and aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// Hypertable, continuous aggregates, columnstore and retention policies.
    Timescaledb,
    /// Native range partitions and rollup tables maintained by tsmigrate's scheduler.
    Postgres,
}

impl StorageMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageMode::Timescaledb => "timescaledb",
            StorageMode::Postgres => "postgres",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "timescaledb" => Some(StorageMode::Timescaledb),
            "postgres" => Some(StorageMode::Postgres),
            _ => None,
        }
    }
}

impl std::fmt::Display for StorageMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The target table names (fixed: reads and reports depend on them).
pub const EVENTS_TABLE: &str = "analytics_events_ts";
pub const HOURLY_VIEW: &str = "analytics_hourly";
pub const DAILY_VIEW: &str = "analytics_daily";
pub const ASSET_VIEW: &str = "analytics_asset_popularity_ts";
