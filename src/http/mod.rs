//! The HTTP surface: `POST /api/v1/analytics` (ingest), health and readiness.
//!
//! `app(state)` builds the router; `serve(listener, state, shutdown)` runs it until the
//! shutdown future resolves, finishing requests in flight.

pub mod error;
pub mod ingest;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::config::Settings;
use crate::legacy::LegacyKeys;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub keys: Arc<LegacyKeys>,
    pub redis: ConnectionManager,
    /// The target; `None` when the server started without it (ingest never needs it).
    pub target: Option<PgPool>,
    pub dual_write: Arc<DualWriteFlag>,
}

impl AppState {
    pub fn new(settings: Settings, redis: ConnectionManager, target: Option<PgPool>) -> Self {
        let keys = LegacyKeys::from_settings(&settings);
        Self { settings: Arc::new(settings), keys: Arc::new(keys), redis, target, dual_write: Arc::new(DualWriteFlag::default()) }
    }
}

/// Whether ingest appends to the outbox, read from Redis at most once a second.
/// Redis holds the flag (not PostgreSQL) because ingest must keep working while the
/// target is down; `dual-write start` waits out this refresh interval before recording
/// the completion point.
#[derive(Default)]
pub struct DualWriteFlag {
    cached: Mutex<Option<(bool, Instant)>>,
}

pub const DUAL_WRITE_FLAG_REFRESH: Duration = Duration::from_secs(1);

impl DualWriteFlag {
    pub async fn get(&self, redis: &mut ConnectionManager, key: &str) -> redis::RedisResult<bool> {
        let mut cached = self.cached.lock().await;
        if let Some((value, at)) = *cached {
            if at.elapsed() < DUAL_WRITE_FLAG_REFRESH {
                return Ok(value);
            }
        }
        let value: Option<String> = redis::cmd("GET").arg(key).query_async(redis).await?;
        let on = value.as_deref() == Some("1");
        *cached = Some((on, Instant::now()));
        Ok(on)
    }
}

pub fn app(state: AppState) -> Router {
    let body_limit = state.settings.ingest.max_body_bytes;
    Router::new()
        .route("/api/v1/analytics", post(ingest::ingest))
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
