//! What `tsmigrate assess` reads, and only reads: bounded reads of Redis (`ZCARD`, the oldest
//! and newest member, `ZCOUNT` per minute and per second, the newest members up to
//! `assess.max_read_events`, `INFO`, `CONFIG GET save`, `MEMORY USAGE`), `SELECT`s of the legacy
//! hourly table over the window, the legacy read queries (timed), and on the target its
//! capabilities and a sample of the events copied into a table of the target's shape inside a
//! transaction that is rolled back. Nothing is written to Redis, the legacy tables or `tsmigrate.*`.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;

use crate::connect::RedisConn;
use crate::context::Context;
use crate::dual_write::durability::{self, OutboxDurability};
use crate::event::TargetEvent;
use crate::legacy::reader::{read_page, ScoreCursor};
use crate::reads::{ReadContext, ReadSource, Request, TimeRange};
use crate::store::capability::Capabilities;
use crate::store::sample::SampleStorage;
use crate::store::StorageMode;

/// Members read per `ZRANGEBYSCORE` page.
const PAGE: usize = 10_000;
/// Per-minute `ZCOUNT`s cover at most the newest week Redis holds.
const MAX_MINUTES: i64 = 7 * 24 * 60;
/// `ZCOUNT`s sent per pipeline.
const PIPELINE: usize = 1_000;
/// The legacy reporting function and the comparison are asked about this many days, as the
/// seed's reports ask.
pub const REPORT_DAYS: u32 = 30;

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub window: Window,
    pub volume: Volume,
    pub redis: RedisFigures,
    pub queries: Vec<QueryTiming>,
    pub target: TargetFigures,
}

/// The period measured: the `--days` before the end of the last hour the legacy flush wrote
/// (or, with no hourly rows, before the newest event in Redis).
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub days_asked: u32,
    /// Days of the window that hold data (the legacy table may start later than `from`).
    pub days_covered: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Peak {
    pub at: DateTime<Utc>,
    pub events: i64,
    pub events_per_sec: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DayCount {
    pub day: NaiveDate,
    pub events: i64,
}

/// Event volume over the window.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    /// `legacy hourly table`, `redis sorted set`, or `none` (no data anywhere).
    pub source: &'static str,
    pub events: i64,
    pub events_per_day: Option<f64>,
    /// Whole days (bucket time zone) of the window, oldest first.
    pub days: Vec<DayCount>,
    /// Linear trend of the whole days, as a fraction of the mean per week (0.1 = +10 %/week);
    /// `None` with fewer than 3 whole days.
    pub growth_per_week: Option<f64>,
    /// The busiest hour of the legacy table in the window.
    pub peak_hour: Option<Peak>,
    /// Events of the window Redis no longer holds: they exist only as hourly aggregates.
    pub hourly_only_events: Option<i64>,
    pub hourly_only_per_day: Option<f64>,
    /// Rows per hour of the legacy hourly table (event_name × category groups).
    pub groups_per_hour: Option<f64>,
    /// Bytes a row of the legacy hourly table takes on disk (indexes included).
    pub hourly_row_bytes: Option<f64>,
}

impl Volume {
    /// Nothing measured.
    pub fn none() -> Volume {
        Volume {
            source: "none",
            events: 0,
            events_per_day: None,
            days: vec![],
            growth_per_week: None,
            peak_hour: None,
            hourly_only_events: None,
            hourly_only_per_day: None,
            groups_per_hour: None,
            hourly_row_bytes: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SizeDistribution {
    pub min: u64,
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UniqueUsers {
    pub users: u64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// False when Redis holds (or the read covered) less than 24 hours: a lower bound then.
    pub full_day: bool,
    /// Mean distinct users per minute and per hour among the events read.
    pub per_minute: f64,
    pub per_hour: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisFigures {
    pub members: u64,
    pub cap: u64,
    pub at_cap: bool,
    pub oldest: Option<DateTime<Utc>>,
    pub newest: Option<DateTime<Utc>>,
    /// Newest minus oldest member.
    pub held_secs: Option<f64>,
    /// How long an event stays before the cap trims it.
    pub holding_secs: Option<f64>,
    /// `measured` (the set is at its cap) or `projected` (below its cap: cap / events a second).
    pub holding_basis: &'static str,
    /// `MEMORY USAGE` of the events key (Redis samples it); `None` when refused.
    pub events_key_bytes: Option<u64>,
    pub durability: OutboxDurability,
    pub peak_minute: Option<Peak>,
    pub peak_second: Option<Peak>,
    pub members_read: u64,
    /// More members were in the window than `assess.max_read_events`: the oldest were not read.
    pub read_truncated: bool,
    pub read_secs: f64,
    /// Members read that are not events (the target would dead-letter them).
    pub not_events: u64,
    pub member_bytes: Option<SizeDistribution>,
    pub unique_users: Option<UniqueUsers>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryTiming {
    pub name: &'static str,
    /// What was asked, as the read API asks it of the legacy path.
    pub request: String,
    pub runs: u32,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetFigures {
    pub capabilities: Capabilities,
    pub mode: StorageMode,
    /// Why this mode (the setting, what the server can do).
    pub mode_reason: String,
    /// `target.mode = "timescaledb"` on a server without it (prepare would refuse).
    pub mode_error: Option<String>,
    pub shared_buffers_bytes: Option<i64>,
    pub sample: Option<SampleStorage>,
    pub sample_error: Option<String>,
}

/// What `assess` reads, with its bounds, for the output and `--help`.
pub fn reads(settings: &crate::config::Settings, days: u32) -> Vec<String> {
    let a = &settings.assess;
    vec![
        format!("Redis: ZCARD, the oldest and newest member, ZCOUNT per minute (the newest {} days held at most) and per second of the busiest minute, INFO, CONFIG GET save, MEMORY USAGE of the events key", MAX_MINUTES / 1440),
        format!("Redis: the newest members of the window, at most {} (assess.max_read_events), in pages of {PAGE} (ZRANGEBYSCORE … LIMIT)", a.max_read_events),
        format!("legacy database: SELECTs of {} over the {days} days of the window, and its size", settings.legacy.hourly_table),
        format!(
            "legacy read path: {}({REPORT_DAYS}), the summary of the window's last day and the {REPORT_DAYS}-day comparison, each {} times",
            settings.legacy.popular_function, a.query_runs
        ),
        format!("target: its version and extensions; {} of the events read copied into a table of the target's shape in a transaction that is rolled back", a.sample_events),
    ]
}

/// Reads everything, bounded. Errors only when a server cannot be reached or refuses a read
/// everything depends on; a query that fails is reported in its timing.
pub async fn measure(ctx: &Context, days: u32) -> anyhow::Result<Measured> {
    let settings = ctx.settings.clone();
    let legacy = ctx.legacy().await?;
    let mut redis = ctx.redis().await?;
    let tz = settings.target.timezone();
    let hourly = &settings.legacy.hourly_table;

    // The window ends where the legacy flush ended (or at the newest event Redis holds).
    let last_hour: Option<DateTime<Utc>> = sqlx::query_scalar(&format!("SELECT max(hour) FROM {hourly}")).fetch_one(&legacy).await.map_err(|e| {
        anyhow::anyhow!("cannot read the legacy hourly table {hourly}: {e}\n  next: check legacy.hourly_table and database.legacy_url (tsmigrate config show)")
    })?;
    let (members, oldest, newest) = set_bounds(&mut redis, &ctx.keys.events).await?;
    let to = match (last_hour, newest) {
        (Some(hour), _) => crate::calendar::next_hour(hour, tz),
        (None, Some(newest)) => newest + Duration::milliseconds(1),
        (None, None) => crate::calendar::hour_floor(Utc::now(), tz),
    };
    let from = to - Duration::days(i64::from(days));

    let hours: Vec<(DateTime<Utc>, i64, i64)> =
        sqlx::query_as(&format!("SELECT hour, sum(event_count)::bigint, count(*) FROM {hourly} WHERE hour >= $1 AND hour < $2 GROUP BY hour ORDER BY hour"))
            .bind(from)
            .bind(to)
            .fetch_all(&legacy)
            .await?;
    // The planner's row estimate; a table never analyzed is counted.
    let (table_bytes, table_rows): (i64, i64) = sqlx::query_as(&format!(
        "SELECT pg_total_relation_size(c.oid)::bigint, CASE WHEN c.reltuples > 0 THEN c.reltuples::bigint ELSE (SELECT count(*) FROM {hourly}) END
         FROM pg_class c WHERE c.oid = '{hourly}'::regclass"
    ))
    .fetch_one(&legacy)
    .await?;
    let in_redis_window: u64 =
        redis::cmd("ZCOUNT").arg(&ctx.keys.events).arg(from.timestamp_millis()).arg(format!("({}", to.timestamp_millis())).query_async(&mut redis).await?;
    let mut volume = volume_of(&hours, from, to, tz, in_redis_window);
    volume.hourly_row_bytes = (table_rows > 0).then(|| table_bytes as f64 / table_rows as f64);
    let days_covered = match hours.first() {
        Some((first, ..)) => (to - (*first).max(from)).num_seconds() as f64 / 86_400.0,
        None => match (oldest, newest) {
            (Some(o), Some(n)) => ((n - o.max(from)).num_seconds() as f64 / 86_400.0).max(1.0 / 24.0),
            _ => 0.0,
        },
    };
    if hours.is_empty() && members > 0 {
        volume.source = "redis sorted set";
        volume.events = in_redis_window as i64;
        volume.events_per_day = (days_covered > 0.0).then(|| in_redis_window as f64 / days_covered);
    }
    if let (Some(events), true) = (volume.hourly_only_events, days_covered > 0.0) {
        volume.hourly_only_per_day = Some(events as f64 / days_covered);
    }

    let redis_figures = redis_figures(ctx, &mut redis, from, (members, oldest, newest), volume.events_per_day).await?;
    let (redis_figures, events) = redis_figures;
    let queries = time_queries(ctx, redis.clone(), to).await;
    let target = target_figures(ctx, &events).await?;
    Ok(Measured { window: Window { from, to, days_asked: days, days_covered }, volume, redis: redis_figures, queries, target })
}

async fn set_bounds(redis: &mut RedisConn, key: &str) -> anyhow::Result<(u64, Option<DateTime<Utc>>, Option<DateTime<Utc>>)> {
    type Ends = Vec<(Vec<u8>, f64)>;
    // The oldest and newest members that can be event times (not -inf, +inf, far future).
    let (low, high) = crate::legacy::reader::valid_score_bounds(Utc::now().timestamp_millis());
    let (members, first, last): (u64, Ends, Ends) = redis::pipe()
        .cmd("ZCARD")
        .arg(key)
        .cmd("ZRANGEBYSCORE")
        .arg(key)
        .arg(low)
        .arg(high)
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(1)
        .cmd("ZREVRANGEBYSCORE")
        .arg(key)
        .arg(high)
        .arg(low)
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(1)
        .query_async(redis)
        .await?;
    let time = |ends: &Ends| ends.first().and_then(|(_, s)| DateTime::from_timestamp_millis(s.round() as i64));
    Ok((members, time(&first), time(&last)))
}

/// The volume figures of the legacy table's hours in `[from, to)`. Pure.
pub fn volume_of(hours: &[(DateTime<Utc>, i64, i64)], from: DateTime<Utc>, to: DateTime<Utc>, tz: chrono_tz::Tz, in_redis: u64) -> Volume {
    let events: i64 = hours.iter().map(|h| h.1).sum();
    let Some(first) = hours.first().map(|h| h.0.max(from)) else {
        return Volume::none();
    };
    let covered = (to - first).num_seconds() as f64 / 86_400.0;
    let mut per_day: std::collections::BTreeMap<NaiveDate, i64> = Default::default();
    for (hour, count, _) in hours {
        *per_day.entry(crate::calendar::local_day(*hour, tz)).or_default() += count;
    }
    // Whole days only: the day starts at or after the first hour and ends by `to`.
    let days: Vec<DayCount> = per_day
        .into_iter()
        .filter(|(day, _)| crate::calendar::day_start(*day, tz) >= first && crate::calendar::next_day(crate::calendar::day_start(*day, tz), tz) <= to)
        .map(|(day, events)| DayCount { day, events })
        .collect();
    let peak_hour = hours.iter().max_by_key(|h| (h.1, std::cmp::Reverse(h.0))).map(|h| Peak { at: h.0, events: h.1, events_per_sec: h.1 as f64 / 3600.0 });
    let groups_per_hour = hours.iter().map(|h| h.2 as f64).sum::<f64>() / hours.len() as f64;
    Volume {
        source: "legacy hourly table",
        events,
        events_per_day: (covered > 0.0).then(|| events as f64 / covered),
        growth_per_week: growth_per_week(&days),
        days,
        peak_hour,
        hourly_only_events: Some((events - in_redis as i64).max(0)),
        hourly_only_per_day: None,
        groups_per_hour: Some(groups_per_hour),
        hourly_row_bytes: None,
    }
}

/// The least-squares slope of the daily counts, per week, as a fraction of their mean. Pure.
pub fn growth_per_week(days: &[DayCount]) -> Option<f64> {
    if days.len() < 3 {
        return None;
    }
    let n = days.len() as f64;
    let xs: Vec<f64> = days.iter().map(|d| (d.day - days[0].day).num_days() as f64).collect();
    let ys: Vec<f64> = days.iter().map(|d| d.events as f64).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    (sxx > 0.0 && my > 0.0).then(|| sxy / sxx * 7.0 / my)
}

/// Nearest-rank percentile of sorted values. Pure.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// The busiest of `counts` (bucket start, events) for buckets of `secs`. Pure.
pub fn peak_of(counts: impl IntoIterator<Item = (DateTime<Utc>, i64)>, secs: f64) -> Option<Peak> {
    counts.into_iter().filter(|(_, n)| *n > 0).max_by_key(|(at, n)| (*n, std::cmp::Reverse(*at))).map(|(at, events)| Peak {
        at,
        events,
        events_per_sec: events as f64 / secs,
    })
}

type Bounds = (u64, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

async fn redis_figures(
    ctx: &Context,
    redis: &mut RedisConn,
    from: DateTime<Utc>,
    (members, oldest, newest): Bounds,
    events_per_day: Option<f64>,
) -> anyhow::Result<(RedisFigures, Vec<TargetEvent>)> {
    let settings = &ctx.settings;
    let key = &ctx.keys.events;
    let cap = settings.redis.event_cap;
    let at_cap = members >= cap;
    let held_secs = match (oldest, newest) {
        (Some(o), Some(n)) => Some((n - o).num_milliseconds() as f64 / 1000.0),
        _ => None,
    };
    let (holding_secs, holding_basis) =
        if at_cap { (held_secs, "measured") } else { (events_per_day.filter(|r| *r > 0.0).map(|r| cap as f64 / r * 86_400.0), "projected") };
    let events_key_bytes: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(key).query_async(redis).await.ok().flatten();
    let durability = durability::inspect_or_warn(redis).await;

    // Per minute over the newest week held, then per second in the busiest minute.
    let (mut peak_minute, mut peak_second) = (None, None);
    if let (Some(o), Some(n)) = (oldest, newest) {
        let last = crate::calendar::minute_floor(n);
        let first = crate::calendar::minute_floor(o).max(last - Duration::minutes(MAX_MINUTES - 1));
        let minutes: Vec<DateTime<Utc>> = std::iter::successors(Some(first), |m| Some(*m + Duration::minutes(1))).take_while(|m| *m <= last).collect();
        let counts = zcounts(redis, key, &minutes, 60_000).await?;
        peak_minute = peak_of(minutes.iter().copied().zip(counts), 60.0);
        if let Some(minute) = &peak_minute {
            let seconds: Vec<DateTime<Utc>> = (0..60).map(|s| minute.at + Duration::seconds(s)).collect();
            let counts = zcounts(redis, key, &seconds, 1_000).await?;
            peak_second = peak_of(seconds.iter().copied().zip(counts), 1.0);
        }
    }

    // The newest members of the window, bounded.
    let started = Instant::now();
    let mut bulk = ctx.redis_bulk().await?;
    let max_read = settings.assess.max_read_events.max(1);
    let window_count: u64 = redis::cmd("ZCOUNT").arg(key).arg(from.timestamp_millis()).arg("+inf").query_async(&mut bulk).await?;
    let read_truncated = window_count > max_read as u64;
    let start = if read_truncated {
        let nth: Vec<(Vec<u8>, f64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(key)
            .arg("+inf")
            .arg(from.timestamp_millis())
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(max_read - 1)
            .arg(1)
            .query_async(&mut bulk)
            .await?;
        nth.first().map(|(_, s)| *s).unwrap_or(from.timestamp_millis() as f64)
    } else {
        from.timestamp_millis() as f64
    };
    let mut cursor = ScoreCursor::at(start);
    let mut read: Vec<(Vec<u8>, f64)> = Vec::new();
    loop {
        let limit = PAGE.min(max_read - read.len());
        let page = read_page(&mut bulk, key, cursor, f64::MAX, limit).await?;
        cursor = cursor.after(&page);
        let full = page.len() == limit;
        read.extend(page);
        if !full || read.len() >= max_read {
            break;
        }
    }
    let read_secs = started.elapsed().as_secs_f64();
    let now_ms = Utc::now().timestamp_millis();
    let mut sizes: Vec<u64> = read.iter().map(|(m, _)| m.len() as u64).collect();
    sizes.sort_unstable();
    let member_bytes = (!sizes.is_empty()).then(|| SizeDistribution {
        min: sizes[0],
        p50: percentile(&sizes, 50.0).unwrap_or_default(),
        p95: percentile(&sizes, 95.0).unwrap_or_default(),
        max: *sizes.last().unwrap_or(&0),
        mean: sizes.iter().sum::<u64>() as f64 / sizes.len() as f64,
    });
    let mut events = Vec::with_capacity(read.len());
    let mut not_events = 0;
    for (member, score) in &read {
        match TargetEvent::from_member(member, *score, now_ms) {
            Ok(event) => events.push(event),
            Err(_) => not_events += 1,
        }
    }
    // The busiest second among the members read (exact over them), or of the busiest minute.
    let mut per_second: HashMap<i64, i64> = HashMap::new();
    for (_, score) in &read {
        *per_second.entry((score.round() as i64).div_euclid(1000)).or_default() += 1;
    }
    let read_peak = peak_of(per_second.into_iter().filter_map(|(s, n)| Some((DateTime::from_timestamp(s, 0)?, n))), 1.0);
    peak_second = [peak_second, read_peak].into_iter().flatten().max_by_key(|p| (p.events, std::cmp::Reverse(p.at)));
    let unique_users = unique_users(&events);
    let figures = RedisFigures {
        members,
        cap,
        at_cap,
        oldest,
        newest,
        held_secs,
        holding_secs,
        holding_basis,
        events_key_bytes,
        durability,
        peak_minute,
        peak_second,
        members_read: read.len() as u64,
        read_truncated,
        read_secs,
        not_events,
        member_bytes,
        unique_users,
    };
    Ok((figures, events))
}

/// `ZCOUNT` of each bucket `[start, start + width_ms)`, pipelined.
async fn zcounts(redis: &mut RedisConn, key: &str, starts: &[DateTime<Utc>], width_ms: i64) -> redis::RedisResult<Vec<i64>> {
    let mut out = Vec::with_capacity(starts.len());
    for chunk in starts.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for start in chunk {
            let ms = start.timestamp_millis();
            // Scores round to the millisecond as the target stores them.
            pipe.cmd("ZCOUNT").arg(key).arg(ms as f64 - 0.5).arg(format!("({}", (ms + width_ms) as f64 - 0.5));
        }
        let counts: Vec<i64> = pipe.query_async(redis).await?;
        out.extend(counts);
    }
    Ok(out)
}

/// Distinct users in the last 24 hours of `events` (oldest first), and per minute and hour. Pure.
pub fn unique_users(events: &[TargetEvent]) -> Option<UniqueUsers> {
    let (first, last) = (events.first()?.time, events.iter().map(|e| e.time).max()?);
    let from = last - Duration::hours(24);
    let users: HashSet<&str> = events.iter().filter(|e| e.time > from).filter_map(|e| e.user_id.as_deref()).collect();
    let mean_per = |bucket_ms: i64| {
        let mut buckets: HashMap<i64, HashSet<&str>> = HashMap::new();
        for e in events {
            if let Some(user) = e.user_id.as_deref() {
                buckets.entry(e.time.timestamp_millis().div_euclid(bucket_ms)).or_default().insert(user);
            }
        }
        if buckets.is_empty() {
            0.0
        } else {
            buckets.values().map(|s| s.len() as f64).sum::<f64>() / buckets.len() as f64
        }
    };
    Some(UniqueUsers {
        users: users.len() as u64,
        from: from.max(first),
        to: last,
        full_day: first <= from,
        per_minute: mean_per(60_000),
        per_hour: mean_per(3_600_000),
    })
}

/// Times the legacy read path's answers, as the read API asks them, `assess.query_runs` times each.
async fn time_queries(ctx: &Context, redis: RedisConn, to: DateTime<Utc>) -> Vec<QueryTiming> {
    // The legacy path reads the legacy tables through the Context's legacy pool.
    let read = ReadContext::new(ctx.clone(), redis, crate::calendar::minute_floor(Utc::now()), Default::default());
    let period = Duration::days(i64::from(REPORT_DAYS));
    let popular = &ctx.settings.legacy.popular_function;
    let asked: Vec<(&'static str, String, Result<Request, String>)> = vec![
        ("popular_asset_types", format!("{popular}({REPORT_DAYS})"), Request::popular(REPORT_DAYS, read.now)),
        (
            "summary",
            format!("summary {} .. {}", crate::human::utc(to - Duration::days(1)), crate::human::utc(to)),
            Ok(Request::Summary(TimeRange { from: to - Duration::days(1), to })),
        ),
        ("comparison", format!("comparison period={REPORT_DAYS}d to {}", crate::human::utc(to)), Request::comparison(period, to)),
    ];
    let mut out = Vec::new();
    for (name, request_text, request) in asked {
        let runs = ctx.settings.assess.query_runs.max(1);
        let mut timing = QueryTiming { name, request: request_text, runs, p50_ms: None, p95_ms: None, max_ms: None, error: None };
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                timing.error = Some(e);
                out.push(timing);
                continue;
            }
        };
        let mut ms = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            match ReadSource::Legacy.answer(&read, &request).await {
                Ok(_) => ms.push(started.elapsed().as_secs_f64() * 1000.0),
                Err(e) => {
                    timing.error = Some(format!("{e}"));
                    break;
                }
            }
        }
        ms.sort_by(f64::total_cmp);
        timing.p50_ms = percentile(&ms, 50.0);
        timing.p95_ms = percentile(&ms, 95.0);
        timing.max_ms = ms.last().copied();
        out.push(timing);
    }
    out
}

async fn target_figures(ctx: &Context, events: &[TargetEvent]) -> anyhow::Result<TargetFigures> {
    let capabilities = Capabilities::detect(&ctx.target).await?;
    let choice = ctx.settings.target.mode;
    let (mode, mode_error) = match capabilities.choose(choice) {
        Ok(mode) => (mode, None),
        Err(e) => (StorageMode::Postgres, Some(e.to_string())),
    };
    let mode_reason = match (choice, mode) {
        (crate::config::ModeChoice::Postgres, _) => "target.mode = \"postgres\"".to_string(),
        (_, StorageMode::Timescaledb) => format!(
            "TimescaleDB {} is usable on the target",
            capabilities.timescaledb_installed.as_deref().or(capabilities.timescaledb_available.as_deref()).unwrap_or("?")
        ),
        (_, StorageMode::Postgres) if capabilities.timescaledb_available.is_some() => {
            "TimescaleDB is packaged on the target but not in shared_preload_libraries: plain PostgreSQL".into()
        }
        (_, StorageMode::Postgres) => "TimescaleDB is not available on the target: plain PostgreSQL".into(),
    };
    let shared_buffers_bytes: Option<i64> = sqlx::query_scalar("SELECT pg_size_bytes(current_setting('shared_buffers'))").fetch_one(&ctx.target).await.ok();
    let wanted = ctx.settings.assess.sample_events.max(1);
    let sample_events = &events[events.len().saturating_sub(wanted)..];
    let (sample, sample_error) = if sample_events.is_empty() {
        (None, Some("no events to sample: Redis holds none in the window".to_string()))
    } else {
        match ctx.store(mode).measure_sample(sample_events).await {
            Ok(sample) => (Some(sample), None),
            Err(e) => (None, Some(ctx.settings.database.url.scrub(&e.to_string()))),
        }
    };
    Ok(TargetFigures { capabilities, mode, mode_reason, mode_error, shared_buffers_bytes, sample, sample_error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: u32, events: i64) -> DayCount {
        DayCount { day: NaiveDate::from_ymd_opt(2026, 1, d).unwrap(), events }
    }

    #[test]
    fn growth_is_the_slope_per_week_over_the_mean() {
        assert_eq!(growth_per_week(&[day(1, 100), day(2, 100)]), None, "two days are no trend");
        assert_eq!(growth_per_week(&[day(1, 100), day(2, 100), day(3, 100)]), Some(0.0));
        let g = growth_per_week(&[day(1, 90), day(2, 100), day(3, 110)]).unwrap();
        assert!((g - 0.7).abs() < 1e-9, "+10 a day on a mean of 100 is +70 % a week: {g}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(percentile(&v, 50.0), Some(5));
        assert_eq!(percentile(&v, 95.0), Some(10));
        assert_eq!(percentile::<u8>(&[], 50.0), None);
    }

    #[test]
    fn volume_counts_whole_days_and_the_events_redis_no_longer_holds() {
        let tz = chrono_tz::Tz::UTC;
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let to = from + Duration::days(3);
        // The table starts at noon on the first day: 2.5 days covered, 2 whole days.
        let hours: Vec<(DateTime<Utc>, i64, i64)> = (12..72).map(|h| (from + Duration::hours(h), if h == 50 { 30 } else { 10 }, 4)).collect();
        let v = volume_of(&hours, from, to, tz, 100);
        assert_eq!(v.events, 59 * 10 + 30);
        assert!((v.events_per_day.unwrap() - 620.0 / 2.5).abs() < 1e-9);
        assert_eq!(v.days.len(), 2);
        assert_eq!((v.days[0].events, v.days[1].events), (240, 260));
        assert_eq!(v.peak_hour.as_ref().unwrap().events, 30);
        assert_eq!(v.hourly_only_events, Some(520));
        assert_eq!(v.groups_per_hour, Some(4.0));
        assert_eq!(volume_of(&[], from, to, tz, 0).source, "none");
    }
}
