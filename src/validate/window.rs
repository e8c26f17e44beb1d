//! Choosing what to compare: whole hours (in the configured time zone) that both systems
//! fully cover, ending a settle lag before now. Pure: the caller gathers the facts.
//! Every edge comes with the reason it is where it is, because "why did validation not
//! look at 02:00?" is the first question an operator asks.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::calendar::{day_start, hour_ceil, hour_floor, local_day, next_hour};
use crate::state::Phase;

/// What the window depends on.
#[derive(Debug, Clone)]
pub struct WindowFacts {
    pub now: DateTime<Utc>,
    pub settle: Duration,
    pub tz: Tz,
    pub phase: Phase,
    /// When dual-write started (events after it reach the target through the outbox).
    pub completion_point: Option<DateTime<Utc>>,
    /// The oldest event time Redis holds, if any.
    pub redis_oldest: Option<DateTime<Utc>>,
    /// The oldest event time the target holds, if any.
    pub target_oldest: Option<DateTime<Utc>>,
    pub redis_members: u64,
    pub redis_cap: u64,
    pub raw_retention_days: u32,
    pub requested_from: Option<DateTime<Utc>>,
    pub requested_to: Option<DateTime<Utc>>,
}

/// The hours compared: `[from, to)`, with the hour starts and why each edge is where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub from_reason: String,
    pub to_reason: String,
    pub time_zone: String,
    /// Start of every hour in the window (hours cut in `time_zone`).
    #[serde(skip)]
    pub hour_starts: Vec<DateTime<Utc>>,
    /// The whole migrated range when the window was chosen: what a run must compare to open
    /// a gate (the window without --from/--to).
    pub range: Span,
}

/// `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} .. {}", show_hour(self.from), show_hour(self.to))
    }
}

/// What a run compared, against the whole migrated range it had to compare to open a gate.
/// Recorded with the run (`validation_runs.window_*`, `range_*`), so the gates decide from
/// what was compared, not from what was asked for. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    pub compared: Span,
    pub range: Span,
}

impl Coverage {
    /// The parts of the range the run did not compare (before and after its window).
    pub fn unchecked(&self) -> Vec<Span> {
        let (c, r) = (self.compared, self.range);
        let mut gaps = Vec::new();
        if c.from > r.from {
            gaps.push(Span { from: r.from, to: c.from.min(r.to) });
        }
        if c.to < r.to {
            gaps.push(Span { from: c.to.max(r.from), to: r.to });
        }
        gaps
    }

    /// Whether the run compared the whole migrated range (and so may open a gate).
    pub fn whole(&self) -> bool {
        self.unchecked().is_empty()
    }

    /// `2026-11-19T03:00Z .. 2026-11-20T05:00Z and 2026-11-21T00:00Z .. 2026-11-22T00:00Z`.
    pub fn show_unchecked(&self) -> String {
        self.unchecked().iter().map(Span::to_string).collect::<Vec<_>>().join(" and ")
    }

    /// Why a run this narrow opens no gate; `None` for a run over the whole range.
    pub fn narrow_because(&self) -> Option<String> {
        (!self.whole()).then(|| format!("it compared {} of the migrated range {}; still unchecked: {}", self.compared, self.range, self.show_unchecked()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("Redis holds no events under {key}: there is nothing to compare\n  next: check redis.events_key and TSMIGRATE_REDIS_PREFIX")]
    NoEvents { key: String },
    #[error("no whole hour is covered by both systems yet: from {from} ({from_reason}) is not before to {to} ({to_reason})\n  next: wait for the next hour to close past the settle lag, or pass a shorter --settle")]
    Empty { from: String, from_reason: String, to: String, to_reason: String },
}

/// `2026-11-19T03:00Z`: how window edges and hour buckets are shown.
pub fn show_hour(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%MZ").to_string()
}

/// `90s`, `5m`, `1h`.
pub fn show_duration(d: Duration) -> String {
    let secs = d.num_seconds();
    if secs != 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

// Long by design: one decision table for both edges, each with the reason it reports.
pub fn choose(facts: &WindowFacts, events_key: &str) -> Result<Window, WindowError> {
    let tz = facts.tz;
    let oldest = facts.redis_oldest.ok_or_else(|| WindowError::NoEvents { key: events_key.to_string() })?;
    let target_older = facts.target_oldest.filter(|t| *t < oldest && facts.phase >= Phase::Backfilled);
    let (mut from, mut from_reason) = match target_older {
        _ if facts.redis_members >= facts.redis_cap => (
            next_hour(hour_floor(oldest, tz), tz),
            format!("first whole hour after the oldest event Redis holds ({}; older ones were trimmed by the cap of {})", oldest.to_rfc3339(), facts.redis_cap),
        ),
        // Nothing was trimmed, so Redis should hold whatever older events the target has.
        Some(target_oldest) => (
            hour_floor(target_oldest, tz),
            format!(
                "hour of the oldest event the target holds ({}; Redis, below its cap of {}, holds none before {})",
                target_oldest.to_rfc3339(),
                facts.redis_cap,
                oldest.to_rfc3339()
            ),
        ),
        None => (
            hour_floor(oldest, tz),
            format!("hour of the oldest event Redis holds ({} members, below the cap of {}: nothing was trimmed)", facts.redis_members, facts.redis_cap),
        ),
    };
    let mut later = |candidate: DateTime<Utc>, reason: String| {
        if candidate > from {
            from = candidate;
            from_reason = reason;
        }
    };
    if facts.phase < Phase::Backfilled {
        if let Some(t) = facts.completion_point {
            later(
                hour_ceil(t, tz),
                format!("first whole hour after dual-write started ({}): before backfill the target holds only later events", t.to_rfc3339()),
            );
        }
    }
    let retention = facts.now - Duration::days(i64::from(facts.raw_retention_days));
    // A day of margin, as the aggregate refresh keeps: the retention job may be about to drop the oldest day.
    let retained = day_start(local_day(retention, tz) + Duration::days(2), tz);
    later(retained, format!("raw retention of the target ({} days) drops older rows", facts.raw_retention_days));

    let mut to = hour_floor(facts.now - facts.settle, tz);
    let mut to_reason = format!("now minus settle {}, rounded down to the hour", show_duration(facts.settle));
    let range = Span { from, to };

    if let Some(requested) = facts.requested_from {
        let hour = hour_floor(requested, tz);
        if hour >= from {
            from = hour;
            from_reason = format!("--from {}, rounded down to the hour", requested.to_rfc3339());
        } else {
            from_reason = format!("--from {} clamped into the covered window: {from_reason}", requested.to_rfc3339());
        }
    }
    if let Some(requested) = facts.requested_to {
        let hour = hour_floor(requested, tz);
        if hour <= to {
            to = hour;
            to_reason = format!("--to {}, rounded down to the hour", requested.to_rfc3339());
        } else {
            to_reason = format!("--to {} clamped into the covered window: {to_reason}", requested.to_rfc3339());
        }
    }
    if from >= to {
        return Err(WindowError::Empty { from: show_hour(from), from_reason, to: show_hour(to), to_reason });
    }
    let mut hour_starts = Vec::new();
    let mut hour = from;
    while hour < to {
        hour_starts.push(hour);
        hour = next_hour(hour, tz);
    }
    Ok(Window { from, to, from_reason, to_reason, time_zone: tz.name().to_string(), hour_starts, range })
}

impl Window {
    /// What this window compares of the whole migrated range.
    pub fn coverage(&self) -> Coverage {
        Coverage { compared: Span { from: self.from, to: self.to }, range: self.range }
    }
}

/// The part of the window the legacy flush has covered: hours up to and including
/// `legacy_max_hour`. `None` when it covers none of it.
pub fn legacy_covered(window: &Window, legacy_max_hour: Option<DateTime<Utc>>, tz: Tz) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let end = next_hour(legacy_max_hour?, tz).min(window.to);
    (end > window.from).then_some((window.from, end))
}

/// The local days lying wholly inside `[from, to)`.
pub fn whole_days(from: DateTime<Utc>, to: DateTime<Utc>, tz: Tz) -> Vec<NaiveDate> {
    let mut day = local_day(from, tz);
    if day_start(day, tz) < from {
        day += Duration::days(1);
    }
    let mut days = Vec::new();
    while day_start(day + Duration::days(1), tz) <= to {
        days.push(day);
        day += Duration::days(1);
    }
    days
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap()
    }

    fn facts() -> WindowFacts {
        WindowFacts {
            now: t(22, 1, 3),
            settle: Duration::minutes(5),
            tz: Tz::UTC,
            phase: Phase::Backfilled,
            completion_point: Some(t(21, 12, 0)),
            redis_oldest: Some(t(19, 2, 17)),
            target_oldest: Some(t(19, 2, 17)),
            redis_members: 100_000,
            redis_cap: 100_000,
            raw_retention_days: 90,
            requested_from: None,
            requested_to: None,
        }
    }

    #[test]
    fn trimmed_redis_starts_at_the_next_whole_hour_and_ends_at_settle() {
        let w = choose(&facts(), "k").unwrap();
        assert_eq!((w.from, w.to), (t(19, 3, 0), t(22, 0, 0)));
        assert!(w.from_reason.starts_with("first whole hour after the oldest event Redis holds"), "{}", w.from_reason);
        assert_eq!(w.to_reason, "now minus settle 5m, rounded down to the hour");
        assert_eq!(w.hour_starts.len(), 69);
        assert_eq!(show_hour(w.from), "2026-11-19T03:00Z");
    }

    #[test]
    fn untrimmed_redis_starts_at_the_oldest_hour_and_dual_writing_at_the_completion_point() {
        let mut f = facts();
        f.redis_members = 10;
        assert_eq!(choose(&f, "k").unwrap().from, t(19, 2, 0));
        f.phase = Phase::DualWriting;
        f.completion_point = Some(t(21, 12, 30));
        let w = choose(&f, "k").unwrap();
        assert_eq!(w.from, t(21, 13, 0));
        assert!(w.from_reason.contains("dual-write started"), "{}", w.from_reason);
    }

    #[test]
    fn an_untrimmed_redis_is_compared_from_the_oldest_event_either_system_holds() {
        let mut f = facts();
        f.redis_members = 10;
        f.target_oldest = Some(t(18, 5, 40));
        let w = choose(&f, "k").unwrap();
        assert_eq!(w.from, t(18, 5, 0));
        assert!(w.from_reason.contains("oldest event the target holds"), "{}", w.from_reason);
        // Trimmed, the target's older events cannot be compared with Redis.
        f.redis_members = f.redis_cap;
        assert_eq!(choose(&f, "k").unwrap().from, t(19, 3, 0));
    }

    #[test]
    fn a_window_narrower_than_the_range_says_what_it_left_unchecked() {
        let mut f = facts();
        let whole = choose(&f, "k").unwrap();
        assert!(whole.coverage().whole(), "{:?}", whole.coverage());
        assert_eq!(whole.range, Span { from: t(19, 3, 0), to: t(22, 0, 0) });
        f.requested_from = Some(t(20, 5, 0));
        f.requested_to = Some(t(21, 3, 0));
        let narrow = choose(&f, "k").unwrap().coverage();
        assert!(!narrow.whole());
        assert_eq!(narrow.range, whole.range, "the range does not depend on what was asked for");
        assert_eq!(narrow.show_unchecked(), "2026-11-19T03:00Z .. 2026-11-20T05:00Z and 2026-11-21T03:00Z .. 2026-11-22T00:00Z");
        assert!(narrow.narrow_because().unwrap().contains("still unchecked"));
        // Asking for more than the range is clamped to it: whole.
        f.requested_from = Some(t(1, 0, 0));
        f.requested_to = None;
        assert!(choose(&f, "k").unwrap().coverage().whole());
    }

    #[test]
    fn requested_edges_are_rounded_and_clamped() {
        let mut f = facts();
        f.requested_from = Some(t(1, 0, 0));
        f.requested_to = Some(t(20, 5, 30));
        let w = choose(&f, "k").unwrap();
        assert_eq!((w.from, w.to), (t(19, 3, 0), t(20, 5, 0)));
        assert!(w.from_reason.contains("clamped"), "{}", w.from_reason);
        assert!(w.to_reason.contains("rounded down"), "{}", w.to_reason);
        f.requested_to = Some(t(25, 0, 0));
        assert!(choose(&f, "k").unwrap().to_reason.contains("clamped"));
    }

    #[test]
    fn empty_and_eventless_windows_are_errors_with_a_next_step() {
        let mut f = facts();
        f.redis_oldest = Some(t(22, 0, 10));
        assert!(choose(&f, "k").unwrap_err().to_string().contains("next:"));
        f.redis_oldest = None;
        assert!(matches!(choose(&f, "k"), Err(WindowError::NoEvents { .. })));
    }

    #[test]
    fn hours_follow_the_zone_and_legacy_coverage_cuts_the_end() {
        let mut f = facts();
        f.tz = chrono_tz::Asia::Kolkata;
        let w = choose(&f, "k").unwrap();
        assert_eq!(w.from.format("%M").to_string(), "30");
        let berlin = chrono_tz::Europe::Berlin;
        // 2025-10-26: 02:00-03:00 local happens twice; stepping never stalls.
        let start = Utc.with_ymd_and_hms(2025, 10, 25, 23, 0, 0).unwrap();
        let mut h = start;
        for _ in 0..5 {
            h = next_hour(h, berlin);
        }
        assert_eq!(h, start + Duration::hours(5));
        let w = choose(&facts(), "k").unwrap();
        assert_eq!(legacy_covered(&w, Some(t(20, 10, 0)), Tz::UTC), Some((t(19, 3, 0), t(20, 11, 0))));
        assert_eq!(legacy_covered(&w, Some(t(18, 10, 0)), Tz::UTC), None);
        assert_eq!(whole_days(t(19, 3, 0), t(21, 11, 0), Tz::UTC), vec![NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()]);
    }
}
