//! The HTTP surface: `POST /api/v1/analytics` (ingest), the read API
//! (`GET /api/v1/analytics/...`, see [`reads`]), admin status, health, readiness and metrics.
//!
//! `app(state)` builds the router; `serve(listener, state, shutdown)` runs it until the
//! shutdown future resolves, finishing requests in flight.

pub mod error;
pub mod ingest;
pub mod reads;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde_json::json;
use sqlx::PgPool;

use crate::config::Settings;
use crate::legacy::LegacyKeys;
use crate::reads::shadow::ShadowStats;
use crate::reads::{HorizonCache, RoutingCache};
use crate::remembered::Remembered;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub keys: Arc<LegacyKeys>,
    pub redis: ConnectionManager,
    /// The target; `None` when the server started without it (ingest never needs it).
    pub target: Option<PgPool>,
    /// The legacy database (hourly tables, popular function) for legacy reads; often the
    /// same pool as `target`.
    pub legacy: Option<PgPool>,
    pub dual_write: Arc<DualWriteFlag>,
    /// Which source answers reads: the migration state, refreshed at most once a second.
    pub routing: Arc<RoutingCache>,
    /// Shadow-read comparisons (also exported as metrics).
    pub shadow: Arc<ShadowStats>,
    /// The target's raw horizon, remembered between reads.
    pub target_horizon: Arc<HorizonCache>,
}

impl AppState {
    pub fn new(settings: Settings, redis: ConnectionManager, target: Option<PgPool>, legacy: Option<PgPool>) -> Self {
        let keys = LegacyKeys::from_settings(&settings);
        Self {
            settings: Arc::new(settings),
            keys: Arc::new(keys),
            redis,
            target,
            legacy,
            dual_write: Arc::new(DualWriteFlag::default()),
            routing: Arc::new(RoutingCache::default()),
            shadow: Arc::new(ShadowStats::default()),
            target_horizon: Arc::new(HorizonCache::default()),
        }
    }
}

/// Whether ingest appends to the outbox, read from Redis at most once a second.
/// Redis holds the flag (not PostgreSQL) because ingest must keep working while the
/// target is down; `dual-write start` waits out this refresh interval before recording
/// the completion point.
pub struct DualWriteFlag(Remembered<bool>);

pub const DUAL_WRITE_FLAG_REFRESH: Duration = Duration::from_secs(1);

impl Default for DualWriteFlag {
    fn default() -> Self {
        DualWriteFlag(Remembered::new(DUAL_WRITE_FLAG_REFRESH))
    }
}

impl DualWriteFlag {
    pub async fn get(&self, redis: &mut ConnectionManager, key: &str) -> redis::RedisResult<bool> {
        self.0
            .get(|_| async {
                let value: Option<String> = redis::cmd("GET").arg(key).query_async(redis).await?;
                Ok(value.as_deref() == Some("1"))
            })
            .await
    }
}

pub fn app(state: AppState) -> Router {
    let body_limit = state.settings.ingest.max_body_bytes;
    Router::new()
        .route("/api/v1/analytics", post(ingest::ingest))
        .route("/api/v1/analytics/summary", get(reads::summary))
        .route("/api/v1/analytics/hourly", get(reads::hourly))
        .route("/api/v1/analytics/popular-asset-types", get(reads::popular_asset_types))
        .route("/api/v1/analytics/comparison", get(reads::comparison))
        .route("/api/v1/analytics/intervals", get(reads::intervals))
        .route("/api/v1/admin/status", get(admin_status))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Prometheus text format.
async fn metrics_text() -> (StatusCode, String) {
    match crate::telemetry::metrics_handle() {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder unavailable\n".into()),
    }
}

/// `tsmigrate status --json`, over HTTP (admin: needs the bearer token when one is set).
async fn admin_status(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Result<Json<serde_json::Value>, error::ApiError> {
    ingest::authorize(&state, &headers)?;
    let status = crate::phase::status::gather(&state.settings).await.map_err(error::ApiError::Unexpected)?;
    Ok(Json(serde_json::to_value(status).map_err(|e| error::ApiError::Unexpected(e.into()))?))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when Redis answers and, if configured, the target does too.
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let mut redis = state.redis.clone();
    let redis_ok = redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok();
    let target_ok = match &state.target {
        Some(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
        None => true,
    };
    let code = if redis_ok && target_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({"redis": redis_ok, "target": target_ok})))
}

/// Serves until `shutdown` resolves; requests in flight complete first.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}
