//! `tsmigrate backfill`: copies the events Redis held before the completion point T into
//! the target, oldest first, in pages written with `COPY`. Each page commits together
//! with its checkpoint, so after a crash a re-run resumes exactly where the last commit
//! ended: no gap, no duplicate. Then it refreshes the aggregates over the backfilled range,
//! vacuums the events table (so the rows just written are counted from the time index) and
//! imports the legacy history older than the Redis horizon.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::backfill as engine;
use crate::connect::RedisConn;
use crate::context::Context;
use crate::event::MAX_FUTURE_MS;
use crate::ledger::checkpoint::{self, BackfillPosition, Checkpoint};
use crate::ledger::dead_letter::{self, DeadLetterCount, DeadLetterExample};
use crate::ledger::progress;
use crate::legacy::reader::{self, OutOfRange};
use crate::phase::report::Details;
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::state::StateChanges;
use crate::phase::{Refusal, Transition, BACKFILL};
use crate::stop::{Rerun, Stopped, Why};
use crate::store::aggregates::RefreshOutcome;
use crate::store::history::{self, HistoryReport};
use crate::store::Store;

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
    /// Parallel copy streams over disjoint score ranges (`backfill::parts`); 1 copies in one.
    /// A resumed copy keeps the layout it started with.
    pub streams: usize,
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
    /// Where this run's time went, in milliseconds: `copy`, `refresh`, `vacuum` and `history` (wall),
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
        let mode = run.state.mode()?;
        let mut redis = ctx.redis().await?;
        let until = (completion_point.timestamp_millis() + MAX_FUTURE_MS + 60_000) as f64;
        // A finished backfill run again is a new pass over what Redis holds up to T: rows
        // already there stay single, anything missing (found by a validation) goes in. A
        // copy that finished but stopped during its closing steps goes on with those.
        let saved = checkpoint::backfill(&mut *ctx.target.acquire().await?).await?;
        let saved = saved.filter(|p| !(p.finished && p.closed));
        let mut position = saved.unwrap_or_else(|| BackfillPosition::start(until));
        let mut parts = engine::parts::load(ctx, &mut position).await?;
        let resumed = position.pages > 0;
        if !run.dry_run && !resumed && !position.finished && self.streams > 1 {
            parts = engine::parts::lay_out(ctx, &mut redis, &mut position, self.streams).await?;
        }
        let mut remaining = 0;
        for part in parts.iter().chain(Some(&position).filter(|p| p.parts == 0)) {
            remaining += engine::remaining(&mut redis, &ctx.keys.events, part).await?;
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
            false if position.parts > 0 => {
                engine::parts::copy(ctx, mode, redis.clone(), &mut position, parts, remaining, &self.copy_options(), &run.boundary).await?
            }
            false => engine::copy(ctx, mode, redis.clone(), &mut position, remaining, &self.copy_options(), &run.boundary).await?,
            true => {
                progress::Reporter::start(&ctx.target, engine::TASK, "events", (&self.invocation(), Rerun::Resumes), position.read, Some(position.read)).await
            }
        };
        details.read_this_run = position.read - read_before;
        details.seconds = started.elapsed().as_secs_f64();
        details.timings_ms.insert("copy", started.elapsed().as_millis() as u64);
        details.timings_ms.extend(engine::copy_timings());
        details.events_per_second = details.read_this_run as f64 / details.seconds.max(1e-9);
        // The closing steps stop on an interrupt too: the copy is complete and checkpointed
        // (finished, not closed), so a re-run goes straight on with them.
        tracing::info!(read = position.read, pages = position.pages, "backfill: the copy is complete; refreshing the aggregates and importing the history");
        let closing = self.finish(ctx, &*store, &mut redis, &position, &mut details);
        let closed = match run.boundary.unless_interrupted(closing).await {
            Ok(closed) => closed,
            Err(why) => Err(self.stopped_closing(why, &position).into()),
        };
        reporter.end(&ctx.target, engine::TASK, &closed).await;
        closed?;
        position.closed = true;
        Checkpoint::Backfill(position.clone()).save(&mut *ctx.target.acquire().await?).await?;
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
    fn copy_options(&self) -> engine::CopyOptions {
        engine::CopyOptions { page_size: self.page_size, max_rate: self.max_rate, quiet: self.quiet, resume: self.invocation() }
    }

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

    /// The closing steps ([`engine::close`]), then what the report names: dead letters, totals.
    async fn finish(
        &self,
        ctx: &Context,
        store: &dyn Store,
        redis: &mut RedisConn,
        position: &BackfillPosition,
        details: &mut BackfillDetails,
    ) -> anyhow::Result<()> {
        let closed = engine::close(ctx, store, redis, position, details.completion_point, self.import_history).await?;
        (details.refresh, details.history) = (closed.refresh, closed.history);
        details.timings_ms.extend(closed.timings_ms);
        let mut conn = ctx.target.acquire().await?;
        details.dead_letter_reasons = dead_letter::counts(&mut conn).await?;
        details.dead_letter_examples = dead_letter::recent(&mut conn, "backfill", NAMED_DEAD_LETTERS).await?;
        details.totals(position);
        Ok(())
    }
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
