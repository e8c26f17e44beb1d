//! The read path's queries on tsmigrate's own tables (`tsmigrate.*`), kept together:
//! the routing (`migration_state`), the imported history (`history_hourly`,
//! `history_asset_popularity`) and whether user sets reach back before raw (`user_sets`).
//! The target's analytics tables are read by [`super::target`] and [`super::sets`]; the one
//! hourly query serves the imported history and the hourly aggregate alike ([`hourly_rows`]).

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

use super::request::{EventFilter, TimeRange};
use super::routing::Routing;

/// `read_source` and `shadow`, from the ledger; `None` before prepare (no control tables,
/// or no state row).
pub(crate) async fn load_routing(pool: &PgPool) -> sqlx::Result<Option<Routing>> {
    Ok(crate::ledger::migration::routing(pool).await?.map(|(source, shadow)| Routing { source, shadow: shadow.is_on() }))
}

/// The two hourly tables the read path reads alike: one row per hour, name and category.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HourlyTable {
    /// The imported legacy hourly rows (`tsmigrate.history_hourly`).
    ImportedHistory,
    /// The target's hourly aggregate (`analytics_hourly`).
    Aggregate,
}

/// The rows of `table` for the hours starting in `hours`: (hour, event_name, category,
/// event_count, unique_users).
pub(crate) async fn hourly_rows(
    pool: &PgPool,
    table: HourlyTable,
    hours: TimeRange,
    filter: &EventFilter,
) -> sqlx::Result<Vec<(DateTime<Utc>, String, String, i64, i64)>> {
    let (name, hour) = match table {
        HourlyTable::ImportedHistory => ("tsmigrate.history_hourly", "hour"),
        HourlyTable::Aggregate => ("analytics_hourly", "bucket"),
    };
    sqlx::query_as(&format!(
        "SELECT {hour}, event_name, category, event_count, unique_users FROM {name}
         WHERE {hour} >= $1 AND {hour} < $2 AND ($3::text IS NULL OR event_name = $3) AND ($4::text IS NULL OR category = $4)"
    ))
    .bind(hours.from)
    .bind(hours.to)
    .bind(&filter.event_name)
    .bind(&filter.category)
    .fetch_all(pool)
    .await
}

/// The imported legacy asset popularity (`tsmigrate.history_asset_popularity`) of the days
/// `first..=last`: (day, asset_type, generation_count, unique_creators).
pub(crate) async fn history_asset_days(pool: &PgPool, first: NaiveDate, last: NaiveDate) -> sqlx::Result<Vec<(NaiveDate, String, i64, i64)>> {
    sqlx::query_as("SELECT day, asset_type, generation_count, unique_creators FROM tsmigrate.history_asset_popularity WHERE day >= $1 AND day <= $2")
        .bind(first)
        .bind(last)
        .fetch_all(pool)
        .await
}

/// The start of the oldest hourly user set, and whether imported history has an hour in
/// `hours` (a summary reaching before raw is answered from the sets only without it).
pub(crate) async fn oldest_hour_set_and_history(pool: &PgPool, hours: TimeRange) -> sqlx::Result<(Option<DateTime<Utc>>, bool)> {
    sqlx::query_as(
        "SELECT (SELECT min(bucket) FROM tsmigrate.user_sets WHERE span = 'hour'),
                EXISTS (SELECT 1 FROM tsmigrate.history_hourly WHERE hour >= $1 AND hour < $2)",
    )
    .bind(hours.from)
    .bind(hours.to)
    .fetch_one(pool)
    .await
}
