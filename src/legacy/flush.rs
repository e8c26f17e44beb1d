//! The legacy hourly flush worker: reads an hour of events from the sorted set and
//! upserts `analytics_events(hour, event_name, category, event_count, unique_users)`;
//! recomputes the daily `analytics_asset_popularity` rows of the days it touched.
//!
//! Counts never go down on a re-flush (`GREATEST`): events are append-only, and a
//! re-flush after the cap trimmed part of an hour must not erase what was counted.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::connect::RedisConn;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::LegacyKeys;
use crate::calendar::{day_start, hour_floor, local_day};
use crate::config::LegacySettings;
use crate::event::TargetEvent;
use crate::store::write_error::server_message;
use crate::store::writer::isolate;

/// `asset_type` recorded for `asset_generated` events that carry none.
pub const UNKNOWN_ASSET_TYPE: &str = "unknown";

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct FlushOutcome {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub hours: usize,
    pub events_read: usize,
    /// Members the worker could not read as events (they count nowhere, as in the legacy
    /// worker). Members PostgreSQL cannot store (a NUL character) are among them.
    pub skipped_members: usize,
    pub hourly_rows: usize,
    pub asset_rows: usize,
    /// Rows (hourly and asset) the database refused; logged with the server's reason,
    /// counted here, and skipped so that the other rows of the hour are still written.
    pub rejected_rows: usize,
}

#[derive(Default)]
struct Group {
    count: i64,
    users: HashSet<String>,
}

// Long: the legacy worker's algorithm kept in one piece (read an hour, group, upsert), as
// the legacy system runs it.
/// Flushes the hours in `[from, to)` (both rounded down to hour starts in `tz`).
#[tracing::instrument(skip_all, fields(%from, %to), err)]
pub async fn flush_range(
    redis: &mut RedisConn,
    pool: &PgPool,
    keys: &LegacyKeys,
    legacy: &LegacySettings,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<FlushOutcome> {
    let (from, to) = (hour_floor(from, tz), hour_floor(to, tz));
    let mut outcome = FlushOutcome { from: Some(from), to: Some(to), ..Default::default() };
    if from >= to {
        return Ok(outcome);
    }
    let now_ms = Utc::now().timestamp_millis();
    let mut hourly: BTreeMap<(DateTime<Utc>, String, String), Group> = BTreeMap::new();
    let mut assets: BTreeMap<(NaiveDate, String), Group> = BTreeMap::new();
    // Asset popularity is daily with distinct creators: read from the start of the first day.
    let mut hour = hour_floor(day_start(local_day(from, tz), tz), tz);
    while hour < to {
        let next = hour_floor(hour + Duration::minutes(90), tz);
        let members: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&keys.events)
            .arg(hour.timestamp_millis())
            .arg(format!("({}", next.timestamp_millis()))
            .arg("WITHSCORES")
            .query_async(redis)
            .await?;
        let in_range = hour >= from;
        if in_range {
            outcome.hours += 1;
        }
        for (member, score) in members {
            let Ok(event) = TargetEvent::from_member(&member, score, now_ms) else {
                outcome.skipped_members += usize::from(in_range);
                continue;
            };
            if in_range {
                outcome.events_read += 1;
                let group = hourly.entry((hour, event.event_name.clone(), event.category.clone())).or_default();
                group.count += 1;
                group.users.extend(event.user_id.clone());
            }
            if event.event_name == "asset_generated" {
                let asset_type = event.asset_type().unwrap_or(UNKNOWN_ASSET_TYPE).to_string();
                let group = assets.entry((local_day(event.time, tz), asset_type)).or_default();
                group.count += 1;
                group.users.extend(event.user_id);
            }
        }
        hour = next;
    }
    outcome.hourly_rows = hourly.len();
    outcome.asset_rows = assets.len();
    let hourly: Vec<HourlyRow> = hourly.into_iter().map(|((hour, name, category), g)| (hour, name, category, g.count, g.users.len() as i64)).collect();
    let assets: Vec<AssetRow> = assets.into_iter().map(|((day, asset_type), g)| (day, asset_type, g.count, g.users.len() as i64)).collect();
    let (refused_hourly, refused_assets) = upsert(pool, legacy, &hourly, &assets).await?;
    outcome.hourly_rows -= refused_hourly;
    outcome.asset_rows -= refused_assets;
    outcome.rejected_rows = refused_hourly + refused_assets;
    Ok(outcome)
}

/// `(hour, event_name, category, event_count, unique_users)`.
type HourlyRow = (DateTime<Utc>, String, String, i64, i64);
/// `(day, asset_type, generation_count, unique_creators)`.
type AssetRow = (NaiveDate, String, i64, i64);

/// Upserts the rows in one transaction. A row the database refuses (a data error, such as
/// a name too long for the index) is isolated and skipped, not allowed to fail the hour.
/// Returns how many hourly and asset rows were refused.
async fn upsert(pool: &PgPool, legacy: &LegacySettings, hourly: &[HourlyRow], assets: &[AssetRow]) -> sqlx::Result<(usize, usize)> {
    let mut tx = pool.begin().await?;
    let refused_hourly = upsert_hourly(&mut tx, &legacy.hourly_table, hourly).await?;
    let refused_assets = upsert_assets(&mut tx, &legacy.asset_table, assets).await?;
    tx.commit().await?;
    Ok((refused_hourly, refused_assets))
}

async fn upsert_hourly(conn: &mut PgConnection, table: &str, rows: &[HourlyRow]) -> sqlx::Result<usize> {
    let sql: Arc<str> = format!(
        "INSERT INTO {table} AS t (hour, event_name, category, event_count, unique_users)
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
         ON CONFLICT (hour, event_name, category) DO UPDATE
         SET event_count = GREATEST(t.event_count, EXCLUDED.event_count),
             unique_users = GREATEST(t.unique_users, EXCLUDED.unique_users)"
    )
    .into();
    let refused = isolate(conn, rows, |conn, rows| {
        let sql = sql.clone();
        Box::pin(async move {
            sqlx::query(&sql)
                .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.4).collect::<Vec<_>>())
                .execute(conn)
                .await
        })
    })
    .await?
    .rejected;
    for (i, e) in &refused {
        let (code, message) = server_message(e);
        let (hour, name, category, count, _) = &rows[*i];
        tracing::warn!(%hour, event_name = %name.escape_debug(), category = %category.escape_debug(), events = count, %code, %message, "the legacy hourly table refused a row; skipped");
    }
    Ok(refused.len())
}

async fn upsert_assets(conn: &mut PgConnection, table: &str, rows: &[AssetRow]) -> sqlx::Result<usize> {
    let sql: Arc<str> = format!(
        "INSERT INTO {table} AS t (day, asset_type, generation_count, unique_creators)
         SELECT * FROM UNNEST($1::date[], $2::text[], $3::bigint[], $4::bigint[])
         ON CONFLICT (day, asset_type) DO UPDATE
         SET generation_count = GREATEST(t.generation_count, EXCLUDED.generation_count),
             unique_creators = GREATEST(t.unique_creators, EXCLUDED.unique_creators)"
    )
    .into();
    let refused = isolate(conn, rows, |conn, rows| {
        let sql = sql.clone();
        Box::pin(async move {
            sqlx::query(&sql)
                .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
                .execute(conn)
                .await
        })
    })
    .await?
    .rejected;
    for (i, e) in &refused {
        let (code, message) = server_message(e);
        let (day, asset_type, count, _) = &rows[*i];
        tracing::warn!(%day, asset_type = %asset_type.escape_debug(), generations = count, %code, %message, "the legacy asset table refused a row; skipped");
    }
    Ok(refused.len())
}
