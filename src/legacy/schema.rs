//! The legacy PostgreSQL tables the hourly flush fills, and the reporting function.
//! Names come from settings (validated as plain identifiers), so they are spliced in.

use sqlx::PgPool;

use crate::config::LegacySettings;

/// Creates the legacy tables and function if missing (the demo's and tests' legacy system).
pub async fn ensure(pool: &PgPool, legacy: &LegacySettings) -> sqlx::Result<()> {
    for statement in ddl(legacy) {
        sqlx::raw_sql(&statement).execute(pool).await?;
    }
    Ok(())
}

pub fn ddl(legacy: &LegacySettings) -> Vec<String> {
    let hourly = &legacy.hourly_table;
    let asset = &legacy.asset_table;
    let function = &legacy.popular_function;
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {hourly} (
                hour timestamptz NOT NULL,
                event_name text NOT NULL,
                category text NOT NULL,
                event_count bigint NOT NULL,
                unique_users bigint NOT NULL,
                PRIMARY KEY (hour, event_name, category))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {asset} (
                day date NOT NULL,
                asset_type text NOT NULL,
                generation_count bigint NOT NULL,
                unique_creators bigint NOT NULL,
                PRIMARY KEY (day, asset_type))"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {function}(days integer)
             RETURNS TABLE (asset_type text, generation_count bigint, unique_creators bigint)
             LANGUAGE sql STABLE AS $$
                SELECT a.asset_type, sum(a.generation_count)::bigint, sum(a.unique_creators)::bigint
                FROM {asset} a
                WHERE a.day > current_date - days
                GROUP BY a.asset_type
                ORDER BY 2 DESC, 1
             $$"
        ),
    ]
}
