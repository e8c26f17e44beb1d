//! The HTTP surface: `POST /api/v1/analytics` (ingest), the read API
//! (`GET /api/v1/analytics/...`, see [`reads`]), admin status, health, readiness and metrics.
//!
//! `app(state)` builds the router; `serve(listener, state, shutdown)` runs it until the
//! shutdown future resolves, finishing requests in flight.

pub mod error;
pub mod ingest;
pub mod reads;
pub mod warm;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::connect::RedisConn;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;

use crate::config::Settings;
use crate::context::Context;
use crate::dual_write::flag::DUAL_WRITE_FLAG_REFRESH;
use crate::reads::replica::ReplicaWatch;
use crate::reads::shadow::ShadowStats;
use crate::reads::{HorizonCache, ReadContext, RoutingCache, TargetDatabase};
use crate::remembered::Remembered;

/// Shared by every request: the process's one [`Context`] (settings, key layout, pools)
/// and what the HTTP side keeps between requests.
#[derive(Clone)]
pub struct AppState {
    /// The process's `Context`: in `tsmigrate run` the same one the jobs and reads use.
    pub ctx: Context,
    /// The shared, multiplexed Redis connection (the `Context`'s), cloned without waiting.
    pub redis: RedisConn,
    /// False for a server started for ingest only: reads answer "not configured", `/ready`
    /// does not probe the target, admin status connects from the settings as the CLI does.
    serves_target: bool,
    pub dual_write: Arc<DualWriteFlag>,
    /// Which source answers reads: the migration state, refreshed at most once a second.
    pub routing: Arc<RoutingCache>,
    /// The read replica as last checked, refreshed at most once a second.
    pub replica: Arc<ReplicaWatch>,
    /// Shadow-read comparisons (also exported as metrics).
    pub shadow: Arc<ShadowStats>,
    /// The target's raw horizon, remembered between reads.
    pub target_horizon: Arc<HorizonCache>,
    /// Whether the read path is warm (`warm::warm_up`); `/ready` answers 503 until it is.
    pub warmth: Arc<warm::Warmth>,
}

impl AppState {
    /// Every endpoint on `ctx` (its target and legacy pools) and `redis`, which becomes the
    /// `Context`'s shared connection too.
    pub fn new(ctx: Context, redis: RedisConn) -> Self {
        Self {
            ctx: ctx.with_redis(redis.clone()),
            redis,
            serves_target: true,
            dual_write: Arc::new(DualWriteFlag::default()),
            routing: Arc::new(RoutingCache::default()),
            replica: Arc::new(ReplicaWatch::default()),
            shadow: Arc::new(ShadowStats::default()),
            target_horizon: Arc::new(HorizonCache::default()),
            warmth: Arc::new(warm::Warmth::default()),
        }
    }

    /// A server that needs only Redis (ingest, health, metrics); its target pool is lazy
    /// and never used by the endpoints.
    pub fn ingest_only(settings: Settings, redis: RedisConn) -> Result<Self, crate::connect::ConnectError> {
        Ok(Self { serves_target: false, ..Self::new(Context::lazy(settings)?, redis) })
    }

    /// A server whose `/ready` answers 503 until `warm::warm_up` has warmed its read path.
    pub fn cold(self) -> Self {
        Self { warmth: Arc::new(warm::Warmth::cold()), ..self }
    }

    /// The target, unless this server serves ingest only.
    pub fn target(&self) -> Option<&PgPool> {
        self.serves_target.then_some(&self.ctx.target)
    }

    /// What a read at `now` needs: this state's `Context`, Redis and raw horizon.
    pub fn reads_at(&self, now: chrono::DateTime<chrono::Utc>) -> ReadContext {
        ReadContext {
            shared: self.ctx.clone(),
            redis: self.redis.clone(),
            serves_target: self.serves_target,
            now,
            target_horizon: self.target_horizon.clone(),
            route: crate::reads::Route::Sets,
            database: TargetDatabase::Primary(crate::reads::replica::Why::NoReplica),
        }
    }
}

/// Whether ingest appends to the outbox, read from Redis at most once a second.
///
/// Redis holds the flag (not PostgreSQL) because ingest must keep working while the target
/// is down; `dual-write start` waits out this refresh interval before recording the
/// completion point. PostgreSQL's migration state stays the source of truth: the daemon
/// checks it every `migration.dual_write_check_secs`, restores the flag when Redis lost it,
/// and tells this cache what the state says ([`DualWriteFlag::set_state_view`]). A missing
/// flag (a Redis that restarted without its data) then follows the state instead of turning
/// dual-write off; `"0"` (written by `dual-write stop`) is off.
pub struct DualWriteFlag {
    cached: Remembered<bool>,
    /// What the migration state said at the daemon's last check; `None` before the first.
    state_says: std::sync::Mutex<Option<bool>>,
}

impl Default for DualWriteFlag {
    fn default() -> Self {
        DualWriteFlag { cached: Remembered::new(DUAL_WRITE_FLAG_REFRESH), state_says: std::sync::Mutex::new(None) }
    }
}

impl DualWriteFlag {
    pub async fn get(&self, redis: &mut (impl redis::aio::ConnectionLike + Send), key: &str) -> redis::RedisResult<bool> {
        let fallback = self.state_view();
        self.cached
            .get(|_| async {
                let value: Option<String> = redis::cmd("GET").arg(key).query_async(redis).await?;
                Ok(match value {
                    Some(value) => value == crate::dual_write::flag::ON,
                    None => {
                        if fallback == Some(true) {
                            metrics::counter!("tsmigrate_dual_write_flag_missing_total").increment(1);
                            tracing::warn!(
                                key,
                                "the dual-write flag is missing from Redis while the migration state says dual-write is on; writing the outbox anyway"
                            );
                        }
                        fallback.unwrap_or(false)
                    }
                })
            })
            .await
    }

    /// Records what PostgreSQL's migration state says about dual-write.
    pub fn set_state_view(&self, on: bool) {
        *self.state_says.lock().unwrap_or_else(|e| e.into_inner()) = Some(on);
    }

    fn state_view(&self) -> Option<bool> {
        *self.state_says.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AppState {
    /// The `Context` admin status reads with: the process's own (no new connections). A
    /// server started for ingest only connects from its settings, as the CLI would.
    async fn status_context(&self) -> anyhow::Result<Context> {
        if self.serves_target {
            return Ok(self.ctx.clone());
        }
        Ok(Context::connect((*self.ctx.settings).clone()).await?)
    }
}

pub fn app(state: AppState) -> Router {
    let body_limit = state.ctx.settings.ingest.max_body_bytes;
    let http = &state.ctx.settings.http;
    let deadlines = Deadlines { body: http.read_timeout(), body_limit, answer: http.request_timeout() };
    Router::new()
        .route("/api/v1/analytics", post(ingest::ingest))
        .route("/api/v1/admin/status", get(admin_status))
        .route("/api/v1/analytics/summary", get(reads::summary))
        .route("/api/v1/analytics/hourly", get(reads::hourly))
        .route("/api/v1/analytics/popular-asset-types", get(reads::popular_asset_types))
        .route("/api/v1/analytics/comparison", get(reads::comparison))
        .route("/api/v1/analytics/intervals", get(reads::intervals))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(deadlines, answer_in_time))
        .layer(middleware::from_fn_with_state(deadlines, read_body_in_time))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// How long a client may take to send a body, and the server to answer.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    body: Duration,
    body_limit: usize,
    answer: Duration,
}

/// Reads the whole request body within the read timeout (HTTP/1 header reading has its own,
/// in [`serve`]): a client that stops half way gets 408 and its connection is closed, so
/// half-sent requests cannot pile up.
async fn read_body_in_time(State(deadlines): State<Deadlines>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, deadlines.body_limit));
    match tokio::time::timeout(deadlines.body, read).await {
        Ok(Ok(collected)) => next.run(Request::from_parts(parts, Body::from(collected.to_bytes()))).await,
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            close(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than ingest.max_body_bytes ({} bytes)", deadlines.body_limit))
        }
        Ok(Err(e)) => close(StatusCode::BAD_REQUEST, format!("the request body could not be read: {e}")),
        Err(_) => close(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {}s", deadlines.body.as_secs())),
    }
}

/// A request that is not answered in time (a server behind it hangs) gets 503, not a hang.
async fn answer_in_time(State(deadlines): State<Deadlines>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(deadlines.answer, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            // What tsmigrate_http_read_timeouts_total counts: answers given up for time.
            metrics::counter!("tsmigrate_http_read_timeouts_total").increment(1);
            error::ApiError::Unavailable(format!("no answer within {}s: a server behind this endpoint is slow or down", deadlines.answer.as_secs()))
                .into_response()
        }
    }
}

/// An error answer after which the connection is closed (the rest of the body is not read).
fn close(status: StatusCode, message: String) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Prometheus text format.
async fn metrics_text() -> (StatusCode, String) {
    match crate::telemetry::metrics_handle() {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder unavailable\n".into()),
    }
}

/// The details of `tsmigrate status --json`, over HTTP (admin: needs the bearer token when
/// one is set). 503 names the server that is down, with the status it could still read
/// (like the CLI, which exits 2 then).
async fn admin_status(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Result<Response, error::ApiError> {
    ingest::authorize(&state, &headers)?;
    let ctx = state.status_context().await.map_err(|e| match e.downcast_ref::<crate::connect::ConnectError>() {
        Some(down) => error::ApiError::Unavailable(down.to_string()),
        None => error::ApiError::Unexpected(e),
    })?;
    let status = crate::status::gather(&ctx, None).await;
    let down = status.unreachable();
    let mut body = serde_json::to_value(status).map_err(|e| error::ApiError::Unexpected(e.into()))?;
    Ok(match down {
        Some((down, _)) => {
            body["error"] = json!(down);
            body["retry"] = json!(true);
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
        None => Json(body).into_response(),
    })
}

/// Liveness: the process serves HTTP. It does not depend on the servers (restarting this
/// process would not bring them back): `/ready` says whether they answer. The Redis
/// connection's missed deadlines and replacements are shown for a look at a glance.
async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "redis_command_timeouts": state.redis.timeouts_seen(), "redis_connections_replaced": state.redis.replaced()}))
}

/// How long `/ready` waits for each server.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ready when Redis answers *and takes writes* and, if configured, the target answers — each
/// within [`READY_PROBE_TIMEOUT`], so a server that is down or hung makes `/ready` answer 503,
/// not hang. `reasons` says why not.
///
/// The Redis probe is a write (a small key with a 10 s expiry), not a PING: a Redis at
/// `maxmemory` with `noeviction` answers PING and refuses every ingest batch with OOM.
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let probe_key = format!("{}:ready", state.ctx.keys.cache_prefix);
    let redis_probe = tokio::time::timeout(READY_PROBE_TIMEOUT, probe_redis(state.redis.clone(), probe_key));
    let target_probe = async {
        match state.target() {
            Some(pool) => match tokio::time::timeout(READY_PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("the target does not answer: {e}")),
                Err(_) => Some(format!("the target did not answer within {READY_PROBE_TIMEOUT:?}")),
            },
            None => None,
        }
    };
    let (redis_reply, target_problem) = tokio::join!(redis_probe, target_probe);
    let warming = (!state.warmth.is_warm()).then(|| "warming up the read path (every endpoint answered once before traffic comes)".to_string());
    let redis_problem = match redis_reply {
        Ok(Ok(())) => None,
        Ok(Err(e)) if crate::connect::is_out_of_memory(&e) => {
            Some(format!("Redis is out of memory and refuses writes (maxmemory reached, maxmemory-policy noeviction): ingest answers 503 ({e})"))
        }
        Ok(Err(e)) => Some(format!("Redis does not answer: {e}")),
        Err(_) => Some(format!("Redis did not answer within {READY_PROBE_TIMEOUT:?}")),
    };
    let code = if redis_problem.is_none() && target_problem.is_none() && warming.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let reasons: Vec<&String> = redis_problem.iter().chain(target_problem.iter()).chain(warming.iter()).collect();
    (code, Json(json!({"redis": redis_problem.is_none(), "target": target_problem.is_none(), "warm": warming.is_none(), "reasons": reasons})))
}

/// A small write, and once more after a broken connection: after a Redis restart the first
/// command finds the old, dead connection; the second try connects afresh.
async fn probe_redis(mut redis: RedisConn, key: String) -> redis::RedisResult<()> {
    let probe = || redis::cmd("SET").arg(&key).arg("1").arg("PX").arg(10_000).to_owned();
    match probe().query_async::<()>(&mut redis).await {
        Err(e) if e.is_io_error() && !e.is_timeout() => probe().query_async(&mut redis).await,
        other => other,
    }
}

/// Serves until `shutdown` resolves; requests in flight complete first.
///
/// HTTP/1 only, with a header read timeout (`http.read_timeout_secs`, also for idle
/// keep-alive connections): a client that connects and sends nothing, or half a header,
/// is disconnected. The body has the same deadline ([`app`]'s middleware).
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(state.ctx.settings.http.read_timeout());
    let app = app(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
