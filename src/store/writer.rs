//! Writes events into `analytics_events_ts`, idempotently: a row is identified by
//! `(event_id, time)` and written once whichever path (relay, tail, backfill) brings it.
//!
//! Two ways in: `insert` (multi-row `INSERT … ON CONFLICT DO NOTHING`, for small
//! relay batches) and `copy` (`COPY`, for backfill pages: near the speed of `psql \copy`;
//! if a page collides with rows already present it is retried through `insert`
//! under a savepoint, so idempotency never depends on luck).
//!
//! Every path writes through [`TargetWriter::write_page`], which keeps one bad event from
//! stalling the rest: members that are not events (NUL characters included, see
//! `TargetEvent::from_member`) never reach SQL; rows the server still refuses with a
//! *data* error ([`classify`]) are found by [`isolate`] and stored as dead letters; rows
//! "already present" are compared with what is stored, and a different version of the
//! same event is a `conflicting_content` dead letter, never silently dropped.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::bulk::Row;
use super::write_error::{classify, server_message, WriteErrorKind};
use super::StorageMode;
use crate::event::changed_fields;
use crate::event::{DeadLetterReason, TargetEvent};
use crate::fingerprint::RawDigester;
use crate::ledger::dead_letter::{self, DeadLetter};

const UNIQUE_VIOLATION: &str = "23505";

#[derive(Debug)]
pub struct TargetWriter {
    pool: PgPool,
    mode: StorageMode,
    /// Plain mode: UTC days whose partition is known to exist (saves a round trip per batch).
    known_days: Mutex<HashSet<i64>>,
}

/// How a page went in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Rows new to the target.
    pub inserted: u64,
    /// Rows that were already there (written earlier by another path or run).
    pub already_present: u64,
}

/// Members parsed into events, each event with the member it came from (for a dead letter)
/// and that member's raw digest (stored with the row).
#[derive(Debug, Default)]
pub struct ParsedPage {
    pub events: Vec<TargetEvent>,
    /// The member bytes and score of `events[i]`.
    origins: Vec<(Vec<u8>, Option<f64>)>,
    /// `fingerprint::raw_digest` of `events[i]`'s member at its time.
    raw_digests: Vec<Option<i64>>,
    digester: RawDigester,
    /// Members that are not events.
    pub dead: Vec<DeadLetter>,
}

impl ParsedPage {
    pub fn with_capacity(n: usize) -> Self {
        ParsedPage {
            events: Vec::with_capacity(n),
            origins: Vec::with_capacity(n),
            raw_digests: Vec::with_capacity(n),
            digester: RawDigester::default(),
            dead: Vec::new(),
        }
    }

    /// The rows to write: each event with its member's raw digest.
    pub fn rows(&self) -> Vec<Row<'_>> {
        Row::all(&self.events, &self.raw_digests)
    }

    /// Parses one member; `score` is `None` when its source carried none (a broken outbox entry).
    pub fn push(&mut self, member: Vec<u8>, score: Option<f64>, now_ms: i64) {
        let parsed = match score {
            Some(s) => TargetEvent::from_member(&member, s, now_ms),
            None => Err(DeadLetterReason::BadScore("missing".into())),
        };
        match parsed {
            Ok(event) => {
                self.raw_digests.push(Some(self.digester.digest(&member, event.time_ms()) as i64));
                self.events.push(event);
                self.origins.push((member, score));
            }
            Err(reason) => self.dead.push(DeadLetter { raw: member, score, reason }),
        }
    }

    /// Members in the page, events and dead letters.
    pub fn len(&self) -> usize {
        self.events.len() + self.dead.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn letter(&self, index: usize, reason: DeadLetterReason) -> DeadLetter {
        let (raw, score) = &self.origins[index];
        DeadLetter { raw: raw.clone(), score: *score, reason }
    }
}

/// How [`TargetWriter::write_page`] wrote a page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageOutcome {
    pub inserted: u64,
    /// Rows already stored with the same content (redelivery, re-runs, overlapping paths).
    pub already_present: u64,
    /// Dead letters of this page: members that are not events, rows the target refused,
    /// conflicting versions of stored events.
    pub dead_letters: usize,
    /// Of those, the ones new to `tsmigrate.dead_letter` (a re-read member is stored once).
    pub dead_letters_recorded: u64,
}

/// Which statement writes the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `INSERT … ON CONFLICT DO NOTHING` (tail batches).
    Insert,
    /// `COPY` (backfill pages, relay batches), falling back to `Insert` when the page
    /// collides or the server refuses a row.
    Copy,
}

/// What a page's write took: rows inserted, keys skipped as already stored, and the rows
/// the server refused.
#[derive(Debug, Default)]
struct Written {
    inserted: u64,
    skipped: HashSet<(Uuid, i64)>,
    rejected: Vec<(usize, sqlx::Error)>,
}

/// The results of the writes that succeeded, and each item the server refused, alone.
#[derive(Debug)]
pub struct Isolated<R> {
    pub written: Vec<R>,
    /// Index into the items, and the server's error for that item alone.
    pub rejected: Vec<(usize, sqlx::Error)>,
}

/// Writes `items` with `write` inside the caller's transaction. When the server refuses
/// the data ([`WriteErrorKind::Data`]), the write is rolled back to a savepoint and
/// retried on each half, down to single items: `k` bad items among `n` cost about
/// `2k·log2(n)` writes; when all is well, the savepoint's two statements. Any other error
/// is returned as is (the caller retries the whole transaction).
pub async fn isolate<T, R>(
    conn: &mut PgConnection,
    items: &[T],
    mut write: impl for<'c> FnMut(&'c mut PgConnection, &'c [T]) -> BoxFuture<'c, sqlx::Result<R>>,
) -> sqlx::Result<Isolated<R>> {
    let mut out = Isolated { written: Vec::new(), rejected: Vec::new() };
    // Ranges of `items` still to write (a stack: one range holding everything, at first).
    let mut pending: Vec<std::ops::Range<usize>> = Vec::new();
    pending.push(0..items.len());
    while let Some(range) = pending.pop() {
        if range.is_empty() {
            continue;
        }
        sqlx::query("SAVEPOINT tsmigrate_isolate").execute(&mut *conn).await?;
        match write(&mut *conn, &items[range.clone()]).await {
            Ok(result) => {
                sqlx::query("RELEASE SAVEPOINT tsmigrate_isolate").execute(&mut *conn).await?;
                out.written.push(result);
            }
            Err(e) if classify(&e) == WriteErrorKind::Data => {
                sqlx::query("ROLLBACK TO SAVEPOINT tsmigrate_isolate").execute(&mut *conn).await?;
                sqlx::query("RELEASE SAVEPOINT tsmigrate_isolate").execute(&mut *conn).await?;
                if range.len() == 1 {
                    out.rejected.push((range.start, e));
                } else {
                    let middle = range.start + range.len() / 2;
                    // Right half first on the stack, so the left half is written first.
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn key_of(event: &TargetEvent) -> (Uuid, i64) {
    (event.event_id, event.time_ms())
}

impl TargetWriter {
    pub fn new(pool: PgPool, mode: StorageMode) -> Self {
        Self { pool, mode, known_days: Mutex::new(HashSet::new()) }
    }

    pub fn mode(&self) -> StorageMode {
        self.mode
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Makes sure the store has somewhere to put every day the events fall on (plain mode:
    /// partitions), in its own short transaction, before the caller's.
    pub async fn ensure_partitions(&self, events: &[TargetEvent]) -> sqlx::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let missing: Vec<i64> = {
            let known = self.known_days.lock().expect("partition cache");
            let mut days: Vec<i64> = events.iter().map(|e| e.time_ms().div_euclid(86_400_000)).collect();
            days.sort_unstable();
            days.dedup();
            days.into_iter().filter(|d| !known.contains(d)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let (first, last) = (missing[0], *missing.last().expect("non-empty"));
        super::open(self.mode, self.pool.clone()).ensure_partitions(utc_day_start(first), utc_day_start(last) + Duration::days(1)).await?;
        self.known_days.lock().expect("partition cache").extend(first..=last);
        Ok(())
    }

    /// The write sequence every path shares (backfill, repair, relay, tail): the store
    /// made ready for the page, then in one transaction the page (with its dead letters)
    /// and what must commit with it (`alongside`, which sees how the page went: a checkpoint,
    /// the outbox position),
    /// then commit. Nothing the caller acknowledges afterwards can be ahead of the commit.
    pub async fn commit_page<F>(&self, page: &ParsedPage, source: &str, method: Method, alongside: F) -> anyhow::Result<PageOutcome>
    where
        F: for<'c> FnOnce(&'c mut PgConnection, &PageOutcome) -> BoxFuture<'c, anyhow::Result<()>>,
    {
        self.commit_replacing(page, &[], source, method, alongside).await
    }

    /// [`Self::commit_page`], deleting the rows `replacing` first in the same transaction
    /// (a repair rewrites an event the target holds in another version, or removes one that
    /// Redis never had).
    pub async fn commit_replacing<F>(
        &self,
        page: &ParsedPage,
        replacing: &[(Uuid, DateTime<Utc>)],
        source: &str,
        method: Method,
        alongside: F,
    ) -> anyhow::Result<PageOutcome>
    where
        F: for<'c> FnOnce(&'c mut PgConnection, &PageOutcome) -> BoxFuture<'c, anyhow::Result<()>>,
    {
        self.ensure_partitions(&page.events).await?;
        let mut tx = self.pool.begin().await?;
        if !replacing.is_empty() {
            delete_rows(&mut tx, replacing).await?;
        }
        // The user sets of the minutes those rows were in no longer hold.
        super::user_sets::mark_times(&mut tx, replacing.iter().map(|(_, time)| *time)).await?;
        let outcome = self.write_page(&mut tx, page, source, method).await?;
        alongside(&mut tx, &outcome).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Writes a page inside the caller's transaction and records its dead letters (as
    /// `source`) and the minutes it touched (their user sets are stale until rebuilt) in the
    /// same transaction: the rows that can be stored go in, the others
    /// become dead letters, and the page is done either way. Returns an error only when
    /// the write should be retried as a whole ([`WriteErrorKind::Connection`]).
    pub async fn write_page(&self, conn: &mut PgConnection, page: &ParsedPage, source: &str, method: Method) -> sqlx::Result<PageOutcome> {
        let rows = page.rows();
        let written = match method {
            Method::Insert => self.insert_isolating(conn, &rows).await?,
            Method::Copy => self.copy_isolating(conn, &rows).await?,
        };
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut refused = HashSet::new();
        for (index, error) in &written.rejected {
            let (code, message) = server_message(error);
            tracing::warn!(source, event_id = %page.events[*index].event_id, %code, %message, "the target refused an event; stored as a dead letter");
            letters.push(page.letter(*index, DeadLetterReason::RejectedByTarget { code, message }));
            refused.insert(*index);
        }
        let stored = page.events.len() - refused.len();
        let inserted = written.inserted as usize;
        let present = present_candidates(&page.events, &written, &refused);
        let conflicts = conflicts(conn, &page.events, &present).await?;
        for (index, reason) in conflicts {
            tracing::warn!(source, event_id = %page.events[index].event_id, "another version of a stored event; stored as a dead letter");
            letters.push(page.letter(index, reason));
        }
        let conflicting = letters.len() - refused.len();
        let recorded = dead_letter::record(conn, source, &page.dead).await? + dead_letter::record(conn, source, &letters).await?;
        super::user_sets::mark(conn, &page.events).await?;
        if recorded > 0 {
            metrics::counter!("tsmigrate_dead_letters_total", "source" => source.to_string()).increment(recorded);
        }
        Ok(PageOutcome {
            inserted: inserted as u64,
            already_present: stored.saturating_sub(inserted + conflicting) as u64,
            dead_letters: page.dead.len() + letters.len(),
            dead_letters_recorded: recorded,
        })
    }

    /// Inserts rows that are not there yet (without raw digests). Returns how many were new.
    pub async fn insert(&self, conn: &mut PgConnection, events: &[TargetEvent]) -> sqlx::Result<WriteOutcome> {
        let inserted = insert_reporting(conn, &Row::without_raw_digests(events)).await?.rows;
        Ok(WriteOutcome { inserted, already_present: events.len() as u64 - inserted })
    }

    /// Writes a page with `COPY` inside the caller's transaction (without raw digests); falls
    /// back to `insert` when some rows are already present.
    pub async fn copy(&self, conn: &mut PgConnection, events: &[TargetEvent]) -> sqlx::Result<WriteOutcome> {
        if events.is_empty() {
            return Ok(WriteOutcome::default());
        }
        sqlx::query("SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
        match copy_raw(conn, super::bulk::encode_copy_binary(&Row::without_raw_digests(events))).await {
            Ok(rows) => {
                sqlx::query("RELEASE SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
                Ok(WriteOutcome { inserted: rows, already_present: 0 })
            }
            Err(e) if is_code(&e, UNIQUE_VIOLATION) || classify(&e) == WriteErrorKind::Data => {
                sqlx::query("ROLLBACK TO SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
                self.insert(conn, events).await
            }
            Err(e) => Err(e),
        }
    }

    async fn insert_isolating(&self, conn: &mut PgConnection, rows: &[Row<'_>]) -> sqlx::Result<Written> {
        if rows.is_empty() {
            return Ok(Written::default());
        }
        let isolated = isolate(conn, rows, |conn, chunk| Box::pin(insert_reporting(conn, chunk))).await?;
        let mut written = Written { rejected: isolated.rejected, ..Written::default() };
        for part in isolated.written {
            written.inserted += part.rows;
            written.skipped.extend(part.skipped);
        }
        Ok(written)
    }

    /// `COPY` under a savepoint; on a collision (or a row the server refuses) the page goes
    /// through [`Self::insert_isolating`] instead.
    async fn copy_isolating(&self, conn: &mut PgConnection, rows: &[Row<'_>]) -> sqlx::Result<Written> {
        if rows.is_empty() {
            return Ok(Written::default());
        }
        sqlx::query("SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
        match copy_raw(conn, super::bulk::encode_copy_binary(rows)).await {
            Ok(rows) => {
                sqlx::query("RELEASE SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
                Ok(Written { inserted: rows, ..Written::default() })
            }
            Err(e) if is_code(&e, UNIQUE_VIOLATION) || classify(&e) == WriteErrorKind::Data => {
                sqlx::query("ROLLBACK TO SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
                sqlx::query("RELEASE SAVEPOINT tsmigrate_copy").execute(&mut *conn).await?;
                self.insert_isolating(conn, rows).await
            }
            Err(e) => Err(e),
        }
    }
}

/// The events to compare with what is stored: those the insert skipped with a stored row
/// that may differ, and every event whose key occurs more than once in the page (one of
/// them went in; the others may be other versions of it).
fn present_candidates(events: &[TargetEvent], written: &Written, refused: &HashSet<usize>) -> Vec<usize> {
    let mut seen: HashMap<(Uuid, i64), usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if !refused.contains(&i) {
            *seen.entry(key_of(e)).or_default() += 1;
        }
    }
    (0..events.len())
        .filter(|i| !refused.contains(i))
        .filter(|i| {
            let key = key_of(&events[*i]);
            written.skipped.contains(&key) || seen.get(&key).copied().unwrap_or(0) > 1
        })
        .collect()
}

/// Events among `candidates` whose stored row (same `event_id` and time) has other content,
/// by the tolerance rules validation uses (key order and number formatting do not count).
async fn conflicts(conn: &mut PgConnection, events: &[TargetEvent], candidates: &[usize]) -> sqlx::Result<Vec<(usize, DeadLetterReason)>> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(Uuid, DateTime<Utc>)> = candidates.iter().map(|i| (events[*i].event_id, events[*i].time)).collect();
    let stored: HashMap<(Uuid, i64), TargetEvent> = rows_by_key(conn, &keys).await?.into_iter().map(|e| (key_of(&e), e)).collect();
    let mut out = Vec::new();
    for &i in candidates {
        let event = &events[i];
        let Some(row) = stored.get(&key_of(event)) else {
            continue;
        };
        let fields = changed_fields(event, row);
        if !fields.is_empty() {
            out.push((
                i,
                DeadLetterReason::ConflictingContent {
                    event_id: event.event_id,
                    time: event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    fields: fields.join(", "),
                    stored: serde_json::to_string(row).unwrap_or_default(),
                },
            ));
        }
    }
    Ok(out)
}

/// What one `INSERT … ON CONFLICT DO NOTHING` did.
#[derive(Debug, Default)]
struct Inserted {
    rows: u64,
    /// Keys of events it did not insert whose stored row may hold other content: the stored
    /// columns differ (jsonb compared as jsonb: key order and number formatting do not
    /// count), or the row is not visible to the statement (a concurrent writer committed it
    /// meanwhile). Usually none: a plain redelivery sends nothing back.
    skipped: Vec<(Uuid, i64)>,
}

/// The `INSERT … ON CONFLICT DO NOTHING`, reporting the rows it inserted and the skipped
/// keys worth comparing (see [`Inserted::skipped`]); the comparison itself is
/// [`conflicts`], with the validation tolerance rules.
async fn insert_reporting(conn: &mut PgConnection, rows: &[Row<'_>]) -> sqlx::Result<Inserted> {
    if rows.is_empty() {
        return Ok(Inserted::default());
    }
    // (rows inserted, skipped ids, their times); the arrays are NULL when nothing was skipped.
    type Reply = (i64, Option<Vec<Uuid>>, Option<Vec<DateTime<Utc>>>);
    let events: Vec<&TargetEvent> = rows.iter().map(|r| r.event).collect();
    let (rows, ids, times): Reply = sqlx::query_as(
        "WITH input AS (
            SELECT * FROM UNNEST($1::timestamptz[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::jsonb[], $8::jsonb[], $9::text[], $10::text[], $11::bigint[], $12::bigint[])
                AS i (time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer, stored_fingerprint, raw_digest)
         ), inserted AS (
            INSERT INTO analytics_events_ts
                (time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer, stored_fingerprint, raw_digest)
            SELECT * FROM input
            ON CONFLICT DO NOTHING
            RETURNING event_id, time
         )
         SELECT (SELECT count(*) FROM inserted), array_agg(i.event_id), array_agg(i.time)
         FROM input AS i
         LEFT JOIN analytics_events_ts AS e ON e.event_id = i.event_id AND e.time = i.time
         WHERE NOT EXISTS (SELECT 1 FROM inserted AS n WHERE n.event_id = i.event_id AND n.time = i.time)
           AND (e.event_id IS NULL
                OR (e.event_name, e.category, e.user_id, e.session_id, e.properties, e.device_info, e.page_url, e.referrer)
                   IS DISTINCT FROM (i.event_name, i.category, i.user_id, i.session_id, i.properties, i.device_info, i.page_url, i.referrer))",
    )
    .bind(events.iter().map(|e| e.time).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_name.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.category.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.user_id.as_deref()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.session_id.as_deref()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| &e.properties).collect::<Vec<_>>())
    .bind(events.iter().map(|e| &e.device_info).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.page_url.as_deref()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.referrer.as_deref()).collect::<Vec<_>>())
    .bind(super::bulk::Fingerprints::default().all(events.iter().copied()))
    .bind(rows.iter().map(|r| r.raw_digest).collect::<Vec<_>>())
    .fetch_one(conn)
    .await?;
    let skipped = ids.unwrap_or_default().into_iter().zip(times.unwrap_or_default()).map(|(id, time)| (id, time.timestamp_millis())).collect();
    Ok(Inserted { rows: rows as u64, skipped })
}

/// Deletes the rows with these `(event_id, time)` keys (those that are there).
async fn delete_rows(conn: &mut PgConnection, keys: &[(Uuid, DateTime<Utc>)]) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM analytics_events_ts e USING UNNEST($1::uuid[], $2::timestamptz[]) AS k (event_id, time)
         WHERE e.event_id = k.event_id AND e.time = k.time",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Stored rows by `(event_id, time)`: the writer's "already present" check and validation's
/// read-back of differing events share it.
pub const EVENTS_BY_KEY: &str = include_str!("../../validation/events_by_key.sql");

type EventRow = (Uuid, DateTime<Utc>, String, String, Option<String>, Option<String>, serde_json::Value, serde_json::Value, Option<String>, Option<String>);

/// The stored rows for `(event_id, time)` keys (`validation/events_by_key.sql`).
pub async fn rows_by_key(conn: &mut PgConnection, keys: &[(Uuid, DateTime<Utc>)]) -> sqlx::Result<Vec<TargetEvent>> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(5_000) {
        let rows: Vec<EventRow> = sqlx::query_as(EVENTS_BY_KEY)
            .bind(chunk.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(chunk.iter().map(|k| k.1).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        out.extend(rows.into_iter().map(|r| TargetEvent {
            event_id: r.0,
            time: r.1,
            event_name: r.2,
            category: r.3,
            user_id: r.4,
            session_id: r.5,
            properties: r.6,
            device_info: r.7,
            page_url: r.8,
            referrer: r.9,
        }));
    }
    Ok(out)
}

/// `COPY` in binary format (`store::bulk::encode_copy_binary`).
async fn copy_raw(conn: &mut PgConnection, payload: Vec<u8>) -> sqlx::Result<u64> {
    let mut copy = conn.copy_in_raw(&format!("COPY analytics_events_ts ({}) FROM STDIN (FORMAT binary)", super::bulk::BINARY_COPY_COLUMNS)).await?;
    if let Err(e) = copy.send(payload).await {
        let _ = copy.abort("tsmigrate: send failed").await;
        return Err(e);
    }
    copy.finish().await
}

fn is_code(e: &sqlx::Error, code: &str) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some(code)
}

fn utc_day_start(day: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(day * 86_400_000).expect("day in range")
}

/// `COPY … FROM STDIN` text format (what `psql \copy` sends; the writer sends
/// [`super::bulk::encode_copy_binary`]): tab-separated, `\N` for NULL, backslash escapes; each
/// row with its fingerprint ([`super::bulk::Fingerprints`]).
pub fn encode_copy_text(events: &[TargetEvent]) -> String {
    let mut out = String::with_capacity(events.len() * 384);
    let mut fingerprints = super::bulk::Fingerprints::default();
    for e in events {
        let _ = write!(out, "{}\t{}\t", e.time.format("%Y-%m-%d %H:%M:%S%.3f+00"), e.event_id);
        push_field(&mut out, Some(&e.event_name));
        out.push('\t');
        push_field(&mut out, Some(&e.category));
        out.push('\t');
        push_field(&mut out, e.user_id.as_deref());
        out.push('\t');
        push_field(&mut out, e.session_id.as_deref());
        out.push('\t');
        push_field(&mut out, Some(&e.properties.to_string()));
        out.push('\t');
        push_field(&mut out, Some(&e.device_info.to_string()));
        out.push('\t');
        push_field(&mut out, e.page_url.as_deref());
        out.push('\t');
        push_field(&mut out, e.referrer.as_deref());
        let _ = writeln!(out, "\t{}", fingerprints.of(e));
    }
    out
}

fn push_field(out: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        out.push_str("\\N");
        return;
    };
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn event(id: u128, ms: i64, name: &str) -> TargetEvent {
        TargetEvent {
            event_id: uuid::Uuid::from_u128(id),
            time: Utc.timestamp_millis_opt(ms).unwrap(),
            event_name: name.into(),
            category: "c".into(),
            user_id: None,
            session_id: None,
            properties: json!({}),
            device_info: json!({}),
            page_url: None,
            referrer: None,
        }
    }

    #[test]
    fn rows_not_inserted_and_every_repeated_key_are_compared_with_what_is_stored() {
        let events = vec![event(1, 1000, "a"), event(2, 1000, "b"), event(3, 1000, "c"), event(3, 1000, "c2"), event(4, 1000, "refused")];
        // The insert took 1 and one of the two 3s; 2 was already there; 4 was refused.
        let written = Written { inserted: 2, skipped: [(uuid::Uuid::from_u128(2), 1000)].into(), rejected: vec![] };
        let refused: HashSet<usize> = [4].into();
        assert_eq!(present_candidates(&events, &written, &refused), vec![1, 2, 3]);
        // Everything went in (COPY, or an insert that skipped nothing): nothing to compare.
        let unique = &events[..3];
        assert!(present_candidates(unique, &Written { inserted: 3, ..Written::default() }, &HashSet::new()).is_empty());
    }

    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let e = TargetEvent {
            event_id: uuid::Uuid::nil(),
            time: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            event_name: "a\tb".into(),
            category: "c\\d".into(),
            user_id: None,
            session_id: Some("line\nbreak".into()),
            properties: json!({"q": "x\ty"}),
            device_info: json!({}),
            page_url: None,
            referrer: Some("\\N".into()),
        };
        assert_eq!(
            encode_copy_text(std::slice::from_ref(&e)),
            format!(
                "2023-11-14 22:13:20.123+00\t00000000-0000-0000-0000-000000000000\ta\\tb\tc\\\\d\t\\N\tline\\nbreak\t{{\"q\":\"x\\\\ty\"}}\t{{}}\t\\N\t\\\\N\t{}\n",
                crate::store::bulk::Fingerprints::default().of(&e)
            )
        );
    }
}
