//! The backfill engine: the page-copy pipeline every copy from the sorted set goes through
//! (`tsmigrate backfill` and `backfill --from --to`). One task reads the next page from Redis
//! while the current one is written through the write sequence
//! ([`TargetWriter::commit_page`]), each page committed with its checkpoint
//! ([`Checkpoint`]), the phase lock confirmed last before the commit, and the copy stopped
//! only at a page boundary. The commands around it (`phase::command::backfill`,
//! `backfill_window`) declare their transition, gate and report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::connect::RedisConn;
use crate::context::Context;
use crate::ledger::checkpoint::{BackfillPosition, Checkpoint, ScoreCursor};
use crate::ledger::progress;
use crate::legacy::reader::{self, read_page};
use crate::progress::{Progress, RateLimit};
use crate::stop::{Boundary, Rerun, Stopped, Why};
use crate::store::aggregates::{self, RefreshOutcome};
use crate::store::history::{self, HistoryReport};
use crate::store::writer::{Method, PageOutcome, ParsedPage, TargetWriter};
use crate::store::{StorageMode, Store};

/// The copy split into parallel streams.
pub mod parts;

/// The task name of the backfill's progress (what `status` shows).
pub const TASK: &str = "backfill";

/// How a backfill copies.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub page_size: usize,
    /// Events per second at most; `None` = as fast as possible.
    pub max_rate: Option<u64>,
    /// No progress lines (JSON output).
    pub quiet: bool,
    /// The command line that resumes it.
    pub resume: String,
}

/// Copies from the saved position to its end, each page with its checkpoint; returns the
/// progress reporter, still running (the closing steps follow).
pub async fn copy(
    ctx: &Context,
    mode: StorageMode,
    redis: RedisConn,
    position: &mut BackfillPosition,
    remaining: u64,
    options: &CopyOptions,
    boundary: &Boundary,
) -> anyhow::Result<progress::Reporter> {
    let writer = TargetWriter::new(ctx.target.clone(), mode);
    // Seen from any terminal by `tsmigrate status`.
    let reporter =
        progress::Reporter::start(&ctx.target, TASK, "events", (&options.resume, Rerun::Resumes), position.read, Some(position.read + remaining)).await;
    let mut sink = BackfillSink {
        total: position.read + remaining,
        position,
        progress: Progress::new("backfill", remaining, options.quiet),
        reported: reporter.counter(),
        done_this_run: 0,
        limit: options.max_rate.filter(|r| *r > 0).map(|rate| RateLimit::new(rate, Instant::now())),
        resume: options.resume.clone(),
    };
    let (cursor, until) = (sink.position.cursor, sink.position.until);
    let copied = copy_pages(&writer, redis, ctx.keys.events.clone(), cursor, until, options.page_size, "backfill", &mut sink, boundary).await;
    if copied.is_ok() {
        sink.progress.finish();
    }
    copy_ended(ctx, sink.position, copied, reporter).await
}

/// The copy ended: complete, its position is saved as finished (not closed) and the run
/// goes on with its closing steps, still shown as running; failed, the run ends.
async fn copy_ended(
    ctx: &Context,
    position: &mut BackfillPosition,
    copied: anyhow::Result<()>,
    reporter: progress::Reporter,
) -> anyhow::Result<progress::Reporter> {
    let copied = match copied {
        Ok(()) => {
            position.finished = true;
            position.closed = false;
            async { Checkpoint::Backfill(position.clone()).save(&mut *ctx.target.acquire().await?).await }.await
        }
        failed => failed,
    };
    match copied {
        Ok(()) => Ok(reporter),
        Err(error) => {
            let failed: anyhow::Result<()> = Err(error);
            reporter.end(&ctx.target, TASK, &failed).await;
            failed.map(|()| unreachable!("failed"))
        }
    }
}

impl BackfillPosition {
    /// A new pass over the members scored up to `until`.
    pub fn start(until: f64) -> BackfillPosition {
        BackfillPosition {
            cursor: ScoreCursor::at(f64::MIN),
            until,
            read: 0,
            inserted: 0,
            already_present: 0,
            dead_letters: 0,
            pages: 0,
            min_time_ms: None,
            max_time_ms: None,
            finished: false,
            closed: false,
            parts: 0,
        }
    }

    fn add(&mut self, page: &Page, written: &PageOutcome) {
        self.cursor = page.cursor_after;
        self.read += page.read as u64;
        self.inserted += written.inserted;
        self.already_present += written.already_present;
        self.dead_letters += written.dead_letters_recorded;
        self.pages += 1;
        for e in &page.parsed.events {
            let ms = e.time_ms();
            self.min_time_ms = Some(self.min_time_ms.map_or(ms, |m| m.min(ms)));
            self.max_time_ms = Some(self.max_time_ms.map_or(ms, |m| m.max(ms)));
        }
    }
}

/// What the closing steps did.
#[derive(Debug, Default)]
pub struct Closed {
    pub refresh: Option<RefreshOutcome>,
    pub history: Option<HistoryReport>,
    /// Milliseconds each step took: `refresh`, `vacuum` (beside the refresh), `history`.
    pub timings_ms: Vec<(&'static str, u64)>,
}

/// The closing steps after a complete copy: the aggregates over what was copied, and (with
/// `import_history`) the legacy history older than what Redis holds (`completion_point` when
/// it holds nothing).
pub async fn close(
    ctx: &Context,
    store: &dyn Store,
    redis: &mut RedisConn,
    position: &BackfillPosition,
    completion_point: DateTime<Utc>,
    import_history: bool,
) -> anyhow::Result<Closed> {
    let t = &ctx.settings.target;
    let mut closed = Closed::default();
    if let (Some(min), Some(max)) = (position.min_time_ms, position.max_time_ms) {
        let from = DateTime::from_timestamp_millis(min).unwrap_or(completion_point);
        let to = DateTime::from_timestamp_millis(max + 1).unwrap_or(completion_point);
        let refresh = async {
            let clock = Instant::now();
            (aggregates::refresh(store, from, to, t.timezone(), t.raw_retention_days).await, clock.elapsed())
        };
        // Without it, until autovacuum comes by, every row the copy wrote is visited again
        // by whatever counts rows next (the first validation, at counts depth above all).
        // Beside the refresh, on a connection of its own: neither waits for the other (the
        // vacuum takes no lock a refresh needs), so the backfill ends when the longer ends.
        let vacuum = async {
            let clock = Instant::now();
            if let Err(e) = crate::store::vacuum_events(&ctx.target).await {
                tracing::warn!(error = %e, "could not vacuum the events table after the copy (autovacuum will): counting its rows stays slower until then");
            }
            clock.elapsed()
        };
        let ((refreshed, refresh_took), vacuum_took) = tokio::join!(refresh, vacuum);
        closed.refresh = Some(refreshed?);
        closed.timings_ms.push(("refresh", refresh_took.as_millis() as u64));
        closed.timings_ms.push(("vacuum", vacuum_took.as_millis() as u64));
    }
    if import_history {
        let horizon = reader::redis_horizon(redis, &ctx.keys).await?.unwrap_or(completion_point);
        let clock = Instant::now();
        closed.history = Some(history::import(&ctx.settings, &ctx.target, &ctx.legacy().await?, horizon).await?);
        closed.timings_ms.push(("history", clock.elapsed().as_millis() as u64));
    }
    Ok(closed)
}

/// Members left between the position (one stream's) and its end.
pub async fn remaining(redis: &mut RedisConn, key: &str, position: &BackfillPosition) -> anyhow::Result<u64> {
    if position.finished {
        return Ok(0);
    }
    let zcount: u64 = redis::cmd("ZCOUNT").arg(key).arg(position.cursor.score).arg(position.until).query_async(redis).await?;
    Ok(zcount.saturating_sub(position.cursor.skip))
}

/// Where each committed page goes: counts, checkpoint, progress, pace.
struct BackfillSink<'a> {
    position: &'a mut BackfillPosition,
    /// About how many events the whole backfill reads (all runs).
    total: u64,
    progress: Progress,
    /// Events read so far, all runs (what `status` shows).
    reported: Arc<AtomicU64>,
    done_this_run: u64,
    limit: Option<RateLimit>,
    /// The command line that resumes it.
    resume: String,
}

impl PageSink for BackfillSink<'_> {
    fn written(&mut self, page: &Page, outcome: &PageOutcome) -> Option<Checkpoint> {
        self.position.add(page, outcome);
        Some(Checkpoint::Backfill(self.position.clone()))
    }

    fn committed(&mut self, page: &Page, now: Instant) -> Option<Duration> {
        self.done_this_run += page.read as u64;
        self.progress.set(self.done_this_run);
        self.reported.store(self.position.read, Ordering::Relaxed);
        self.limit.as_mut()?.after(page.read as u64, now)
    }

    fn stopped(&self, why: Why) -> Stopped {
        let p = &*self.position;
        Stopped {
            command: "backfill".into(),
            why,
            at: format!(
                "after {} pages ({} of about {} events read{})",
                p.pages,
                p.read,
                self.total.max(p.read),
                DateTime::from_timestamp_millis(p.cursor.score as i64)
                    .filter(|_| p.pages > 0)
                    .map(|t| format!(", through events scored {t}"))
                    .unwrap_or_default()
            ),
            resume: self.resume.clone(),
            rerun: Rerun::Resumes,
        }
    }
}

/// One page read from Redis, parsed, ready to commit.
pub struct Page {
    pub parsed: ParsedPage,
    pub read: usize,
    pub cursor_after: ScoreCursor,
}

/// What the copy loop does around each page's commit.
pub trait PageSink: Send {
    /// Inside the page's transaction, after its rows: a checkpoint to save with them.
    fn written(&mut self, page: &Page, outcome: &PageOutcome) -> Option<Checkpoint>;
    /// After the commit (at `now`): how long to wait before the next page (a rate limit).
    fn committed(&mut self, page: &Page, now: Instant) -> Option<Duration>;
    /// The copy stopped early at a page boundary: where, and how to resume.
    fn stopped(&self, why: Why) -> Stopped;
}

/// Copies the members scored in `[cursor, until]` through the write sequence
/// ([`TargetWriter::commit_page`]), reading the next page while this one is written.
#[allow(clippy::too_many_arguments)]
pub async fn copy_pages(
    writer: &TargetWriter,
    redis: RedisConn,
    key: String,
    cursor: ScoreCursor,
    until: f64,
    page_size: usize,
    source: &'static str,
    sink: &mut impl PageSink,
    boundary: &Boundary,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Page>>(2);
    let reader = tokio::spawn(read_pages(redis, key, cursor, until, page_size, tx));
    loop {
        // A page boundary: everything before is committed with its checkpoint.
        boundary.between_pages().map_err(|why| sink.stopped(why))?;
        let waiting = Instant::now();
        let Some(page) = rx.recv().await else { break };
        COPY_TIMINGS.add(&COPY_TIMINGS.write_waiting, waiting);
        let page = page?;
        let writing = Instant::now();
        let committed = writer
            .commit_page(&page.parsed, source, Method::Copy, |conn, outcome| {
                let saved = sink.written(&page, outcome);
                let boundary = boundary.clone();
                Box::pin(async move {
                    // Last before the commit: a page never commits once the lock is gone.
                    boundary.confirm_lock(conn).await?;
                    match saved {
                        Some(checkpoint) => checkpoint.save(conn).await,
                        None => Ok(()),
                    }
                })
            })
            .await;
        COPY_TIMINGS.add(&COPY_TIMINGS.write, writing);
        if let Err(error) = committed {
            if boundary.lost_lock(writer.pool(), &error).await {
                return Err(sink.stopped(Why::LockLost).into());
            }
            return Err(error);
        }
        if let Some(wait) = sink.committed(&page, Instant::now()) {
            boundary.pause(wait).await;
        }
    }
    reader.await?
}

/// Where the page copies of this process spent their time (summed over concurrent copies),
/// for the backfill's `timings_ms`.
struct CopyTimings {
    redis_read: AtomicU64,
    parse: AtomicU64,
    write: AtomicU64,
    write_waiting: AtomicU64,
}

static COPY_TIMINGS: CopyTimings =
    CopyTimings { redis_read: AtomicU64::new(0), parse: AtomicU64::new(0), write: AtomicU64::new(0), write_waiting: AtomicU64::new(0) };

impl CopyTimings {
    fn add(&self, counter: &AtomicU64, since: Instant) {
        counter.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

/// The milliseconds the page copies of this process spent so far, by part — `redis_read`,
/// `parse`, `write` (each page's transaction: COPY, dead letters, marks, checkpoint, commit)
/// and `write_waiting` (the writers waiting for a page) — summed over concurrent streams;
/// the counters start again from zero.
pub fn copy_timings() -> [(&'static str, u64); 4] {
    let t = &COPY_TIMINGS;
    let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed) / 1000;
    [("redis_read", take(&t.redis_read)), ("parse", take(&t.parse)), ("write", take(&t.write)), ("write_waiting", take(&t.write_waiting))]
}

/// Reads pages from `cursor` to `until` (inclusive) into `tx`, one ahead of the writer.
async fn read_pages(
    mut redis: RedisConn,
    key: String,
    mut cursor: ScoreCursor,
    until: f64,
    page_size: usize,
    tx: mpsc::Sender<anyhow::Result<Page>>,
) -> anyhow::Result<()> {
    let now_ms = Utc::now().timestamp_millis();
    loop {
        let reading = Instant::now();
        let members = match read_page(&mut redis, &key, cursor, until, page_size).await {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return Ok(());
            }
        };
        if members.is_empty() {
            return Ok(());
        }
        COPY_TIMINGS.add(&COPY_TIMINGS.redis_read, reading);
        let parsing = Instant::now();
        let cursor_after = cursor.after(&members);
        let read = members.len();
        let mut parsed = ParsedPage::with_capacity(read);
        for (member, score) in members {
            parsed.push(member, Some(score), now_ms);
        }
        COPY_TIMINGS.add(&COPY_TIMINGS.parse, parsing);
        cursor = cursor_after;
        let last = read < page_size;
        if tx.send(Ok(Page { parsed, read, cursor_after })).await.is_err() || last {
            return Ok(());
        }
    }
}
