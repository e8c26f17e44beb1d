//! Realistic legacy traffic for demos, tests and benchmarks: the event mix of a
//! creative SaaS, written through the legacy write path, with the hourly flush run
//! as the hours close — so the legacy tables hold what the real worker would have
//! written, including hours the Redis cap has since trimmed away.
//!
//! Deterministic: the same options (including `end`) give the same members.

use crate::connect::RedisConn;
use chrono::{DateTime, Duration, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use super::{flush, writer, LegacyKeys};
use crate::config::Settings;
use crate::event::{AcceptedEvent, IncomingEvent, IngestLimits};

#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub events: u64,
    pub days: u32,
    pub users: u32,
    pub seed: u64,
    /// Add what real legacy data holds: no ids, epoch timestamps, non-JSON members, identical members, late events.
    pub messy: bool,
    /// The newest event time; the traffic covers `[end - days, end)`.
    pub end: DateTime<Utc>,
    /// Run the legacy flush for closed hours as the traffic advances.
    pub flush: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SeedOutcome {
    pub events_generated: u64,
    pub batches: u64,
    pub without_id: u64,
    pub epoch_timestamps: u64,
    pub not_json: u64,
    pub identical_resends: u64,
    pub late: u64,
    pub hours_flushed: usize,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// How far behind the traffic the simulated hourly worker runs, so late events make it into their hour.
const FLUSH_DELAY: Duration = Duration::minutes(15);
/// Batches written concurrently (pipelined on one connection).
const IN_FLIGHT: usize = 32;

const EVENT_MIX: &[(&str, &str, u32)] = &[
    ("page_view", "navigation", 40),
    ("click", "interaction", 20),
    ("search", "discovery", 10),
    ("asset_generated", "creation", 12),
    ("download", "creation", 8),
    ("login", "account", 5),
    ("signup", "account", 2),
    ("purchase", "commerce", 3),
];
const ASSET_TYPES: &[(&str, u32)] = &[("image", 40), ("logo", 15), ("video", 15), ("text", 15), ("audio", 10), ("3d_model", 5)];
const PAGES: &[&str] = &["/", "/dashboard", "/create", "/library", "/pricing", "/settings", "/explore", "/templates"];
const BROWSERS: &[&str] = &["chrome", "safari", "firefox", "edge"];
const OSES: &[&str] = &["macos", "windows", "ios", "android", "linux"];
const REFERRERS: &[&str] = &["https://www.google.com/", "https://twitter.com/", "https://news.ycombinator.com/", ""];

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    *items.choose(rng).expect("non-empty choice")
}

fn weighted<'a, T>(rng: &mut ChaCha8Rng, items: &'a [(T, u32)]) -> &'a T {
    &items.choose_weighted(rng, |(_, w)| *w).expect("non-empty mix").0
}

struct Generator {
    rng: ChaCha8Rng,
    options: SeedOptions,
}

impl Generator {
    /// Event times over the window with a daily rhythm (busy afternoons, quiet nights), sorted.
    fn times(&mut self) -> Vec<i64> {
        let end = self.options.end.timestamp_millis();
        let span = i64::from(self.options.days.max(1)) * 86_400_000;
        let start = end - span;
        let mut times = Vec::with_capacity(self.options.events as usize);
        while (times.len() as u64) < self.options.events {
            let t = start + self.rng.random_range(0..span);
            let hour = (t / 3_600_000) % 24;
            let weight = 0.25 + 0.75 * ((hour as f64 - 3.0) / 24.0 * std::f64::consts::PI).sin().powi(2);
            if self.rng.random::<f64>() < weight {
                times.push(t);
            }
        }
        times.sort_unstable();
        times
    }

    fn event(&mut self, time_ms: i64) -> IncomingEvent {
        let rng = &mut self.rng;
        let (event_name, category) = *weighted(rng, &EVENT_MIX.iter().map(|(n, c, w)| ((*n, *c), *w)).collect::<Vec<_>>());
        // A few heavy users, a long tail.
        let users = self.options.users.max(1);
        let user = ((rng.random::<f64>().powi(2)) * f64::from(users)) as u32;
        let day = time_ms / 86_400_000;
        let session = format!("s_{user}_{day}_{}", (time_ms / 3_600_000) % 3);
        let page = *PAGES.choose(rng).unwrap();
        let properties = match event_name {
            "page_view" => json!({"path": page}),
            "click" => json!({"element": pick(rng, &["button", "link", "card", "menu"])}),
            "search" => json!({"query": pick(rng, &["logo", "banner", "cat", "product shot", "podcast intro"]), "results": rng.random_range(0..200)}),
            "asset_generated" => {
                json!({"asset_type": weighted(rng, ASSET_TYPES), "prompt_length": rng.random_range(5..400), "model": pick(rng, &["v3", "v4"])})
            }
            "download" => json!({"asset_type": weighted(rng, ASSET_TYPES), "format": pick(rng, &["png", "svg", "mp4", "mp3"])}),
            "purchase" => json!({"plan": pick(rng, &["pro", "team"]), "amount_cents": pick(rng, &[1200, 2900, 9900])}),
            "signup" => json!({"plan": "free"}),
            _ => json!({"method": pick(rng, &["password", "google", "sso"])}),
        };
        let device_info = json!({
            "browser": BROWSERS.choose(rng).unwrap(),
            "os": OSES.choose(rng).unwrap(),
            "device_type": if rng.random_bool(0.3) { "mobile" } else { "desktop" },
        });
        let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string();
        let incoming = IncomingEvent {
            id: Some(id),
            event_name: Some(event_name.into()),
            category: Some(category.into()),
            user_id: Some(Value::String(format!("user_{user}"))),
            session_id: Some(session),
            properties: Some(properties),
            device_info: Some(device_info),
            page_url: Some(format!("https://app.example.com{page}")),
            referrer: REFERRERS.choose(rng).map(|r| r.to_string()).filter(|r| !r.is_empty()),
            timestamp: Some(json!(time_ms)),
        };
        incoming
    }

    /// The whole write sequence, in the order the legacy writer receives it.
    fn sequence(&mut self, outcome: &mut SeedOutcome) -> Vec<AcceptedEvent> {
        let times = self.times();
        let now = self.options.end + Duration::days(1);
        let mut out: Vec<AcceptedEvent> = Vec::with_capacity(times.len() + times.len() / 50);
        let mut held_back: Vec<(usize, AcceptedEvent)> = Vec::new();
        for (i, time_ms) in times.into_iter().enumerate() {
            let mut incoming = self.event(time_ms);
            let messy = self.options.messy;
            if messy && self.rng.random_bool(0.05) {
                incoming.id = None;
                outcome.without_id += 1;
            }
            let mut event = incoming.validate(now, IngestLimits::default()).expect("generated events are valid");
            if messy && self.rng.random_bool(0.05) {
                // Old trackers sent epoch numbers, stored as they came.
                let mut value: Value = serde_json::from_str(&event.member).unwrap();
                value["timestamp"] = json!(time_ms);
                event.member = value.to_string();
                outcome.epoch_timestamps += 1;
            }
            if messy && self.rng.random_bool(0.003) {
                let garbage = if self.rng.random_bool(0.5) {
                    format!("event:{}|user:{}", event.event_name, self.rng.random_range(0..1000))
                } else {
                    event.member[..event.member.len() / 2].to_string()
                };
                event = AcceptedEvent { member: garbage, event_name: String::new(), category: String::new(), session_id: None, ..event };
                outcome.not_json += 1;
            }
            if messy && self.rng.random_bool(0.01) {
                // Tracker retries: the identical member again, a little later.
                held_back.push((i + self.rng.random_range(1..40), event.clone()));
                outcome.identical_resends += 1;
            }
            if messy && self.rng.random_bool(0.02) {
                // Arrives after events that happened later (at most a few minutes).
                held_back.push((i + self.rng.random_range(1..20), event));
                outcome.late += 1;
            } else {
                out.push(event);
            }
            let due: Vec<usize> = held_back.iter().enumerate().filter(|(_, (at, _))| *at <= i).map(|(k, _)| k).collect();
            for k in due.into_iter().rev() {
                out.push(held_back.swap_remove(k).1);
            }
        }
        out.extend(held_back.into_iter().map(|(_, g)| g));
        out
    }
}

/// Generates and writes the traffic. `progress` is called with events written so far.
pub async fn run(
    redis: &mut RedisConn,
    legacy_pool: &PgPool,
    settings: &Settings,
    options: SeedOptions,
    progress: impl Fn(u64),
) -> anyhow::Result<SeedOutcome> {
    let keys = LegacyKeys::from_settings(settings);
    let tz = settings.target.timezone();
    let mut outcome = SeedOutcome::default();
    let mut generator = Generator { rng: ChaCha8Rng::seed_from_u64(options.seed), options: options.clone() };
    let sequence = generator.sequence(&mut outcome);
    outcome.events_generated = options.events;
    outcome.from = Some(options.end - Duration::days(i64::from(options.days.max(1))));
    outcome.to = Some(options.end);
    let batch_size = settings.ingest.max_batch.max(1);
    let cap = settings.redis.event_cap;
    // Flush before the cap could trim unflushed hours.
    let flush_every = (cap / 2).max(1) as usize;
    let mut flushed_until = crate::calendar::hour_floor(outcome.from.unwrap(), tz);
    let mut written = 0usize;
    for window in sequence.chunks(flush_every.min(50_000)) {
        let batches: Vec<&[AcceptedEvent]> = window.chunks(batch_size).collect();
        outcome.batches += batches.len() as u64;
        stream::iter(batches)
            .map(|batch| {
                let mut conn = redis.clone();
                let keys = &keys;
                async move { writer::write_batch(&mut conn, keys, cap, batch, false).await }
            })
            .buffered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        written += window.len();
        progress(written as u64);
        let clock = window.iter().map(|e| e.time_ms).max().unwrap_or_default();
        let flush_to = crate::calendar::hour_floor(chrono::DateTime::from_timestamp_millis(clock).unwrap_or(options.end) - FLUSH_DELAY, tz);
        if options.flush && flush_to > flushed_until {
            let done = flush::flush_range(redis, legacy_pool, &keys, &settings.legacy, tz, flushed_until, flush_to).await?;
            outcome.hours_flushed += done.hours;
            flushed_until = flush_to;
        }
    }
    if options.flush {
        let end = crate::calendar::hour_floor(options.end, tz);
        if end > flushed_until {
            let done = flush::flush_range(redis, legacy_pool, &keys, &settings.legacy, tz, flushed_until, end).await?;
            outcome.hours_flushed += done.hours;
        }
    }
    Ok(outcome)
}
