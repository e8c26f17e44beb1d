//! What every command needs — settings, key layout, the target pool, the legacy pool, the
//! read replica's pool, Redis —
//! built once at the edge and handed down (like zero2prod's `Application::build`): the CLI
//! builds one per command, `tsmigrate run` one for the process: the HTTP state
//! (`http::AppState`), the reads (`reads::ReadContext`), the admin status endpoint and the
//! scheduled jobs hold that one instead of connecting again, and the relay takes its
//! settings and key layout from it (its connections are its own, on its own thread).

use std::sync::Arc;

use crate::connect::RedisConn;
use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::config::Settings;
use crate::connect::ConnectError;
use crate::legacy::LegacyKeys;
use crate::store::{self, StorageMode, Store};

#[derive(Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    /// The Redis key layout the settings name.
    pub keys: Arc<LegacyKeys>,
    /// The target database. Every phase command needs it, so the CLI connects it first
    /// (its errors then say what to fix before anything else runs).
    pub target: PgPool,
    /// The legacy tables' database: the target pool unless `database.legacy_url` names
    /// another; connected on first use, so commands that never read it never need it.
    legacy: Arc<OnceCell<PgPool>>,
    /// The hot standby the read API may read (`database.read_url`): `None` when unset, its
    /// (scrubbed) error when the URL cannot make a pool. Connects on first use.
    read: Option<Result<PgPool, Arc<str>>>,
    /// The shared, multiplexed connection for short commands (never block on it).
    redis: Arc<OnceCell<RedisConn>>,
    /// A connection of its own, with a patient deadline, for large single reads.
    redis_bulk: Arc<OnceCell<RedisConn>>,
    /// Asked by SIGINT/SIGTERM in a CLI command: long work stops at its next page boundary.
    /// Never asked in `tsmigrate run` (its shutdown is a parameter of its workers).
    pub interrupt: crate::stop::Interrupt,
}

impl Context {
    /// For a command of the CLI: connects the target now, the rest on first use.
    pub async fn connect(settings: Settings) -> Result<Context, ConnectError> {
        let target = crate::db::target_pool(&settings).await?;
        Ok(Context::with_target(Arc::new(settings), target))
    }

    /// Without connecting: the target pool connects on first use (status, which reports a
    /// target that is down instead of failing, and servers that may never need it).
    pub fn lazy(settings: Settings) -> Result<Context, ConnectError> {
        let target = crate::db::target_pool_lazy(&settings)?;
        Ok(Context::with_target(Arc::new(settings), target))
    }

    /// The read replica's pool of a serving process (`tsmigrate run`): kept full of
    /// connections primed on `relations` (`db::serving_read_pool_lazy`).
    pub fn serving_reads(self, relations: &'static [&'static str]) -> Context {
        let read = crate::db::serving_read_pool_lazy(&self.settings, relations).map(|pool| pool.map_err(|e| Arc::from(e.to_string())));
        Context { read, ..self }
    }

    /// With the pools a long-running process already holds.
    pub fn with_target(settings: Arc<Settings>, target: PgPool) -> Context {
        let legacy = OnceCell::new();
        if settings.database.legacy_url.is_none() {
            let _ = legacy.set(target.clone());
        }
        let read = crate::db::read_pool_lazy(&settings).map(|pool| pool.map_err(|e| Arc::from(e.to_string())));
        Context {
            keys: Arc::new(LegacyKeys::from_settings(&settings)),
            settings,
            target,
            legacy: Arc::new(legacy),
            read,
            redis: Arc::new(OnceCell::new()),
            redis_bulk: Arc::new(OnceCell::new()),
            interrupt: crate::stop::Interrupt::default(),
        }
    }

    /// Long work stops at a page boundary once `interrupt` is asked.
    pub fn with_interrupt(self, interrupt: crate::stop::Interrupt) -> Context {
        Context { interrupt, ..self }
    }

    /// Uses `legacy` for the legacy tables.
    pub fn with_legacy(self, legacy: PgPool) -> Context {
        Context { legacy: Arc::new(OnceCell::new_with(Some(legacy))), ..self }
    }

    /// Uses `redis` as the shared connection.
    pub fn with_redis(self, redis: RedisConn) -> Context {
        Context { redis: Arc::new(OnceCell::new_with(Some(redis))), ..self }
    }

    /// Uses `redis` for large reads too (a connection that is already a dedicated one).
    pub fn with_bulk_redis(self, redis: RedisConn) -> Context {
        Context { redis_bulk: Arc::new(OnceCell::new_with(Some(redis))), ..self }
    }

    pub async fn legacy(&self) -> Result<PgPool, ConnectError> {
        self.legacy.get_or_try_init(|| crate::db::legacy_pool(&self.settings)).await.cloned()
    }

    /// The read replica's pool: `None` when `database.read_url` is unset; the reason when
    /// it could not be made.
    pub fn read_replica(&self) -> Option<Result<&PgPool, &str>> {
        self.read.as_ref().map(|read| read.as_ref().map_err(|e| &**e))
    }

    pub async fn redis(&self) -> Result<RedisConn, ConnectError> {
        self.redis
            .get_or_try_init(|| async {
                let mut redis = crate::db::redis(&self.settings).await?;
                crate::legacy::adopt_untagged_keys(&mut redis, &self.settings).await;
                Ok(redis)
            })
            .await
            .cloned()
    }

    pub async fn redis_bulk(&self) -> Result<RedisConn, ConnectError> {
        self.redis_bulk.get_or_try_init(|| crate::db::redis_bulk(&self.settings)).await.cloned()
    }

    /// The store of `mode` on the target.
    pub fn store(&self, mode: StorageMode) -> Arc<dyn Store> {
        store::open(mode, self.target.clone())
    }
}
