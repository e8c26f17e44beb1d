//! The verdict: the seed's decision criteria applied to what was measured, with the
//! thresholds as data (`[assess]` settings), each stated in the output with its measured
//! value; what would change the verdict; and the blockers. Pure.

use serde::Serialize;

use super::measure::Measured;
use super::project::Projection;
use crate::config::AssessSettings;
use crate::store::StorageMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// No criterion is met and none is near: keep the legacy design.
    NotYet,
    /// No criterion is met, but the volume is above the baseline or its trend reaches the
    /// volume threshold within the horizon.
    Plan,
    /// At least one criterion is met.
    MigrateNow,
    /// A criterion is met and the volume is past the growth at which other engines deserve a look.
    ConsiderOtherEngines,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::NotYet => "not yet",
            Decision::Plan => "plan the migration",
            Decision::MigrateNow => "migrate now",
            Decision::ConsiderOtherEngines => "migrate now, and consider other engines",
        }
    }
}

/// One decision criterion: its measured value, its threshold, whether it is met.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Criterion {
    /// `volume`, `slow_queries`, `redis_cap`, `redis_memory`.
    pub name: &'static str,
    /// The criterion as the seed words it, with the threshold.
    pub rule: String,
    /// `None` when it could not be measured (then it is not met).
    pub measured: Option<f64>,
    pub threshold: f64,
    pub met: bool,
    /// The measured value against the threshold, in words.
    pub text: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Blocker {
    /// `no_timescaledb`, `timescaledb_required`, `no_persistence`, `evicting_policy`, `outbox_headroom`.
    pub kind: &'static str,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub decision: Decision,
    /// `migrate now: 640,000 events/day (> 500,000), …`.
    pub headline: String,
    pub criteria: Vec<Criterion>,
    /// The home the volume points to (legacy, TimescaleDB, other engines) and why.
    pub home: String,
    pub would_change: Vec<String>,
    pub blockers: Vec<Blocker>,
}

fn fmt_count(n: f64) -> String {
    crate::human::count(n.round().max(0.0) as u64)
}

fn fmt_secs(secs: f64) -> String {
    if secs >= 2.0 * 86_400.0 {
        format!("{:.1} d", secs / 86_400.0)
    } else if secs >= 3_600.0 {
        format!("{:.1} h", secs / 3_600.0)
    } else {
        format!("{:.0} min", secs / 60.0)
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// The criteria of `m` under `t`. Pure.
pub fn criteria(m: &Measured, t: &AssessSettings) -> Vec<Criterion> {
    let volume = m.volume.events_per_day;
    let migrate_above = t.migrate_above_events_per_day as f64;
    let slowest = m.queries.iter().filter_map(|q| q.p95_ms.map(|ms| (q.name, ms))).max_by(|a, b| a.1.total_cmp(&b.1));
    let slow = t.slow_query_ms as f64;
    let hold = m.redis.holding_secs.map(|s| s / 3600.0);
    let min_hold = f64::from(t.min_redis_hold_hours);
    let memory = m.redis.events_key_bytes.map(|b| b as f64);
    let memory_limit = t.redis_memory_bytes as f64;
    vec![
        Criterion {
            name: "volume",
            rule: format!("event volume above {} events/day", fmt_count(migrate_above)),
            measured: volume,
            threshold: migrate_above,
            met: volume.is_some_and(|v| v > migrate_above),
            text: match volume {
                Some(v) => format!("{} events/day ({} {})", fmt_count(v), if v > migrate_above { ">" } else { "<=" }, fmt_count(migrate_above)),
                None => "events/day: not measured (no hourly rows, no events in Redis)".into(),
            },
        },
        Criterion {
            name: "slow_queries",
            rule: format!("analytics queries slower than {} (p95)", fmt_ms(slow)),
            measured: slowest.map(|s| s.1),
            threshold: slow,
            met: slowest.is_some_and(|s| s.1 > slow),
            text: match slowest {
                Some((name, ms)) => format!("slowest legacy query {name} p95 {} ({} {})", fmt_ms(ms), if ms > slow { ">" } else { "<=" }, fmt_ms(slow)),
                None => "legacy query latency: not measured (every query failed)".into(),
            },
        },
        Criterion {
            name: "redis_cap",
            rule: format!("the {}-event cap trims events held less than {min_hold} h", fmt_count(m.redis.cap as f64)),
            measured: hold,
            threshold: min_hold,
            met: hold.is_some_and(|h| h < min_hold),
            text: match m.redis.holding_secs {
                Some(secs) => format!(
                    "Redis holds {} of events{} ({} {min_hold} h)",
                    fmt_secs(secs),
                    if m.redis.holding_basis == "projected" { " once at its cap" } else { "" },
                    if secs / 3600.0 < min_hold { "<" } else { ">=" }
                ),
                None => "how long Redis holds events: not measured (no events)".into(),
            },
        },
        Criterion {
            name: "redis_memory",
            rule: format!("Redis memory for analytics above {}", crate::human::bytes(t.redis_memory_bytes)),
            measured: memory,
            threshold: memory_limit,
            met: memory.is_some_and(|b| b > memory_limit),
            text: match m.redis.events_key_bytes {
                Some(b) => format!(
                    "the events sorted set uses {} ({} {})",
                    crate::human::bytes(b),
                    if b as f64 > memory_limit { ">" } else { "<=" },
                    crate::human::bytes(t.redis_memory_bytes)
                ),
                None => "Redis memory of the events key: not measured (no such key, or MEMORY USAGE refused)".into(),
            },
        },
    ]
}

/// The blockers it can see. Pure.
pub fn blockers(m: &Measured, projection: Option<&Projection>) -> Vec<Blocker> {
    let mut out = Vec::new();
    if let Some(error) = &m.target.mode_error {
        out.push(Blocker { kind: "timescaledb_required", text: crate::state::split_hint(error).0 });
    } else if m.target.mode == StorageMode::Postgres && !m.target.mode_reason.starts_with("target.mode") {
        out.push(Blocker {
            kind: "no_timescaledb",
            text: format!("{} mode: native partitions, rollups kept by `tsmigrate run`, no compression", m.target.mode_reason),
        });
    }
    let d = &m.redis.durability;
    if d.aof == Some(false) && d.rdb_save.as_deref().is_some_and(|s| s.trim().is_empty()) {
        out.push(Blocker {
            kind: "no_persistence",
            text: "Redis has no persistence (no AOF, no RDB snapshots): a restart during dual-write loses the outbox; turn on `appendonly yes` first".into(),
        });
    }
    if let Some(reason) = d.evicting_reason() {
        out.push(Blocker { kind: "evicting_policy", text: reason });
    }
    if let Some(o) = projection.map(|p| &p.outbox).filter(|o| o.fits == Some(false)) {
        out.push(Blocker {
            kind: "outbox_headroom",
            text: format!(
                "a {}-minute target outage at the peak rate needs {} of outbox; Redis has {} below maxmemory: raise maxmemory",
                o.outage_minutes,
                crate::human::bytes(o.bytes.unwrap_or(0.0) as u64),
                crate::human::bytes(o.free_bytes.unwrap_or(0).max(0) as u64)
            ),
        });
    }
    out
}

/// The verdict. Pure.
pub fn verdict(m: &Measured, projection: Option<&Projection>, t: &AssessSettings) -> Verdict {
    let criteria = criteria(m, t);
    let volume = m.volume.events_per_day.unwrap_or(0.0);
    let baseline = t.baseline_events_per_day as f64;
    let timescale_from = baseline * f64::from(t.timescaledb_growth);
    let other_from = baseline * f64::from(t.other_engine_growth);
    let migrate_above = t.migrate_above_events_per_day as f64;
    // Days until the trend reaches the volume threshold (linear: + growth × mean a week).
    let days_to_threshold = match m.volume.growth_per_week {
        Some(g) if g > 0.0 && volume > 0.0 && volume <= migrate_above => Some((migrate_above - volume) / (g * volume / 7.0)),
        _ => None,
    };
    let met: Vec<&Criterion> = criteria.iter().filter(|c| c.met).collect();
    let decision = if !met.is_empty() {
        if volume >= other_from {
            Decision::ConsiderOtherEngines
        } else {
            Decision::MigrateNow
        }
    } else if volume >= baseline || days_to_threshold.is_some_and(|d| d <= f64::from(t.horizon_days)) {
        Decision::Plan
    } else {
        Decision::NotYet
    };
    let home = if volume >= other_from {
        format!(
            "{} events/day is past {}× the {}-event baseline: TimescaleDB carries it, but a managed time-series engine deserves a look",
            fmt_count(volume),
            t.other_engine_growth,
            fmt_count(baseline)
        )
    } else if volume >= timescale_from {
        format!(
            "{} events/day is past {}× the {}-event baseline: TimescaleDB (or plain PostgreSQL partitions)",
            fmt_count(volume),
            t.timescaledb_growth,
            fmt_count(baseline)
        )
    } else if volume >= baseline {
        format!("{} events/day is above the {}-event baseline the legacy design is sized for", fmt_count(volume), fmt_count(baseline))
    } else {
        format!("{} events/day is within the {}-event baseline the legacy design is sized for", fmt_count(volume), fmt_count(baseline))
    };
    let headline = match decision {
        Decision::NotYet if m.volume.events_per_day.is_none() => format!(
            "{}: no events measured: the legacy hourly table has no rows in the window and Redis holds no events under the events key; check the names (tsmigrate config show)",
            decision.as_str()
        ),
        Decision::NotYet | Decision::Plan => {
            let mut why = vec![format!("{} events/day (migrate above {})", fmt_count(volume), fmt_count(migrate_above))];
            if let Some(days) = days_to_threshold {
                why.push(format!("the trend reaches it in {} days", days.ceil()));
            }
            format!("{}: {}", decision.as_str(), why.join(", "))
        }
        _ => format!("{}: {}", decision.as_str(), met.iter().map(|c| c.text.clone()).collect::<Vec<_>>().join(", ")),
    };
    let mut would_change: Vec<String> = criteria
        .iter()
        .filter(|c| !c.met)
        .filter(|c| c.measured.is_some())
        .map(|c| match c.name {
            "redis_cap" => {
                format!("migrate now once {} (at this cap: above {} events/day)", c.rule, fmt_count(m.redis.cap as f64 * 24.0 / c.threshold.max(1.0)))
            }
            _ => format!("migrate now once {}", c.rule),
        })
        .collect();
    if let Some(g) = m.volume.growth_per_week {
        would_change.push(match days_to_threshold {
            Some(days) => {
                format!("at the measured trend ({:+.1} %/week) the volume passes {} events/day in {} days", g * 100.0, fmt_count(migrate_above), days.ceil())
            }
            None => format!("the measured trend is {:+.1} %/week", g * 100.0),
        });
    }
    if !met.is_empty() {
        would_change
            .push(format!("staying on the legacy design needs every criterion unmet: {}", met.iter().map(|c| c.rule.clone()).collect::<Vec<_>>().join("; ")));
    }
    Verdict { decision, headline, criteria, home, would_change, blockers: blockers(m, projection) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_latencies_read_as_people_say_them() {
        assert_eq!(fmt_secs(3.7 * 3600.0), "3.7 h");
        assert_eq!(fmt_secs(3.0 * 86_400.0), "3.0 d");
        assert_eq!(fmt_secs(600.0), "10 min");
        assert_eq!(fmt_ms(1800.0), "1.8 s");
        assert_eq!(fmt_ms(12.4), "12 ms");
    }
}
