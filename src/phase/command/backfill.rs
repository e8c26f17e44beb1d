//! `tsmigrate backfill`: copies the events Redis held before the completion point T into
//! the target, oldest first, in pages written with `COPY`. Each page commits together
//! with its checkpoint, so after a crash a re-run resumes exactly where the last commit
//! ended: no gap, no duplicate. Then it refreshes the aggregates over the backfilled range
//! and imports the legacy history older than the Redis horizon.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connect::RedisConn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::context::Context;
use crate::event::MAX_FUTURE_MS;
use crate::legacy::reader::{self, read_page, OutOfRange, ScoreCursor};
use crate::phase::report::Details;
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::state::StateChanges;
use crate::phase::{Refusal, Transition, BACKFILL};
use crate::progress::{Progress, RateLimit};
use crate::stop::{Boundary, Rerun, Stopped, Why};
use crate::store::aggregates::{self, RefreshOutcome};
use crate::store::checkpoint;
use crate::store::dead_letter::{self, DeadLetterCount, DeadLetterExample};
use crate::store::history::{self, HistoryReport};
use crate::store::progress;
use crate::store::writer::{Method, PageOutcome, ParsedPage, TargetWriter};
use crate::store::{StorageMode, Store};

pub const CHECKPOINT: &str = "backfill";
/// Dead letters named in the report (the most recent of the backfill's).
const NAMED_DEAD_LETTERS: i64 = 5;
/// Out-of-range members shown from each end of the sorted set.
const OUT_OF_RANGE_EXAMPLES: usize = 3;

pub struct Backfill {
    pub page_size: usize,
    /// Events per second at most (protects a busy production server); `None` = as fast as possible.
    pub max_rate: Option<u64>,
    pub import_history: bool,
    /// No progress lines (JSON output).
    pub quiet: bool,
    /// Parallel copy streams over disjoint score ranges (`store::bulk`); 1 copies in one.
    /// A resumed copy keeps the layout it started with.
    pub streams: usize,
}

/// Saved with every page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackfillPosition {
    pub cursor: ScoreCursor,
    /// Scores up to this (inclusive) are the backfill's.
    pub until: f64,
    pub read: u64,
    pub inserted: u64,
    pub already_present: u64,
    pub dead_letters: u64,
    pub pages: u64,
    pub min_time_ms: Option<i64>,
    pub max_time_ms: Option<i64>,
    /// The copy is complete (saved after its last page).
    pub finished: bool,
    /// The closing steps (aggregate refresh, history import) ran after the copy. A copy
    /// finished but not closed — stopped during those steps — is not copied again: a re-run
    /// goes on with the closing steps. A finished and closed backfill run again is a new
    /// pass. Checkpoints written before this was kept count as closed.
    #[serde(default = "closed_before_it_was_kept")]
    pub closed: bool,
    /// The copy is split into this many streams, each with its own position in the
    /// checkpoint `store::bulk::PART_NAMES[i]`; the counts here are their sums. 0: one
    /// stream, whose position is this one (`cursor`).
    #[serde(default)]
    pub parts: usize,
}

fn closed_before_it_was_kept() -> bool {
    true
}

#[derive(Debug, Clone, Serialize)]
pub struct BackfillDetails {
    #[serde(skip)]
    dry_run: bool,
    pub completion_point: DateTime<Utc>,
    /// Events scored up to here were copied (T plus the tracker clock-skew allowance).
    pub upper_bound: DateTime<Utc>,
    pub resumed: bool,
    pub remaining_estimate: u64,
    /// Totals over the whole backfill (all runs).
    pub read: u64,
    pub inserted: u64,
    pub already_present: u64,
    pub dead_letters: u64,
    pub dead_letter_reasons: Vec<DeadLetterCount>,
    /// The most recent dead letters of the backfill, by name: reason, score and member.
    pub dead_letter_examples: Vec<DeadLetterExample>,
    /// Members scored where no path reads them (before 2000, `-inf`, after now + 1 day, `+inf`).
    pub out_of_range: OutOfRange,
    pub pages: u64,
    /// Events this run read from Redis: 0 when the copy was complete already and the run
    /// went on with the closing steps (`copy_complete_before`).
    pub read_this_run: u64,
    /// The copy was complete when this run started (an earlier one stopped during its
    /// closing steps): nothing was copied again.
    pub copy_complete_before: bool,
    /// This run only.
    pub seconds: f64,
    pub events_per_second: f64,
    pub refresh: Option<RefreshOutcome>,
    pub history: Option<HistoryReport>,
    /// Where this run's time went, in milliseconds: `copy`, `refresh` and `history` (wall),
    /// and inside the copy, summed over its streams, `redis_read`, `parse`, `write` (each
    /// page's transaction: COPY, dead letters, marks, checkpoint, commit) and `write_waiting`
    /// (the writers waiting for a page).
    pub timings_ms: BTreeMap<&'static str, u64>,
}

impl PhaseCommand for Backfill {
    type Details = BackfillDetails;

    fn stops_at_pages(&self) -> bool {
        true
    }

    fn transition(&self) -> &'static Transition {
        &BACKFILL
    }

    fn invocation(&self) -> String {
        invocation(self.max_rate, self.import_history)
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<BackfillDetails>> {
        let completion_point = run.state.completion_point.ok_or_else(|| Refusal {
            command: "backfill".into(),
            reason: "no completion point is recorded".into(),
            next: "tsmigrate dual-write stop && tsmigrate dual-write start".into(),
        })?;
        let mode = run.state.storage_mode.ok_or_else(|| anyhow::anyhow!("storage mode missing from the migration state"))?;
        let mut redis = ctx.redis().await?;
        let until = (completion_point.timestamp_millis() + MAX_FUTURE_MS + 60_000) as f64;
        // A finished backfill run again is a new pass over what Redis holds up to T: rows
        // already there stay single, anything missing (found by a validation) goes in. A
        // copy that finished but stopped during its closing steps goes on with those.
        let saved: Option<BackfillPosition> = checkpoint::load(&mut *ctx.target.acquire().await?, CHECKPOINT).await?;
        let saved = saved.filter(|p| !(p.finished && p.closed));
        let mut position = saved.unwrap_or_else(|| BackfillPosition::start(until));
        let mut parts = parts::load(ctx, &mut position).await?;
        let resumed = position.pages > 0;
        if !run.dry_run && !resumed && !position.finished && self.streams > 1 {
            parts = parts::lay_out(ctx, &mut redis, &mut position, self.streams).await?;
        }
        let mut remaining = 0;
        for part in parts.iter().chain(Some(&position).filter(|p| p.parts == 0)) {
            remaining += self::remaining(&mut redis, &ctx.keys.events, part).await?;
        }
        let out_of_range = reader::out_of_range(&mut redis, &ctx.keys.events, Utc::now().timestamp_millis(), OUT_OF_RANGE_EXAMPLES).await?;
        let mut details = BackfillDetails::new(run.dry_run, completion_point, &position, resumed, remaining, out_of_range);
        if self.import_history {
            history::check_legacy_tables(&ctx.settings, &ctx.legacy().await?).await?;
        }
        if run.dry_run {
            return Ok(Applied::new(details, Commit::Nothing));
        }
        let store = ctx.store(mode);
        let started = Instant::now();
        let read_before = position.read;
        details.copy_complete_before = position.finished;
        // Status shows the run until its closing steps are done too (stopped during them: not
        // running, and what resumes it).
        let reporter = match position.finished {
            false if position.parts > 0 => parts::copy(self, ctx, mode, redis.clone(), &mut position, parts, remaining, &run.boundary).await?,
            false => self.copy(ctx, mode, redis.clone(), &mut position, remaining, &run.boundary).await?,
            true => {
                progress::Reporter::start(&ctx.target, CHECKPOINT, "events", (&self.invocation(), Rerun::Resumes), position.read, Some(position.read)).await
            }
        };
        details.read_this_run = position.read - read_before;
        details.seconds = started.elapsed().as_secs_f64();
        details.timings_ms.insert("copy", started.elapsed().as_millis() as u64);
        details.timings_ms.extend(COPY_TIMINGS.taken());
        details.events_per_second = details.read_this_run as f64 / details.seconds.max(1e-9);
        // The closing steps stop on an interrupt too: the copy is complete and checkpointed
        // (finished, not closed), so a re-run goes straight on with them.
        tracing::info!(read = position.read, pages = position.pages, "backfill: the copy is complete; refreshing the aggregates and importing the history");
        let closing = self.finish(ctx, &*store, &mut redis, &position, &mut details);
        let closed = match run.boundary.unless_interrupted(closing).await {
            Ok(closed) => closed,
            Err(why) => Err(self.stopped_closing(why, &position).into()),
        };
        reporter.end(&ctx.target, CHECKPOINT, &closed).await;
        closed?;
        position.closed = true;
        checkpoint::save(&mut *ctx.target.acquire().await?, CHECKPOINT, &position).await?;
        // Events Redis evicted before this copy reached them are in neither system: say so.
        let evicted = crate::dual_write::durability::inspect_or_warn(&mut redis).await.evicted_keys.filter(|n| *n > 0);
        let warnings = evicted.map(evictions_warning).into_iter().collect();
        let audit = json!({"read": position.read, "inserted": position.inserted, "dead_letters": position.dead_letters, "resumed": resumed, "redis_evicted_keys": evicted});
        let changes = StateChanges { backfilled_until: DateTime::from_timestamp_millis(position.until as i64), ..Default::default() };
        Ok(Applied { audit, warnings, ..Applied::new(details, Commit::Move(changes)) })
    }
}

/// `tsmigrate backfill` with the options that change what it does (`--max-rate`, `--no-history`).
fn invocation(max_rate: Option<u64>, import_history: bool) -> String {
    let mut line = String::from("tsmigrate backfill");
    if let Some(rate) = max_rate.filter(|r| *r > 0) {
        line.push_str(&format!(" --max-rate {rate}"));
    }
    if !import_history {
        line.push_str(" --no-history");
    }
    line
}

impl Backfill {
    /// Stopped during the closing steps, after a complete copy.
    fn stopped_closing(&self, why: Why, p: &BackfillPosition) -> Stopped {
        Stopped {
            command: "backfill".into(),
            why,
            at: format!(
                "after its last page, during its closing aggregate refresh and history import: the copy is complete ({} events read in {}) and checkpointed, and a re-run does not copy it again",
                crate::human::count(p.read as i64),
                crate::human::plural(p.pages, "page")
            ),
            resume: self.invocation(),
            rerun: Rerun::Resumes,
        }
    }

    /// Copies from the saved position to its end, each page with its checkpoint.
    async fn copy(
        &self,
        ctx: &Context,
        mode: StorageMode,
        redis: RedisConn,
        position: &mut BackfillPosition,
        remaining: u64,
        boundary: &Boundary,
    ) -> anyhow::Result<progress::Reporter> {
        let writer = TargetWriter::new(ctx.target.clone(), mode);
        // Seen from any terminal by `tsmigrate status`.
        let reporter =
            progress::Reporter::start(&ctx.target, CHECKPOINT, "events", (&self.invocation(), Rerun::Resumes), position.read, Some(position.read + remaining))
                .await;
        let mut sink = BackfillSink {
            total: position.read + remaining,
            position,
            progress: Progress::new("backfill", remaining, self.quiet),
            reported: reporter.counter(),
            done_this_run: 0,
            limit: self.max_rate.filter(|r| *r > 0).map(|rate| RateLimit::new(rate, Instant::now())),
            resume: invocation(self.max_rate, self.import_history),
        };
        let (cursor, until) = (sink.position.cursor, sink.position.until);
        let copied = copy_pages(&writer, redis, ctx.keys.events.clone(), cursor, until, self.page_size, "backfill", &mut sink, boundary).await;
        if copied.is_ok() {
            sink.progress.finish();
        }
        copy_ended(ctx, sink.position, copied, reporter).await
    }

    /// Aggregates over what was copied, the history older than Redis, the totals.
    async fn finish(
        &self,
        ctx: &Context,
        store: &dyn Store,
        redis: &mut RedisConn,
        position: &BackfillPosition,
        details: &mut BackfillDetails,
    ) -> anyhow::Result<()> {
        let t = &ctx.settings.target;
        if let (Some(min), Some(max)) = (position.min_time_ms, position.max_time_ms) {
            let from = DateTime::from_timestamp_millis(min).unwrap_or(details.completion_point);
            let to = DateTime::from_timestamp_millis(max + 1).unwrap_or(details.completion_point);
            let clock = Instant::now();
            details.refresh = Some(aggregates::refresh(store, from, to, t.timezone(), t.raw_retention_days).await?);
            details.timings_ms.insert("refresh", clock.elapsed().as_millis() as u64);
        }
        if self.import_history {
            let clock = Instant::now();
            let horizon = reader::redis_horizon(redis, &ctx.keys).await?.unwrap_or(details.completion_point);
            details.history = Some(history::import(&ctx.settings, &ctx.target, &ctx.legacy().await?, horizon).await?);
            details.timings_ms.insert("history", clock.elapsed().as_millis() as u64);
        }
        let mut conn = ctx.target.acquire().await?;
        details.dead_letter_reasons = dead_letter::counts(&mut conn).await?;
        details.dead_letter_examples = dead_letter::recent(&mut conn, "backfill", NAMED_DEAD_LETTERS).await?;
        details.totals(position);
        Ok(())
    }
}

impl BackfillPosition {
    fn start(until: f64) -> BackfillPosition {
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
            async { checkpoint::save(&mut *ctx.target.acquire().await?, CHECKPOINT, &*position).await }.await
        }
        failed => failed,
    };
    match copied {
        Ok(()) => Ok(reporter),
        Err(error) => {
            let failed: anyhow::Result<()> = Err(error);
            reporter.end(&ctx.target, CHECKPOINT, &failed).await;
            failed.map(|()| unreachable!("failed"))
        }
    }
}

/// Members left between the position (one stream's) and its end.
async fn remaining(redis: &mut RedisConn, key: &str, position: &BackfillPosition) -> anyhow::Result<u64> {
    if position.finished {
        return Ok(0);
    }
    let zcount: u64 = redis::cmd("ZCOUNT").arg(key).arg(position.cursor.score).arg(position.until).query_async(redis).await?;
    Ok(zcount.saturating_sub(position.cursor.skip))
}

impl BackfillDetails {
    fn new(dry_run: bool, completion_point: DateTime<Utc>, p: &BackfillPosition, resumed: bool, remaining: u64, out_of_range: OutOfRange) -> Self {
        BackfillDetails {
            dry_run,
            completion_point,
            upper_bound: DateTime::from_timestamp_millis(p.until as i64).unwrap_or(completion_point),
            resumed,
            remaining_estimate: remaining,
            read: p.read,
            inserted: p.inserted,
            already_present: p.already_present,
            dead_letters: p.dead_letters,
            dead_letter_reasons: vec![],
            dead_letter_examples: vec![],
            out_of_range,
            pages: p.pages,
            read_this_run: 0,
            copy_complete_before: false,
            seconds: 0.0,
            events_per_second: 0.0,
            refresh: None,
            history: None,
            timings_ms: BTreeMap::new(),
        }
    }

    fn totals(&mut self, p: &BackfillPosition) {
        (self.read, self.inserted, self.already_present, self.dead_letters, self.pages) = (p.read, p.inserted, p.already_present, p.dead_letters, p.pages);
    }
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
    fn written(&mut self, page: &Page, outcome: &PageOutcome) -> Option<(&'static str, Value)> {
        self.position.add(page, outcome);
        serde_json::to_value(&*self.position).ok().map(|position| (CHECKPOINT, position))
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
pub(super) struct Page {
    pub parsed: ParsedPage,
    pub read: usize,
    pub cursor_after: ScoreCursor,
}

/// What the copy loop does around each page's commit.
pub(super) trait PageSink: Send {
    /// Inside the page's transaction, after its rows: a checkpoint (name, position) to save with them.
    fn written(&mut self, page: &Page, outcome: &PageOutcome) -> Option<(&'static str, Value)>;
    /// After the commit (at `now`): how long to wait before the next page (a rate limit).
    fn committed(&mut self, page: &Page, now: Instant) -> Option<Duration>;
    /// The copy stopped early at a page boundary: where, and how to resume.
    fn stopped(&self, why: Why) -> Stopped;
}

/// Copies the members scored in `[cursor, until]` through the write sequence
/// ([`TargetWriter::commit_page`]), reading the next page while this one is written.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_pages(
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
                        Some((name, position)) => checkpoint::save(conn, name, &position).await,
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

    /// The milliseconds counted so far, by name; the counters start again from zero.
    fn taken(&self) -> [(&'static str, u64); 4] {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed) / 1000;
        [("redis_read", take(&self.redis_read)), ("parse", take(&self.parse)), ("write", take(&self.write)), ("write_waiting", take(&self.write_waiting))]
    }
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

impl Details for BackfillDetails {
    fn text(&self) -> String {
        let mut o = String::new();
        if self.dry_run {
            o.push_str(&format!(
                "would copy about {} events scored up to {} (completion point {}){}\n",
                crate::human::count(self.remaining_estimate),
                crate::human::utc(self.upper_bound),
                crate::human::utc(self.completion_point),
                if self.resumed { ", resuming from the saved checkpoint" } else { "" }
            ));
        } else {
            o.push_str(&self.copied_text());
        }
        if let Some(line) = self.out_of_range.summary() {
            o.push_str(&format!("warning: {line}\n"));
        }
        o
    }
}

impl BackfillDetails {
    fn copied_text(&self) -> String {
        let mut o = format!(
            "backfill: {} events read, {} inserted, {} already present, {} dead letters, {}{}\n",
            self.read,
            self.inserted,
            self.already_present,
            self.dead_letters,
            crate::human::plural(self.pages, "page"),
            match (self.copy_complete_before, self.resumed) {
                (true, _) => " (the copy was complete already: nothing copied again; this run refreshed the aggregates and imported the history)",
                (false, true) => " (resumed from checkpoint)",
                (false, false) => "",
            }
        );
        o.push_str(&format!("this run: {:.1}s, {}\n", self.seconds, crate::human::rate(self.events_per_second, "events")));
        if !self.dead_letter_reasons.is_empty() {
            let parts: Vec<String> = self.dead_letter_reasons.iter().map(|d| format!("{} {}", d.count, d.reason_code)).collect();
            o.push_str(&format!("dead letters by reason: {} (see tsmigrate.dead_letter)\n", parts.join(", ")));
        }
        for d in &self.dead_letter_examples {
            o.push_str(&format!("  dead letter at score {}: {}\n    member: {}\n", d.score.as_deref().unwrap_or("(none)"), d.reason, d.member));
        }
        if let Some(r) = &self.refresh {
            o.push_str(&format!(
                "aggregates refreshed: {} .. {} in {}{}\n",
                r.from.map(crate::human::utc).unwrap_or_default(),
                r.to.map(crate::human::utc).unwrap_or_default(),
                crate::human::plural(r.chunks as u64, "chunk"),
                if r.clamped_from.is_some() { " (start clamped to stay inside raw retention)" } else { "" }
            ));
        }
        if let Some(h) = &self.history {
            o.push_str(&h.text());
        }
        o
    }
}

/// What a full backfill says when Redis has evicted keys: it copied what Redis held.
fn evictions_warning(evicted_keys: u64) -> String {
    format!(
        "Redis has evicted {evicted_keys} key(s) since it started (INFO stats evicted_keys): events it evicted before this backfill read them \
         are in neither system and were not copied; `tsmigrate status` lists the possible-loss windows recorded during dual-write"
    )
}

/// The copy split into parallel streams.
mod parts;
pub use parts::load_on as with_parts;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_from_before_closing_was_kept_counts_as_closed() {
        let mut saved = serde_json::to_value(BackfillPosition { finished: true, ..BackfillPosition::start(1.0) }).unwrap();
        assert_eq!(saved["closed"], false, "a new copy is not closed until its closing steps ran");
        saved.as_object_mut().unwrap().remove("closed");
        let old: BackfillPosition = serde_json::from_value(saved).unwrap();
        assert!(old.closed, "run again, it is a new pass as before");
    }
}
