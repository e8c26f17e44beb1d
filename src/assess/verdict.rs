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

/// How far ahead a growth trend is worth a day count in the headline (10 years).
const TREND_IN_SIGHT_DAYS: f64 = 3650.0;

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
        format!(
            "{} events/day is above the {}-event baseline the legacy design is sized for; TimescaleDB is the home from {}× ({} events/day)",
            fmt_count(volume),
            fmt_count(baseline),
            t.timescaledb_growth,
            fmt_count(timescale_from)
        )
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
            // A trend decades away is no plan: say it is not in sight rather than a day count.
            match days_to_threshold {
                Some(days) if days <= TREND_IN_SIGHT_DAYS => why.push(format!("the trend reaches it in {} days", fmt_count(days.ceil()))),
                Some(_) => why.push("the trend does not reach it within 10 years".into()),
                None => {}
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
    use crate::assess::measure::{QueryTiming, RedisFigures, TargetFigures, Volume, Window};
    use crate::store::capability::Capabilities;
    use chrono::{TimeZone, Utc};

    /// A system measured at `per_day` events a day, the slowest query `p95_ms`, Redis holding
    /// `hold_hours` and using `memory` bytes for the events.
    fn measured(per_day: f64, p95_ms: f64, hold_hours: f64, memory: u64, mode: StorageMode, mode_reason: &str) -> Measured {
        let at = Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
        Measured {
            window: Window { from: at - chrono::Duration::days(7), to: at, days_asked: 7, days_covered: 7.0 },
            volume: Volume { source: "legacy hourly table", events: (per_day * 7.0) as i64, events_per_day: Some(per_day), ..Volume::none() },
            redis: RedisFigures {
                members: 100_000,
                cap: 100_000,
                at_cap: true,
                oldest: None,
                newest: None,
                held_secs: Some(hold_hours * 3600.0),
                holding_secs: Some(hold_hours * 3600.0),
                holding_basis: "measured",
                events_key_bytes: Some(memory),
                durability: Default::default(),
                peak_minute: None,
                peak_second: None,
                members_read: 0,
                read_truncated: false,
                read_secs: 0.0,
                not_events: 0,
                member_bytes: None,
                unique_users: None,
            },
            queries: vec![QueryTiming {
                name: "popular_asset_types",
                request: String::new(),
                runs: 5,
                p50_ms: Some(p95_ms),
                p95_ms: Some(p95_ms),
                max_ms: Some(p95_ms),
                error: None,
            }],
            target: TargetFigures {
                capabilities: Capabilities {
                    server_version: "15".into(),
                    timescaledb_available: None,
                    timescaledb_installed: None,
                    timescaledb_preloaded: false,
                },
                mode,
                mode_reason: mode_reason.into(),
                mode_error: None,
                shared_buffers_bytes: None,
                sample: None,
                sample_error: None,
            },
        }
    }

    fn decide(per_day: f64, p95_ms: f64, hold_hours: f64, memory: u64) -> (Decision, Vec<&'static str>) {
        let m = measured(per_day, p95_ms, hold_hours, memory, StorageMode::Timescaledb, "usable");
        let v = verdict(&m, None, &AssessSettings::default());
        (v.decision, v.criteria.iter().filter(|c| c.met).map(|c| c.name).collect())
    }

    #[test]
    fn each_criterion_flips_the_verdict_at_its_threshold() {
        assert_eq!(decide(50_000.0, 100.0, 48.0, 1 << 20), (Decision::NotYet, vec![]));
        assert_eq!(decide(100_000.0, 100.0, 48.0, 1 << 20), (Decision::Plan, vec![]), "at the baseline: plan it");
        assert_eq!(decide(500_000.0, 100.0, 48.0, 1 << 20), (Decision::Plan, vec![]), "the threshold itself is not above it");
        assert_eq!(decide(500_001.0, 100.0, 48.0, 1 << 20), (Decision::MigrateNow, vec!["volume"]));
        assert_eq!(decide(50_000.0, 1000.0, 48.0, 1 << 20).0, Decision::NotYet);
        assert_eq!(decide(50_000.0, 1000.1, 48.0, 1 << 20), (Decision::MigrateNow, vec!["slow_queries"]));
        assert_eq!(decide(50_000.0, 100.0, 24.0, 1 << 20).0, Decision::NotYet);
        assert_eq!(decide(50_000.0, 100.0, 23.9, 1 << 20), (Decision::MigrateNow, vec!["redis_cap"]));
        assert_eq!(decide(50_000.0, 100.0, 48.0, 1 << 30).0, Decision::NotYet);
        assert_eq!(decide(50_000.0, 100.0, 48.0, (1 << 30) + 1), (Decision::MigrateNow, vec!["redis_memory"]));
        assert_eq!(decide(10_000_000.0, 100.0, 48.0, 1 << 20), (Decision::ConsiderOtherEngines, vec!["volume"]), "100x the baseline");
        let m = measured(640_000.0, 1800.0, 3.7, 1 << 20, StorageMode::Timescaledb, "usable");
        let v = verdict(&m, None, &AssessSettings::default());
        assert_eq!(
            v.headline,
            "migrate now: 640,000 events/day (> 500,000), slowest legacy query popular_asset_types p95 1.8 s (> 1.0 s), Redis holds 3.7 h of events (< 24 h)"
        );
        assert!(v.home.contains("TimescaleDB"), "{}", v.home);
    }

    #[test]
    fn plain_postgresql_is_a_blocker_unless_it_was_chosen() {
        let m = measured(1.0, 1.0, 48.0, 1, StorageMode::Postgres, "TimescaleDB is not available on the target: plain PostgreSQL");
        assert_eq!(blockers(&m, None).iter().map(|b| b.kind).collect::<Vec<_>>(), vec!["no_timescaledb"]);
        let chosen = measured(1.0, 1.0, 48.0, 1, StorageMode::Postgres, "target.mode = \"postgres\"");
        assert!(blockers(&chosen, None).is_empty());
        let mut bare = measured(1.0, 1.0, 48.0, 1, StorageMode::Timescaledb, "usable");
        bare.redis.durability.aof = Some(false);
        bare.redis.durability.rdb_save = Some(String::new());
        bare.redis.durability.maxmemory = Some(100);
        bare.redis.durability.maxmemory_policy = Some("allkeys-lru".into());
        bare.redis.durability.evicting = true;
        assert_eq!(blockers(&bare, None).iter().map(|b| b.kind).collect::<Vec<_>>(), vec!["no_persistence", "evicting_policy"]);
    }

    #[test]
    fn durations_and_latencies_read_as_people_say_them() {
        assert_eq!(fmt_secs(3.7 * 3600.0), "3.7 h");
        assert_eq!(fmt_secs(3.0 * 86_400.0), "3.0 d");
        assert_eq!(fmt_secs(600.0), "10 min");
        assert_eq!(fmt_ms(1800.0), "1.8 s");
        assert_eq!(fmt_ms(12.4), "12 ms");
    }
}
