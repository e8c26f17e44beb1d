//! A backfill in parallel streams (`store::bulk`): the score range is split at minute
//! boundaries into parts holding about as many members each, saved as the layout before the
//! first page; each part is copied by [`copy_pages`] with its own checkpoint
//! ([`Checkpoint::BackfillPart`]), written in the same transaction as its pages. A copy killed at any
//! point resumes every part from its own last commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{copy_ended, copy_pages, CopyOptions, Page, PageSink, TASK};
use crate::connect::RedisConn;
use crate::context::Context;
use crate::ledger::checkpoint::{self, BackfillPosition, Checkpoint, ScoreCursor};
use crate::ledger::progress;
use crate::progress::{Progress, RateLimit};
use crate::stop::{Boundary, Rerun, Stopped, Why};
use crate::store::bulk;
use crate::store::writer::{PageOutcome, TargetWriter};
use crate::store::StorageMode;

/// The parts' positions of a split copy still to finish (none for a copy in one stream);
/// the totals of `position` become their sums.
pub async fn load(ctx: &Context, position: &mut BackfillPosition) -> anyhow::Result<Vec<BackfillPosition>> {
    load_on(&mut *ctx.target.acquire().await?, position).await
}

/// [`load`] on a connection: what `tsmigrate run`'s backfill gauges read too, so that a copy
/// in several streams shows its counts while it runs.
pub async fn load_on(conn: &mut sqlx::PgConnection, position: &mut BackfillPosition) -> anyhow::Result<Vec<BackfillPosition>> {
    if position.parts == 0 || position.finished {
        return Ok(vec![]);
    }
    let mut parts = Vec::with_capacity(position.parts);
    for index in 0..position.parts {
        let part = checkpoint::backfill_part(&mut *conn, index).await?;
        parts.push(part.ok_or_else(|| {
            anyhow::anyhow!(
                "the backfill checkpoint says the copy runs in {} streams, but the position of stream {index} (backfill.part{index}) is missing from tsmigrate.checkpoints\n  \
                 next: restore it, or delete the checkpoints named 'backfill' and 'backfill.part*' to copy again from the start (idempotent)",
                position.parts
            )
        })?);
    }
    position.sum(&parts);
    Ok(parts)
}

/// Splits a copy that has not started into `streams` parts holding about as many members
/// each (cut on minute boundaries), and saves the layout with every part's start in one
/// transaction. Returns no parts when the members fit in one minute (one stream).
pub async fn lay_out(ctx: &Context, redis: &mut RedisConn, position: &mut BackfillPosition, streams: usize) -> anyhow::Result<Vec<BackfillPosition>> {
    let streams = streams.min(bulk::MAX_STREAMS);
    let key = &ctx.keys.events;
    let from = position.cursor.score;
    let (below, total): (u64, u64) = redis::pipe()
        .cmd("ZCOUNT")
        .arg(key)
        .arg("-inf")
        .arg(format!("({from}"))
        .cmd("ZCOUNT")
        .arg(key)
        .arg(from)
        .arg(position.until)
        .query_async(redis)
        .await?;
    if total < streams as u64 * 2 {
        return Ok(vec![]);
    }
    let mut pipe = redis::pipe();
    for i in 1..streams as u64 {
        let rank = below + total * i / streams as u64;
        pipe.cmd("ZRANGE").arg(key).arg(rank).arg(rank).arg("WITHSCORES");
    }
    let at: Vec<Vec<(Vec<u8>, f64)>> = pipe.query_async(redis).await?;
    let cuts: Vec<f64> = at.iter().filter_map(|m| m.first().map(|(_, score)| *score)).collect();
    let ranges = bulk::split(from, position.until, &cuts);
    if ranges.len() < 2 {
        return Ok(vec![]);
    }
    let parts: Vec<BackfillPosition> =
        ranges.iter().map(|r| BackfillPosition { cursor: ScoreCursor::at(r.from), ..BackfillPosition::start(r.until) }).collect();
    position.parts = parts.len();
    let mut tx = ctx.target.begin().await?;
    for (index, part) in parts.iter().enumerate() {
        Checkpoint::BackfillPart { index, position: part.clone() }.save(&mut tx).await?;
    }
    Checkpoint::Backfill(position.clone()).save(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(streams = parts.len(), members = total, "backfill: the copy runs in parallel streams over disjoint score ranges");
    Ok(parts)
}

/// Copies every unfinished part at once, each page with its part's checkpoint; then saves
/// the sums as the backfill's position, finished.
#[allow(clippy::too_many_arguments)]
pub async fn copy(
    ctx: &Context,
    mode: StorageMode,
    redis: RedisConn,
    position: &mut BackfillPosition,
    mut parts: Vec<BackfillPosition>,
    remaining: u64,
    options: &CopyOptions,
    boundary: &Boundary,
) -> anyhow::Result<progress::Reporter> {
    let writer = TargetWriter::new(ctx.target.clone(), mode);
    let resume = options.resume.clone();
    let reporter = progress::Reporter::start(&ctx.target, TASK, "events", (&resume, Rerun::Resumes), position.read, Some(position.read + remaining)).await;
    let shared = Mutex::new(Shared {
        progress: Progress::new("backfill", remaining, options.quiet),
        done_this_run: 0,
        read: position.read,
        pages: position.pages,
        limit: options.max_rate.filter(|r| *r > 0).map(|rate| RateLimit::new(rate, Instant::now())),
    });
    let (total, streams) = (position.read + remaining, parts.len());
    let copies = parts.iter_mut().enumerate().filter(|(_, p)| !p.finished).map(|(i, part)| {
        let mut sink = PartSink { index: i, part, shared: &shared, reported: reporter.counter(), total, streams, resume: resume.clone() };
        let (writer, redis, key) = (&writer, redis.clone(), ctx.keys.events.clone());
        async move {
            let (cursor, until) = (sink.part.cursor, sink.part.until);
            copy_pages(writer, redis, key, cursor, until, options.page_size, "backfill", &mut sink, boundary).await?;
            sink.part.finished = true;
            Checkpoint::BackfillPart { index: sink.index, position: sink.part.clone() }.save(&mut *writer.pool().acquire().await?).await
        }
    });
    // Every stream ends at a page boundary of its own (an interrupt stops each at its next
    // one): a stream dropped mid-page could have its commit land after the counts were taken.
    let copied = futures::future::join_all(copies).await.into_iter().collect::<anyhow::Result<Vec<()>>>().map(|_| ());
    if copied.is_ok() {
        shared.lock().expect("backfill streams").progress.finish();
        position.sum(&parts);
    }
    copy_ended(ctx, position, copied, reporter).await
}

impl BackfillPosition {
    /// The counts of a split copy: the sums of its parts'.
    fn sum(&mut self, parts: &[BackfillPosition]) {
        (self.read, self.inserted, self.already_present, self.dead_letters, self.pages) = (0, 0, 0, 0, 0);
        for p in parts {
            self.read += p.read;
            self.inserted += p.inserted;
            self.already_present += p.already_present;
            self.dead_letters += p.dead_letters;
            self.pages += p.pages;
        }
        self.min_time_ms = parts.iter().filter_map(|p| p.min_time_ms).min();
        self.max_time_ms = parts.iter().filter_map(|p| p.max_time_ms).max();
    }
}

/// What the streams share: progress, pace, the counts for status and for a stop.
struct Shared {
    progress: Progress,
    done_this_run: u64,
    /// Read and pages over all parts and runs.
    read: u64,
    pages: u64,
    limit: Option<RateLimit>,
}

/// Where each committed page of one part goes.
struct PartSink<'a> {
    index: usize,
    part: &'a mut BackfillPosition,
    shared: &'a Mutex<Shared>,
    /// Events read so far, all runs (what `status` shows).
    reported: Arc<AtomicU64>,
    total: u64,
    streams: usize,
    resume: String,
}

impl PageSink for PartSink<'_> {
    fn written(&mut self, page: &Page, outcome: &PageOutcome) -> Option<Checkpoint> {
        self.part.add(page, outcome);
        Some(Checkpoint::BackfillPart { index: self.index, position: self.part.clone() })
    }

    fn committed(&mut self, page: &Page, now: Instant) -> Option<Duration> {
        let mut shared = self.shared.lock().expect("backfill streams");
        shared.done_this_run += page.read as u64;
        shared.read += page.read as u64;
        shared.pages += 1;
        shared.progress.set(shared.done_this_run);
        self.reported.store(shared.read, Ordering::Relaxed);
        shared.limit.as_mut()?.after(page.read as u64, now)
    }

    fn stopped(&self, why: Why) -> Stopped {
        let shared = self.shared.lock().expect("backfill streams");
        Stopped {
            command: "backfill".into(),
            why,
            at: format!(
                "after {} pages in {} parallel streams ({} of about {} events read; each stream resumes from its own checkpoint)",
                shared.pages,
                self.streams,
                shared.read,
                self.total.max(shared.read)
            ),
            resume: self.resume.clone(),
            rerun: Rerun::Resumes,
        }
    }
}
