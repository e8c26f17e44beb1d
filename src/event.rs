//! The analytics event as both systems see it.
//!
//! * [`IncomingEvent`] — what the tracker POSTs; validated by [`IncomingEvent::validate`].
//! * the Redis *member* — the event serialized as JSON, scored by its time in epoch ms.
//! * [`TargetEvent`] — one row of `analytics_events_ts`, derived from a member by
//!   [`TargetEvent::from_member`]. Every path into the target (relay, tail, backfill)
//!   goes through that one function, so `event_id` is the same whichever path wrote the row.
//!
//! Identity: an event's `event_id` is its `id` when that is a UUID, a UUIDv5 of the `id`
//! string otherwise, and a UUIDv5 of the exact member bytes when there is no `id` — so two
//! identical members (which Redis stores once) become one row, exactly as in Redis.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Namespace for derived event ids (a fixed random UUID; never change it: ids already written depend on it).
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1f_2a8e_93d4_4b7a_a0e6_0d3f_8c21_7b94);

/// Earliest event time accepted (2000-01-01): older scores are corrupt, not history.
pub const MIN_EVENT_MS: i64 = 946_684_800_000;
/// How far in the future an event may be stamped (clock skew of trackers).
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

/// Why a member could not become a target row. Stored with the raw bytes in `tsmigrate.dead_letter`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterReason {
    #[error("member is not valid UTF-8")]
    NotUtf8,
    #[error("member is not JSON: {0}")]
    NotJson(String),
    #[error("member is JSON but not an object")]
    NotAnObject,
    #[error("field {0:?} is missing or not a non-empty string")]
    MissingField(&'static str),
    #[error("field {0:?} has the wrong type")]
    WrongType(&'static str),
    #[error("score {0} is not a valid event time (epoch ms between 2000 and now + 1 day)")]
    BadScore(String),
    /// PostgreSQL `text` and `jsonb` cannot hold U+0000; found by [`find_nul`] before writing.
    #[error("field {0} holds a NUL character (\\u0000), which PostgreSQL text and jsonb cannot store")]
    Unstorable(String),
    /// The target refused the row itself (a data error, SQLSTATE class 22, 23 or 54).
    #[error("the target rejected the row (SQLSTATE {code}): {message}")]
    RejectedByTarget { code: String, message: String },
    /// Another member with the same `event_id` and time, but other content, is already stored.
    /// The stored version stays; this one is kept here with the stored one in the reason.
    #[error("event {event_id} at {time} is already stored with other content (differs in {fields}); stored version: {stored}")]
    ConflictingContent { event_id: Uuid, time: String, fields: String, stored: String },
}

impl DeadLetterReason {
    /// Short stable code for grouping in reports.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotUtf8 => "not_utf8",
            Self::NotJson(_) => "not_json",
            Self::NotAnObject => "not_object",
            Self::MissingField(_) => "missing_field",
            Self::WrongType(_) => "wrong_type",
            Self::BadScore(_) => "bad_score",
            Self::Unstorable(_) => "unstorable",
            Self::RejectedByTarget { .. } => "rejected_by_target",
            Self::ConflictingContent { .. } => "conflicting_content",
        }
    }
}

/// One row of `analytics_events_ts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetEvent {
    pub event_id: Uuid,
    /// Millisecond precision, from the sorted-set score (what Redis orders and the flush buckets by).
    pub time: DateTime<Utc>,
    pub event_name: String,
    pub category: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub properties: Value,
    pub device_info: Value,
    pub page_url: Option<String>,
    pub referrer: Option<String>,
}

impl TargetEvent {
    /// Interprets one member of the events sorted set. `now_ms` bounds plausible scores.
    pub fn from_member(member: &[u8], score: f64, now_ms: i64) -> Result<TargetEvent, DeadLetterReason> {
        let text = std::str::from_utf8(member).map_err(|_| DeadLetterReason::NotUtf8)?;
        let value: Value = serde_json::from_str(text).map_err(|e| DeadLetterReason::NotJson(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(DeadLetterReason::NotAnObject);
        };
        let time = score_to_time(score, now_ms)?;
        let event_id = match obj.get("id") {
            None | Some(Value::Null) => derived_id(member),
            Some(Value::String(s)) if s.is_empty() => derived_id(member),
            Some(Value::String(s)) => id_from_string(s),
            Some(Value::Number(n)) => id_from_string(&n.to_string()),
            Some(_) => return Err(DeadLetterReason::WrongType("id")),
        };
        let event = TargetEvent {
            event_id,
            time,
            // Fields are moved out of the parsed object, not cloned: this runs once per
            // event in backfill and validation.
            event_name: required_str(&mut obj, "event_name")?,
            category: required_str(&mut obj, "category")?,
            user_id: optional_scalar(&mut obj, "user_id")?,
            session_id: optional_scalar(&mut obj, "session_id")?,
            properties: optional_object(&mut obj, "properties")?,
            device_info: optional_object(&mut obj, "device_info")?,
            page_url: optional_scalar(&mut obj, "page_url")?,
            referrer: optional_scalar(&mut obj, "referrer")?,
        };
        // In JSON text a NUL can only be written `\u0000`: members without that sequence
        // (nearly all) skip the walk over every string.
        if may_hold_nul(member) {
            if let Some(field) = event.nul_field() {
                return Err(DeadLetterReason::Unstorable(field));
            }
        }
        Ok(event)
    }

    /// The first stored field (or JSON key or value inside one) holding a NUL character.
    pub fn nul_field(&self) -> Option<String> {
        let texts = [
            ("event_name", Some(&self.event_name)),
            ("category", Some(&self.category)),
            ("user_id", self.user_id.as_ref()),
            ("session_id", self.session_id.as_ref()),
            ("page_url", self.page_url.as_ref()),
            ("referrer", self.referrer.as_ref()),
        ];
        if let Some((name, _)) = texts.iter().find(|(_, v)| v.is_some_and(|v| v.contains('\0'))) {
            return Some((*name).to_string());
        }
        find_nul("properties", &self.properties).or_else(|| find_nul("device_info", &self.device_info))
    }

    pub fn time_ms(&self) -> i64 {
        self.time.timestamp_millis()
    }

    /// `properties->>'asset_type'` as the aggregates see it.
    pub fn asset_type(&self) -> Option<&str> {
        self.properties.get("asset_type").and_then(Value::as_str)
    }
}

/// The event id of a member that has an `id`.
pub fn id_from_string(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap_or_else(|_| Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("id:{id}").as_bytes()))
}

/// The event id of a member without an `id`: a function of its exact bytes.
pub fn derived_id(member: &[u8]) -> Uuid {
    let mut name = Vec::with_capacity(member.len() + 7);
    name.extend_from_slice(b"member:");
    name.extend_from_slice(member);
    Uuid::new_v5(&EVENT_ID_NAMESPACE, &name)
}

/// Whether JSON text may hold a NUL character: only as the escape `\u0000` (a raw 0x00
/// is not valid JSON). An escaped backslash before `u0000` is a false positive, never a miss.
fn may_hold_nul(json: &[u8]) -> bool {
    json.windows(6).any(|w| w == br"\u0000")
}

/// The path (`properties.a[2]`, a key shown escaped) of the first string, object key or
/// value inside `value` holding a NUL character, which PostgreSQL `text` and `jsonb`
/// reject. `name` is the path of `value` itself.
pub fn find_nul(name: &str, value: &Value) -> Option<String> {
    if !holds_nul(value) {
        return None;
    }
    match value {
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| find_nul(&format!("{name}[{i}]"), item)),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let path = format!("{name}.{}", key.escape_debug());
            if key.contains('\0') {
                Some(path)
            } else {
                find_nul(&path, item)
            }
        }),
        _ => Some(name.to_string()),
    }
}

fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(key, item)| key.contains('\0') || holds_nul(item)),
        _ => false,
    }
}

fn score_to_time(score: f64, now_ms: i64) -> Result<DateTime<Utc>, DeadLetterReason> {
    let bad = || DeadLetterReason::BadScore(score.to_string());
    if !score.is_finite() {
        return Err(bad());
    }
    let ms = score.round() as i64;
    if !(MIN_EVENT_MS..=now_ms + MAX_FUTURE_MS).contains(&ms) {
        return Err(bad());
    }
    Utc.timestamp_millis_opt(ms).single().ok_or_else(bad)
}

fn required_str(obj: &mut Map<String, Value>, field: &'static str) -> Result<String, DeadLetterReason> {
    match obj.remove(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        _ => Err(DeadLetterReason::MissingField(field)),
    }
}

/// Strings stay strings; numbers (old trackers sent numeric user ids) become their decimal text.
fn optional_scalar(obj: &mut Map<String, Value>, field: &'static str) -> Result<Option<String>, DeadLetterReason> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(DeadLetterReason::WrongType(field)),
    }
}

fn optional_object(obj: &mut Map<String, Value>, field: &'static str) -> Result<Value, DeadLetterReason> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(DeadLetterReason::WrongType(field)),
    }
}

/// Parses an event timestamp: RFC 3339 / ISO 8601 text, or epoch milliseconds (number or digit string).
/// Epoch seconds (10 digits or fewer) are accepted too, because old trackers sent them.
pub fn parse_timestamp(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::Number(n) => n.as_f64().and_then(epoch_number_to_time),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&Utc));
            }
            if let Ok(n) = s.parse::<f64>() {
                return epoch_number_to_time(n);
            }
            // ISO 8601 without an offset: read as UTC.
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
                .ok()
                .map(|naive| naive.and_utc())
        }
        _ => None,
    }
}

fn epoch_number_to_time(n: f64) -> Option<DateTime<Utc>> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ms = if n < 1e11 { n * 1000.0 } else { n };
    Utc.timestamp_millis_opt(ms.round() as i64).single()
}

/// An event as the tracker sends it to `POST /api/v1/analytics`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct IncomingEvent {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub event_name: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub user_id: Option<Value>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub properties: Option<Value>,
    #[serde(default)]
    pub device_info: Option<Value>,
    #[serde(default)]
    pub page_url: Option<String>,
    #[serde(default)]
    pub referrer: Option<String>,
    #[serde(default)]
    pub timestamp: Option<Value>,
}

/// An incoming event that passed validation, ready to be written as a member.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedEvent {
    /// The exact sorted-set member (compact JSON).
    pub member: String,
    pub time_ms: i64,
    pub event_name: String,
    pub category: String,
    pub session_id: Option<String>,
}

impl AcceptedEvent {
    /// Gives the event another time (the one its `id` was first accepted at, for a resend
    /// without a timestamp): the member's `timestamp` and the score change together.
    pub fn restamp(&mut self, time_ms: i64) {
        let Some(time) = DateTime::from_timestamp_millis(time_ms) else {
            return;
        };
        if let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(&self.member) {
            obj.insert("timestamp".into(), Value::String(time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
            self.member = Value::Object(obj).to_string();
            self.time_ms = time_ms;
        }
    }
}

/// Limits on incoming events.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub max_event_bytes: usize,
    /// Names and ids (`event_name`, `category`, `id`, `session_id`, `user_id`).
    pub max_field_chars: usize,
    /// `page_url` and `referrer`: real URLs (query strings, tracking parameters) are longer
    /// than names; 2048 is what browsers and proxies commonly accept.
    pub max_url_chars: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self { max_event_bytes: 16 * 1024, max_field_chars: 256, max_url_chars: 2048 }
    }
}

impl IncomingEvent {
    /// One problem per field the target could not store: a NUL character in any string,
    /// JSON keys and values inside `properties` and `device_info` included. Checked at
    /// ingest so that an event accepted here is never refused by the target later.
    pub fn unstorable(&self) -> Vec<String> {
        let texts = [
            ("id", self.id.as_ref()),
            ("event_name", self.event_name.as_ref()),
            ("category", self.category.as_ref()),
            ("session_id", self.session_id.as_ref()),
            ("page_url", self.page_url.as_ref()),
            ("referrer", self.referrer.as_ref()),
        ];
        let mut fields: Vec<String> = texts.iter().filter(|(_, v)| v.is_some_and(|v| v.contains('\0'))).map(|(name, _)| (*name).to_string()).collect();
        for (name, value) in [("user_id", &self.user_id), ("properties", &self.properties), ("device_info", &self.device_info), ("timestamp", &self.timestamp)]
        {
            fields.extend(value.as_ref().and_then(|v| find_nul(name, v)));
        }
        fields.into_iter().map(|field| format!("{field} holds a NUL character (\\u0000), which the target database cannot store")).collect()
    }

    // Long by design: one check per field of the wire format, in the order of the format.
    /// Checks one event and builds its member; `now` is when the batch arrived
    /// (used when the tracker sent no timestamp). Errors name the field and the rule.
    pub fn validate(&self, now: DateTime<Utc>, limits: IngestLimits) -> Result<AcceptedEvent, Vec<String>> {
        let mut problems = self.unstorable();
        let mut text_field = |name: &str, value: &Option<String>, required: bool| -> Option<String> {
            match value.as_deref().map(str::trim) {
                Some("") | None if required => {
                    problems.push(format!("{name} is required"));
                    None
                }
                Some(v) if v.chars().count() > limits.max_field_chars => {
                    problems.push(format!("{name} is longer than {} characters", limits.max_field_chars));
                    None
                }
                Some(v) => Some(v.to_string()),
                None => None,
            }
        };
        let event_name = text_field("event_name", &self.event_name, true);
        let category = text_field("category", &self.category, true);
        let session_id = text_field("session_id", &self.session_id, false);
        let id = text_field("id", &self.id, false);
        let user_id = match &self.user_id {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() <= limits.max_field_chars => Some(Value::String(s.clone())),
            Some(Value::Number(n)) => Some(Value::String(n.to_string())),
            Some(_) => {
                problems.push(format!("user_id must be a string or number of at most {} characters", limits.max_field_chars));
                None
            }
        };
        for (name, value) in [("page_url", &self.page_url), ("referrer", &self.referrer)] {
            if value.as_ref().is_some_and(|v| v.chars().count() > limits.max_url_chars) {
                problems.push(format!("{name} is longer than {} characters", limits.max_url_chars));
            }
        }
        for (name, value) in [("properties", &self.properties), ("device_info", &self.device_info)] {
            if !matches!(value, None | Some(Value::Null) | Some(Value::Object(_))) {
                problems.push(format!("{name} must be an object"));
            }
        }
        let time = match &self.timestamp {
            None | Some(Value::Null) => Some(now),
            Some(v) => match parse_timestamp(v) {
                Some(t) => Some(t),
                None => {
                    problems.push("timestamp must be ISO 8601 text or epoch milliseconds".into());
                    None
                }
            },
        };
        if let Some(t) = time {
            let ms = t.timestamp_millis();
            if ms < MIN_EVENT_MS || ms > now.timestamp_millis() + MAX_FUTURE_MS {
                problems.push("timestamp is before 2000 or more than a day in the future".into());
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let (event_name, category, time) = (event_name.unwrap(), category.unwrap(), time.unwrap());
        let time_ms = time.timestamp_millis();
        // Field order is fixed so that the same event always serializes to the same member.
        let mut obj = Map::new();
        if let Some(id) = id {
            obj.insert("id".into(), Value::String(id));
        }
        obj.insert("event_name".into(), Value::String(event_name.clone()));
        obj.insert("category".into(), Value::String(category.clone()));
        obj.insert("user_id".into(), user_id.unwrap_or(Value::Null));
        obj.insert("session_id".into(), session_id.clone().map(Value::String).unwrap_or(Value::Null));
        obj.insert("properties".into(), self.properties.clone().filter(Value::is_object).unwrap_or_else(|| Value::Object(Map::new())));
        obj.insert("device_info".into(), self.device_info.clone().filter(Value::is_object).unwrap_or_else(|| Value::Object(Map::new())));
        obj.insert("page_url".into(), self.page_url.clone().map(Value::String).unwrap_or(Value::Null));
        obj.insert("referrer".into(), self.referrer.clone().map(Value::String).unwrap_or(Value::Null));
        obj.insert("timestamp".into(), Value::String(time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
        let member = Value::Object(obj).to_string();
        if member.len() > limits.max_event_bytes {
            return Err(vec![format!("event is {} bytes; the limit is {}", member.len(), limits.max_event_bytes)]);
        }
        Ok(AcceptedEvent { member, time_ms, event_name, category, session_id })
    }
}

/// The fields in which two versions of an event differ, under the tolerance rules (shared by
/// validation's diff core and the writer's "already present" check):
/// times at millisecond precision, JSON compared as values (key order and number
/// formatting are not differences: `1.50` = `1.5` = `1.5e0`, `1` = `1.0`).
pub fn changed_fields(redis: &TargetEvent, target: &TargetEvent) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if redis.time_ms() != target.time_ms() {
        fields.push("time");
    }
    let texts = [
        ("event_name", Some(&redis.event_name), Some(&target.event_name)),
        ("category", Some(&redis.category), Some(&target.category)),
        ("user_id", redis.user_id.as_ref(), target.user_id.as_ref()),
        ("session_id", redis.session_id.as_ref(), target.session_id.as_ref()),
        ("page_url", redis.page_url.as_ref(), target.page_url.as_ref()),
        ("referrer", redis.referrer.as_ref(), target.referrer.as_ref()),
    ];
    fields.extend(texts.into_iter().filter(|(_, a, b)| a != b).map(|(name, _, _)| name));
    if !json_equivalent(&redis.properties, &target.properties) {
        fields.push("properties");
    }
    if !json_equivalent(&redis.device_info, &target.device_info) {
        fields.push("device_info");
    }
    fields
}

/// JSON equality with numbers compared by value.
pub fn json_equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equivalent(a, b)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equivalent(v, w))),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_760_000_000_000;

    #[test]
    fn identical_members_get_identical_ids_and_different_members_do_not() {
        let m = br#"{"event_name":"click","category":"ui"}"#;
        let a = TargetEvent::from_member(m, 1_700_000_000_000.0, NOW).unwrap();
        let b = TargetEvent::from_member(m, 1_700_000_000_000.0, NOW).unwrap();
        assert_eq!(a.event_id, b.event_id);
        let c = TargetEvent::from_member(br#"{"event_name":"click","category":"ui","user_id":"u"}"#, 1.7e12, NOW).unwrap();
        assert_ne!(a.event_id, c.event_id);
    }

    #[test]
    fn uuid_ids_are_kept_and_other_ids_are_hashed() {
        let id = "0b7e8f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        let m = format!(r#"{{"id":"{id}","event_name":"x","category":"y"}}"#);
        assert_eq!(TargetEvent::from_member(m.as_bytes(), 1.7e12, NOW).unwrap().event_id.to_string(), id);
        let m2 = br#"{"id":"evt-42","event_name":"x","category":"y"}"#;
        assert_eq!(TargetEvent::from_member(m2, 1.7e12, NOW).unwrap().event_id, id_from_string("evt-42"));
    }

    #[test]
    fn bad_members_are_dead_letters_with_reasons() {
        let cases: [(&[u8], &str); 5] = [
            (b"not json", "not_json"),
            (b"[1,2]", "not_object"),
            (br#"{"category":"y"}"#, "missing_field"),
            (br#"{"event_name":"x","category":"y","properties":"str"}"#, "wrong_type"),
            (&[0xff, 0xfe], "not_utf8"),
        ];
        for (member, code) in cases {
            assert_eq!(TargetEvent::from_member(member, 1.7e12, NOW).unwrap_err().code(), code);
        }
        assert_eq!(TargetEvent::from_member(br#"{"event_name":"x","category":"y"}"#, 12.0, NOW).unwrap_err().code(), "bad_score");
    }

    #[test]
    fn numeric_user_ids_become_text() {
        let e = TargetEvent::from_member(br#"{"event_name":"x","category":"y","user_id":42}"#, 1.7e12, NOW).unwrap();
        assert_eq!(e.user_id.as_deref(), Some("42"));
    }

    #[test]
    fn timestamps_parse_in_every_legacy_shape() {
        let expect = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        assert_eq!(parse_timestamp(&json!(1_700_000_000_123i64)), Some(expect));
        assert_eq!(parse_timestamp(&json!("1700000000123")), Some(expect));
        assert_eq!(parse_timestamp(&json!("2023-11-14T22:13:20.123Z")), Some(expect));
        assert_eq!(parse_timestamp(&json!("2023-11-14T23:13:20.123+01:00")), Some(expect));
        assert_eq!(parse_timestamp(&json!(1_700_000_000)), Some(Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()));
        assert_eq!(parse_timestamp(&json!("yesterday")), None);
        assert_eq!(parse_timestamp(&json!(true)), None);
    }

    #[test]
    fn validation_names_each_problem() {
        let now = Utc.timestamp_millis_opt(NOW).unwrap();
        let bad = IncomingEvent { category: Some("c".into()), timestamp: Some(json!("soon")), properties: Some(json!(3)), ..Default::default() };
        let problems = bad.validate(now, IngestLimits::default()).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        let good = IncomingEvent { event_name: Some("click".into()), category: Some("ui".into()), timestamp: Some(json!(NOW - 5)), ..Default::default() };
        let accepted = good.validate(now, IngestLimits::default()).unwrap();
        assert_eq!(accepted.time_ms, NOW - 5);
        let row = TargetEvent::from_member(accepted.member.as_bytes(), accepted.time_ms as f64, NOW).unwrap();
        assert_eq!(row.event_name, "click");
        assert_eq!(row.time_ms(), NOW - 5);
    }

    #[test]
    fn nul_characters_anywhere_the_target_stores_make_a_dead_letter_naming_the_field() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"event_name":"a\u0000b","category":"y"}"#, "event_name"),
            (br#"{"event_name":"x","category":"y","user_id":"u\u0000"}"#, "user_id"),
            (br#"{"event_name":"x","category":"y","properties":{"k\u0000":1}}"#, "properties.k\\0"),
            (br#"{"event_name":"x","category":"y","properties":{"tags":["ok","b\u0000"]}}"#, "properties.tags[1]"),
            (br#"{"event_name":"x","category":"y","device_info":{"os":{"name":"\u0000"}}}"#, "device_info.os.name"),
        ];
        for (member, field) in cases {
            match TargetEvent::from_member(member, 1.7e12, NOW) {
                Err(DeadLetterReason::Unstorable(f)) => assert_eq!(f, field, "{}", String::from_utf8_lossy(member)),
                other => panic!("{} -> {other:?}", String::from_utf8_lossy(member)),
            }
        }
        // An escaped backslash followed by "u0000" is six ordinary characters.
        let fine = TargetEvent::from_member(br#"{"event_name":"a\\u0000","category":"y"}"#, 1.7e12, NOW).unwrap();
        assert_eq!(fine.event_name, "a\\u0000");
        // The id is not stored (only hashed), but ingest refuses a NUL there too.
        assert!(TargetEvent::from_member(br#"{"id":"a\u0000","event_name":"x","category":"y"}"#, 1.7e12, NOW).is_ok());
    }

    #[test]
    fn ingest_refuses_nul_characters_and_names_each_field() {
        let now = Utc.timestamp_millis_opt(NOW).unwrap();
        let bad = IncomingEvent {
            event_name: Some("a\0b".into()),
            category: Some("ui".into()),
            user_id: Some(json!("u\u{0}")),
            properties: Some(json!({"ok": "x", "nested": {"k\u{0}": 1}})),
            device_info: Some(json!({"list": ["\u{0}"]})),
            page_url: Some("/\0".into()),
            ..Default::default()
        };
        let problems = bad.validate(now, IngestLimits::default()).unwrap_err();
        let named: Vec<&str> = problems.iter().map(|p| p.split(' ').next().unwrap()).collect();
        assert_eq!(named, vec!["event_name", "page_url", "user_id", "properties.nested.k\\0", "device_info.list[0]"], "{problems:?}");
        assert!(problems.iter().all(|p| p.contains("NUL")), "{problems:?}");
    }

    #[test]
    fn restamping_changes_the_member_time_and_score_together() {
        let now = Utc.timestamp_millis_opt(NOW).unwrap();
        let incoming = IncomingEvent { id: Some("evt-1".into()), event_name: Some("click".into()), category: Some("ui".into()), ..Default::default() };
        let mut later = incoming.validate(now + chrono::Duration::seconds(5), IngestLimits::default()).unwrap();
        let first = incoming.validate(now, IngestLimits::default()).unwrap();
        assert_ne!(later, first);
        later.restamp(NOW);
        assert_eq!(later, first, "a resend stamped with the first time is the identical member");
    }

    #[test]
    fn urls_have_a_length_limit_too() {
        let now = Utc.timestamp_millis_opt(NOW).unwrap();
        let limits = IngestLimits::default();
        let event = |url: String| IncomingEvent {
            event_name: Some("view".into()),
            category: Some("nav".into()),
            page_url: Some(url.clone()),
            referrer: Some(url),
            ..Default::default()
        };
        let long = format!("https://example.com/?q={}", "x".repeat(limits.max_url_chars));
        let problems = event(long).validate(now, limits).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("page_url is longer than 2048"), "{problems:?}");
        assert!(problems[1].starts_with("referrer is longer than 2048"), "{problems:?}");
        let fits = format!("https://example.com/?q={}", "x".repeat(limits.max_url_chars - 30));
        assert!(event(fits).validate(now, limits).is_ok());
    }
}
