//! The target schema as versioned migrations (`sql/control`, then `sql/timescaledb` or
//! `sql/postgres`): checksummed, applied under a lock, and planned without applying for
//! `--dry-run`, like sqlx's migrator — whose migration files and checksums these are.
//!
//! The history of what was applied lives in tsmigrate's own schema, [`HISTORY_TABLE`],
//! never beside the application's: the target is often the application's own database,
//! whose sqlx history is `public._sqlx_migrations`. An installation by an earlier tsmigrate
//! kept its history there; `prepare` moves those rows (and only those: same version and
//! checksum as one of ours) into [`HISTORY_TABLE`], and drops `_sqlx_migrations` only if
//! nothing else is left in it.
//!
//! A few settings (bucket time zone, retention, columnstore age) are written into the
//! SQL through `{{placeholders}}` before checksumming, so changing one of them after
//! `prepare` is reported as a modified migration instead of silently diverging.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::migrate::{Migration, Migrator};
use sqlx::{PgConnection, PgPool};

use super::StorageMode;
use crate::config::TargetSettings;

static CONTROL: Migrator = sqlx::migrate!("sql/control");
static TIMESCALEDB: Migrator = sqlx::migrate!("sql/timescaledb");
static POSTGRES: Migrator = sqlx::migrate!("sql/postgres");

/// tsmigrate's record of the migrations it applied.
pub const HISTORY_TABLE: &str = "tsmigrate.schema_history";
/// Where sqlx's migrator (and tsmigrate before its own history table) records migrations.
pub const SQLX_HISTORY_TABLE: &str = "_sqlx_migrations";
/// Held while migrations are applied, so two `prepare`s never interleave.
const LOCK_KEY: &str = "tsmigrate.schema";

const CREATE_HISTORY: &str = "CREATE SCHEMA IF NOT EXISTS tsmigrate;
CREATE TABLE IF NOT EXISTS tsmigrate.schema_history (
    version        bigint PRIMARY KEY,
    description    text NOT NULL,
    checksum       bytea NOT NULL,
    installed_on   timestamptz NOT NULL DEFAULT now(),
    installed_by   text NOT NULL,
    execution_ms   bigint NOT NULL
);";

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
    /// tsmigrate's rows in `_sqlx_migrations` (an installation by an earlier version), to
    /// move into [`HISTORY_TABLE`].
    pub adopted: Vec<i64>,
}

/// One applied migration, for `tsmigrate history`.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedMigration {
    pub version: i64,
    pub description: String,
    pub installed_on: DateTime<Utc>,
    pub installed_by: String,
    pub execution_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("migration {version} ({description}) was changed after it was applied (a setting it depends on, like target.bucket_timezone or retention, differs from prepare time)\n  next: restore the original settings, or `tsmigrate abort` and prepare again")]
    Modified { version: i64, description: String },
    #[error("the target's tsmigrate history ({HISTORY_TABLE}) has migration {0} applied, which this storage mode does not know\n  next: it was prepared in the other storage mode or by a newer tsmigrate; run `tsmigrate status` and `tsmigrate history`")]
    Unknown(i64),
    #[error(
        "migration {version} ({description}) failed: {source}\n  next: fix the cause and run `tsmigrate prepare` again (applied migrations are not repeated)"
    )]
    Failed {
        version: i64,
        description: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
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

/// The migrations of a storage mode with settings rendered in.
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

async fn exists(conn: &mut PgConnection, table: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(&mut *conn).await
}

/// Versions tsmigrate recorded as applied, with their checksums (empty before the first prepare).
async fn applied(conn: &mut PgConnection) -> sqlx::Result<HashMap<i64, Vec<u8>>> {
    if !exists(conn, HISTORY_TABLE).await? {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(&format!("SELECT version, checksum FROM {HISTORY_TABLE}")).fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().collect())
}

/// tsmigrate's rows in sqlx's history table: a version and checksum of one of `migrator`'s
/// migrations, applied successfully. Anything else there is the application's.
async fn adoptable(conn: &mut PgConnection, migrator: &Migrator) -> sqlx::Result<HashMap<i64, Vec<u8>>> {
    if !exists(conn, SQLX_HISTORY_TABLE).await? {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(&format!("SELECT version, checksum FROM {SQLX_HISTORY_TABLE} WHERE success")).fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().filter(|(version, checksum)| migrator.iter().any(|m| m.version == *version && *m.checksum == checksum[..])).collect())
}

/// What `apply` would do, without doing it. Refuses a modified or unknown migration, like sqlx.
pub async fn plan(pool: &PgPool, mode: StorageMode, target: &TargetSettings) -> Result<SchemaPlan, SchemaError> {
    plan_on(&mut *pool.acquire().await?, mode, target).await
}

async fn plan_on(conn: &mut PgConnection, mode: StorageMode, target: &TargetSettings) -> Result<SchemaPlan, SchemaError> {
    let migrator = migrator(mode, target);
    let mut applied = applied(conn).await?;
    let adopted: Vec<i64> = adoptable(conn, &migrator).await?.into_iter().filter(|(v, _)| !applied.contains_key(v)).map(|(v, _)| v).collect();
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
            None if adopted.contains(&m.version) => {}
            None => pending.push(PlannedMigration { version: m.version, description: m.description.to_string(), sql: m.sql.to_string() }),
        }
    }
    applied.extend(adopted.iter().map(|v| (*v, vec![])));
    let mut applied: Vec<i64> = applied.into_keys().collect();
    applied.sort_unstable();
    let mut adopted = adopted;
    adopted.sort_unstable();
    Ok(SchemaPlan { mode, applied, pending, adopted })
}

/// Applies the pending migrations under the schema lock, each in a transaction with its
/// history row (after moving an earlier installation's history into [`HISTORY_TABLE`]),
/// and returns the plan it executed.
pub async fn apply(pool: &PgPool, mode: StorageMode, target: &TargetSettings, actor: &str) -> Result<SchemaPlan, SchemaError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))").bind(LOCK_KEY).execute(&mut *conn).await?;
    let applied = apply_locked(&mut conn, mode, target, actor).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(LOCK_KEY).execute(&mut *conn).await;
    let plan = applied?;
    unlocked?;
    Ok(plan)
}

async fn apply_locked(conn: &mut PgConnection, mode: StorageMode, target: &TargetSettings, actor: &str) -> Result<SchemaPlan, SchemaError> {
    // A string runs as a simple query: several statements in one go.
    sqlx::Executor::execute(&mut *conn, CREATE_HISTORY).await?;
    let plan = plan_on(conn, mode, target).await?;
    if !plan.adopted.is_empty() {
        adopt(conn, &plan.adopted, actor).await?;
    }
    let migrator = migrator(mode, target);
    for pending in &plan.pending {
        let m = migrator.iter().find(|m| m.version == pending.version).expect("planned from this migrator");
        let started = Instant::now();
        let failed = |source| SchemaError::Failed { version: m.version, description: m.description.to_string(), source };
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::Executor::execute(&mut *tx, &*m.sql).await.map_err(failed)?;
        sqlx::query(&format!("INSERT INTO {HISTORY_TABLE} (version, description, checksum, installed_by, execution_ms) VALUES ($1, $2, $3, $4, $5)"))
            .bind(m.version)
            .bind(m.description.as_ref())
            .bind(m.checksum.as_ref())
            .bind(actor)
            .bind(started.elapsed().as_millis() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(plan)
}

/// Moves tsmigrate's rows from `_sqlx_migrations` into [`HISTORY_TABLE`] in one
/// transaction; drops `_sqlx_migrations` when nothing else is left in it.
async fn adopt(conn: &mut PgConnection, versions: &[i64], actor: &str) -> sqlx::Result<()> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(&format!(
        "INSERT INTO {HISTORY_TABLE} (version, description, checksum, installed_on, installed_by, execution_ms)
         SELECT version, description, checksum, installed_on, $2, execution_time / 1000000 FROM {SQLX_HISTORY_TABLE} WHERE version = ANY($1)
         ON CONFLICT (version) DO NOTHING"
    ))
    .bind(versions)
    .bind(format!("{actor} (moved from {SQLX_HISTORY_TABLE})"))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("DELETE FROM {SQLX_HISTORY_TABLE} WHERE version = ANY($1)")).bind(versions).execute(&mut *tx).await?;
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {SQLX_HISTORY_TABLE}")).fetch_one(&mut *tx).await?;
    if left == 0 {
        sqlx::query(&format!("DROP TABLE {SQLX_HISTORY_TABLE}")).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// The migrations tsmigrate applied, oldest first (empty before the first prepare).
pub async fn history(pool: &PgPool) -> sqlx::Result<Vec<AppliedMigration>> {
    let mut conn = pool.acquire().await?;
    if !exists(&mut conn, HISTORY_TABLE).await? {
        return Ok(vec![]);
    }
    let rows: Vec<(i64, String, DateTime<Utc>, String, i64)> =
        sqlx::query_as(&format!("SELECT version, description, installed_on, installed_by, execution_ms FROM {HISTORY_TABLE} ORDER BY version"))
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(version, description, installed_on, installed_by, execution_ms)| AppliedMigration {
            version,
            description,
            installed_on,
            installed_by,
            execution_ms,
        })
        .collect())
}

/// Every migration of a storage mode, for `tsmigrate history` (applied or pending).
pub fn known(mode: StorageMode, target: &TargetSettings) -> Vec<(i64, String)> {
    migrator(mode, target).iter().map(|m| (m.version, m.description.to_string())).collect()
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
