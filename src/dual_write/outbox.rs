//! The outbox stream: how far behind the relay is.

use redis::aio::ConnectionManager;
use serde::Serialize;

use crate::legacy::LegacyKeys;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OutboxLag {
    /// Entries in the stream (the relay deletes what it has committed and acknowledged).
    pub entries: u64,
    /// Entries delivered to a relay worker and not yet acknowledged.
    pub pending: u64,
    /// Age of the oldest entry still in the stream.
    pub oldest_age_seconds: Option<f64>,
}

type StreamEntries = Vec<(String, Vec<(String, String)>)>;

pub async fn lag(conn: &mut ConnectionManager, keys: &LegacyKeys, group: &str) -> redis::RedisResult<OutboxLag> {
    let (entries, oldest): (u64, StreamEntries) =
        redis::pipe().cmd("XLEN").arg(&keys.outbox).cmd("XRANGE").arg(&keys.outbox).arg("-").arg("+").arg("COUNT").arg(1).query_async(conn).await?;
    let pending: u64 = match redis::cmd("XPENDING").arg(&keys.outbox).arg(group).query_async::<redis::Value>(conn).await {
        Ok(redis::Value::Array(items)) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        // No stream or no group yet: nothing is pending.
        _ => 0,
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let oldest_age_seconds = oldest.first().and_then(|(id, _)| id.split('-').next()?.parse::<i64>().ok()).map(|ms| ((now_ms - ms).max(0)) as f64 / 1000.0);
    Ok(OutboxLag { entries, pending, oldest_age_seconds })
}
