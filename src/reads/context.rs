//! What a read needs: the process's [`Context`] (settings, key layout, pools), the shared
//! Redis connection, the request's minute, the target's raw horizon remembered between
//! requests, the route the target takes for unique users, and which database answers the
//! target's reads (the primary, or the read replica up to its replay point).

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;

use super::replica::{ReplicaView, ReplicaWatch, Why};
use super::request::ReadError;
use super::routing::{ReadSource, Routing};
use crate::connect::RedisConn;
use crate::context::Context;
use crate::remembered::Remembered;

/// How long the target's raw horizon is remembered. It moves only when retention drops a
/// day or a backfill adds older events, and asking costs a planning pass over every chunk.
pub const HORIZON_REFRESH: StdDuration = StdDuration::from_secs(10);

/// Past [`HORIZON_REFRESH`] the remembered horizon is still served while a background task
/// asks again (so no request pays for that planning pass); past this age (the refreshes kept
/// failing) a request asks itself.
pub const HORIZON_MAX_AGE: StdDuration = StdDuration::from_secs(60);

/// How the target answers what involves unique users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// The user sets, raw rows where they do not answer (what the API serves).
    #[default]
    Sets,
    /// Raw rows and the aggregates only: the route before user sets, kept to check the sets
    /// against and to measure them by.
    RawRows,
}

/// What a read needs: the process's [`Context`], the request's minute, the raw horizon
/// shared between requests, and the route.
#[derive(Clone)]
pub struct ReadContext {
    /// The process's one `Context` (in `tsmigrate run`, the one the HTTP state and the jobs
    /// hold too): settings, key layout, target and legacy pools.
    pub shared: Context,
    /// The shared, multiplexed Redis connection (the `Context`'s), cloned without waiting.
    pub redis: RedisConn,
    /// Whether the target (and the legacy tables) may be read: false on a server started
    /// for ingest only, whose reads then answer "not configured".
    pub serves_target: bool,
    /// The request's "now", rounded down to the minute.
    pub now: DateTime<Utc>,
    /// The target's raw horizon, shared between requests.
    pub target_horizon: Arc<HorizonCache>,
    pub route: Route,
    /// Which database answers the target's reads.
    pub database: TargetDatabase,
}

/// Which database answers the target's reads ([`super::replica`] decides).
#[derive(Clone, Debug)]
pub enum TargetDatabase {
    /// The target itself, and why (no replica, shadow reads, the replica lagging...).
    Primary(Why),
    /// The hot standby, which holds everything the primary had committed by `replayed_to`.
    Replica { pool: PgPool, replayed_to: DateTime<Utc> },
}

impl TargetDatabase {
    /// The `tsmigrate_reads_total` labels: database and reason.
    pub fn labels(&self) -> (&'static str, &'static str) {
        let why = match self {
            TargetDatabase::Primary(why) => *why,
            TargetDatabase::Replica { .. } => Why::WithinLimit,
        };
        (why.database(), why.as_str())
    }
}

impl ReadContext {
    /// Reads on `shared`'s pools and `redis` at `now`, with a raw horizon of their own.
    pub fn new(shared: Context, redis: RedisConn, now: DateTime<Utc>, route: Route) -> ReadContext {
        ReadContext {
            shared,
            redis,
            serves_target: true,
            now,
            target_horizon: Arc::new(HorizonCache::default()),
            route,
            database: TargetDatabase::Primary(Why::NoReplica),
        }
    }

    /// Reads the target on the replica `view` names, when it serves and its pool is there.
    pub fn on(self, view: Option<&ReplicaView>) -> ReadContext {
        let database = match (view, self.shared.read_replica()) {
            (None, _) => TargetDatabase::Primary(Why::NoReplica),
            (Some(view), Some(Ok(pool))) if view.serving() => match view.replayed_to {
                Some(replayed_to) => TargetDatabase::Replica { pool: pool.clone(), replayed_to },
                None => TargetDatabase::Primary(Why::LagUnknown),
            },
            (Some(view), _) if view.serving() => TargetDatabase::Primary(Why::Unreachable),
            (Some(view), _) => TargetDatabase::Primary(view.why),
        };
        ReadContext { database, ..self }
    }

    /// Chooses the database for the target's reads under `routing`: the replica `watch`
    /// last saw serving, unless the legacy path answers (no target read to place) or shadow
    /// reads compare the sources (both on the primary, so both answers are of one moment).
    pub async fn routed(self, routing: Routing, watch: &ReplicaWatch) -> ReadContext {
        if self.shared.settings.database.read_url.is_none() || !self.serves_target {
            return self;
        }
        if routing.shadow {
            return ReadContext { database: TargetDatabase::Primary(Why::Shadow), ..self };
        }
        if routing.source != ReadSource::Target {
            return self;
        }
        let view = watch.current(&self.shared).await;
        self.on(view.as_ref())
    }

    /// Whether the target's reads go to the replica.
    pub fn on_replica(&self) -> bool {
        matches!(self.database, TargetDatabase::Replica { .. })
    }

    /// The same read on the primary (a replica that failed between its check and the read).
    pub fn on_primary(self, why: Why) -> ReadContext {
        ReadContext { database: TargetDatabase::Primary(why), ..self }
    }

    /// The time the target's answer is true as of: the request's minute, or the replica's
    /// replay point when that is earlier (never later than what the database read had).
    pub fn target_as_of(&self) -> DateTime<Utc> {
        match &self.database {
            TargetDatabase::Replica { replayed_to, .. } => self.now.min(*replayed_to),
            TargetDatabase::Primary(_) => self.now,
        }
    }

    pub fn tz(&self) -> Tz {
        self.shared.settings.target.timezone()
    }

    pub(crate) fn target_pool(&self) -> Result<&PgPool, ReadError> {
        if !self.serves_target {
            return Err(ReadError::Unavailable("the target database is not configured for reads".into()));
        }
        Ok(match &self.database {
            TargetDatabase::Replica { pool, .. } => pool,
            TargetDatabase::Primary(_) => &self.shared.target,
        })
    }

    /// The legacy tables' pool (the target's unless `database.legacy_url` names another,
    /// connected on first use).
    pub(crate) async fn legacy_pool(&self) -> Result<PgPool, ReadError> {
        if !self.serves_target {
            return Err(ReadError::Unavailable("the legacy database is not configured for reads".into()));
        }
        self.shared.legacy().await.map_err(|e| ReadError::Unavailable(e.to_string()))
    }
}

/// The oldest raw event time of the target, remembered for [`HORIZON_REFRESH`] per database
/// read: a replica that has not replayed a backfill yet has another horizon than the
/// primary, and an answer from one must not be cut at the other's.
pub struct HorizonCache {
    primary: Arc<Remembered<Option<DateTime<Utc>>>>,
    replica: Arc<Remembered<Option<DateTime<Utc>>>>,
}

impl Default for HorizonCache {
    fn default() -> Self {
        HorizonCache { primary: Arc::new(Remembered::new(HORIZON_REFRESH)), replica: Arc::new(Remembered::new(HORIZON_REFRESH)) }
    }
}

impl HorizonCache {
    /// The horizon of the database `ctx` reads, from `load` when not remembered (refreshed
    /// behind the requests once it is older than [`HORIZON_REFRESH`]).
    pub async fn get<Load>(&self, ctx: &ReadContext, load: impl FnOnce() -> Load) -> Result<Option<DateTime<Utc>>, ReadError>
    where
        Load: std::future::Future<Output = Result<Option<DateTime<Utc>>, ReadError>> + Send + 'static,
    {
        let remembered = if ctx.on_replica() { &self.replica } else { &self.primary };
        remembered.get_refreshing_behind(HORIZON_MAX_AGE, load).await
    }
}
