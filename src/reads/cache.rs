//! Cache-aside for read answers in Redis: `{prefix}{cache_prefix}:{source}:{endpoint}:{params}`.
//!
//! The key names the source, so answers never leak across a switch of `read_source`, and
//! holds the normalized, absolute parameters (relative ones were resolved against the
//! request's minute), so equal questions share an entry. The cache is an optimization
//! only: when Redis is slow or down, reads go uncached.

use std::time::Duration;

use crate::connect::RedisConn;

use super::request::Request;
use super::routing::ReadSource;

/// A cache lookup or store never holds a read up for longer than this.
const TIMEOUT: Duration = Duration::from_millis(250);

pub fn key(cache_prefix: &str, source: ReadSource, request: &Request) -> String {
    format!("{cache_prefix}:{}:{}:{}", source.as_str(), request.endpoint(), request.cache_params())
}

/// The cached answer (its wire JSON), if any. Redis errors count as a miss, and so does
/// an entry that is not a JSON object.
pub async fn get(redis: &mut RedisConn, key: &str) -> Option<String> {
    let reply = tokio::time::timeout(TIMEOUT, redis::cmd("GET").arg(key).query_async::<Option<String>>(redis)).await;
    match reply {
        Ok(Ok(Some(text))) => is_json_object(&text).then_some(text),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => unavailable(&e.to_string()),
        Err(_) => unavailable("timed out"),
    }
}

/// Stores an answer's wire JSON for `ttl_secs`; failures are logged, never returned.
pub async fn put(redis: &mut RedisConn, key: &str, json: &str, ttl_secs: u64) {
    let mut set = redis::cmd("SET");
    set.arg(key).arg(json).arg("EX").arg(ttl_secs);
    match tokio::time::timeout(TIMEOUT, set.query_async::<()>(redis)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            unavailable(&e.to_string());
        }
        Err(_) => {
            unavailable("timed out");
        }
    }
}

/// Whether `text` is one JSON object, as this cache stores them (checked without building it).
fn is_json_object(text: &str) -> bool {
    text.starts_with('{') && text.ends_with('}') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn unavailable(reason: &str) -> Option<String> {
    metrics::counter!("tsmigrate_read_cache_errors_total").increment(1);
    tracing::debug!(reason, "read cache unavailable; serving uncached");
    None
}
