//! Renderers of a [`ValidationReport`]: a text summary with a unified diff of the differing
//! buckets, a JSON report (its own wire types, so the domain types can change freely),
//! and a JUnit XML file for CI (one testsuite per check, one testcase per check and per
//! differing bucket).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use similar::TextDiff;

use super::collect::aggregates::{AssetKey, HourlyKey};
use super::diff::{Counts, EventDifference, EventFindings, HourDifference, Listed};
use super::window::{show_hour, Span};
use super::{AggregateCheck, CheckState, ValidationReport, Verdict};
use crate::legacy::reader::OutOfRange;

/// `2026-11-19T03:12:01.123Z`.
fn show_time_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)).unwrap_or_else(|| ms.to_string())
}

fn show_hash(hash: u64) -> String {
    format!("{hash:016x}")
}

/// How the aggregate checks show their keys and counts.
pub trait AggregateKey {
    /// The check's name in JSON and JUnit.
    const CHECK: &'static str;
    /// What the check compares, for people.
    const TITLE: &'static str;
    const COUNT: &'static str;
    const DISTINCT: &'static str;
    /// The bucket, for a diff line.
    fn label(&self) -> String;
    /// The key fields, for JSON.
    fn wire(&self) -> serde_json::Map<String, serde_json::Value>;
}

impl AggregateKey for HourlyKey {
    const CHECK: &'static str = "legacy_hourly";
    const TITLE: &'static str = "legacy hourly table vs analytics_hourly";
    const COUNT: &'static str = "event_count";
    const DISTINCT: &'static str = "unique_users";
    fn label(&self) -> String {
        format!("{} {} {}", show_hour(self.hour), self.event_name, self.category)
    }
    fn wire(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("hour".into(), self.hour.to_rfc3339_opts(SecondsFormat::Secs, true).into());
        m.insert("event_name".into(), self.event_name.clone().into());
        m.insert("category".into(), self.category.clone().into());
        m
    }
}

impl AggregateKey for AssetKey {
    const CHECK: &'static str = "asset_popularity";
    const TITLE: &'static str = "legacy asset popularity vs analytics_asset_popularity_ts";
    const COUNT: &'static str = "generation_count";
    const DISTINCT: &'static str = "unique_creators";
    fn label(&self) -> String {
        format!("{} {}", self.day, self.asset_type)
    }
    fn wire(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("day".into(), self.day.to_string().into());
        m.insert("asset_type".into(), self.asset_type.clone().into());
        m
    }
}

// ---------------------------------------------------------------- unified diff

/// The differing event buckets: per listed hour, its summary on each side and the listed
/// events of that hour on the side that has them (missing: Redis; extra: target;
/// different: both).
pub fn events_diff(report: &ValidationReport) -> String {
    let hours = &report.events.hours.items;
    if hours.is_empty() {
        return String::new();
    }
    let (mut redis, mut target) = (String::new(), String::new());
    let findings = report.events.findings.as_ref();
    let all: Vec<&EventDifference> = findings.map(|f| f.missing.items.iter().chain(&f.extra.items).chain(&f.different.items).collect()).unwrap_or_default();
    let counts_only = report.depth == super::Depth::Counts;
    for hour in hours {
        // Buckets are whole absolute hours (cut at the zone's local hour starts).
        let end = hour.start_ms + 3_600_000;
        let header = format!("hour {}\n", show_hour(DateTime::from_timestamp_millis(hour.start_ms).unwrap_or_default()));
        redis.push_str(&header);
        target.push_str(&header);
        for (out, summary) in [(&mut redis, hour.redis), (&mut target, hour.target)] {
            if counts_only {
                let _ = writeln!(out, "  events={}", summary.count);
            } else {
                let _ = writeln!(out, "  events={} hash={}", summary.count, show_hash(summary.hash));
            }
        }
        let mut lines: Vec<(i64, bool, String)> = Vec::new();
        for d in &all {
            for (is_redis, time, fp) in [(true, d.redis_time_ms, d.redis_fingerprint), (false, d.target_time_ms, d.target_fingerprint)] {
                if let (Some(t), Some(fp)) = (time, fp) {
                    if t >= hour.start_ms && t < end {
                        lines.push((t, is_redis, format!("  {} {} {} fp={}\n", show_time_ms(t), d.event_id, d.event_name, show_hash(fp))));
                    }
                }
            }
        }
        lines.sort();
        for (_, is_redis, line) in lines {
            if is_redis {
                redis.push_str(&line)
            } else {
                target.push_str(&line)
            }
        }
    }
    unified(&redis, &target, "redis", "target")
}

/// The differing rows of one aggregate check, legacy against target.
pub fn aggregate_diff<K: AggregateKey>(check: &AggregateCheck<K>) -> String {
    let Some(findings) = &check.findings else { return String::new() };
    let (mut legacy, mut target) = (String::new(), String::new());
    // The bucket is a line of its own on both sides, so each bucket's -/+ lines stay together.
    for d in &findings.differences.items {
        let bucket = format!("{}\n", d.key.label());
        legacy.push_str(&bucket);
        target.push_str(&bucket);
        for (out, counts) in [(&mut legacy, &d.legacy), (&mut target, &d.target)] {
            match counts {
                Some(c) => {
                    let _ = writeln!(out, "  {}={} {}={}", K::COUNT, c.count, K::DISTINCT, c.distinct);
                }
                None => out.push_str("  no row\n"),
            }
        }
    }
    unified(&legacy, &target, "legacy", "target")
}

fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    TextDiff::from_lines(old, new).unified_diff().context_radius(3).header(old_name, new_name).to_string()
}

/// All the diffs of a report, one after the other.
pub fn full_diff(report: &ValidationReport) -> String {
    [events_diff(report), aggregate_diff(&report.hourly), aggregate_diff(&report.assets)].into_iter().filter(|d| !d.is_empty()).collect::<Vec<_>>().join("")
}

// ---------------------------------------------------------------- text

fn push_events(o: &mut String, title: &str, listed: &Listed<EventDifference>) {
    if listed.total == 0 {
        return;
    }
    let _ = writeln!(
        o,
        "  {title}: {}{}",
        listed.total,
        if listed.total > listed.items.len() as u64 { format!(" (first {} listed)", listed.items.len()) } else { String::new() }
    );
    for d in &listed.items {
        let time = match (d.redis_time_ms, d.target_time_ms) {
            (Some(r), Some(t)) if r != t => format!("{} (target {})", show_time_ms(r), show_time_ms(t)),
            (Some(t), _) | (None, Some(t)) => show_time_ms(t),
            (None, None) => String::new(),
        };
        let fields = if d.fields.is_empty() { String::new() } else { format!("  fields: {}", d.fields.join(", ")) };
        let _ = writeln!(o, "    {time}  {}  {}{fields}", d.event_id, d.event_name);
    }
}

fn push_aggregate<K: AggregateKey>(o: &mut String, check: &AggregateCheck<K>) {
    match &check.state {
        CheckState::NotApplicable(reason) => {
            let _ = writeln!(o, "{}: not applicable ({reason})", K::TITLE);
            return;
        }
        CheckState::CouldNotRun { reason, hint } => {
            let _ = writeln!(o, "{}: COULD NOT RUN: {reason}\n  fix: {hint}", K::TITLE);
            return;
        }
        CheckState::Compared => {}
    }
    let status = if check.has_differences() { "DIFFERENCES" } else { "clean" };
    let _ = write!(o, "{}: {status}", K::TITLE);
    let (Some(findings), Some((from, to))) = (&check.findings, check.range) else {
        o.push('\n');
        return;
    };
    let _ = writeln!(o, ", {} rows compared over {} .. {}, {} differ", findings.rows_compared, show_hour(from), show_hour(to), findings.differences.total);
}

impl ValidationReport {
    // Long by design: the sections of the summary in the order they print, no logic between them.
    /// The text summary (stdout).
    pub fn human(&self) -> String {
        let mut o = String::new();
        let verdict = match self.verdict() {
            Verdict::Clean => "clean",
            Verdict::Differences => "DIFFERENCES",
            Verdict::Incomplete => "COULD NOT RUN every check (not clean)",
        };
        let run = self.run_id.map(|id| format!(", run #{id}")).unwrap_or_default();
        let _ = writeln!(o, "validate: {verdict} ({} depth, storage mode {}{run}, {:.1}s)", self.depth.as_str(), self.mode, self.duration_ms as f64 / 1000.0);
        let w = &self.window;
        let _ = writeln!(
            o,
            "window: {} .. {} ({}, cut in {})",
            show_hour(w.from),
            show_hour(w.to),
            crate::human::plural(w.hour_starts.len() as u64, "hour"),
            w.time_zone
        );
        let _ = writeln!(o, "  from {}: {}", show_hour(w.from), w.from_reason);
        let _ = writeln!(o, "  to   {}: {}", show_hour(w.to), w.to_reason);
        match w.coverage().narrow_because() {
            None => {
                let _ = writeln!(o, "coverage: the whole migrated range {}", w.range);
            }
            Some(why) => {
                let _ = writeln!(o, "coverage: PART of the migrated range: {why}; this run opens no gate");
            }
        }

        let e = &self.events;
        let _ = writeln!(
            o,
            "events: redis {}, target {}; {} of {} hours differ{}",
            crate::human::count(e.redis_events),
            crate::human::count(e.target_events),
            e.hours.total,
            e.hours_compared,
            if self.depth == super::Depth::Counts { " (counts only)" } else { "" }
        );
        let dead = e.dead_letter_total();
        if dead > 0 {
            let reasons: Vec<String> = e.dead_letters.iter().map(|(code, n)| format!("{n} {code}")).collect();
            let _ = writeln!(o, "  dead letters in the window: {dead} ({}): in tsmigrate.dead_letter, not differences", reasons.join(", "));
        }
        if let Some(line) = e.out_of_range.summary() {
            let _ = writeln!(o, "  warning: {line}");
        }
        if let Some(f) = &e.findings {
            push_events(&mut o, "missing in the target", &f.missing);
            push_events(&mut o, "extra in the target", &f.extra);
            push_events(&mut o, "different (same id)", &f.different);
            if f.equivalent > 0 {
                let _ = writeln!(o, "  equal under the tolerance rules (not differences): {}", f.equivalent);
            }
        }
        if !e.not_narrowed.is_empty() {
            let _ = writeln!(
                o,
                "  not narrowed to events (over the limit of events to fetch): {}",
                e.not_narrowed.iter().map(|h| show_hour(*h)).collect::<Vec<_>>().join(", ")
            );
        }
        if !e.settled_while_validating.is_empty() {
            let _ = writeln!(
                o,
                "  differed at first, equal when narrowed (written while validating): {}",
                e.settled_while_validating.iter().map(|h| show_hour(*h)).collect::<Vec<_>>().join(", ")
            );
        }
        push_aggregate(&mut o, &self.hourly);
        push_aggregate(&mut o, &self.assets);
        if let Some(r) = &self.refresh {
            if let (Some(from), Some(to)) = (r.from, r.to) {
                let _ = writeln!(o, "aggregates refreshed first: {} .. {}", show_hour(from), show_hour(to));
            }
        }
        let diff = full_diff(self);
        if !diff.is_empty() {
            o.push_str("diff of the differing buckets:\n");
            o.push_str(&diff);
        }
        if self.phase_after != self.phase_before {
            let _ = writeln!(o, "phase: {} -> {}", self.phase_before, self.phase_after);
        } else {
            let _ = writeln!(o, "phase: {} (unchanged)", self.phase_before);
        }
        if let Some(note) = &self.phase_note {
            let _ = writeln!(o, "  {note}");
        }
        for warning in &self.warnings {
            let _ = writeln!(o, "WARNING: {warning}");
        }
        o.push_str(&crate::state::render_next_steps(&self.next_steps));
        o
    }

    /// One line saying what differs, for the envelope's error and logs.
    pub fn differences_line(&self) -> String {
        let e = &self.events;
        let mut parts = Vec::new();
        if e.has_differences() {
            let mut part = format!("{} of {} hours differ", e.hours.total, e.hours_compared);
            if let Some(f) = &e.findings {
                let _ = write!(part, " ({} missing in the target, {} extra, {} different)", f.missing.total, f.extra.total, f.different.total);
            }
            parts.push(part);
        }
        for (title, differing) in [
            (<HourlyKey as AggregateKey>::TITLE, self.hourly.findings.as_ref().map_or(0, |f| f.differences.total)),
            (<AssetKey as AggregateKey>::TITLE, self.assets.findings.as_ref().map_or(0, |f| f.differences.total)),
        ] {
            if differing > 0 {
                parts.push(format!("{title}: {differing} rows differ"));
            }
        }
        format!("validation found differences: {}", parts.join("; "))
    }

    pub fn to_json(&self) -> JsonReport {
        JsonReport::from(self)
    }

    pub fn junit(&self) -> String {
        junit(self)
    }
}

/// A report serializes as its wire type.
impl Serialize for ValidationReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

// ---------------------------------------------------------------- JSON wire types

#[derive(Debug, Serialize)]
pub struct JsonReport {
    pub result: &'static str,
    pub run_id: Option<i64>,
    pub depth: &'static str,
    pub storage_mode: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub window: JsonWindow,
    pub events: JsonEvents,
    pub legacy_hourly: JsonAggregate,
    pub asset_popularity: JsonAggregate,
    pub refresh: Option<crate::store::aggregates::RefreshOutcome>,
    pub timings_ms: BTreeMap<&'static str, u64>,
    /// The unified diff of the differing buckets (empty when clean).
    pub diff: String,
}

#[derive(Debug, Serialize)]
pub struct JsonWindow {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub from_reason: String,
    pub to_reason: String,
    pub time_zone: String,
    pub hours: usize,
    /// The whole migrated range when the run started: what a run must cover to open a gate.
    pub range: Span,
    /// Whether this run covered all of `range` (only such a run opens a gate).
    pub whole_range: bool,
    /// The parts of `range` this run did not compare.
    pub unchecked: Vec<Span>,
}

#[derive(Debug, Serialize)]
pub struct JsonSummary {
    pub count: u64,
    /// 16 hex digits (a u64 does not survive every JSON reader).
    pub hash: String,
}

#[derive(Debug, Serialize)]
pub struct JsonHour {
    pub hour: DateTime<Utc>,
    pub redis: JsonSummary,
    pub target: JsonSummary,
    pub minutes_differing: usize,
}

#[derive(Debug, Serialize)]
pub struct JsonEvent {
    pub kind: &'static str,
    pub event_id: String,
    pub event_name: String,
    pub redis_time: Option<String>,
    pub target_time: Option<String>,
    pub fields: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct JsonListed<T> {
    pub total: u64,
    pub items: Vec<T>,
}

#[derive(Debug, Serialize)]
pub struct JsonEvents {
    pub status: &'static str,
    pub redis_events: u64,
    pub target_events: u64,
    pub dead_letters: u64,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Members scored outside the valid event-time range (see `EventCheck::out_of_range`).
    pub out_of_range: OutOfRange,
    pub hours_compared: usize,
    pub hours_differing: JsonListed<JsonHour>,
    /// Events depth only.
    pub missing: Option<JsonListed<JsonEvent>>,
    pub extra: Option<JsonListed<JsonEvent>>,
    pub different: Option<JsonListed<JsonEvent>>,
    pub equivalent: u64,
    pub not_narrowed: Vec<DateTime<Utc>>,
    pub settled_while_validating: Vec<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct JsonAggregate {
    /// clean, differences, not_applicable or could_not_run.
    pub status: &'static str,
    /// Why it did not run (not applicable, or could not).
    pub reason: Option<String>,
    /// What to change so that it can run.
    pub hint: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// `None` when it did not run.
    pub rows_compared: Option<u64>,
    pub differences: JsonListed<serde_json::Value>,
}

fn json_listed<T, U>(listed: &Listed<T>, f: impl Fn(&T) -> U) -> JsonListed<U> {
    JsonListed { total: listed.total, items: listed.items.iter().map(f).collect() }
}

fn json_event(d: &EventDifference) -> JsonEvent {
    JsonEvent {
        kind: d.kind.as_str(),
        event_id: d.event_id.to_string(),
        event_name: d.event_name.clone(),
        redis_time: d.redis_time_ms.map(show_time_ms),
        target_time: d.target_time_ms.map(show_time_ms),
        fields: d.fields.clone(),
    }
}

fn json_hour(h: &HourDifference) -> JsonHour {
    JsonHour {
        hour: DateTime::from_timestamp_millis(h.start_ms).unwrap_or_default(),
        redis: JsonSummary { count: h.redis.count, hash: show_hash(h.redis.hash) },
        target: JsonSummary { count: h.target.count, hash: show_hash(h.target.hash) },
        minutes_differing: h.minutes.len(),
    }
}

fn json_aggregate<K: AggregateKey>(check: &AggregateCheck<K>) -> JsonAggregate {
    let counts = |c: &Option<Counts>| match c {
        Some(c) => serde_json::json!({K::COUNT: c.count, K::DISTINCT: c.distinct}),
        None => serde_json::Value::Null,
    };
    let empty = Listed::default();
    let differences = check.findings.as_ref().map_or(&empty, |f| &f.differences);
    let (reason, hint) = match &check.state {
        CheckState::Compared => (None, None),
        CheckState::NotApplicable(reason) => (Some(reason.clone()), None),
        CheckState::CouldNotRun { reason, hint } => (Some(reason.clone()), Some(hint.clone())),
    };
    JsonAggregate {
        status: check.status(),
        reason,
        hint,
        from: check.range.map(|r| r.0),
        to: check.range.map(|r| r.1),
        rows_compared: check.findings.as_ref().map(|f| f.rows_compared),
        differences: json_listed(differences, |d| {
            let mut m = d.key.wire();
            m.insert("legacy".into(), counts(&d.legacy));
            m.insert("target".into(), counts(&d.target));
            serde_json::Value::Object(m)
        }),
    }
}

impl From<&ValidationReport> for JsonReport {
    fn from(r: &ValidationReport) -> Self {
        let e = &r.events;
        let kinds = |pick: fn(&EventFindings) -> &Listed<EventDifference>| e.findings.as_ref().map(|f| json_listed(pick(f), json_event));
        JsonReport {
            result: match r.verdict() {
                Verdict::Incomplete => "incomplete",
                verdict => verdict.as_str(),
            },
            run_id: r.run_id,
            depth: r.depth.as_str(),
            storage_mode: r.mode.to_string(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_ms: r.duration_ms,
            window: JsonWindow {
                from: r.window.from,
                to: r.window.to,
                from_reason: r.window.from_reason.clone(),
                to_reason: r.window.to_reason.clone(),
                time_zone: r.window.time_zone.clone(),
                hours: r.window.hour_starts.len(),
                range: r.window.range,
                whole_range: r.window.coverage().whole(),
                unchecked: r.window.coverage().unchecked(),
            },
            events: JsonEvents {
                status: if e.has_differences() { "differences" } else { "clean" },
                redis_events: e.redis_events,
                target_events: e.target_events,
                dead_letters: e.dead_letter_total(),
                dead_letters_by_reason: e.dead_letters.clone(),
                out_of_range: e.out_of_range.clone(),
                hours_compared: e.hours_compared,
                hours_differing: json_listed(&e.hours, json_hour),
                missing: kinds(|f| &f.missing),
                extra: kinds(|f| &f.extra),
                different: kinds(|f| &f.different),
                equivalent: e.findings.as_ref().map_or(0, |f| f.equivalent),
                not_narrowed: e.not_narrowed.clone(),
                settled_while_validating: e.settled_while_validating.clone(),
            },
            legacy_hourly: json_aggregate(&r.hourly),
            asset_popularity: json_aggregate(&r.assets),
            refresh: r.refresh.clone(),
            timings_ms: r.timings.clone(),
            diff: full_diff(r),
        }
    }
}

// ---------------------------------------------------------------- JUnit XML
//
// Written by `quick-junit` (the JUnit writer of cargo-nextest), which does the XML escaping
// and drops the characters XML 1.0 cannot hold.

/// One test case: passed, failed (differences), errored (could not run) or skipped.
struct Case {
    name: &'static str,
    outcome: CaseOutcome,
}

enum CaseOutcome {
    Passed,
    /// Differences: message and details.
    Failed(String, String),
    /// The check could not run: what is missing and what to change.
    Error(String),
    Skipped(String),
}

struct Suite {
    name: &'static str,
    cases: Vec<Case>,
    out: String,
}

/// The events suite: always the same four cases, whatever was found (CI tools follow a
/// case from run to run by its name).
fn events_suite(r: &ValidationReport) -> Suite {
    let e = &r.events;
    let mut cases = Vec::new();
    let hours = if e.hours.total > 0 {
        let body: String = e
            .hours
            .items
            .iter()
            .map(|h| {
                format!(
                    "{}: redis {} events, target {}\n",
                    show_hour(DateTime::<Utc>::from_timestamp_millis(h.start_ms).unwrap_or_default()),
                    h.redis.count,
                    h.target.count
                )
            })
            .collect();
        CaseOutcome::Failed(format!("{} of {} hours differ", e.hours.total, e.hours_compared), body + &events_diff(r))
    } else {
        CaseOutcome::Passed
    };
    cases.push(Case { name: "event counts per hour", outcome: hours });
    type Pick = fn(&EventFindings) -> &Listed<EventDifference>;
    let kinds: [(&'static str, Pick, &str); 3] = [
        ("missing events", |f| &f.missing, "in Redis, not in the target"),
        ("extra events", |f| &f.extra, "in the target, not in Redis"),
        ("different events", |f| &f.different, "the same event id with other content or time"),
    ];
    for (name, pick, meaning) in kinds {
        let outcome = match &e.findings {
            None if r.depth == super::Depth::Counts => CaseOutcome::Skipped("counts depth: events are not compared one by one".into()),
            None => CaseOutcome::Passed,
            Some(f) if pick(f).total == 0 => CaseOutcome::Passed,
            Some(f) => {
                let listed = pick(f);
                let body: String = listed.items.iter().map(|d| format!("{} {} {}\n", d.event_id, d.event_name, d.fields.join(","))).collect();
                CaseOutcome::Failed(format!("{} events {meaning}", listed.total), body)
            }
        };
        cases.push(Case { name, outcome });
    }
    let mut out = String::new();
    if e.dead_letter_total() > 0 {
        let _ = writeln!(out, "dead letters in the window (not differences): {:?}", e.dead_letters);
    }
    if let Some(line) = e.out_of_range.summary() {
        let _ = writeln!(out, "warning: {line}");
    }
    Suite { name: "events", cases, out }
}

fn aggregate_suite<K: AggregateKey>(check: &AggregateCheck<K>) -> Suite {
    let outcome = match (&check.state, &check.findings) {
        (CheckState::NotApplicable(reason), _) => CaseOutcome::Skipped(reason.clone()),
        (CheckState::CouldNotRun { reason, hint }, _) => CaseOutcome::Error(format!("could not run: {reason}; fix: {hint}")),
        (CheckState::Compared, Some(f)) if f.differences.total > 0 => {
            CaseOutcome::Failed(format!("{} of {} rows differ", f.differences.total, f.rows_compared), aggregate_diff(check))
        }
        (CheckState::Compared, _) => CaseOutcome::Passed,
    };
    Suite { name: K::CHECK, cases: vec![Case { name: K::TITLE, outcome }], out: String::new() }
}

fn junit(r: &ValidationReport) -> String {
    use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
    let started = r.started_at.fixed_offset();
    let properties = [
        ("window_from", r.window.from.to_rfc3339()),
        ("window_to", r.window.to.to_rfc3339()),
        ("depth", r.depth.as_str().to_string()),
        ("storage_mode", r.mode.to_string()),
        ("run_id", r.run_id.map(|id| id.to_string()).unwrap_or_default()),
    ];
    let mut report = Report::new("tsmigrate validate");
    report.set_time(std::time::Duration::from_millis(r.duration_ms));
    for s in [events_suite(r), aggregate_suite(&r.hourly), aggregate_suite(&r.assets)] {
        let mut suite = TestSuite::new(s.name);
        suite.set_timestamp(started);
        suite.add_properties(properties.iter().map(|(name, value)| Property::new(*name, value)));
        for c in s.cases {
            let status = match c.outcome {
                CaseOutcome::Passed => TestCaseStatus::success(),
                CaseOutcome::Failed(message, body) => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_type("difference").set_message(message).set_description(body);
                    status
                }
                CaseOutcome::Error(message) => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                    status.set_type("could_not_run").set_message(message);
                    status
                }
                CaseOutcome::Skipped(reason) => {
                    let mut status = TestCaseStatus::skipped();
                    status.set_message(reason);
                    status
                }
            };
            let mut case = TestCase::new(c.name, status);
            case.set_classname(format!("tsmigrate.validate.{}", s.name));
            suite.add_test_case(case);
        }
        if !s.out.is_empty() {
            suite.set_system_out(s.out);
        }
        report.add_test_suite(suite);
    }
    // Serializing owned strings into memory cannot fail.
    report.to_string().expect("a JUnit report serializes into a string")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_diff_marks_each_side() {
        let d = unified("hour x\n  events=2\n", "hour x\n  events=1\n", "redis", "target");
        assert!(d.contains("--- redis\n+++ target\n"), "{d}");
        assert!(d.contains("-  events=2\n+  events=1\n"), "{d}");
        assert!(unified("a\n", "a\n", "x", "y").is_empty());
    }
}
