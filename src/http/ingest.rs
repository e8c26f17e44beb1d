//! `POST /api/v1/analytics`: a batch of tracker events.
//!
//! A batch is all or nothing: when any event is bad, nothing is written and the 400 names
//! every bad event (by index) and why; the tracker drops or fixes those and resends.
//! A good batch is written in one Redis `MULTI` (legacy keys, plus the outbox during
//! dual-write) and answered 202 only after `EXEC` returned.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, RejectedEvent};
use super::AppState;
use crate::event::{AcceptedEvent, IncomingEvent, IngestLimits};
use crate::legacy::writer;

#[derive(Debug, Deserialize)]
struct Batch {
    events: Vec<Value>,
}

#[derive(Debug, Serialize)]
pub struct IngestResponse {
    pub accepted: usize,
    pub dual_write: bool,
}

/// Checks the bearer token when one is configured.
pub fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.settings.http.api_token else {
        return Ok(());
    };
    let presented = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
    if constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Validates a request body into events ready to write. Pure (apart from the clock).
pub fn parse_batch(body: &[u8], max_batch: usize, limits: IngestLimits) -> Result<Vec<AcceptedEvent>, ApiError> {
    let batch: Batch = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body must be JSON like {{\"events\": [...]}}: {e}")))?;
    if batch.events.is_empty() {
        return Err(ApiError::BadRequest("events is empty: send 1 to {max_batch} events".replace("{max_batch}", &max_batch.to_string())));
    }
    if batch.events.len() > max_batch {
        return Err(ApiError::BadRequest(format!("batch has {} events; the limit is {max_batch} per request", batch.events.len())));
    }
    let now = Utc::now();
    let mut accepted = Vec::with_capacity(batch.events.len());
    let mut rejected = Vec::new();
    for (index, value) in batch.events.into_iter().enumerate() {
        let result =
            serde_json::from_value::<IncomingEvent>(value).map_err(|e| vec![format!("not an event object: {e}")]).and_then(|event| event.validate(now, limits));
        match result {
            Ok(event) => accepted.push(event),
            Err(problems) => rejected.push(RejectedEvent { index, problems }),
        }
    }
    if !rejected.is_empty() {
        return Err(ApiError::BadEvents {
            message: format!("{} of {} events are invalid; nothing was written", rejected.len(), rejected.len() + accepted.len()),
            rejected,
        });
    }
    Ok(accepted)
}

pub async fn ingest(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<(StatusCode, Json<IngestResponse>), ApiError> {
    authorize(&state, &headers)?;
    let limits = IngestLimits { max_event_bytes: state.settings.ingest.max_event_bytes, ..Default::default() };
    let events = parse_batch(&body, state.settings.ingest.max_batch, limits)?;
    let started = std::time::Instant::now();
    let written = match write(&state, &events).await {
        // After a Redis restart the first command finds the old, dead connection (or the
        // answer of an attempt made while Redis was down); one more try connects afresh.
        // Not after a timeout: the server may still be working on it, or hung.
        Err(e) if e.is_io_error() && !e.is_timeout() => write(&state, &events).await,
        other => other,
    };
    let dual_write = written.map_err(|e| ApiError::Unavailable(format!("Redis is unavailable ({e}); nothing was written, retry the batch")))?;
    metrics::histogram!("tsmigrate_write_seconds", "system" => "redis").record(started.elapsed().as_secs_f64());
    metrics::counter!("tsmigrate_ingest_events_total").increment(events.len() as u64);
    Ok((StatusCode::ACCEPTED, Json(IngestResponse { accepted: events.len(), dual_write })))
}

/// Writes one batch (to the outbox too while dual-write is on); returns whether it did.
///
/// The batch is one `MULTI … EXEC`: it reaches Redis whole or not at all. When the
/// connection breaks after `EXEC` was sent, the caller cannot tell which; trying again (here,
/// or the tracker after a 503) then stores the events once (identical members, idempotent
/// relay) and adds the batch to the legacy all-time counters twice — the same as a tracker
/// that resends after a 503.
async fn write(state: &AppState, events: &[AcceptedEvent]) -> redis::RedisResult<bool> {
    let mut redis = state.redis.clone();
    let dual_write = state.dual_write.get(&mut redis, &state.keys.dual_write_flag).await?;
    writer::write_batch(&mut redis, &state.keys, state.settings.redis.event_cap, events, dual_write).await?;
    Ok(dual_write)
}
