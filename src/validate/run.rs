//! One validation run: collect both sides (Redis, the target, the legacy tables, each
//! pushing the work into its server), hand them to the pure diff core, and record the run
//! in `tsmigrate.validation_runs`. The phase command around it is
//! `phase::command::validate`; the rules are in `validation/README.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;
use uuid::Uuid;

use crate::connect::RedisConn;

use crate::calendar::day_start;
use crate::context::Context;
use crate::event::TargetEvent;
use crate::ledger::progress;
use crate::ledger::validation;
use crate::legacy::reader::OutOfRange;
use crate::state::{MigrationState, Phase};
use crate::stop::Rerun;
use crate::store::aggregates::{self, RefreshOutcome};
use crate::store::StorageMode;
use crate::validate::collect::aggregates::{self as agg, AssetKey, HourlyKey, LegacyCoverage, LegacyTables};
use crate::validate::collect::{redis as redis_side, target as target_side};
use crate::validate::diff::{self, EventFindings, HourDifference, Listed, MinuteSummaries, Summary};
use crate::validate::window::{self, show_hour, Window, WindowFacts};
use crate::validate::{AggregateCheck, Depth, EventCheck, ValidationReport};

/// At most this many events (both sides together) are fetched to narrow differing
/// minutes; hours beyond it are reported as not narrowed.
pub const MAX_NARROW_EVENTS: u64 = 1_000_000;
/// Out-of-range members shown from each end of the sorted set.
const OUT_OF_RANGE_EXAMPLES: usize = 3;

/// Listed items per kind of difference unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;

#[derive(Debug, Clone)]
pub struct ValidateOptions {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub depth: Depth,
    /// Events younger than this are in flight and not compared (`settle_lag`).
    pub settle: Duration,
    /// Bring the target aggregates up to date for the window before comparing them.
    pub refresh: bool,
    /// At most this many listed items per kind of difference (totals are always exact).
    pub limit: usize,
    /// The command line that runs this validation again, as it was given (see
    /// [`ValidateOptions::command_line`]): a stopped validation starts over with it.
    pub command_line: String,
}

impl ValidateOptions {
    /// `tsmigrate validate` with the options that differ from the defaults (`settle`: the
    /// settings' settle lag). Times are written as the instants they were resolved to, so a
    /// relative `--from -6h` given an hour ago still names the same window.
    pub fn command_line(&self, default_settle: Duration) -> String {
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let mut line = String::from("tsmigrate validate");
        if let Some(from) = self.from {
            line.push_str(&format!(" --from {}", time(from)));
        }
        if let Some(to) = self.to {
            line.push_str(&format!(" --to {}", time(to)));
        }
        if self.depth != Depth::Events {
            line.push_str(&format!(" --depth {}", self.depth.as_str()));
        }
        if self.settle != default_settle {
            line.push_str(&format!(" --settle {}s", self.settle.num_seconds()));
        }
        if !self.refresh {
            line.push_str(" --no-refresh");
        }
        if self.limit != DEFAULT_LIMIT {
            line.push_str(&format!(" --limit {}", self.limit));
        }
        line
    }
}

/// Compares, recording the run either way (a failed run too, once the control tables
/// are reachable).
pub async fn run(ctx: &Context, state: &MigrationState, options: &ValidateOptions) -> anyhow::Result<ValidationReport> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let mut window_slot = None;
    match compare(ctx, state, options, started_at, &mut window_slot).await {
        Ok(mut report) => {
            report.finished_at = Utc::now();
            report.duration_ms = clock.elapsed().as_millis() as u64;
            report.run_id = Some(record(&ctx.target, &report).await.context("cannot record the run in tsmigrate.validation_runs")?);
            Ok(report)
        }
        Err(error) => {
            let failed = validation::FailedRun {
                started_at,
                window: window_slot.as_ref().map(|w: &Window| ((w.from, w.to), (w.range.from, w.range.to))),
                depth: options.depth,
                phase: state.phase,
                error: format!("{error:#}"),
                duration_ms: clock.elapsed().as_millis() as u64,
            };
            if let Err(e) = validation::record_failed(&ctx.target, &failed).await {
                tracing::warn!(error = %e, "could not record the failed validation run");
            }
            Err(error)
        }
    }
}

async fn compare(
    ctx: &Context,
    state: &MigrationState,
    options: &ValidateOptions,
    started_at: DateTime<Utc>,
    window_slot: &mut Option<Window>,
) -> anyhow::Result<ValidationReport> {
    let mode = state.mode()?;
    let mut redis = ctx.redis().await?;
    let (window, out_of_range) = choose_window(ctx, &mut redis, state, options, started_at).await?;
    *window_slot = Some(window.clone());
    let (sides, hourly, assets, refresh, mut timings) = collect(ctx, &redis, mode, &window, options, started_at, state.phase).await?;
    let mut events = EventCheck { out_of_range, ..Default::default() };
    let now_ms = started_at.timestamp_millis();
    if let Some(narrowed) = compare_events(&mut events, sides, &window, ctx, &mut redis, now_ms, options.limit).await? {
        timings.insert("narrow", narrowed);
    }
    Ok(ValidationReport {
        run_id: None,
        started_at,
        finished_at: started_at,
        duration_ms: 0,
        depth: options.depth,
        mode,
        window,
        events,
        hourly,
        assets,
        refresh,
        phase_before: state.phase,
        phase_after: state.phase,
        phase_note: None,
        warnings: vec![],
        timings,
        next_steps: vec![],
    })
}

/// The whole hours both systems cover (and why each edge is where it is).
async fn choose_window(
    ctx: &Context,
    redis: &mut RedisConn,
    state: &MigrationState,
    options: &ValidateOptions,
    started_at: DateTime<Utc>,
) -> anyhow::Result<(Window, OutOfRange)> {
    let settings = &ctx.settings;
    let events_key = &ctx.keys.events;
    let oldest = crate::legacy::reader::redis_horizon(redis, &ctx.keys).await?;
    let target_oldest = target_side::oldest(&ctx.target).await?;
    let members: u64 = redis::cmd("ZCARD").arg(events_key).query_async(redis).await?;
    let out_of_range = crate::legacy::reader::out_of_range(redis, events_key, started_at.timestamp_millis(), OUT_OF_RANGE_EXAMPLES).await?;
    let facts = WindowFacts {
        now: started_at,
        settle: options.settle,
        tz: settings.target.timezone(),
        phase: state.phase,
        completion_point: state.completion_point,
        redis_oldest: oldest,
        target_oldest,
        redis_members: members,
        redis_cap: settings.redis.event_cap,
        raw_retention_days: settings.target.raw_retention_days,
        requested_from: options.from,
        requested_to: options.to,
    };
    Ok((window::choose(&facts, events_key)?, out_of_range))
}

/// Both sides of the events, summarized per minute (or counted per hour).
struct Sides {
    redis: RedisSide,
    target: MinuteSummaries,
    dead_minutes: Option<Vec<(i64, u64)>>,
}

/// Events depth: Redis's side per minute by fingerprints, from the raw digests of every
/// member of the `hashed` ranges and the fingerprints of the members of the minutes those do
/// not settle (`diff::settle_by_raw_digests`). A settled minute holds exactly the target's
/// rows (their count and fingerprints) and its recorded dead letters; the others are parsed.
/// Minutes outside `hashed` are left alone (they were parsed at once). Returns the side and
/// how long parsing took (wall), with how many minutes it parsed.
async fn redis_by_fingerprints(
    raw: redis_side::RedisEvents,
    target: &target_side::TargetMinutes,
    dead: target_side::DeadLetterDigests,
    hashed: &[(i64, i64)],
    (readers, key): (&redis_side::Readers, &str),
    now_ms: i64,
) -> anyhow::Result<(redis_side::RedisEvents, u64, usize)> {
    let mut verdict = diff::settle_by_raw_digests(&raw.minutes, &target.rows, &target.raw, &dead.minutes);
    let inside = |minute: &i64| diff::in_ranges(hashed, minute * diff::MINUTE_MS);
    verdict.settled.retain(inside);
    verdict.to_parse.retain(inside);
    let clock = Instant::now();
    let parsed = redis_side::summarize_ranges(readers, key, &diff::minute_ranges(&verdict.to_parse), now_ms, redis_side::Pass::Fingerprints).await?;
    let parsing = clock.elapsed().as_millis() as u64;
    let mut found = redis_side::RedisEvents { read_micros: raw.read_micros, ..Default::default() };
    for minute in &verdict.settled {
        if let Some(rows) = target.rows.get(minute).filter(|rows| rows.count > 0) {
            found.minutes.insert(*minute, *rows);
            found.events += rows.count;
        }
        for (code, n) in dead.reasons.get(minute).into_iter().flatten() {
            *found.dead_letters.entry(code.clone()).or_default() += n;
        }
    }
    found.merge(parsed);
    Ok((found, parsing, verdict.to_parse.len()))
}

type Collected = (Sides, AggregateCheck<HourlyKey>, AggregateCheck<AssetKey>, Option<RefreshOutcome>, BTreeMap<&'static str, u64>);

/// Runs the three collectors at once: Redis, the target's events, the aggregates.
async fn collect(
    ctx: &Context,
    redis: &RedisConn,
    mode: StorageMode,
    window: &Window,
    options: &ValidateOptions,
    started_at: DateTime<Utc>,
    phase: Phase,
) -> anyhow::Result<Collected> {
    let starts: Vec<i64> = window.hour_starts.iter().map(|h| h.timestamp_millis()).collect();
    let (from_ms, to_ms, now_ms) = (window.from.timestamp_millis(), window.to.timestamp_millis(), started_at.timestamp_millis());
    let timed = |name: &'static str, clock: Instant| (name, clock.elapsed().as_millis() as u64);
    let key = &ctx.keys.events;
    let pool = &ctx.target;
    // Events depth reads every member, on connections of its own beside the caller's.
    let readers = match options.depth {
        Depth::Events => Some(redis_side::Readers::open(redis).await?),
        Depth::Counts => None,
    };
    let redis_collect = async {
        let clock = Instant::now();
        let side = match options.depth {
            Depth::Events => {
                let readers = readers.as_ref().expect("opened for events depth");
                // Hours whose target rows mostly lack raw digests are parsed at once, not
                // hashed first (they would be parsed after hashing anyway).
                let with_raw = target_side::hours_with_raw_digests(pool, &window.hour_starts, window.to).await?;
                let (hashed, parsed) = diff::split_hours(&starts, to_ms, |start| with_raw.contains(&start));
                // Seen from any terminal by `tsmigrate status`.
                let total = redis_side::count(&mut redis.clone(), key, from_ms, to_ms).await?;
                let reporter = progress::Reporter::start(pool, "validate", "events", (&options.command_line, Rerun::StartsOver), 0, Some(total)).await;
                let summarized = async {
                    let mut sides = (redis_side::RedisEvents::default(), redis_side::RedisEvents::default());
                    for (ranges, pass, side) in [(&hashed, redis_side::Pass::RawDigests, &mut sides.0), (&parsed, redis_side::Pass::Fingerprints, &mut sides.1)]
                    {
                        for range in ranges {
                            side.merge(redis_side::summarize(readers, key, *range, now_ms, reporter.counter(), pass).await?);
                        }
                    }
                    anyhow::Ok(sides)
                }
                .await;
                reporter.finish(pool, "validate").await;
                let (raw, parsed_events) = summarized?;
                if !parsed.is_empty() {
                    let hours = parsed.iter().map(|(from, to)| (to - from) / 3_600_000).sum::<i64>();
                    tracing::info!(hours, "hours whose target rows mostly lack raw digests were compared by parsing Redis's members at once");
                }
                if hashed.is_empty() {
                    RedisSide::Events(parsed_events)
                } else {
                    RedisSide::Raw { raw, hashed, parsed: parsed_events }
                }
            }
            Depth::Counts => RedisSide::Counts(redis_side::count_hours(&mut redis.clone(), key, &starts, to_ms).await?),
        };
        anyhow::Ok((side, timed("redis", clock)))
    };
    let target_collect = async {
        let clock = Instant::now();
        let (minutes, dead) = match options.depth {
            Depth::Counts => {
                let (hours, dead) =
                    tokio::try_join!(target_side::count_hours(pool, &window.hour_starts, window.to), target_side::dead_letter_minutes(pool, from_ms, to_ms))?;
                (target_side::TargetMinutes { rows: hours, raw: MinuteSummaries::new() }, Dead::Counted(dead))
            }
            Depth::Events => {
                let (minutes, dead) =
                    tokio::try_join!(target_side::summarize(pool, window.from, window.to), target_side::dead_letter_digests(pool, from_ms, to_ms, now_ms))?;
                (minutes, Dead::Digested(dead))
            }
        };
        anyhow::Ok((minutes, dead, timed("target", clock)))
    };
    let aggregate_collect = async {
        let clock = Instant::now();
        let checks = if phase >= Phase::FlushRetired {
            let why = "the legacy flush is retired: its tables no longer follow the events";
            (AggregateCheck::not_applicable(why), AggregateCheck::not_applicable(why), None)
        } else {
            let legacy_pool = ctx.legacy().await?;
            let tables = agg::legacy_tables(&legacy_pool, &ctx.settings.legacy).await?;
            compare_aggregates(ctx, &legacy_pool, mode, window, tables, options.refresh, options.limit).await?
        };
        anyhow::Ok((checks, timed("aggregates", clock)))
    };
    let ((redis_side, t1), (target, dead, t2), ((hourly, assets, refresh), t3)) = tokio::try_join!(redis_collect, target_collect, aggregate_collect)?;
    let mut timings = BTreeMap::from([t1, t2, t3]);
    let (redis_side, dead_minutes) = match (redis_side, dead) {
        (RedisSide::Raw { raw, hashed, parsed }, Dead::Digested(dead)) => {
            // Summed over the readers and the hashing/parsing threads.
            timings.extend([("redis_read", (raw.read_micros + parsed.read_micros) / 1000), ("redis_hash", raw.parse_micros / 1000)]);
            let (mut found, parsing, parsed_minutes) =
                redis_by_fingerprints(raw, &target, dead, &hashed, (readers.as_ref().expect("opened for events depth"), key), now_ms).await?;
            tracing::info!(parsed_minutes, parsing_ms = parsing, "minutes the raw digests did not settle were compared by parsing Redis's members");
            found.merge(parsed);
            timings.extend([("redis_parse", found.parse_micros / 1000), ("reparse", parsing)]);
            (RedisSide::Events(found), None)
        }
        (RedisSide::Events(found), Dead::Digested(_)) => {
            // No hour had raw digests enough: every member was parsed in the first pass.
            timings.extend([("redis_read", found.read_micros / 1000), ("redis_parse", found.parse_micros / 1000)]);
            (RedisSide::Events(found), None)
        }
        (side, Dead::Counted(dead)) => (side, Some(dead.into_iter().collect())),
        (side, Dead::Digested(_)) => (side, None),
    };
    let sides = Sides { redis: redis_side, target: target.rows, dead_minutes };
    Ok((sides, hourly, assets, refresh, timings))
}

/// Hands the events to the diff core, narrowing differing hours (events depth). Returns
/// how long narrowing took, if it ran.
#[allow(clippy::too_many_arguments)]
async fn compare_events(
    events: &mut EventCheck,
    sides: Sides,
    window: &Window,
    ctx: &Context,
    redis: &mut RedisConn,
    now_ms: i64,
    limit: usize,
) -> anyhow::Result<Option<u64>> {
    let starts: Vec<i64> = window.hour_starts.iter().map(|h| h.timestamp_millis()).collect();
    let to_ms = window.to.timestamp_millis();
    let target_hours = diff::roll_up(&sides.target, &starts, to_ms);
    events.hours_compared = starts.len();
    events.target_events = target_hours.iter().map(|h| h.count).sum();
    let found = match sides.redis {
        RedisSide::Counts(zcounts) => {
            let (redis_hours, dead_total) = counted_hours(&zcounts, &sides.dead_minutes.unwrap_or_default(), &starts, to_ms);
            events.redis_events = redis_hours.iter().map(|h| h.count).sum();
            if dead_total > 0 {
                events.dead_letters.insert("recorded".into(), dead_total);
            }
            events.hours = listed(diff::diff_hours(&redis_hours, &target_hours, &starts, false), limit);
            return Ok(None);
        }
        RedisSide::Events(found) => found,
        RedisSide::Raw { .. } => anyhow::bail!("the Redis side was not compared by fingerprints"),
    };
    let redis_hours = diff::roll_up(&found.minutes, &starts, to_ms);
    events.redis_events = found.events;
    events.dead_letters = found.dead_letters.clone();
    let mut differing = diff::diff_hours(&redis_hours, &target_hours, &starts, true);
    diff::attach_minutes(&mut differing, &found.minutes, &sides.target, &starts, to_ms);
    let mut narrowed = None;
    if !differing.is_empty() {
        let clock = Instant::now();
        narrow(events, &differing, &found.minutes, &sides.target, redis, &ctx.keys.events, &ctx.target, now_ms, limit).await?;
        narrowed = Some(clock.elapsed().as_millis() as u64);
    }
    events.hours = listed(differing, limit);
    Ok(narrowed)
}

/// Counts depth: Redis members per hour less the dead letters recorded for it.
fn counted_hours(zcounts: &[u64], dead_minutes: &[(i64, u64)], starts: &[i64], to_ms: i64) -> (Vec<Summary>, u64) {
    let mut dead_hours = vec![0u64; starts.len()];
    for (minute, n) in dead_minutes {
        if let Some(i) = diff::hour_index(starts, to_ms, minute * diff::MINUTE_MS) {
            dead_hours[i] += n;
        }
    }
    let hours = zcounts.iter().zip(&dead_hours).map(|(members, dead)| Summary { count: members.saturating_sub(*dead), hash: 0 }).collect();
    (hours, dead_hours.iter().sum())
}

enum RedisSide {
    /// Every member's raw digest per minute in the `hashed` ranges (before
    /// `redis_by_fingerprints`), and the members of the other hours parsed.
    Raw {
        raw: redis_side::RedisEvents,
        hashed: Vec<(i64, i64)>,
        parsed: redis_side::RedisEvents,
    },
    Events(redis_side::RedisEvents),
    Counts(Vec<u64>),
}

/// The dead letters recorded in the window: per minute (counts depth), or with their raw
/// digests (events depth).
enum Dead {
    Counted(HashMap<i64, u64>),
    Digested(target_side::DeadLetterDigests),
}

fn listed<T>(items: Vec<T>, limit: usize) -> Listed<T> {
    let mut out = Listed::default();
    for item in items {
        out.push(item, limit);
    }
    out
}

// Long: the budget, the digest match and the confirmation of candidates share the
// per-hour bookkeeping (`explained`); split, they would pass it all around.
/// Narrows differing hours to their differing minutes, then to the events in them.
#[allow(clippy::too_many_arguments)]
async fn narrow(
    events: &mut EventCheck,
    differing: &[HourDifference],
    redis_minutes: &MinuteSummaries,
    target_minutes: &MinuteSummaries,
    redis: &mut crate::connect::RedisConn,
    key: &str,
    pool: &PgPool,
    now_ms: i64,
    limit: usize,
) -> anyhow::Result<()> {
    let mut budget = MAX_NARROW_EVENTS;
    let mut minutes = Vec::new();
    for hour in differing {
        let size: u64 = hour.minutes.iter().map(|m| redis_minutes.get(m).map_or(0, |s| s.count) + target_minutes.get(m).map_or(0, |s| s.count)).sum();
        if size > budget {
            events.not_narrowed.push(target_side::ms_to_time(hour.start_ms));
            continue;
        }
        budget -= size;
        minutes.extend(&hour.minutes);
    }
    minutes.sort_unstable();
    let ranges = diff::minute_ranges(&minutes);
    let mut redis_conn = redis.clone();
    let (redis_digests, target_digests) = tokio::try_join!(redis_side::digests(&mut redis_conn, key, &ranges, now_ms), target_side::digests(pool, &ranges))?;
    let matched = diff::match_digests(redis_digests, target_digests);
    let mut findings = EventFindings::from_match(&matched, limit);
    // Where differences were found: differing hours without any settled while validating.
    let hour_of = |ms: i64| differing.iter().rev().find(|h| h.start_ms <= ms).map(|h| h.start_ms);
    let mut explained: HashSet<i64> = matched.missing.iter().chain(&matched.extra).filter_map(|d| hour_of(d.time_ms)).collect();

    if !matched.candidates.is_empty() {
        let target_keys: Vec<(Uuid, i64)> = matched.candidates.iter().map(|c| (c.target.event_id, c.target.time_ms)).collect();
        let target_full: HashMap<(Uuid, i64), TargetEvent> =
            target_side::events_by_key(pool, &target_keys).await?.into_iter().map(|e| ((e.event_id, e.time_ms()), e)).collect();
        let wanted: HashSet<(Uuid, i64)> = matched.candidates.iter().map(|c| (c.redis.event_id, c.redis.time_ms)).collect();
        let mut candidate_minutes: Vec<i64> = matched.candidates.iter().map(|c| diff::minute_of(c.redis.time_ms)).collect();
        candidate_minutes.sort_unstable();
        candidate_minutes.dedup();
        let mut redis_full: HashMap<(Uuid, i64), TargetEvent> = HashMap::new();
        for range in diff::minute_ranges(&candidate_minutes) {
            redis_side::for_each_event(redis, key, range, now_ms, |e| {
                let k = (e.event_id, e.time_ms());
                if wanted.contains(&k) {
                    redis_full.insert(k, e);
                }
            })
            .await?;
        }
        for c in &matched.candidates {
            let before = findings.different.total;
            findings.confirm(c, redis_full.get(&(c.redis.event_id, c.redis.time_ms)), target_full.get(&(c.target.event_id, c.target.time_ms)), limit);
            if findings.different.total > before {
                explained.extend(hour_of(c.redis.time_ms));
                explained.extend(hour_of(c.target.time_ms));
            }
        }
    }
    events.settled_while_validating = differing
        .iter()
        .filter(|h| !explained.contains(&h.start_ms) && !events.not_narrowed.contains(&target_side::ms_to_time(h.start_ms)))
        .map(|h| target_side::ms_to_time(h.start_ms))
        .collect();
    events.findings = Some(findings);
    Ok(())
}

type AggregateChecks = (AggregateCheck<HourlyKey>, AggregateCheck<AssetKey>, Option<RefreshOutcome>);

/// Legacy hourly and asset tables against the target aggregates, over the hours of the
/// window the legacy flush has covered (and, for assets, the whole days among them).
#[allow(clippy::too_many_arguments)]
async fn compare_aggregates(
    ctx: &Context,
    legacy_pool: &PgPool,
    mode: StorageMode,
    window: &Window,
    tables: LegacyTables,
    refresh: bool,
    limit: usize,
) -> anyhow::Result<AggregateChecks> {
    let (settings, pool) = (&ctx.settings, &ctx.target);
    let tz: Tz = settings.target.timezone();
    let legacy = &settings.legacy;
    let database = settings.database.legacy_url().redacted();
    let missing_assets = || {
        AggregateCheck::could_not_run(
            format!("the legacy table {} does not exist in {database}", legacy.asset_table),
            "set legacy.asset_table to the table the legacy flush writes asset popularity into, or LEGACY_DATABASE_URL to the database holding it (`tsmigrate legacy setup` creates it)",
        )
    };
    let range = match tables.hourly {
        LegacyCoverage::NoTable => Err((
            format!("the legacy table {} does not exist in {database}", legacy.hourly_table),
            "set legacy.hourly_table to the table the legacy flush writes, or LEGACY_DATABASE_URL to the database holding it (`tsmigrate legacy setup` creates the tables, `tsmigrate legacy flush` fills them)".to_string(),
        )),
        LegacyCoverage::Empty => Err((
            format!("the legacy table {} in {database} holds no rows: the legacy flush has written nothing there", legacy.hourly_table),
            "check that the legacy flush runs and writes this table (`tsmigrate legacy flush`, or set legacy.hourly_table to the table it fills)".to_string(),
        )),
        LegacyCoverage::UpTo(max) => window::legacy_covered(window, Some(max), tz).ok_or_else(|| {
            (
                format!("the legacy table {} in {database} covers hours only up to {}, before the window", legacy.hourly_table, show_hour(max)),
                format!(
                    "check that the legacy flush runs (`tsmigrate run` hosts it until retire-flush) and writes this table (legacy.hourly_table, LEGACY_DATABASE_URL), or validate the hours it covers: --to {}",
                    show_hour(max)
                ),
            )
        }),
    };
    let (from, to) = match range {
        Ok(range) => range,
        Err((reason, hint)) => {
            let assets = if tables.assets { AggregateCheck::could_not_run(reason.clone(), hint.clone()) } else { missing_assets() };
            return Ok((AggregateCheck::could_not_run(reason, hint), assets, None));
        }
    };
    // Plain mode has no real-time aggregation, and in TimescaleDB mode rows that arrived
    // below the watermark (backfill, late events) are invisible until refreshed: compare
    // what the raw rows say, not how recently a scheduler ran.
    let refreshed = if refresh {
        Some(
            aggregates::refresh(&*ctx.store(mode), from, to, tz, settings.target.raw_retention_days)
                .await
                .context("cannot refresh the target aggregates (use --no-refresh to compare them as they are)")?,
        )
    } else {
        None
    };
    let (legacy_rows, target_rows) = tokio::try_join!(agg::legacy_hourly(legacy_pool, legacy, from, to), agg::target_hourly(pool, from, to))?;
    let hourly = AggregateCheck::compared((from, to), diff::diff_aggregates(legacy_rows, target_rows, limit));
    let days = window::whole_days(from, to, tz);
    let assets = match (days.first(), days.last()) {
        _ if !tables.assets => missing_assets(),
        (Some(first), Some(last)) => {
            let (day_from, day_to) = (day_start(*first, tz), day_start(*last + Duration::days(1), tz));
            let (legacy_rows, target_rows) =
                tokio::try_join!(agg::legacy_assets(legacy_pool, legacy, *first, *last), agg::target_assets(pool, day_from, day_to, tz))?;
            AggregateCheck::compared((day_from, day_to), diff::diff_aggregates(legacy_rows, target_rows, limit))
        }
        _ => AggregateCheck::not_applicable(format!("no whole day ({}) lies inside the compared hours {} .. {}", tz.name(), show_hour(from), show_hour(to))),
    };
    Ok((hourly, assets, refreshed))
}

/// Records the run, and every event-level difference it found (what `repair` works from).
async fn record(pool: &PgPool, report: &ValidationReport) -> sqlx::Result<i64> {
    let run = validation::NewRun {
        started_at: report.started_at,
        finished_at: report.finished_at,
        window: (report.window.from, report.window.to),
        range: (report.window.range.from, report.window.range.to),
        depth: report.depth,
        verdict: report.verdict(),
        phase: report.phase_before,
        figures: report.figures(),
        duration_ms: report.duration_ms,
    };
    let found = report.events.findings.as_ref().map(|f| f.all.as_slice()).unwrap_or_default();
    validation::record(pool, &run, found).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ValidateOptions {
        ValidateOptions {
            from: None,
            to: None,
            depth: Depth::Events,
            settle: Duration::seconds(120),
            refresh: true,
            limit: DEFAULT_LIMIT,
            command_line: String::new(),
        }
    }

    #[test]
    fn the_command_line_repeats_the_options_given_and_only_those() {
        assert_eq!(options().command_line(Duration::seconds(120)), "tsmigrate validate");
        let from = DateTime::parse_from_rfc3339("2026-12-07T01:00:00Z").unwrap().with_timezone(&Utc);
        let narrow = ValidateOptions {
            from: Some(from),
            to: Some(from + Duration::hours(2)),
            depth: Depth::Counts,
            settle: Duration::seconds(600),
            refresh: false,
            limit: 5,
            ..options()
        };
        assert_eq!(
            narrow.command_line(Duration::seconds(120)),
            "tsmigrate validate --from 2026-12-07T01:00:00Z --to 2026-12-07T03:00:00Z --depth counts --settle 600s --no-refresh --limit 5"
        );
    }
}
