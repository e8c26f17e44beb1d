//! What the target server can do: is TimescaleDB available, preloaded, installed?

use serde::Serialize;
use sqlx::PgPool;

use super::StorageMode;
use crate::config::ModeChoice;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Capabilities {
    pub server_version: String,
    /// The version `CREATE EXTENSION timescaledb` would install, if the package is on the server.
    pub timescaledb_available: Option<String>,
    /// The version installed in this database, if any.
    pub timescaledb_installed: Option<String>,
    /// Whether `shared_preload_libraries` loads timescaledb (required to create the extension).
    pub timescaledb_preloaded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    #[error("--mode timescaledb was asked for, but the TimescaleDB extension is not available on this server\n  next: install the timescaledb package for PostgreSQL {0}, or run with --mode postgres (plain PostgreSQL mode)")]
    NotAvailable(String),
    #[error("--mode timescaledb was asked for, but timescaledb is not in shared_preload_libraries\n  next: add it to postgresql.conf (shared_preload_libraries = 'timescaledb') and restart the server, or run with --mode postgres")]
    NotPreloaded,
    #[error("the target was prepared in {prepared} mode; it cannot be switched to {requested} in place\n  next: run `tsmigrate abort` first to remove what prepare created, then prepare again")]
    Conflicting { prepared: StorageMode, requested: StorageMode },
}

impl Capabilities {
    pub async fn detect(pool: &PgPool) -> sqlx::Result<Capabilities> {
        let server_version: String = sqlx::query_scalar("SHOW server_version").fetch_one(pool).await?;
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetch_optional(pool).await?;
        let preload: String = sqlx::query_scalar("SELECT current_setting('shared_preload_libraries')").fetch_one(pool).await?;
        let (available, installed) = row.unwrap_or((None, None));
        Ok(Capabilities {
            server_version,
            timescaledb_available: available,
            timescaledb_installed: installed,
            timescaledb_preloaded: preload.split(',').any(|lib| lib.trim() == "timescaledb"),
        })
    }

    /// TimescaleDB can be used here (installed already, or creatable).
    pub fn timescaledb_usable(&self) -> bool {
        self.timescaledb_installed.is_some() || (self.timescaledb_available.is_some() && self.timescaledb_preloaded)
    }

    /// The storage mode for a choice on this server. Pure.
    pub fn choose(&self, choice: ModeChoice) -> Result<StorageMode, ModeError> {
        match choice {
            ModeChoice::Postgres => Ok(StorageMode::Postgres),
            ModeChoice::Auto if self.timescaledb_usable() => Ok(StorageMode::Timescaledb),
            ModeChoice::Auto => Ok(StorageMode::Postgres),
            ModeChoice::Timescaledb if self.timescaledb_available.is_none() && self.timescaledb_installed.is_none() => {
                Err(ModeError::NotAvailable(self.server_version.split('.').next().unwrap_or("").to_string()))
            }
            ModeChoice::Timescaledb if !self.timescaledb_usable() => Err(ModeError::NotPreloaded),
            ModeChoice::Timescaledb => Ok(StorageMode::Timescaledb),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(available: bool, preloaded: bool) -> Capabilities {
        Capabilities {
            server_version: "15.4".into(),
            timescaledb_available: available.then(|| "2.28.0".into()),
            timescaledb_installed: None,
            timescaledb_preloaded: preloaded,
        }
    }

    #[test]
    fn auto_picks_timescaledb_only_when_it_can_be_created() {
        assert_eq!(caps(true, true).choose(ModeChoice::Auto).unwrap(), StorageMode::Timescaledb);
        assert_eq!(caps(true, false).choose(ModeChoice::Auto).unwrap(), StorageMode::Postgres);
        assert_eq!(caps(false, false).choose(ModeChoice::Auto).unwrap(), StorageMode::Postgres);
    }

    #[test]
    fn forcing_timescaledb_without_it_explains_what_to_do() {
        let err = caps(false, false).choose(ModeChoice::Timescaledb).unwrap_err().to_string();
        assert!(err.contains("not available") && err.contains("--mode postgres"), "{err}");
        let err = caps(true, false).choose(ModeChoice::Timescaledb).unwrap_err().to_string();
        assert!(err.contains("shared_preload_libraries"), "{err}");
        assert_eq!(caps(true, false).choose(ModeChoice::Postgres).unwrap(), StorageMode::Postgres);
    }
}
