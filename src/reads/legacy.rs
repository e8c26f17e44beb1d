//! The legacy read path: raw events from the Redis sorted set (parsed the way the flush
//! worker and the backfill parse them), the legacy hourly table for hours Redis no longer
//! holds, and the legacy `get_popular_asset_types(days)` function.
//!
//! Table and function names come from settings (validated as plain identifiers), so they
//! are spliced into the SQL.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::buckets::bin_start;
use super::context::ReadContext;
use super::request::{AssetRow, EventFilter, GroupTotal, HourRow, RawSummary, ReadError, TimeRange, UserCount};
use crate::calendar::hour_floor;
use crate::event::TargetEvent;
use crate::legacy::reader::{read_page, ScoreCursor};

/// Members read per `ZRANGEBYSCORE` page.
const PAGE: usize = 10_000;

/// The oldest event time Redis holds (the score of its oldest member, valid or not).
pub async fn horizon(ctx: &ReadContext) -> Result<Option<DateTime<Utc>>, ReadError> {
    let mut redis = ctx.redis.clone();
    crate::legacy::reader::redis_horizon(&mut redis, &ctx.shared.keys).await.map_err(ReadError::redis)
}

pub async fn history_hours(ctx: &ReadContext, hours: TimeRange, filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
    let rows: Vec<(DateTime<Utc>, String, String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT hour, event_name, category, event_count, unique_users FROM {}
         WHERE hour >= $1 AND hour < $2 AND ($3::text IS NULL OR event_name = $3) AND ($4::text IS NULL OR category = $4)",
        ctx.shared.settings.legacy.hourly_table
    ))
    .bind(hours.from)
    .bind(hours.to)
    .bind(&filter.event_name)
    .bind(&filter.category)
    .fetch_all(&ctx.legacy_pool().await?)
    .await
    .map_err(|e| ReadError::postgres("the legacy hourly table", e))?;
    Ok(rows
        .into_iter()
        .map(|(hour, event_name, category, event_count, unique_users)| HourRow { hour, event_name, category, event_count, unique_users })
        .collect())
}

/// Calls `visit` for every valid event in `range`, oldest first. Members that are not
/// events are skipped, as the flush worker skips them (the target dead-letters them).
async fn scan(ctx: &ReadContext, range: TimeRange, mut visit: impl FnMut(TargetEvent)) -> Result<(), ReadError> {
    let mut redis = ctx.redis.clone();
    let now_ms = Utc::now().timestamp_millis();
    // Scores are read a little wider and events filtered by their (rounded) time, which is
    // what the target stores.
    let mut cursor = ScoreCursor::at(range.from.timestamp_millis() as f64 - 1.0);
    let until = range.to.timestamp_millis() as f64;
    loop {
        let page = read_page(&mut redis, &ctx.shared.keys.events, cursor, until, PAGE).await.map_err(ReadError::redis)?;
        cursor = cursor.after(&page);
        for (member, score) in &page {
            if let Ok(event) = TargetEvent::from_member(member, *score, now_ms) {
                if range.contains(event.time) {
                    visit(event);
                }
            }
        }
        if page.len() < PAGE {
            return Ok(());
        }
    }
}

#[derive(Default)]
struct Group {
    count: i64,
    users: HashSet<String>,
}

type Groups = BTreeMap<(DateTime<Utc>, String, String), Group>;

/// Per (hour, event_name, category) groups of the raw events in `range` (with their users
/// when `hourly_users`), and (when `all_users`) every distinct user.
async fn groups(
    ctx: &ReadContext,
    range: TimeRange,
    filter: &EventFilter,
    hourly_users: bool,
    all_users: bool,
) -> Result<(Groups, HashSet<String>), ReadError> {
    let tz = ctx.tz();
    let mut groups = Groups::new();
    let mut users = HashSet::new();
    // Hour starts repeat for long runs of events: remember the last one.
    let mut last_hour: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    scan(ctx, range, |event| {
        if !filter.matches(&event.event_name, &event.category) {
            return;
        }
        let hour = match last_hour {
            Some((hour, end)) if hour <= event.time && event.time < end => hour,
            _ => {
                let hour = hour_floor(event.time, tz);
                last_hour = Some((hour, crate::calendar::next_hour(hour, tz)));
                hour
            }
        };
        if all_users {
            users.extend(event.user_id.clone());
        }
        let group = groups.entry((hour, event.event_name, event.category)).or_default();
        group.count += 1;
        if hourly_users {
            group.users.extend(event.user_id);
        }
    })
    .await?;
    Ok((groups, users))
}

pub async fn raw_hours(ctx: &ReadContext, range: TimeRange, filter: &EventFilter) -> Result<Vec<HourRow>, ReadError> {
    let (groups, _) = groups(ctx, range, filter, true, false).await?;
    Ok(groups
        .into_iter()
        .map(|((hour, event_name, category), g)| HourRow { hour, event_name, category, event_count: g.count, unique_users: g.users.len() as i64 })
        .collect())
}

pub async fn raw_summary(ctx: &ReadContext, range: TimeRange, count: UserCount) -> Result<RawSummary, ReadError> {
    let distinct_users = count == UserCount::Distinct;
    let (groups, users) = groups(ctx, range, &EventFilter::default(), count == UserCount::HourlySum, distinct_users).await?;
    let mut totals: HashMap<(String, String), GroupTotal> = HashMap::new();
    for ((_, event_name, category), g) in groups {
        let total = totals.entry((event_name.clone(), category.clone())).or_insert_with(|| GroupTotal { event_name, category, ..Default::default() });
        total.event_count += g.count;
        total.hourly_unique_users += g.users.len() as i64;
    }
    Ok(RawSummary { totals: totals.into_values().collect(), distinct_users: distinct_users.then_some(users.len() as i64) })
}

pub async fn raw_buckets(ctx: &ReadContext, range: TimeRange, bucket_ms: i64) -> Result<BTreeMap<DateTime<Utc>, i64>, ReadError> {
    let mut counts = BTreeMap::new();
    scan(ctx, range, |event| *counts.entry(bin_start(event.time, bucket_ms)).or_default() += 1).await?;
    Ok(counts)
}

/// The legacy reporting function, as reports call it.
pub async fn popular(ctx: &ReadContext, days: u32) -> Result<Vec<AssetRow>, ReadError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!("SELECT * FROM {}($1)", ctx.shared.settings.legacy.popular_function))
        .bind(days as i32)
        .fetch_all(&ctx.legacy_pool().await?)
        .await
        .map_err(|e| ReadError::postgres("the legacy popular-asset-types function", e))?;
    Ok(rows.into_iter().map(|(asset_type, generation_count, unique_creators)| AssetRow { asset_type, generation_count, unique_creators }).collect())
}
