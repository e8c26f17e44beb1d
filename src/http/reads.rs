//! The read API: `GET /api/v1/analytics/{summary,hourly,popular-asset-types,comparison,intervals}`.
//!
//! Each handler turns its query string into a validated [`Request`] (400 with a message
//! naming the parameter otherwise) and hands it to [`serve`], which asks the migration
//! state which source answers, answers cache-aside, and in shadow mode compares with the
//! other source in the background. The JSON shapes below are the wire contract; the
//! domain types live in [`crate::reads`].

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::AppState;
use crate::reads::{self, cache, shadow, Answer, EventFilter, ReadContext, ReadError, ReadSource, Request, TimeRange};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeParams {
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourlyParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub event_name: Option<String>,
    pub category: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopularParams {
    /// Default 30.
    pub days: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonParams {
    /// Default `30d`.
    pub period: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalsParams {
    /// Default `1h`.
    pub bucket: Option<String>,
    /// Default `24h`.
    pub since: Option<String>,
}

type ReadResult = Result<JsonText, ApiError>;

/// An answer's wire JSON, serialized once: rendered straight from the answer (no
/// `serde_json::Value` tree of its rows), kept as text in the cache and served as it is.
pub struct JsonText(String);

impl JsonText {
    /// The object with `fields` added (their keys are not in it yet).
    fn with(mut self, fields: &[(&str, Value)]) -> JsonText {
        debug_assert!(self.0.ends_with('}'), "an answer is a JSON object");
        self.0.pop();
        for (key, value) in fields {
            if !self.0.ends_with('{') {
                self.0.push(',');
            }
            self.0.push_str(&Value::from(*key).to_string());
            self.0.push(':');
            self.0.push_str(&value.to_string());
        }
        self.0.push('}');
        self
    }

    fn parsed(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

impl IntoResponse for JsonText {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

/// Total events, unique users, events by type and category over `[from, to)`.
pub async fn summary(State(state): State<AppState>, query: Result<Query<RangeParams>, QueryRejection>) -> ReadResult {
    let Query(p) = query.map_err(bad_query)?;
    let now = request_minute();
    let range = parse_range(p.from, p.to, now)?;
    serve(&state, Request::Summary(range), now).await
}

/// Rows per (hour, event_name, category) over `[from, to)`, optionally filtered.
pub async fn hourly(State(state): State<AppState>, query: Result<Query<HourlyParams>, QueryRejection>) -> ReadResult {
    let Query(p) = query.map_err(bad_query)?;
    let now = request_minute();
    let range = parse_range(p.from, p.to, now)?;
    let filter = EventFilter { event_name: non_empty("event_name", p.event_name)?, category: non_empty("category", p.category)? };
    serve(&state, Request::Hourly { range, filter }, now).await
}

/// Asset types by generations over the last `days` days, like the legacy function.
pub async fn popular_asset_types(State(state): State<AppState>, query: Result<Query<PopularParams>, QueryRejection>) -> ReadResult {
    let Query(p) = query.map_err(bad_query)?;
    let days = match p.days {
        None => 30,
        Some(d) => d
            .trim()
            .parse::<u32>()
            .map_err(|_| ApiError::BadRequest(format!("days must be a whole number of days between 1 and {}, not {d:?}", reads::MAX_POPULAR_DAYS)))?,
    };
    let now = request_minute();
    serve(&state, Request::popular(days, now).map_err(ApiError::BadRequest)?, now).await
}

/// Events in this period against the previous one of the same length.
pub async fn comparison(State(state): State<AppState>, query: Result<Query<ComparisonParams>, QueryRejection>) -> ReadResult {
    let Query(p) = query.map_err(bad_query)?;
    let period = parse_span("period", p.period.as_deref().unwrap_or("30d"))?;
    let now = request_minute();
    serve(&state, Request::comparison(period, now).map_err(ApiError::BadRequest)?, now).await
}

/// Event counts per bucket over the last `since`, oldest first, empty buckets included.
pub async fn intervals(State(state): State<AppState>, query: Result<Query<IntervalsParams>, QueryRejection>) -> ReadResult {
    let Query(p) = query.map_err(bad_query)?;
    let bucket = parse_span("bucket", p.bucket.as_deref().unwrap_or("1h"))?;
    let since = parse_span("since", p.since.as_deref().unwrap_or("24h"))?;
    let now = request_minute();
    serve(&state, Request::intervals(bucket, since, now).map_err(ApiError::BadRequest)?, now).await
}

fn request_minute() -> DateTime<Utc> {
    reads::minute_floor(Utc::now())
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid query string: {}", rejection.body_text()))
}

fn parse_range(from: Option<String>, to: Option<String>, now: DateTime<Utc>) -> Result<TimeRange, ApiError> {
    TimeRange::checked(parse_instant("from", from, now)?, parse_instant("to", to, now)?).map_err(ApiError::BadRequest)
}

/// RFC 3339 / ISO 8601 text, epoch milliseconds, a date (midnight UTC), or relative to the
/// request's minute: `now`, `-30d`.
fn parse_instant(name: &str, value: Option<String>, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let help = "an RFC 3339 time like 2025-01-31T00:00:00Z (encode + as %2B), epoch milliseconds, a date like 2025-01-31, now, or -30d";
    let Some(text) = value.filter(|v| !v.trim().is_empty()) else {
        return Err(ApiError::BadRequest(format!("{name} is required: {help}")));
    };
    match text.trim() {
        "now" => return Ok(now),
        // A duration needs a unit, so negative epoch milliseconds are not taken for one.
        relative if relative.starts_with('-') => {
            if let Ok(span) = crate::duration::parse_duration(&relative[1..]) {
                return Ok(now - span);
            }
        }
        _ => {}
    }
    let parse = |s: &str| {
        crate::event::parse_timestamp(&Value::String(s.to_string()))
            .or_else(|| NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()))
    };
    // An unencoded `+` in an offset arrives as a space.
    parse(&text).or_else(|| parse(&text.trim().replace(' ', "+"))).ok_or_else(|| ApiError::BadRequest(format!("{name} {text:?} is not a time: use {help}")))
}

fn parse_span(name: &str, text: &str) -> Result<chrono::Duration, ApiError> {
    crate::duration::parse_duration(text.trim()).map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))
}

fn non_empty(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(ApiError::BadRequest(format!("{name} must not be empty when given"))),
        Some(v) if v.chars().count() > 256 => Err(ApiError::BadRequest(format!("{name} is longer than 256 characters"))),
        // No stored name can hold one (ingest refuses it), and PostgreSQL refuses it in a query.
        Some(v) if v.contains('\0') => Err(ApiError::BadRequest(format!("{name} holds a NUL character (%00), which no event name or category can contain"))),
        other => Ok(other),
    }
}

/// Answers `request` from the source the migration state names; in shadow mode, the other
/// source is asked too, in the background, and the answers compared.
async fn serve(state: &AppState, request: Request, now: DateTime<Utc>) -> ReadResult {
    let routing = state.routing.current(state.target()).await;
    let ctx = state.reads_at(now).routed(routing, &state.replica).await;
    let answered = match fetch(state, &ctx, routing.source, &request).await {
        // The replica failed between its check and this read: the primary answers at once
        // (the next check, within a second, sends every read there until it is back).
        Err(ReadError::Unavailable(message)) if ctx.on_replica() && routing.source == ReadSource::Target => {
            tracing::warn!(error = %message, "the read replica could not answer; asking the primary");
            fetch(state, &ctx.clone().on_primary(crate::reads::replica::Why::Unreachable), routing.source, &request).await
        }
        other => other,
    };
    let (body, cached) = answered.map_err(|e| match e {
        ReadError::Unavailable(message) => ApiError::Unavailable(message),
        ReadError::Unexpected(e) => ApiError::Unexpected(e),
    })?;
    if routing.shadow {
        spawn_shadow(state.clone(), ctx, routing.source, request, body.parsed());
    }
    Ok(body.with(&[("source", Value::String(routing.source.as_str().into())), ("cached", Value::Bool(cached))]))
}

/// One source's answer as wire JSON, cache-aside; says whether it came from the cache.
async fn fetch(state: &AppState, ctx: &ReadContext, source: ReadSource, request: &Request) -> Result<(JsonText, bool), ReadError> {
    let started = Instant::now();
    let ttl = state.ctx.settings.http.cache_ttl_secs;
    let key = cache::key(&state.ctx.keys.cache_prefix, source, request);
    let mut redis = state.redis.clone();
    let cached = if ttl > 0 { cache::get(&mut redis, &key).await } else { None };
    let (body, hit) = match cached {
        Some(body) => (JsonText(body), true),
        None => {
            let body = render(&source.answer(ctx, request).await?);
            // as_of: the settle boundary the question was resolved against — on the read
            // replica, its replay point when that is earlier (what it had replayed, never
            // more); fresh_until: until when the cache serves this answer (the same for both
            // sources, so shadow reads compare it too).
            let as_of = match source {
                ReadSource::Target => {
                    let (database, reason) = ctx.database.labels();
                    metrics::counter!("tsmigrate_reads_total", "database" => database, "reason" => reason).increment(1);
                    ctx.target_as_of()
                }
                ReadSource::Legacy => ctx.now,
            };
            let fresh_until = ctx.now + chrono::Duration::seconds(ttl as i64);
            let body = body.with(&[("as_of", Value::String(reads::wire_time(as_of))), ("fresh_until", Value::String(reads::wire_time(fresh_until)))]);
            let left = (fresh_until - Utc::now()).num_seconds();
            if left > 0 {
                cache::put(&mut redis, &key, &body.0, left as u64).await;
            }
            (body, false)
        }
    };
    metrics::histogram!("tsmigrate_read_seconds", "source" => source.as_str(), "endpoint" => request.endpoint()).record(started.elapsed().as_secs_f64());
    Ok((body, hit))
}

fn spawn_shadow(state: AppState, ctx: ReadContext, served_by: ReadSource, request: Request, served: Value) {
    let endpoint = request.endpoint();
    // Bounded: under load, shadow reads are skipped rather than piling up.
    let Some(permit) = state.shadow.try_begin() else {
        state.shadow.record_skipped(endpoint);
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let other = served_by.other();
        match fetch(&state, &ctx, other, &request).await {
            Ok((answer, _)) => {
                let differences = shadow::compare(&served, &answer.parsed());
                state.shadow.record(endpoint, &differences);
                if !differences.is_empty() {
                    tracing::warn!(
                        endpoint,
                        served_by = served_by.as_str(),
                        compared_with = other.as_str(),
                        params = %request.cache_params(),
                        diff = %shadow::short_diff(&differences),
                        "shadow read mismatch"
                    );
                }
            }
            Err(e) => {
                state.shadow.record_error(endpoint);
                tracing::warn!(endpoint, source = other.as_str(), error = %e, "shadow read failed");
            }
        }
    });
}

#[derive(Serialize)]
struct Period {
    from: String,
    to: String,
}

impl From<TimeRange> for Period {
    fn from(range: TimeRange) -> Period {
        Period { from: reads::wire_time(range.from), to: reads::wire_time(range.to) }
    }
}

#[derive(Serialize)]
struct SummaryBody {
    period: Period,
    total_events: i64,
    unique_users: i64,
    /// False when hourly history contributed: then unique users is the sum of hourly uniques.
    unique_users_exact: bool,
    events_by_type: BTreeMap<String, i64>,
    events_by_category: BTreeMap<String, i64>,
}

#[derive(Serialize)]
struct HourlyBody<'a> {
    period: Period,
    rows: Vec<HourBody<'a>>,
}

#[derive(Serialize)]
struct HourBody<'a> {
    hour: String,
    event_name: &'a str,
    category: &'a str,
    event_count: i64,
    unique_users: i64,
}

#[derive(Serialize)]
struct PopularBody {
    days: u32,
    as_of: String,
    asset_types: Vec<AssetBody>,
}

#[derive(Serialize)]
struct AssetBody {
    asset_type: String,
    generation_count: i64,
    unique_creators: i64,
}

#[derive(Serialize)]
struct ComparisonBody {
    period: String,
    current: i64,
    previous: i64,
    trend: i64,
    trend_percentage: Option<f64>,
    current_period: Period,
    previous_period: Period,
}

#[derive(Serialize)]
struct IntervalsBody {
    bucket: String,
    bucket_seconds: i64,
    period: Period,
    total_events: i64,
    buckets: Vec<BucketBody>,
}

#[derive(Serialize)]
struct BucketBody {
    start: String,
    count: i64,
}

/// The wire JSON of an answer (without `as_of`, `fresh_until`, `source` and `cached`,
/// which `fetch` and `serve` add).
fn render(answer: &Answer) -> JsonText {
    let body = match answer {
        Answer::Summary(s) => serde_json::to_string(&SummaryBody {
            period: s.range.into(),
            total_events: s.total_events,
            unique_users: s.unique_users,
            unique_users_exact: s.unique_users_exact,
            events_by_type: s.by_type.clone(),
            events_by_category: s.by_category.clone(),
        }),
        Answer::Hourly { range, rows } => serde_json::to_string(&HourlyBody {
            period: (*range).into(),
            rows: rows
                .iter()
                .map(|r| HourBody {
                    hour: reads::wire_time(r.hour),
                    event_name: &r.event_name,
                    category: &r.category,
                    event_count: r.event_count,
                    unique_users: r.unique_users,
                })
                .collect(),
        }),
        Answer::PopularAssetTypes { days, as_of, rows } => serde_json::to_string(&PopularBody {
            days: *days,
            as_of: reads::wire_time(*as_of),
            asset_types: rows
                .iter()
                .map(|r| AssetBody { asset_type: r.asset_type.clone(), generation_count: r.generation_count, unique_creators: r.unique_creators })
                .collect(),
        }),
        Answer::Comparison { period_secs, comparison: c } => serde_json::to_string(&ComparisonBody {
            period: reads::format_span(*period_secs),
            current: c.current_events,
            previous: c.previous_events,
            trend: c.trend,
            trend_percentage: c.trend_percentage,
            current_period: c.current.into(),
            previous_period: c.previous.into(),
        }),
        Answer::Intervals(i) => serde_json::to_string(&IntervalsBody {
            bucket: reads::format_span(i.bucket_secs),
            bucket_seconds: i.bucket_secs,
            period: i.range.into(),
            total_events: i.buckets.iter().map(|(_, n)| n).sum(),
            buckets: i.buckets.iter().map(|(start, count)| BucketBody { start: reads::wire_time(*start), count: *count }).collect(),
        }),
    };
    JsonText(body.expect("wire types serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_added_to_wire_json_keep_it_one_object() {
        let added = JsonText(r#"{"rows":[{"a":"}"}]}"#.into()).with(&[("source", Value::String("tar\"get".into())), ("cached", Value::Bool(false))]);
        assert_eq!(added.parsed(), serde_json::json!({"rows": [{"a": "}"}], "source": "tar\"get", "cached": false}));
        assert_eq!(JsonText("{}".into()).with(&[("cached", Value::Bool(true))]).0, r#"{"cached":true}"#);
    }
}
