//! The target schema as versioned migrations (`sql/control`, then `sql/timescaledb` or
//! `sql/postgres`), applied with sqlx's migrator: checksummed, locked, and planned
//! without applying for `--dry-run`.
//!
//! A few settings (bucket time zone, retention, columnstore age) are written into the
//! SQL through `{{placeholders}}` before checksumming, so changing one of them after
//! `prepare` is reported as a modified migration instead of silently diverging.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Serialize;
use sqlx::migrate::{Migration, Migrator};
use sqlx::PgPool;

use super::StorageMode;
use crate::config::TargetSettings;

static CONTROL: Migrator = sqlx::migrate!("sql/control");
static TIMESCALEDB: Migrator = sqlx::migrate!("sql/timescaledb");
static POSTGRES: Migrator = sqlx::migrate!("sql/postgres");

/// The table sqlx's migrator records applied migrations in.
pub const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

#[derive(Debug, Clone, Serialize)]
pub struct PlannedMigration {
    pub version: i64,
    pub description: String,
    pub sql: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchemaPlan {
    pub mode: StorageMode,
    pub applied: Vec<i64>,
    pub pending: Vec<PlannedMigration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("migration {version} ({description}) was changed after it was applied (a setting it depends on, like target.bucket_timezone or retention, differs from prepare time)\n  next: restore the original settings, or `tsmigrate abort` and prepare again")]
    Modified { version: i64, description: String },
    #[error("the target has migration {0} applied, which this mode does not know\n  next: it was prepared in the other storage mode or by a newer tsmigrate; run `tsmigrate status`")]
    Unknown(i64),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Fills the `{{placeholders}}` of the SQL files from settings.
pub fn render(sql: &str, target: &TargetSettings) -> String {
    let values = [
        ("bucket_timezone", target.timezone().name().to_string()),
        ("columnstore_after_days", target.columnstore_after_days.to_string()),
        ("raw_retention_days", target.raw_retention_days.to_string()),
        ("hourly_retention_days", target.hourly_retention_days.to_string()),
        ("daily_retention_days", target.daily_retention_days.to_string()),
    ];
    values.iter().fold(sql.to_string(), |sql, (name, value)| sql.replace(&format!("{{{{{name}}}}}"), value))
}

/// The migrator for a storage mode with settings rendered in.
pub fn migrator(mode: StorageMode, target: &TargetSettings) -> Migrator {
    let storage = match mode {
        StorageMode::Timescaledb => &TIMESCALEDB,
        StorageMode::Postgres => &POSTGRES,
    };
    let migrations: Vec<Migration> = CONTROL
        .iter()
        .chain(storage.iter())
        .map(|m| Migration::new(m.version, m.description.clone(), m.migration_type, Cow::Owned(render(&m.sql, target)), m.no_tx))
        .collect();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

/// Versions applied so far, with their checksums (empty before the first prepare).
pub async fn applied(pool: &PgPool) -> sqlx::Result<HashMap<i64, Vec<u8>>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(MIGRATIONS_TABLE).fetch_one(pool).await?;
    if !exists {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as(&format!("SELECT version, checksum FROM {MIGRATIONS_TABLE} WHERE success ORDER BY version")).fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

/// What `apply` would do, without doing it. Refuses a modified or unknown migration, like sqlx.
pub async fn plan(pool: &PgPool, mode: StorageMode, target: &TargetSettings) -> Result<SchemaPlan, SchemaError> {
    let migrator = migrator(mode, target);
    let applied = applied(pool).await?;
    for version in applied.keys() {
        if !migrator.iter().any(|m| m.version == *version) {
            return Err(SchemaError::Unknown(*version));
        }
    }
    let mut pending = Vec::new();
    for m in migrator.iter() {
        match applied.get(&m.version) {
            Some(checksum) if checksum.as_slice() != &*m.checksum => {
                return Err(SchemaError::Modified { version: m.version, description: m.description.to_string() })
            }
            Some(_) => {}
            None => pending.push(PlannedMigration { version: m.version, description: m.description.to_string(), sql: m.sql.to_string() }),
        }
    }
    let mut applied: Vec<i64> = applied.into_keys().collect();
    applied.sort_unstable();
    Ok(SchemaPlan { mode, applied, pending })
}

/// Applies the pending migrations (sqlx takes its own advisory lock) and returns the plan it executed.
pub async fn apply(pool: &PgPool, mode: StorageMode, target: &TargetSettings) -> Result<SchemaPlan, SchemaError> {
    let plan = plan(pool, mode, target).await?;
    if !plan.pending.is_empty() {
        migrator(mode, target).run(pool).await?;
    }
    Ok(plan)
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectStatus {
    pub name: String,
    pub kind: String,
    pub present: bool,
}

/// The objects `prepare` creates in a mode and whether each exists now.
pub async fn objects(pool: &PgPool, mode: StorageMode) -> sqlx::Result<Vec<ObjectStatus>> {
    let mut expected: Vec<(&str, &str)> = vec![
        ("tsmigrate.migration_state", "control table"),
        ("tsmigrate.audit_log", "control table"),
        ("tsmigrate.checkpoints", "control table"),
        ("tsmigrate.validation_runs", "control table"),
        ("tsmigrate.dead_letter", "control table"),
        ("tsmigrate.outbox_gaps", "control table"),
        ("tsmigrate.history_hourly", "history table"),
        ("tsmigrate.history_asset_popularity", "history table"),
    ];
    match mode {
        StorageMode::Timescaledb => expected.extend([
            ("analytics_events_ts", "hypertable"),
            ("analytics_hourly", "continuous aggregate"),
            ("analytics_daily", "continuous aggregate"),
            ("analytics_asset_popularity_ts", "continuous aggregate"),
        ]),
        StorageMode::Postgres => expected.extend([
            ("analytics_events_ts", "partitioned table"),
            ("analytics_hourly", "rollup table"),
            ("analytics_daily", "rollup table"),
            ("analytics_asset_popularity_ts", "rollup table"),
        ]),
    }
    let names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    let present: Vec<bool> = sqlx::query_scalar("SELECT to_regclass(n) IS NOT NULL FROM UNNEST($1::text[]) WITH ORDINALITY AS t(n, i) ORDER BY i")
        .bind(&names)
        .fetch_all(pool)
        .await?;
    let mut objects: Vec<ObjectStatus> =
        expected.iter().zip(present).map(|((name, kind), present)| ObjectStatus { name: name.to_string(), kind: kind.to_string(), present }).collect();
    if mode == StorageMode::Timescaledb {
        // A table of the right name that is not a hypertable (or a plain view) is not what prepare built.
        let installed: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").fetch_one(pool).await?;
        let mut timescale_objects: Vec<String> = Vec::new();
        if installed {
            timescale_objects = sqlx::query_scalar(
                "SELECT hypertable_name::text FROM timescaledb_information.hypertables
                 UNION ALL SELECT view_name::text FROM timescaledb_information.continuous_aggregates",
            )
            .fetch_all(pool)
            .await?;
        }
        for object in objects.iter_mut().filter(|o| o.kind == "hypertable" || o.kind == "continuous aggregate") {
            object.present &= timescale_objects.contains(&object.name);
        }
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_all_filled() {
        let target = TargetSettings { bucket_timezone: "Europe/Berlin".into(), ..Default::default() };
        for mode in [StorageMode::Timescaledb, StorageMode::Postgres] {
            for m in migrator(mode, &target).iter() {
                assert!(!m.sql.contains("{{"), "migration {} has an unfilled placeholder", m.version);
            }
        }
        let m = migrator(StorageMode::Postgres, &target);
        assert!(m.iter().any(|m| m.sql.contains("'Europe/Berlin'")));
    }

    #[test]
    fn a_changed_setting_changes_the_checksum() {
        let a = migrator(StorageMode::Timescaledb, &TargetSettings::default());
        let b = migrator(StorageMode::Timescaledb, &TargetSettings { raw_retention_days: 30, ..Default::default() });
        let differs: Vec<i64> = a.iter().zip(b.iter()).filter(|(x, y)| x.checksum != y.checksum).map(|(x, _)| x.version).collect();
        assert_eq!(differs, vec![103]);
    }
}
