//! `assess --write-config`: a `tsmigrate.toml` with the measured choices, each commented
//! with why. URLs are left to the environment (they may hold passwords). Pure.

use super::measure::Measured;
use super::project::Projection;
use super::verdict::Verdict;
use crate::config::Settings;

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The backfill page: about one second of copying at the measured rate, in thousands,
/// between 1,000 and 50,000. Pure.
pub fn page_size(copy_rate: Option<f64>, current: usize) -> usize {
    match copy_rate {
        Some(rate) if rate.is_finite() && rate > 0.0 => (((rate / 1000.0).round() as usize) * 1000).clamp(1_000, 50_000),
        _ => current,
    }
}

/// A cap that holds `hours` of events at `per_day`, never below `current`. Pure.
pub fn cap_for(per_day: Option<f64>, hours: u32, current: u64) -> u64 {
    match per_day {
        Some(per_day) if per_day > 0.0 => {
            let wanted = (per_day * f64::from(hours) / 24.0).ceil() as u64;
            wanted.div_ceil(10_000).saturating_mul(10_000).max(current)
        }
        _ => current,
    }
}

/// The file's text.
pub fn render(settings: &Settings, m: &Measured, projection: Option<&Projection>, verdict: &Verdict) -> String {
    let s = settings;
    let r = &s.redis;
    let t = &s.target;
    let a = &s.assess;
    let per_day = m.volume.events_per_day;
    let mut o = String::new();
    o.push_str("# tsmigrate settings written by `tsmigrate assess --write-config` from what it measured.\n");
    o.push_str(&format!("# Window {} .. {}; verdict: {}\n", crate::human::utc(m.window.from), crate::human::utc(m.window.to), verdict.headline));
    o.push_str("# The connection URLs are not written here (they may hold passwords): set DATABASE_URL,\n");
    o.push_str("# LEGACY_DATABASE_URL and REDIS_URL, or add [database] url / legacy_url and [redis] url.\n");
    o.push_str("# Check it with: tsmigrate config check --config <this file>\n\n");

    o.push_str("[redis]\n# The keys assess read (as in force when it ran).\n");
    for (key, value) in [
        ("key_prefix", &r.key_prefix),
        ("events_key", &r.events_key),
        ("event_counters_key", &r.event_counters_key),
        ("category_counters_key", &r.category_counters_key),
        ("sessions_key", &r.sessions_key),
        ("outbox_stream", &r.outbox_stream),
    ] {
        o.push_str(&format!("{key} = {}\n", quoted(value)));
    }
    let hold = m.redis.holding_secs.map(|s| format!("{:.1} hours", s / 3600.0)).unwrap_or_else(|| "an unknown time".into());
    let suggested = cap_for(per_day, a.min_redis_hold_hours, r.event_cap);
    o.push_str(&format!("# The legacy writer's cap: Redis holds {hold} of events at it ({}).\n", m.redis.holding_basis));
    if suggested > r.event_cap {
        o.push_str(&format!(
            "# Holding {} h at the measured volume needs a cap of about {suggested}: raise the writer's cap (and this) to keep\n# raw events for the backfill and validation; the outbox headroom below must fit too.\n",
            a.min_redis_hold_hours
        ));
    }
    o.push_str(&format!("event_cap = {}\n\n", r.event_cap));

    o.push_str("[legacy]\n");
    for (key, value) in [("hourly_table", &s.legacy.hourly_table), ("asset_table", &s.legacy.asset_table), ("popular_function", &s.legacy.popular_function)] {
        o.push_str(&format!("{key} = {}\n", quoted(value)));
    }
    o.push('\n');

    o.push_str("[target]\n");
    o.push_str(&format!("# {}.\n", m.target.mode_reason));
    o.push_str(&format!("mode = {}\n", quoted(m.target.mode.as_str())));
    o.push_str(&format!("bucket_timezone = {}\n", quoted(&t.bucket_timezone)));
    if let Some(p) = projection {
        let stored = p.raw.stored_bytes.map(|b| crate::human::bytes(b as u64)).unwrap_or_else(|| "an unmeasured size".into());
        o.push_str(&format!(
            "# Raw events: {} events/day for {} days = {} rows, {stored}{}.\n",
            crate::human::count(p.events_per_day.round() as u64),
            t.raw_retention_days,
            crate::human::count(p.raw.rows.round() as u64),
            p.raw.compression_ratio.map(|r| format!(" (compressed {r:.1}x after {} days)", t.columnstore_after_days)).unwrap_or_default()
        ));
        o.push_str(&format!(
            "# Chunk interval: {} ({}); prepare creates daily chunks (partitions){}.\n",
            p.chunk.interval,
            p.chunk.reason,
            match p.chunk.prepared_daily_fits {
                Some(true) => ", which fit",
                Some(false) => ", which do not fit: raise shared_buffers",
                None => "",
            }
        ));
    }
    o.push_str(&format!("raw_retention_days = {}\n", t.raw_retention_days));
    o.push_str(&format!("hourly_retention_days = {}\n", t.hourly_retention_days));
    o.push_str(&format!("daily_retention_days = {}\n", t.daily_retention_days));
    o.push_str(&format!("columnstore_after_days = {}\n\n", t.columnstore_after_days));

    o.push_str("[ingest]\n# The tracker's batch (POST /api/v1/analytics).\n");
    o.push_str(&format!("max_batch = {}\n\n", s.ingest.max_batch));

    o.push_str("[migration]\n");
    let copy = projection.and_then(|p| p.durations.copy_events_per_sec);
    let page = page_size(copy, s.migration.backfill_page_size);
    match copy {
        Some(rate) => {
            o.push_str(&format!("# About a second of copying at the measured {}: a page commits often and costs little.\n", crate::human::rate(rate, "events")))
        }
        None => o.push_str("# The copy rate was not measured: the page size in force.\n"),
    }
    o.push_str(&format!("backfill_page_size = {page}\n\n"));

    o.push_str("[assess]\n# The decision criteria this verdict used.\n");
    o.push_str(&format!("baseline_events_per_day = {}\n", a.baseline_events_per_day));
    o.push_str(&format!("migrate_above_events_per_day = {}\n", a.migrate_above_events_per_day));
    o.push_str(&format!("timescaledb_growth = {}\n", a.timescaledb_growth));
    o.push_str(&format!("other_engine_growth = {}\n", a.other_engine_growth));
    o.push_str(&format!("slow_query_ms = {}\n", a.slow_query_ms));
    o.push_str(&format!("redis_memory_bytes = {}\n", a.redis_memory_bytes));
    o.push_str(&format!("min_redis_hold_hours = {}\n", a.min_redis_hold_hours));
    o.push_str(&format!("horizon_days = {}\n", a.horizon_days));
    if let Some(p) = projection {
        o.push_str(&format!(
            "# A {}-minute outage at the peak rate: {} of outbox{}.\n",
            p.outbox.outage_minutes,
            p.outbox.bytes.map(|b| crate::human::bytes(b as u64)).unwrap_or_else(|| "an unmeasured size".into()),
            match p.outbox.fits {
                Some(true) => ", which fits below maxmemory",
                Some(false) => ", which does NOT fit below maxmemory",
                None => " (no maxmemory set)",
            }
        ));
    }
    o.push_str(&format!("outage_minutes = {}\n", a.outage_minutes));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_a_second_of_copying_and_the_cap_holds_the_hours_asked() {
        assert_eq!(page_size(Some(23_456.0), 10_000), 23_000);
        assert_eq!(page_size(Some(200.0), 10_000), 1_000);
        assert_eq!(page_size(Some(1e9), 10_000), 50_000);
        assert_eq!(page_size(None, 7_000), 7_000);
        assert_eq!(cap_for(Some(640_000.0), 24, 100_000), 640_000);
        assert_eq!(cap_for(Some(12_345.0), 24, 100_000), 100_000, "never below the cap in force");
        assert_eq!(cap_for(Some(123_456.0), 24, 100_000), 130_000);
        assert_eq!(cap_for(None, 24, 100_000), 100_000);
    }
}
