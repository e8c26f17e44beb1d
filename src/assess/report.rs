//! The text `tsmigrate assess` prints. Pure.

use super::measure::{Peak, QueryTiming};
use super::Assessment;
use crate::human::{bytes, count, rate, utc};

fn n(x: f64) -> String {
    count(x.round().max(0.0) as u64)
}

fn size(b: Option<f64>) -> String {
    b.map(|b| bytes(b.max(0.0) as u64)).unwrap_or_else(|| "not measured".into())
}

fn span(secs: f64) -> String {
    if secs >= 2.0 * 86_400.0 {
        format!("{:.1} days", secs / 86_400.0)
    } else if secs >= 3_600.0 {
        format!("{:.1} hours", secs / 3_600.0)
    } else if secs >= 60.0 {
        format!("{:.1} minutes", secs / 60.0)
    } else {
        format!("{secs:.1} s")
    }
}

fn per_sec(x: f64) -> String {
    if x >= 10.0 {
        rate(x, "events")
    } else {
        format!("{x:.2} events/s")
    }
}

fn peak(label: &str, p: &Option<Peak>) -> Option<String> {
    p.as_ref().map(|p| format!("{label} {} ({} events, {})", utc(p.at), count(p.events), per_sec(p.events_per_sec)))
}

fn query(q: &QueryTiming) -> String {
    match (&q.error, q.p50_ms, q.p95_ms) {
        (Some(e), ..) => format!("{}: could not run: {e}", q.name),
        (None, Some(p50), Some(p95)) => format!("{}: p50 {p50:.1} ms, p95 {p95:.1} ms over {} runs ({})", q.name, q.runs, q.request),
        _ => format!("{}: not measured", q.name),
    }
}

pub fn text(a: &Assessment) -> String {
    let m = &a.measured;
    let r = &m.redis;
    let v = &m.volume;
    let mut o = String::new();
    o.push_str(&format!("assess: {}\n", a.verdict.headline));
    o.push_str(&format!(
        "window:     {} .. {} ({} days asked, {:.1} covered)\n",
        utc(m.window.from),
        utc(m.window.to),
        m.window.days_asked,
        m.window.days_covered
    ));
    o.push_str("read (bounded, read-only):\n");
    for read in &a.reads {
        o.push_str(&format!("  {read}\n"));
    }

    o.push_str("measured:\n");
    let trend = v
        .growth_per_week
        .map(|g| format!(", trend {:+.1} %/week over {} whole days", g * 100.0, v.days.len()))
        .unwrap_or_else(|| ", trend: fewer than 3 whole days".into());
    match v.events_per_day {
        Some(d) => o.push_str(&format!("  events/day:        {} ({}, {} events){trend}\n", n(d), v.source, count(v.events))),
        None => o.push_str("  events/day:        not measured: no hourly rows and no events in Redis\n"),
    }
    let peaks: Vec<String> = [peak("hour", &v.peak_hour), peak("minute", &r.peak_minute), peak("second", &r.peak_second)].into_iter().flatten().collect();
    o.push_str(&format!("  peak:              {}\n", if peaks.is_empty() { "not measured".into() } else { peaks.join("; ") }));
    o.push_str(&format!(
        "  redis events:      {} members, cap {} ({}), holds {} ({})\n",
        count(r.members),
        count(r.cap),
        if r.at_cap { "at the cap" } else { "below the cap" },
        r.holding_secs.map(span).unwrap_or_else(|| "not measured".into()),
        if r.holding_basis == "measured" { "measured: newest − oldest member" } else { "projected: the cap / the events a second" }
    ));
    if let (Some(events), Some(per_day)) = (v.hourly_only_events, v.hourly_only_per_day) {
        o.push_str(&format!("  hourly only:       {} events ({}/day) of the window exist only as hourly aggregates\n", count(events), n(per_day)));
    }
    if let Some(u) = &r.unique_users {
        o.push_str(&format!(
            "  unique users/day:  {} ({} .. {}{})\n",
            count(u.users),
            utc(u.from),
            utc(u.to),
            if u.full_day { "" } else { ": Redis holds less than a day, a lower bound" }
        ));
    }
    if let Some(s) = &r.member_bytes {
        o.push_str(&format!("  member size:       p50 {} B, p95 {} B, max {} B over {} members read", s.p50, s.p95, s.max, count(r.members_read)));
        o.push_str(&format!(
            "{}{}\n",
            if r.read_truncated { " (the newest; the window holds more)" } else { "" },
            if r.not_events > 0 { format!(", {} not events", count(r.not_events)) } else { String::new() }
        ));
    }
    let d = &r.durability;
    o.push_str(&format!(
        "  redis memory:      used {}, events key {}, maxmemory {}, policy {}, AOF {}, RDB save {}\n",
        d.used_memory.map(bytes).unwrap_or_else(|| "?".into()),
        r.events_key_bytes.map(bytes).unwrap_or_else(|| "?".into()),
        match d.maxmemory {
            Some(0) => "none".into(),
            Some(m) => bytes(m),
            None => "?".into(),
        },
        d.maxmemory_policy.as_deref().unwrap_or("?"),
        match d.aof {
            Some(true) => "on",
            Some(false) => "off",
            None => "?",
        },
        d.rdb_save.as_deref().map(|s| if s.trim().is_empty() { "off".to_string() } else { format!("{s:?}") }).unwrap_or_else(|| "?".into())
    ));
    o.push_str("  legacy queries:\n");
    for q in &m.queries {
        o.push_str(&format!("    {}\n", query(q)));
    }
    let t = &m.target;
    o.push_str(&format!("  target:            PostgreSQL {}, {} mode ({})\n", t.capabilities.server_version, t.mode, t.mode_reason));
    match (&t.sample, &t.sample_error) {
        (Some(s), _) => o.push_str(&format!(
            "  sample:            {} events copied and rolled back: {} table + {} indexes ({:.0} B a row){}, COPY {}\n",
            count(s.rows),
            bytes(s.table_bytes.max(0) as u64),
            bytes(s.index_bytes.max(0) as u64),
            s.bytes_per_row(),
            s.compression_ratio().map(|c| format!(", compressed {c:.1}x")).unwrap_or_else(|| ", no compression in this mode".into()),
            s.copy_rate().map(per_sec).unwrap_or_else(|| "not timed".into())
        )),
        (None, Some(e)) => o.push_str(&format!("  sample:            not measured: {e}\n")),
        (None, None) => {}
    }

    if let Some(p) = &a.projected {
        o.push_str(&format!("projected ({} events/day):\n", n(p.events_per_day)));
        o.push_str(&format!(
            "  raw events:        {} rows over {} days, {}{}\n",
            n(p.raw.rows),
            p.raw.retention_days,
            size(p.raw.stored_bytes),
            match (p.raw.compression_ratio, p.raw.columnstore_after_days) {
                (Some(c), Some(after)) =>
                    format!(" (compressed {c:.1}x after {after} days; uncompressed {} + {} indexes)", size(p.raw.table_bytes), size(p.raw.index_bytes)),
                _ => format!(" ({} table + {} indexes)", size(p.raw.table_bytes), size(p.raw.index_bytes)),
            }
        ));
        o.push_str(&format!(
            "  aggregates:        {} hourly + {} daily rows, {}\n",
            n(p.aggregates.hourly_rows),
            n(p.aggregates.daily_rows),
            size(p.aggregates.bytes)
        ));
        o.push_str(&format!("  user sets:         {} rows, {} ({})\n", n(p.user_sets.rows), size(p.user_sets.bytes), p.user_sets.model));
        o.push_str(&format!("  total:             {}\n", bytes(p.total_bytes.max(0.0) as u64)));
        o.push_str(&format!("  chunk interval:    {} ({}; a chunk {})\n", p.chunk.interval, p.chunk.reason, size(p.chunk.chunk_bytes)));
        let ob = &p.outbox;
        o.push_str(&format!(
            "  outbox headroom:   a {}-minute target outage at {} needs {} events, {}{}\n",
            ob.outage_minutes,
            ob.peak_events_per_sec.map(per_sec).unwrap_or_else(|| "an unmeasured peak".into()),
            ob.events.map(n).unwrap_or_else(|| "?".into()),
            size(ob.bytes),
            match (ob.fits, ob.free_bytes) {
                (Some(true), Some(free)) => format!(": fits ({} free below maxmemory)", bytes(free.max(0) as u64)),
                (Some(false), Some(free)) => format!(": does NOT fit ({} free below maxmemory)", bytes(free.max(0) as u64)),
                _ => " (no maxmemory: bounded by the machine's memory)".into(),
            }
        ));
        let du = &p.durations;
        o.push_str(&format!(
            "  backfill:          {} events in {} at {} (Redis read {}, COPY {})\n",
            count(du.backfill_events),
            du.backfill_secs.map(span).unwrap_or_else(|| "?".into()),
            du.backfill_events_per_sec.map(per_sec).unwrap_or_else(|| "?".into()),
            du.redis_read_events_per_sec.map(per_sec).unwrap_or_else(|| "?".into()),
            du.copy_events_per_sec.map(per_sec).unwrap_or_else(|| "?".into())
        ));
        o.push_str(&format!(
            "  relay:             drains that outage in {}; keeps up with {} the peak\n",
            du.relay_drain_secs.map(span).unwrap_or_else(|| "?".into()),
            du.relay_headroom.map(|h| format!("{}x", n(h))).unwrap_or_else(|| "? times".into())
        ));
    }

    let verdict = &a.verdict;
    o.push_str(&format!("verdict:    {}\n", verdict.headline));
    o.push_str("criteria (the [assess] settings):\n");
    for c in &verdict.criteria {
        o.push_str(&format!("  {:<4} {}: {}\n", if c.met { "MET" } else { "no" }, c.rule, c.text));
    }
    o.push_str(&format!("home:       {}\n", verdict.home));
    if !verdict.would_change.is_empty() {
        o.push_str("would change it:\n");
        for w in &verdict.would_change {
            o.push_str(&format!("  - {w}\n"));
        }
    }
    if verdict.blockers.is_empty() {
        o.push_str("blockers:   none seen\n");
    } else {
        o.push_str("blockers:\n");
        for b in &verdict.blockers {
            o.push_str(&format!("  - {}: {}\n", b.kind, b.text));
        }
    }
    o
}
