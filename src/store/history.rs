//! History import: legacy hourly and asset rows older than the Redis horizon (the oldest
//! event Redis still holds) are copied into `tsmigrate.history_*`, so long-range reads
//! stay complete after cutover even though those raw events are gone from Redis.
//!
//! The hour and the day *holding* the horizon are imported too: Redis may have trimmed
//! their beginning before the backfill read them, while the legacy flush counted them
//! whole. Reads take the larger of history and raw for that hour and day (see `crate::reads`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::calendar::{hour_floor, local_day};
use crate::config::Settings;

#[derive(Debug, Clone, Serialize, Default)]
pub struct HistoryReport {
    /// Rows up to and including this hour (and its day) were imported.
    pub horizon: Option<DateTime<Utc>>,
    pub hourly_rows: u64,
    pub asset_rows: u64,
}

impl HistoryReport {
    pub fn text(&self) -> String {
        format!(
            "history imported (through the hour of {}): {} hourly rows, {} asset rows\n",
            self.horizon.map(|t| t.to_string()).unwrap_or_default(),
            self.hourly_rows,
            self.asset_rows
        )
    }
}

/// A legacy table the history import needs is not where the settings say.
#[derive(Debug, thiserror::Error)]
#[error("the legacy table {table} ({setting}) does not exist in {database}, so the history older than Redis cannot be imported\n  next: set {setting} (or LEGACY_DATABASE_URL) to where the legacy flush writes, run `tsmigrate legacy setup` to create the tables, or pass --no-history to backfill without the history")]
pub struct MissingLegacyTable {
    pub table: String,
    pub setting: &'static str,
    pub database: String,
}

/// Both legacy tables exist (checked before a backfill copies anything, so it does not
/// fail at the very end).
pub async fn check_legacy_tables(settings: &Settings, legacy: &PgPool) -> anyhow::Result<()> {
    for (table, setting) in [(&settings.legacy.hourly_table, "legacy.hourly_table"), (&settings.legacy.asset_table, "legacy.asset_table")] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(legacy).await?;
        if !exists {
            return Err(MissingLegacyTable { table: table.clone(), setting, database: settings.database.legacy_url().redacted() }.into());
        }
    }
    Ok(())
}

/// Imports (idempotently) every legacy row older than `horizon`, and those of the hour and
/// day holding it.
pub async fn import(settings: &Settings, target: &PgPool, legacy: &PgPool, horizon: DateTime<Utc>) -> anyhow::Result<HistoryReport> {
    check_legacy_tables(settings, legacy).await?;
    let tz = settings.target.timezone();
    let hour_horizon = hour_floor(horizon, tz);
    let day_horizon = local_day(horizon, tz);
    let hourly: Vec<(DateTime<Utc>, String, String, i64, i64)> =
        sqlx::query_as(&format!("SELECT hour, event_name, category, event_count, unique_users FROM {} WHERE hour <= $1", settings.legacy.hourly_table))
            .bind(hour_horizon)
            .fetch_all(legacy)
            .await?;
    let assets: Vec<(NaiveDate, String, i64, i64)> =
        sqlx::query_as(&format!("SELECT day, asset_type, generation_count, unique_creators FROM {} WHERE day <= $1", settings.legacy.asset_table))
            .bind(day_horizon)
            .fetch_all(legacy)
            .await?;
    let mut tx = target.begin().await?;
    let hourly_rows = sqlx::query(
        "INSERT INTO tsmigrate.history_hourly (hour, event_name, category, event_count, unique_users)
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
         ON CONFLICT (hour, event_name, category) DO UPDATE
         SET event_count = EXCLUDED.event_count, unique_users = EXCLUDED.unique_users",
    )
    .bind(hourly.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(hourly.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
    .bind(hourly.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
    .bind(hourly.iter().map(|r| r.3).collect::<Vec<_>>())
    .bind(hourly.iter().map(|r| r.4).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let asset_rows = sqlx::query(
        "INSERT INTO tsmigrate.history_asset_popularity (day, asset_type, generation_count, unique_creators)
         SELECT * FROM UNNEST($1::date[], $2::text[], $3::bigint[], $4::bigint[])
         ON CONFLICT (day, asset_type) DO UPDATE
         SET generation_count = EXCLUDED.generation_count, unique_creators = EXCLUDED.unique_creators",
    )
    .bind(assets.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(assets.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
    .bind(assets.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(assets.iter().map(|r| r.3).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(HistoryReport { horizon: Some(hour_horizon), hourly_rows, asset_rows })
}
