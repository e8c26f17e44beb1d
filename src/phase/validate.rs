//! `tsmigrate validate`: compares Redis with the target's raw events, and the legacy
//! hourly and asset tables with the target's aggregates, over the whole hours both
//! systems cover; records the run in `tsmigrate.validation_runs`; a clean run moves
//! `backfilled → validated`.
//!
//! Allowed from `dual_writing` on (before backfill it is informational: the window starts
//! at the completion point). The phase lock is taken only at the end, to commit the move:
//! validation reads, it never blocks another phase command.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::state::{self, AuditEntry, LockHeld, MigrationState, PhaseGuard, StateChanges};
use super::{Phase, Refusal, VALIDATE};
use crate::config::Settings;
use crate::dual_write::gaps;
use crate::event::TargetEvent;
use crate::legacy::flush::day_start;
use crate::legacy::LegacyKeys;
use crate::target::aggregates::{self, RefreshOutcome};
use crate::target::StorageMode;
use crate::validate::collect::aggregates::{self as agg, AssetKey, HourlyKey, LegacyCoverage};
use crate::validate::collect::{redis as redis_side, target as target_side};
use crate::validate::diff::{self, EventFindings, HourDifference, Listed, MinuteSummaries, Summary};
use crate::validate::window::{self, show_hour, Window, WindowFacts};
use crate::validate::{AggregateCheck, Depth, EventCheck, ValidationReport, Verdict};

/// At most this many events (both sides together) are fetched to narrow differing
/// minutes; hours beyond it are reported as not narrowed.
pub const MAX_NARROW_EVENTS: u64 = 1_000_000;
/// Out-of-range members shown from each end of the sorted set.
const OUT_OF_RANGE_EXAMPLES: usize = 3;

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
}

/// Phases in which validation may run: once dual-write is on.
pub fn gate(phase: Phase) -> Result<(), Refusal> {
    if phase.dual_write_active() {
        return Ok(());
    }
    Err(Refusal {
        command: "validate".into(),
        reason: format!("the migration is in phase {phase}; validation compares Redis with the target once dual-write is on (phase dual_writing or later)"),
        next: phase.next_steps().first().cloned().unwrap_or_default(),
    })
}

pub async fn run(settings: &Settings, options: &ValidateOptions) -> anyhow::Result<ValidationReport> {
    let pool = crate::db::target_pool(settings).await?;
    let state = state::load_from_pool(&pool).await?;
    gate(state.phase)?;
    let started_at = Utc::now();
    let clock = Instant::now();
    let mut window_slot = None;
    match compare(settings, &pool, &state, options, started_at, &mut window_slot).await {
        Ok(mut report) => {
            report.finished_at = Utc::now();
            report.duration_ms = clock.elapsed().as_millis() as u64;
            report.run_id = Some(record(&pool, &report).await.context("cannot record the run in tsmigrate.validation_runs")?);
            if report.verdict() == Verdict::Clean {
                move_phase(settings, &state, &mut report).await;
            }
            report.next_steps = next_steps(&report);
            // A recorded gap explains missing events better than anything the diff can say.
            let open = gaps::open(&pool).await.context("cannot read tsmigrate.outbox_gaps")?;
            report.next_steps.splice(0..0, open.iter().map(|g| format!("{}   # {}", g.repair_command(), g.describe())));
            Ok(report)
        }
        Err(error) => {
            let window = window_slot.as_ref();
            let recorded = sqlx::query(
                "INSERT INTO tsmigrate.validation_runs (started_at, finished_at, window_from, window_to, depth, result, phase, figures, duration_ms)
                 VALUES ($1, now(), $2, $3, $4, 'error', $5, $6, $7)",
            )
            .bind(started_at)
            .bind(window.map(|w| w.from))
            .bind(window.map(|w| w.to))
            .bind(options.depth.as_str())
            .bind(state.phase.as_str())
            .bind(json!({"error": format!("{error:#}")}))
            .bind(clock.elapsed().as_millis() as i64)
            .execute(&pool)
            .await;
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "could not record the failed validation run");
            }
            Err(error)
        }
    }
}

async fn compare(
    settings: &Settings,
    pool: &PgPool,
    state: &MigrationState,
    options: &ValidateOptions,
    started_at: DateTime<Utc>,
    window_slot: &mut Option<Window>,
) -> anyhow::Result<ValidationReport> {
    let tz = settings.target.timezone();
    let mode = state.storage_mode.context("storage mode missing from the migration state")?;
    let keys = LegacyKeys::from_settings(settings);
    let mut redis = crate::db::redis(settings).await?;
    let oldest = super::history::redis_horizon(&mut redis, &keys).await?;
    let members: u64 = redis::cmd("ZCARD").arg(&keys.events).query_async(&mut redis).await?;
    let out_of_range = crate::legacy::reader::out_of_range(&mut redis, &keys.events, started_at.timestamp_millis(), OUT_OF_RANGE_EXAMPLES).await?;
    let facts = WindowFacts {
        now: started_at,
        settle: options.settle,
        tz,
        phase: state.phase,
        completion_point: state.completion_point,
        redis_oldest: oldest,
        redis_members: members,
        redis_cap: settings.redis.event_cap,
        raw_retention_days: settings.target.raw_retention_days,
        requested_from: options.from,
        requested_to: options.to,
    };
    let window = window::choose(&facts, &keys.events)?;
    *window_slot = Some(window.clone());
    let legacy_pool = crate::db::legacy_pool(settings).await?;
    let coverage = agg::legacy_coverage(&legacy_pool, &settings.legacy).await?;

    let starts: Vec<i64> = window.hour_starts.iter().map(|h| h.timestamp_millis()).collect();
    let (from_ms, to_ms) = (window.from.timestamp_millis(), window.to.timestamp_millis());
    let now_ms = started_at.timestamp_millis();
    let mut timings = BTreeMap::new();
    let timed = |name: &'static str, clock: Instant| (name, clock.elapsed().as_millis() as u64);

    let redis_collect = async {
        let clock = Instant::now();
        let side = match options.depth {
            Depth::Events => RedisSide::Events(redis_side::summarize(&redis, &keys.events, from_ms, to_ms, now_ms).await?),
            Depth::Counts => {
                let mut conn = redis.clone();
                RedisSide::Counts(redis_side::count_hours(&mut conn, &keys.events, &starts, to_ms).await?)
            }
        };
        anyhow::Ok((side, timed("redis", clock)))
    };
    let target_collect = async {
        let clock = Instant::now();
        let minutes = target_side::summarize(pool, window.from, window.to, options.depth == Depth::Counts).await?;
        let dead = match options.depth {
            Depth::Counts => Some(target_side::dead_letter_minutes(pool, from_ms, to_ms).await?),
            Depth::Events => None,
        };
        anyhow::Ok((minutes, dead, timed("target", clock)))
    };
    let aggregate_collect = async {
        let clock = Instant::now();
        let checks = compare_aggregates(settings, pool, &legacy_pool, mode, &window, coverage, options.refresh, options.limit).await?;
        anyhow::Ok((checks, timed("aggregates", clock)))
    };
    let ((redis_found, t1), (target_minutes, dead_minutes, t2), ((hourly, assets, refresh), t3)) =
        tokio::try_join!(redis_collect, target_collect, aggregate_collect)?;
    timings.extend([t1, t2, t3]);

    let target_hours = diff::roll_up(&target_minutes, &starts, to_ms);
    let mut events = EventCheck { hours_compared: starts.len(), target_events: target_hours.iter().map(|h| h.count).sum(), out_of_range, ..Default::default() };
    match redis_found {
        RedisSide::Events(found) => {
            let redis_hours = diff::roll_up(&found.minutes, &starts, to_ms);
            events.redis_events = found.events;
            events.dead_letters = found.dead_letters.clone();
            let mut differing = diff::diff_hours(&redis_hours, &target_hours, &starts, true);
            diff::attach_minutes(&mut differing, &found.minutes, &target_minutes, &starts, to_ms);
            if !differing.is_empty() {
                let clock = Instant::now();
                narrow(&mut events, &differing, &found.minutes, &target_minutes, &mut redis, &keys.events, pool, now_ms, options.limit).await?;
                timings.insert("narrow", clock.elapsed().as_millis() as u64);
            }
            events.hours = listed(differing, options.limit);
        }
        RedisSide::Counts(zcounts) => {
            let dead_minutes = dead_minutes.unwrap_or_default();
            let mut dead_hours = vec![0u64; starts.len()];
            for (minute, n) in &dead_minutes {
                if let Some(i) = diff::hour_index(&starts, to_ms, minute * diff::MINUTE_MS) {
                    dead_hours[i] += n;
                }
            }
            let redis_hours: Vec<Summary> =
                zcounts.iter().zip(&dead_hours).map(|(members, dead)| Summary { count: members.saturating_sub(*dead), hash: 0 }).collect();
            events.redis_events = redis_hours.iter().map(|h| h.count).sum();
            let dead_total: u64 = dead_hours.iter().sum();
            if dead_total > 0 {
                events.dead_letters.insert("recorded".into(), dead_total);
            }
            events.hours = listed(diff::diff_hours(&redis_hours, &target_hours, &starts, false), options.limit);
        }
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
        timings,
        next_steps: vec![],
    })
}

enum RedisSide {
    Events(redis_side::RedisEvents),
    Counts(Vec<u64>),
}

fn listed<T>(items: Vec<T>, limit: usize) -> Listed<T> {
    let mut out = Listed::default();
    for item in items {
        out.push(item, limit);
    }
    out
}

/// Narrows differing hours to their differing minutes, then to the events in them.
#[allow(clippy::too_many_arguments)]
async fn narrow(
    events: &mut EventCheck,
    differing: &[HourDifference],
    redis_minutes: &MinuteSummaries,
    target_minutes: &MinuteSummaries,
    redis: &mut redis::aio::ConnectionManager,
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
    settings: &Settings,
    pool: &PgPool,
    legacy_pool: &PgPool,
    mode: StorageMode,
    window: &Window,
    coverage: LegacyCoverage,
    refresh: bool,
    limit: usize,
) -> anyhow::Result<AggregateChecks> {
    let tz: Tz = settings.target.timezone();
    let legacy = &settings.legacy;
    let range: Result<_, String> = match coverage {
        LegacyCoverage::NoTable => Err(format!("the legacy table {} does not exist", legacy.hourly_table)),
        LegacyCoverage::Empty => Err(format!("the legacy flush has written no hour into {} yet", legacy.hourly_table)),
        LegacyCoverage::UpTo(max) => window::legacy_covered(window, Some(max), tz)
            .ok_or_else(|| format!("the legacy flush has covered hours only up to {}, before the window", show_hour(max))),
    };
    let (from, to) = match range {
        Ok(range) => range,
        Err(reason) => return Ok((AggregateCheck::skipped(reason.clone()), AggregateCheck::skipped(reason), None)),
    };
    // Plain mode has no real-time aggregation, and in TimescaleDB mode rows that arrived
    // below the watermark (backfill, late events) are invisible until refreshed: compare
    // what the raw rows say, not how recently a scheduler ran.
    let refreshed = if refresh {
        Some(
            aggregates::refresh(pool, mode, from, to, tz, settings.target.raw_retention_days)
                .await
                .context("cannot refresh the target aggregates (use --no-refresh to compare them as they are)")?,
        )
    } else {
        None
    };
    let (legacy_rows, target_rows) = tokio::try_join!(agg::legacy_hourly(legacy_pool, legacy, from, to), agg::target_hourly(pool, from, to))?;
    let hourly = AggregateCheck { range: Some((from, to)), findings: Some(diff::diff_aggregates(legacy_rows, target_rows, limit)), skipped: None };
    let days = window::whole_days(from, to, tz);
    let assets = match (days.first(), days.last()) {
        (Some(first), Some(last)) => {
            let (day_from, day_to) = (day_start(*first, tz), day_start(*last + Duration::days(1), tz));
            let (legacy_rows, target_rows) =
                tokio::try_join!(agg::legacy_assets(legacy_pool, legacy, *first, *last), agg::target_assets(pool, day_from, day_to, tz))?;
            AggregateCheck { range: Some((day_from, day_to)), findings: Some(diff::diff_aggregates(legacy_rows, target_rows, limit)), skipped: None }
        }
        _ => AggregateCheck::skipped(format!("no whole day ({}) lies inside the compared hours {} .. {}", tz.name(), show_hour(from), show_hour(to))),
    };
    Ok((hourly, assets, refreshed))
}

async fn record(pool: &PgPool, report: &ValidationReport) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO tsmigrate.validation_runs (started_at, finished_at, window_from, window_to, depth, result, phase, figures, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(report.started_at)
    .bind(report.finished_at)
    .bind(report.window.from)
    .bind(report.window.to)
    .bind(report.depth.as_str())
    .bind(report.verdict().as_str())
    .bind(report.phase_before.as_str())
    .bind(report.figures())
    .bind(report.duration_ms as i64)
    .fetch_one(pool)
    .await
}

/// A clean run moves backfilled → validated. Never fails the validation: when the move
/// cannot be made (another command holds the lock), the report says so.
async fn move_phase(settings: &Settings, state: &MigrationState, report: &mut ValidationReport) {
    if VALIDATE.check(state.phase).is_err() {
        return;
    }
    let mut guard = match PhaseGuard::acquire(&settings.database.url, VALIDATE.command).await {
        Ok(guard) => guard,
        Err(e) => {
            report.phase_note = Some(match e.downcast_ref::<LockHeld>() {
                Some(held) => format!(
                    "the phase was not moved: another tsmigrate phase command holds the migration lock (PostgreSQL backend pid {}); run tsmigrate validate again when it has finished",
                    held.holder
                ),
                None => format!("the phase was not moved: {e}"),
            });
            return;
        }
    };
    let details = json!({"validation_run": report.run_id, "window_from": report.window.from, "window_to": report.window.to, "depth": report.depth});
    match guard.commit(&VALIDATE, state.phase, StateChanges::default(), AuditEntry { details, ..Default::default() }).await {
        Ok(()) => report.phase_after = VALIDATE.to,
        Err(e) => report.phase_note = Some(format!("the phase was not moved: {e}")),
    }
}

fn next_steps(report: &ValidationReport) -> Vec<String> {
    match report.verdict() {
        Verdict::Clean if report.phase_note.is_some() => vec!["tsmigrate validate           # again, to move the phase to validated".into()],
        Verdict::Clean => report.phase_after.next_steps(),
        Verdict::Differences => {
            let mut steps = Vec::new();
            if report.depth == Depth::Counts && report.events.has_differences() {
                steps.push("tsmigrate validate --depth events   # list the differing events".into());
            }
            if report.events.findings.as_ref().is_some_and(|f| f.missing.total > 0) {
                steps.push("missing events: check the relay (tsmigrate status); events from before dual-write: tsmigrate backfill (idempotent)".into());
            }
            steps.push("fix the cause of the differences above, then: tsmigrate validate".into());
            steps
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_needs_dual_write_and_says_what_to_do() {
        for phase in [Phase::New, Phase::Prepared] {
            let refusal = gate(phase).unwrap_err();
            assert!(refusal.reason.contains("dual_writing"), "{refusal}");
            assert!(!refusal.next.is_empty());
        }
        assert!(gate(Phase::Prepared).unwrap_err().next.contains("dual-write start"));
        for phase in [Phase::DualWriting, Phase::Backfilled, Phase::Validated, Phase::Completed] {
            assert!(gate(phase).is_ok());
        }
        assert!(VALIDATE.check(Phase::Backfilled).is_ok());
        assert!(VALIDATE.check(Phase::Validated).is_err());
    }
}
