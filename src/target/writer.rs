//! Writes events into `analytics_events_ts`, idempotently: a row is identified by
//! `(event_id, time)` and written once whichever path (relay, tail, backfill) brings it.
//!
//! Two ways in: `insert` (multi-row `INSERT … ON CONFLICT DO NOTHING`, for small
//! relay batches) and `copy` (`COPY`, for backfill pages: near the speed of `psql \copy`;
//! if a page collides with rows already present it is retried through `insert`
//! under a savepoint, so idempotency never depends on luck).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgConnection, PgPool};

use super::StorageMode;
use crate::event::TargetEvent;

const UNIQUE_VIOLATION: &str = "23505";
const NO_PARTITION: &str = "23514";

#[derive(Debug)]
pub struct TargetWriter {
    pool: PgPool,
    mode: StorageMode,
    /// Plain mode: UTC days whose partition is known to exist (saves a round trip per batch).
    known_days: Mutex<HashSet<i64>>,
}

/// How a page went in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Rows new to the target.
    pub inserted: u64,
    /// Rows that were already there (written earlier by another path or run).
    pub already_present: u64,
}

impl TargetWriter {
    pub fn new(pool: PgPool, mode: StorageMode) -> Self {
        Self { pool, mode, known_days: Mutex::new(HashSet::new()) }
    }

    pub fn mode(&self) -> StorageMode {
        self.mode
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Plain mode: makes sure a partition exists for every day the events fall on
    /// (in its own short transaction, before the caller's).
    pub async fn ensure_partitions(&self, events: &[TargetEvent]) -> sqlx::Result<()> {
        if self.mode != StorageMode::Postgres || events.is_empty() {
            return Ok(());
        }
        let missing: Vec<i64> = {
            let known = self.known_days.lock().expect("partition cache");
            let mut days: Vec<i64> = events.iter().map(|e| e.time_ms().div_euclid(86_400_000)).collect();
            days.sort_unstable();
            days.dedup();
            days.into_iter().filter(|d| !known.contains(d)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let (first, last) = (missing[0], *missing.last().expect("non-empty"));
        ensure_partition_range(&self.pool, day_start(first), day_start(last) + Duration::days(1)).await?;
        self.known_days.lock().expect("partition cache").extend(first..=last);
        Ok(())
    }

    /// Inserts rows that are not there yet. Returns how many were new.
    pub async fn insert(&self, conn: &mut PgConnection, events: &[TargetEvent]) -> sqlx::Result<WriteOutcome> {
        if events.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let done = sqlx::query(
            "INSERT INTO analytics_events_ts
                (time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer)
             SELECT * FROM UNNEST($1::timestamptz[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::jsonb[], $8::jsonb[], $9::text[], $10::text[])
             ON CONFLICT DO NOTHING",
        )
        .bind(events.iter().map(|e| e.time).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_name.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.category.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.user_id.as_deref()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.session_id.as_deref()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| &e.properties).collect::<Vec<_>>())
        .bind(events.iter().map(|e| &e.device_info).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.page_url.as_deref()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.referrer.as_deref()).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        let inserted = done.rows_affected();
        Ok(WriteOutcome { inserted, already_present: events.len() as u64 - inserted })
    }

    /// Writes a page with `COPY` inside the caller's transaction; falls back to `insert`
    /// when some rows are already present.
    pub async fn copy(&self, conn: &mut PgConnection, events: &[TargetEvent]) -> sqlx::Result<WriteOutcome> {
        if events.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let payload = encode_copy_text(events);
        sqlx::query("SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
        match copy_raw(conn, payload).await {
            Ok(rows) => {
                sqlx::query("RELEASE SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
                Ok(WriteOutcome { inserted: rows, already_present: 0 })
            }
            Err(e) if is_code(&e, UNIQUE_VIOLATION) || is_code(&e, NO_PARTITION) => {
                sqlx::query("ROLLBACK TO SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
                self.insert(conn, events).await
            }
            Err(e) => Err(e),
        }
    }
}

async fn copy_raw(conn: &mut PgConnection, payload: String) -> sqlx::Result<u64> {
    let mut copy = conn
        .copy_in_raw(
            "COPY analytics_events_ts (time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer) FROM STDIN",
        )
        .await?;
    if let Err(e) = copy.send(payload.as_bytes()).await {
        let _ = copy.abort("tsmigrate: send failed").await;
        return Err(e);
    }
    copy.finish().await
}

fn is_code(e: &sqlx::Error, code: &str) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some(code)
}

fn day_start(day: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(day * 86_400_000).expect("day in range")
}

/// Plain mode: creates the daily partitions covering `[from, to)`. Returns how many were new.
pub async fn ensure_partition_range(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<i32> {
    sqlx::query_scalar("SELECT tsmigrate.ensure_partitions($1, $2)").bind(from).bind(to - Duration::milliseconds(1)).fetch_one(pool).await
}

/// `COPY … FROM STDIN` text format: tab-separated, `\N` for NULL, backslash escapes.
pub fn encode_copy_text(events: &[TargetEvent]) -> String {
    let mut out = String::with_capacity(events.len() * 384);
    for e in events {
        let _ = write!(out, "{}\t{}\t", e.time.format("%Y-%m-%d %H:%M:%S%.3f+00"), e.event_id);
        push_field(&mut out, Some(&e.event_name));
        out.push('\t');
        push_field(&mut out, Some(&e.category));
        out.push('\t');
        push_field(&mut out, e.user_id.as_deref());
        out.push('\t');
        push_field(&mut out, e.session_id.as_deref());
        out.push('\t');
        push_field(&mut out, Some(&e.properties.to_string()));
        out.push('\t');
        push_field(&mut out, Some(&e.device_info.to_string()));
        out.push('\t');
        push_field(&mut out, e.page_url.as_deref());
        out.push('\t');
        push_field(&mut out, e.referrer.as_deref());
        out.push('\n');
    }
    out
}

fn push_field(out: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        out.push_str("\\N");
        return;
    };
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let e = TargetEvent {
            event_id: uuid::Uuid::nil(),
            time: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            event_name: "a\tb".into(),
            category: "c\\d".into(),
            user_id: None,
            session_id: Some("line\nbreak".into()),
            properties: json!({"q": "x\ty"}),
            device_info: json!({}),
            page_url: None,
            referrer: Some("\\N".into()),
        };
        assert_eq!(
            encode_copy_text(&[e]),
            "2023-11-14 22:13:20.123+00\t00000000-0000-0000-0000-000000000000\ta\\tb\tc\\\\d\t\\N\tline\\nbreak\t{\"q\":\"x\\\\ty\"}\t{}\t\\N\t\\\\N\n"
        );
    }
}
