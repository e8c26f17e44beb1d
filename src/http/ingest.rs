//! `POST /api/v1/analytics`: a batch of tracker events.
//!
//! A batch is all or nothing: when any event is bad, nothing is written and the 400 names
//! every bad event (by index) and why; the tracker drops or fixes those and resends.
//! A good batch is written in one Redis `MULTI` (legacy keys, plus the outbox during
//! dual-write) and answered 202 only after `EXEC` returned. A failure is 503: "nothing was
//! written" when no `MULTI` was sent or Redis refused it, "outcome unknown" when it was sent
//! and not answered (see [`unavailable`]); the request's Redis work has one deadline in all.
//!
//! Retries and identity: an event's row is `(event_id, time)`. When the tracker sends a
//! timestamp, a resend is the same member and the same row. When it sends an `id` but no
//! timestamp, the time is the moment ingest *first* accepted that id: before the `MULTI`,
//! one pipelined round trip (`SET {first_seen}:{event_id} now NX EX window` + `GET`) per
//! batch records or returns it, so a resend within `ingest.resend_window_secs` (24 h by
//! default) is stamped with the first time and stays one row. Events with neither get
//! `now`; their identity is their content (see `crate::event`).
//!
//! With `redis.wait_replicas` set, the batch is followed by `WAIT n timeout` on the master
//! that holds the events; fewer acknowledgements in time answer 503 "outcome unknown" (the
//! batch is on the master but a failover could drop it), counted in
//! `tsmigrate_ingest_replicas_short_total`.

use std::time::Duration;

use crate::connect::{is_not_connected, is_out_of_memory, refused_by_the_cluster, Outcome};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::{ApiError, RejectedEvent};
use super::AppState;
use crate::event::{id_from_string, AcceptedEvent, IncomingEvent, IngestLimits};
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
    let Some(token) = &state.ctx.settings.http.api_token else {
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

/// Only a body declared as JSON is read: a browser sends a cross-site form post (a "simple"
/// request, no preflight) only as `text/plain`, `multipart/form-data` or
/// `application/x-www-form-urlencoded`, so requiring `application/json` keeps other sites'
/// pages from writing events when no token is set.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers.get(axum::http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("<not text>"));
    let essence = declared.map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "the body must be sent as Content-Type: application/json (got {})",
            declared.map(|v| format!("{v:?}")).unwrap_or_else(|| "none".into())
        ))),
    }
}

/// A validated batch.
#[derive(Debug)]
pub struct ParsedBatch {
    pub events: Vec<AcceptedEvent>,
    /// Events stamped with the arrival time because they had an `id` and no timestamp:
    /// index into `events` and the event id (a resend must reuse the first time).
    pub stamped: Vec<(usize, Uuid)>,
}

/// Validates a request body into events ready to write. Pure (apart from the clock).
pub fn parse_batch(body: &[u8], max_batch: usize, limits: IngestLimits) -> Result<ParsedBatch, ApiError> {
    let batch: Batch = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body must be JSON like {{\"events\": [...]}}: {e}")))?;
    if batch.events.is_empty() {
        return Err(ApiError::BadRequest("events is empty: send 1 to {max_batch} events".replace("{max_batch}", &max_batch.to_string())));
    }
    if batch.events.len() > max_batch {
        return Err(ApiError::BadRequest(format!("batch has {} events; the limit is {max_batch} per request", batch.events.len())));
    }
    let now = Utc::now();
    let duplicates = duplicate_keys(body);
    let mut accepted = Vec::with_capacity(batch.events.len());
    let mut stamped = Vec::new();
    let mut rejected = Vec::new();
    for (index, value) in batch.events.into_iter().enumerate() {
        // A JSON parser keeps one of two values under the same key (serde_json the last,
        // others the first): which one the tracker meant is not known, so neither is stored.
        let duplicate = duplicates.get(index).cloned().flatten().map(|key| vec![format!("the key {key:?} appears more than once; send each key once")]);
        let result = match duplicate {
            Some(problems) => Err(problems),
            None => serde_json::from_value::<IncomingEvent>(value).map_err(|e| vec![format!("not an event object: {e}")]),
        }
        .and_then(|event| event.validate(now, limits).map(|accepted| (stamped_id(&event), accepted)));
        match result {
            Ok((id, event)) => {
                stamped.extend(id.map(|id| (accepted.len(), id)));
                accepted.push(event);
            }
            Err(problems) => rejected.push(RejectedEvent { index, problems }),
        }
    }
    if !rejected.is_empty() {
        return Err(ApiError::BadEvents {
            message: format!("{} of {} events are invalid; nothing was written", rejected.len(), rejected.len() + accepted.len()),
            rejected,
        });
    }
    Ok(ParsedBatch { events: accepted, stamped })
}

/// For each event of a batch body, the first key that appears twice in one of its objects
/// (nested ones included); empty when the body is not a batch (that is reported elsewhere).
fn duplicate_keys(body: &[u8]) -> Vec<Option<String>> {
    #[derive(Deserialize)]
    struct Events {
        events: Vec<FirstDuplicate>,
    }
    serde_json::from_slice::<Events>(body).map(|b| b.events.into_iter().map(|d| d.0).collect()).unwrap_or_default()
}

/// Walks a JSON value and keeps the first key found twice in one object.
struct FirstDuplicate(Option<String>);

impl<'de> Deserialize<'de> for FirstDuplicate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FirstDuplicateVisitor)
    }
}

struct FirstDuplicateVisitor;

impl<'de> serde::de::Visitor<'de> for FirstDuplicateVisitor {
    type Value = FirstDuplicate;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<FirstDuplicate, E> {
        Ok(FirstDuplicate(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<FirstDuplicate, E> {
        Ok(FirstDuplicate(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<FirstDuplicate, E> {
        Ok(FirstDuplicate(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<FirstDuplicate, E> {
        Ok(FirstDuplicate(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<FirstDuplicate, E> {
        Ok(FirstDuplicate(None))
    }
    fn visit_unit<E>(self) -> Result<FirstDuplicate, E> {
        Ok(FirstDuplicate(None))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FirstDuplicate, A::Error> {
        let mut first = None;
        while let Some(FirstDuplicate(found)) = seq.next_element()? {
            first = first.or(found);
        }
        Ok(FirstDuplicate(first))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FirstDuplicate, A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut first = None;
        while let Some(key) = map.next_key::<String>()? {
            let FirstDuplicate(inner) = map.next_value()?;
            if !seen.insert(key.clone()) {
                first = first.or(Some(key));
            }
            first = first.or(inner);
        }
        Ok(FirstDuplicate(first))
    }
}

/// The event id of an event that `validate` stamped with the arrival time.
fn stamped_id(event: &IncomingEvent) -> Option<Uuid> {
    let id = event.id.as_deref().map(str::trim).filter(|id| !id.is_empty())?;
    matches!(event.timestamp, None | Some(Value::Null)).then(|| id_from_string(id))
}

/// Gives each stamped event the time its id was first accepted (within `window`), and
/// records this batch's time for the ids seen for the first time: one pipelined round trip.
pub async fn reuse_first_times(redis: &mut impl redis::aio::ConnectionLike, prefix: &str, window: Duration, batch: &mut ParsedBatch) -> redis::RedisResult<()> {
    if batch.stamped.is_empty() || window.is_zero() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (index, id) in &batch.stamped {
        let key = format!("{prefix}:{id}");
        pipe.cmd("SET").arg(&key).arg(batch.events[*index].time_ms).arg("NX").arg("EX").arg(window.as_secs().max(1)).ignore();
        pipe.cmd("GET").arg(&key);
    }
    let firsts: Vec<Option<String>> = pipe.query_async(redis).await?;
    for ((index, _), first) in batch.stamped.iter().zip(firsts) {
        let event = &mut batch.events[*index];
        // A value that is not a time (written by something else) is ignored, not trusted.
        if let Some(first) = first.and_then(|t| t.parse::<i64>().ok()).filter(|t| *t != event.time_ms) {
            event.restamp(first);
        }
    }
    Ok(())
}

pub async fn ingest(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<(StatusCode, Json<IngestResponse>), ApiError> {
    authorize(&state, &headers)?;
    require_json(&headers)?;
    let limits = IngestLimits { max_event_bytes: state.ctx.settings.ingest.max_event_bytes, ..Default::default() };
    let mut batch = parse_batch(&body, state.ctx.settings.ingest.max_batch, limits)?;
    let started = std::time::Instant::now();
    // One deadline for all of the request's Redis work (connection, first times, flag,
    // the batch, one more try): a request never waits longer than a command may.
    let deadline = state.ctx.settings.redis.response_timeout();
    let mut attempt = Attempt::default();
    let written = match tokio::time::timeout(deadline, write_with_one_more_try(&state, &mut batch, &mut attempt)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {deadline:?}")).into()),
    };
    let dual_write = written.map_err(|e| unavailable(&e, attempt))?;
    let events = batch.events;
    metrics::histogram!("tsmigrate_write_seconds", "system" => "redis").record(started.elapsed().as_secs_f64());
    metrics::counter!("tsmigrate_ingest_events_total").increment(events.len() as u64);
    Ok((StatusCode::ACCEPTED, Json(IngestResponse { accepted: events.len(), dual_write })))
}

/// How far a request's writes got: whether a batch `MULTI` was ever sent, and whether one
/// may have run (sent, then no answer or a broken connection).
#[derive(Debug, Default, Clone, Copy)]
struct Attempt {
    multi_sent: bool,
    maybe_written: bool,
}

/// The 503 for a failed write: "nothing was written" only when that is known — no `MULTI`
/// was sent, or Redis answered it with an error (OOM, EXECABORT: it ran not). A `MULTI` that
/// got no answer may have run, or may run later when a stopped server resumes or a stalled
/// network delivers it: then the outcome is unknown, and the tracker's retry with the same
/// batch is what makes it whole (see the module's notes on identity).
fn unavailable(e: &redis::RedisError, attempt: Attempt) -> ApiError {
    if attempt.maybe_written || (attempt.multi_sent && Outcome::of(e) == Outcome::Unknown) {
        metrics::counter!("tsmigrate_ingest_unknown_outcomes_total").increment(1);
        return ApiError::OutcomeUnknown(format!(
            "Redis did not confirm the write ({e}), so the batch may or may not have been stored: the outcome is unknown; \
             retrying with the same ids is safe (events with an id or a timestamp are stored once; events with neither may be stored twice)"
        ));
    }
    if is_out_of_memory(e) {
        return ApiError::Unavailable(format!("Redis is out of memory and refuses writes ({e}); nothing was written, retry the batch later"));
    }
    ApiError::Unavailable(format!("Redis is unavailable ({e}); nothing was written, retry the batch"))
}

/// The batch's writes, and once more on a fresh connection when the connection broke (after
/// a Redis restart the first command finds the old, dead connection), or when a cluster
/// refused it with a redirection. Never after a timeout: the server may still be working on
/// it, or hung.
async fn write_with_one_more_try(state: &AppState, batch: &mut ParsedBatch, attempt: &mut Attempt) -> redis::RedisResult<bool> {
    match write_once(state, batch, attempt).await {
        Err(e) if e.is_io_error() && !e.is_timeout() && !is_not_connected(&e) => {
            attempt.maybe_written |= attempt.multi_sent;
            attempt.multi_sent = false;
            write_once(state, batch, attempt).await
        }
        // A cluster moved the slot (a resharding, a failover) and refused the batch before
        // running it: once more, on the topology the refusal taught the client.
        Err(e) if refused_by_the_cluster(&e) && !attempt.maybe_written => {
            attempt.multi_sent = false;
            write_once(state, batch, attempt).await
        }
        other => other,
    }
}

/// First times, the flag and the batch, on one connection (so that a failure to get one
/// means nothing was sent).
async fn write_once(state: &AppState, batch: &mut ParsedBatch, attempt: &mut Attempt) -> redis::RedisResult<bool> {
    let mut redis = state.redis.pinned().await?;
    let window = Duration::from_secs(state.ctx.settings.ingest.resend_window_secs);
    reuse_first_times(&mut redis, &state.ctx.keys.first_seen, window, batch).await?;
    let dual_write = state.dual_write.get(&mut redis, &state.ctx.keys.dual_write_flag).await?;
    attempt.multi_sent = true;
    writer::write_batch(&mut redis, &state.ctx.keys, state.ctx.settings.redis.event_cap, &batch.events, dual_write).await?;
    let wanted = state.ctx.settings.redis.wait_replicas;
    if wanted > 0 {
        attempt.maybe_written = true;
        let acknowledged = redis.wait_replicas(&state.ctx.keys.events, wanted, state.ctx.settings.redis.wait_timeout()).await?;
        if acknowledged < u64::from(wanted) {
            metrics::counter!("tsmigrate_ingest_replicas_short_total").increment(1);
            return Err(replicas_short(acknowledged, wanted, state.ctx.settings.redis.wait_timeout_ms));
        }
    }
    Ok(dual_write)
}

/// The batch is on the master, but fewer replicas than `redis.wait_replicas` confirmed it in
/// time: a failover now could lose it, so its outcome is unknown (not an I/O error: the
/// batch is never written twice by the one more try).
fn replicas_short(acknowledged: u64, wanted: u32, timeout_ms: u64) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::ResponseError,
        "too few replicas",
        format!("{acknowledged} of the {wanted} replica(s) of redis.wait_replicas acknowledged the batch within {timeout_ms} ms"),
    ))
}
