//! The Redis side: the members of the events sorted set, read in pages by score and
//! summarized per minute on the blocking pool, so that the work runs on every core while the
//! next page is read. Nothing but per-minute summaries is kept. Two passes ([`Pass`]): every
//! member's raw digest (its bytes hashed, not parsed), then, for the minutes the raw digests
//! do not settle, every member parsed with [`TargetEvent::from_member`] (the function every
//! path into the target uses) and fingerprinted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::connect::RedisConn;

use crate::event::TargetEvent;
use crate::fingerprint::{score_ms, RawDigester};
use crate::legacy::reader::{read_page_before, ScoreCursor};
use crate::validate::diff::{merge_minutes, minute_of, EventDigest, MinuteSummaries, MINUTE_MS};
use crate::validate::fingerprint::Fingerprinter;

/// Members per `ZRANGEBYSCORE` page.
pub const PAGE: usize = 16_384;
/// Pages being parsed while the next is read, per reader.
const IN_FLIGHT: usize = 2;
/// Parts of the window read concurrently, each on a connection of its own.
const READERS: i64 = 2;

/// What a pass computes of each member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Its raw digest (`fingerprint::raw_digest`), from its bytes and score: no parsing.
    RawDigests,
    /// Its fingerprint, from the event it parses into (members that are not events are
    /// counted as dead letters).
    Fingerprints,
}

/// What Redis holds in the window (or in some of its minutes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RedisEvents {
    /// Per minute: count and hash (the sum of fingerprints; of raw digests in
    /// [`Pass::RawDigests`], where every member counts).
    pub minutes: MinuteSummaries,
    /// Valid events ([`Pass::RawDigests`]: members).
    pub events: u64,
    /// Members that are not valid events, by reason code (dead letters; not differences).
    pub dead_letters: BTreeMap<String, u64>,
    /// Where the time went, summed over the readers and parsing threads: waiting for Redis's
    /// pages, and parsing and fingerprinting members (hashing them, [`Pass::RawDigests`])
    /// (microseconds).
    pub read_micros: u64,
    pub parse_micros: u64,
}

impl RedisEvents {
    pub fn merge(&mut self, other: RedisEvents) {
        merge_minutes(&mut self.minutes, other.minutes);
        self.events += other.events;
        self.read_micros += other.read_micros;
        self.parse_micros += other.parse_micros;
        for (code, n) in other.dead_letters {
            *self.dead_letters.entry(code).or_default() += n;
        }
    }

    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}

/// The connections the passes read on: the caller's and [`READERS`]` - 1` more of their own,
/// opened once per run. One connection's replies are parsed one after another, on one core,
/// which would bound a pass.
pub struct Readers(Vec<RedisConn>);

impl Readers {
    pub async fn open(redis: &RedisConn) -> redis::RedisResult<Readers> {
        let mut conns = vec![redis.clone()];
        for _ in 1..READERS {
            conns.push(redis.another().await?);
        }
        Ok(Readers(conns))
    }

    /// The connection the `i`-th part reads on.
    fn conn(&self, i: usize) -> RedisConn {
        self.0[i % self.0.len()].clone()
    }
}

/// Members scored in `[from_ms, to_ms)` (what [`summarize`] will read).
pub async fn count(redis: &mut RedisConn, key: &str, from_ms: i64, to_ms: i64) -> redis::RedisResult<u64> {
    let (low, high) = score_bounds(from_ms, to_ms);
    redis::cmd("ZCOUNT").arg(key).arg(low).arg(format!("({high}")).query_async(redis).await
}

/// The score range holding the events whose time (the score rounded to the millisecond,
/// as `from_member` does) lies in `[from_ms, to_ms)`.
fn score_bounds(from_ms: i64, to_ms: i64) -> (f64, f64) {
    (from_ms as f64 - 0.5, to_ms as f64 - 0.5)
}

/// Count and hash per minute of every member (`pass`) in `[from_ms, to_ms)`; `read` counts
/// the members read so far (progress).
#[tracing::instrument(skip(readers, read), err)]
pub async fn summarize(
    readers: &Readers,
    key: &str,
    (from_ms, to_ms): (i64, i64),
    now_ms: i64,
    read: Arc<AtomicU64>,
    pass: Pass,
) -> anyhow::Result<RedisEvents> {
    let minutes = (to_ms - from_ms).div_euclid(MINUTE_MS);
    let step = (minutes / READERS).max(1) * MINUTE_MS;
    let mut parts = Vec::new();
    let mut start = from_ms;
    while start < to_ms {
        let end = if parts.len() as i64 + 1 >= READERS { to_ms } else { (start + step).min(to_ms) };
        parts.push(summarize_part(readers.conn(parts.len()), key.to_string(), start, end, now_ms, read.clone(), pass));
        start = end;
    }
    let mut total = RedisEvents::default();
    for part in futures::future::try_join_all(parts).await? {
        total.merge(part);
    }
    Ok(total)
}

/// [`summarize`] over several `[from_ms, to_ms)` ranges (the minutes a pass must look at),
/// [`READERS`] of them at a time.
pub async fn summarize_ranges(readers: &Readers, key: &str, ranges: &[(i64, i64)], now_ms: i64, pass: Pass) -> anyhow::Result<RedisEvents> {
    use futures::{StreamExt, TryStreamExt};
    let read = Arc::new(AtomicU64::new(0));
    let parts: Vec<RedisEvents> = futures::stream::iter(ranges.iter().copied().enumerate())
        .map(|(i, (from, to))| summarize_part(readers.conn(i), key.to_string(), from, to, now_ms, read.clone(), pass))
        .buffer_unordered(READERS as usize)
        .try_collect()
        .await?;
    let mut total = RedisEvents::default();
    for part in parts {
        total.merge(part);
    }
    Ok(total)
}

async fn summarize_part(
    mut redis: RedisConn,
    key: String,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
    read: Arc<AtomicU64>,
    pass: Pass,
) -> anyhow::Result<RedisEvents> {
    let (low, high) = score_bounds(from_ms, to_ms);
    let mut cursor = ScoreCursor::at(low);
    let mut pending = VecDeque::new();
    let mut total = RedisEvents::default();
    loop {
        let reading = std::time::Instant::now();
        let page = read_page_before(&mut redis, &key, cursor, high, PAGE).await?;
        total.read_micros += reading.elapsed().as_micros() as u64;
        let last = page.len() < PAGE;
        cursor = cursor.after(&page);
        read.fetch_add(page.len() as u64, Ordering::Relaxed);
        if !page.is_empty() {
            pending.push_back(tokio::task::spawn_blocking(move || match pass {
                Pass::RawDigests => digest_page(page),
                Pass::Fingerprints => summarize_page(page, now_ms),
            }));
        }
        while pending.len() > IN_FLIGHT || (last && !pending.is_empty()) {
            total.merge(pending.pop_front().expect("non-empty").await?);
        }
        if last {
            return Ok(total);
        }
    }
}

/// Every member's raw digest per minute, its bytes hashed as Redis sent them.
fn digest_page(page: Vec<(Vec<u8>, f64)>) -> RedisEvents {
    let hashing = std::time::Instant::now();
    let mut digester = RawDigester::default();
    let mut out = RedisEvents { events: page.len() as u64, ..Default::default() };
    for (member, score) in page {
        let ms = score_ms(score);
        out.minutes.entry(minute_of(ms)).or_default().add(digester.digest(&member, ms));
    }
    out.parse_micros = hashing.elapsed().as_micros() as u64;
    out
}

fn summarize_page(page: Vec<(Vec<u8>, f64)>, now_ms: i64) -> RedisEvents {
    let parsing = std::time::Instant::now();
    let mut fingerprinter = Fingerprinter::default();
    let mut out = RedisEvents::default();
    for (member, score) in page {
        match TargetEvent::from_member(&member, score, now_ms) {
            Ok(event) => {
                out.events += 1;
                out.minutes.entry(minute_of(event.time_ms())).or_default().add(fingerprinter.fingerprint(&event));
            }
            Err(reason) => *out.dead_letters.entry(reason.code().to_string()).or_default() += 1,
        }
    }
    out.parse_micros = parsing.elapsed().as_micros() as u64;
    out
}

/// Calls `visit` with every valid event in `[from_ms, to_ms)`, oldest first.
pub async fn for_each_event(
    redis: &mut RedisConn,
    key: &str,
    (from_ms, to_ms): (i64, i64),
    now_ms: i64,
    mut visit: impl FnMut(TargetEvent),
) -> anyhow::Result<()> {
    let (low, high) = score_bounds(from_ms, to_ms);
    let mut cursor = ScoreCursor::at(low);
    loop {
        let page = read_page_before(redis, key, cursor, high, PAGE).await?;
        cursor = cursor.after(&page);
        let last = page.len() < PAGE;
        for (member, score) in page {
            if let Ok(event) = TargetEvent::from_member(&member, score, now_ms) {
                visit(event);
            }
        }
        if last {
            return Ok(());
        }
    }
}

/// The digests of every valid event in the given ranges.
pub async fn digests(redis: &mut RedisConn, key: &str, ranges: &[(i64, i64)], now_ms: i64) -> anyhow::Result<Vec<EventDigest>> {
    let mut fingerprinter = Fingerprinter::default();
    let mut out = Vec::new();
    for range in ranges {
        for_each_event(redis, key, *range, now_ms, |event| {
            out.push(EventDigest {
                fingerprint: fingerprinter.fingerprint(&event),
                event_id: event.event_id,
                time_ms: event.time_ms(),
                event_name: event.event_name,
            })
        })
        .await?;
    }
    Ok(out)
}

/// `--depth counts`: members per hour (`ZCOUNT`, one pipelined round trip). Dead letters
/// are counted too; the caller subtracts those recorded in `tsmigrate.dead_letter`.
pub async fn count_hours(redis: &mut RedisConn, key: &str, starts: &[i64], end: i64) -> anyhow::Result<Vec<u64>> {
    let mut pipe = redis::pipe();
    for (i, start) in starts.iter().enumerate() {
        let next = starts.get(i + 1).copied().unwrap_or(end);
        let (low, high) = score_bounds(*start, next);
        pipe.cmd("ZCOUNT").arg(key).arg(low).arg(format!("({high}"));
    }
    Ok(pipe.query_async(redis).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_summarized_by_minute_and_dead_letters_counted() {
        let now = 1_800_000_000_000;
        let good = br#"{"id":"0b7e8f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","event_name":"x","category":"y"}"#.to_vec();
        let page = vec![(good.clone(), 1_700_000_000_000.0), (good, 1_700_000_061_000.0), (b"nope".to_vec(), 1_700_000_000_001.0)];
        let out = summarize_page(page, now);
        assert_eq!(out.events, 2);
        assert_eq!(out.minutes.len(), 2);
        assert_eq!(out.dead_letters.get("not_json"), Some(&1));
        let page = vec![(b"a".to_vec(), 1_700_000_000_000.0), (b"b".to_vec(), 1_700_000_000_001.0), (b"nope".to_vec(), 1_700_000_061_000.0)];
        let raw = digest_page(page);
        assert_eq!((raw.events, raw.minutes.len()), (3, 2), "every member counts, dead letters too");
        let first = raw.minutes[&minute_of(1_700_000_000_000)];
        let expected = crate::fingerprint::raw_digest(b"a", 1_700_000_000_000).wrapping_add(crate::fingerprint::raw_digest(b"b", 1_700_000_000_001));
        assert_eq!(first, crate::validate::diff::Summary { count: 2, hash: expected });
        // Scores round to the millisecond like event times: x.5 belongs to the next ms.
        assert_eq!(score_bounds(1000, 2000), (999.5, 1999.5));
    }
}
