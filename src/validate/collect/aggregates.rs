//! Both sides of the aggregate comparison: the legacy hourly and asset tables (filled by
//! the legacy flush, possibly in another database) and the target's `analytics_hourly` and
//! `analytics_asset_popularity_ts`, keyed alike so the diff core can line them up.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;

use super::sql;
use crate::calendar::local_day;
use crate::config::LegacySettings;
use crate::validate::diff::Counts;

/// A row of an hourly table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HourlyKey {
    pub hour: DateTime<Utc>,
    pub event_name: String,
    pub category: String,
}

/// A row of an asset popularity table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AssetKey {
    pub day: NaiveDate,
    pub asset_type: String,
}

/// What the legacy database holds for the aggregate checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyTables {
    pub hourly: LegacyCoverage,
    /// Whether the asset popularity table exists.
    pub assets: bool,
}

/// How far the legacy flush got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyCoverage {
    /// The legacy hourly table does not exist.
    NoTable,
    /// It exists but holds no row.
    Empty,
    /// Its newest hour.
    UpTo(DateTime<Utc>),
}

pub async fn legacy_tables(pool: &PgPool, legacy: &LegacySettings) -> anyhow::Result<LegacyTables> {
    let exists = |table: &str| sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL").bind(table.to_string()).fetch_one(pool);
    let (hourly, assets) = tokio::try_join!(exists(&legacy.hourly_table), exists(&legacy.asset_table))?;
    if !hourly {
        return Ok(LegacyTables { hourly: LegacyCoverage::NoTable, assets });
    }
    let max: Option<DateTime<Utc>> = sqlx::query_scalar(&sql::legacy(sql::LEGACY_MAX_HOUR, legacy)).fetch_one(pool).await?;
    Ok(LegacyTables { hourly: max.map_or(LegacyCoverage::Empty, LegacyCoverage::UpTo), assets })
}

type HourlyRow = (DateTime<Utc>, String, String, i64, i64);

fn hourly_rows(rows: Vec<HourlyRow>) -> Vec<(HourlyKey, Counts)> {
    rows.into_iter().map(|(hour, event_name, category, count, distinct)| (HourlyKey { hour, event_name, category }, Counts { count, distinct })).collect()
}

pub async fn legacy_hourly(pool: &PgPool, legacy: &LegacySettings, from: DateTime<Utc>, to: DateTime<Utc>) -> anyhow::Result<Vec<(HourlyKey, Counts)>> {
    let rows: Vec<HourlyRow> = sqlx::query_as(&sql::legacy(sql::LEGACY_HOURLY, legacy)).bind(from).bind(to).fetch_all(pool).await?;
    Ok(hourly_rows(rows))
}

pub async fn target_hourly(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> anyhow::Result<Vec<(HourlyKey, Counts)>> {
    let rows: Vec<HourlyRow> = sqlx::query_as(sql::TARGET_HOURLY).bind(from).bind(to).fetch_all(pool).await?;
    Ok(hourly_rows(rows))
}

/// Legacy asset rows for the local days `first..=last`.
pub async fn legacy_assets(pool: &PgPool, legacy: &LegacySettings, first: NaiveDate, last: NaiveDate) -> anyhow::Result<Vec<(AssetKey, Counts)>> {
    let rows: Vec<(NaiveDate, String, i64, i64)> = sqlx::query_as(&sql::legacy(sql::LEGACY_ASSETS, legacy)).bind(first).bind(last).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(day, asset_type, count, distinct)| (AssetKey { day, asset_type }, Counts { count, distinct })).collect())
}

/// Target asset rows with buckets in `[from, to)`, keyed by their local day in `tz`.
pub async fn target_assets(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>, tz: Tz) -> anyhow::Result<Vec<(AssetKey, Counts)>> {
    let rows: Vec<(DateTime<Utc>, String, i64, i64)> = sqlx::query_as(sql::TARGET_ASSETS).bind(from).bind(to).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(bucket, asset_type, count, distinct)| (AssetKey { day: local_day(bucket, tz), asset_type }, Counts { count, distinct }))
        .collect())
}
