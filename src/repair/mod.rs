//! The repair engine: works through the findings a validation recorded, in a fixed order, a
//! batch per transaction committed with its checkpoint (`repair:<run>`), reading each batch's
//! Redis versions in one round trip. Events Redis no longer holds are reported, not invented.
//! The command around it (`phase::command::repair`) declares its transition, gate and report.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::context::Context;
use crate::event::TargetEvent;
use crate::ledger::checkpoint::{Checkpoint, RepairCounts, RepairPosition};
use crate::ledger::progress;
use crate::ledger::validation::{DifferenceKind, FoundKey, ValidationRun};
use crate::legacy::reader::members_at;
use crate::stop::{Boundary, Rerun, Stopped, Why};
use crate::store::aggregates::{self, RefreshOutcome};
use crate::store::writer::{Method, ParsedPage, TargetWriter};

/// The task name of a repair's progress (what `status` shows).
pub const TASK: &str = "repair";
/// Findings per transaction (each reads their Redis versions in one round trip).
const BATCH: usize = 1_000;
/// Events Redis no longer holds, named in the report.
pub const GONE_EXAMPLES: usize = 10;

/// An event Redis no longer holds: it cannot be repaired from it.
#[derive(Debug, Clone, Serialize)]
pub struct GoneEvent {
    pub kind: &'static str,
    pub event_id: Uuid,
    pub time: Option<DateTime<Utc>>,
}

/// One repair of validation run `run`.
pub struct Engine<'a> {
    pub ctx: &'a Context,
    pub writer: &'a TargetWriter,
    pub run: i64,
    /// Delete the events only the target holds (without it they are counted and kept).
    pub delete_extra: bool,
    /// Count what would be done, write nothing.
    pub dry_run: bool,
    /// The command line that resumes it.
    pub resume: String,
}

impl Engine<'_> {
    /// [`Self::work`], shown by `status` while it runs (not in a dry run).
    pub async fn run(&self, findings: &[FoundKey], position: &mut RepairPosition, gone: &mut Vec<GoneEvent>, boundary: &Boundary) -> anyhow::Result<()> {
        let target = &self.ctx.target;
        let reporter = match self.dry_run {
            true => None,
            false => Some(
                progress::Reporter::start(target, TASK, "differences", (&self.resume, Rerun::Resumes), position.done as u64, Some(findings.len() as u64)).await,
            ),
        };
        let worked = self.work(findings, position, gone, reporter.as_ref(), boundary).await;
        if let Some(reporter) = reporter {
            reporter.end(target, TASK, &worked).await;
        }
        worked
    }

    /// Works through the findings from `position`, a batch per transaction with its checkpoint.
    /// Events Redis no longer holds go to `gone` (the first [`GONE_EXAMPLES`]).
    async fn work(
        &self,
        findings: &[FoundKey],
        position: &mut RepairPosition,
        gone: &mut Vec<GoneEvent>,
        reporter: Option<&progress::Reporter>,
        boundary: &Boundary,
    ) -> anyhow::Result<()> {
        let (ctx, writer, dry_run) = (self.ctx, self.writer, self.dry_run);
        let mut redis = ctx.redis().await?;
        let now_ms = Utc::now().timestamp_millis();
        for batch in findings[position.done.min(findings.len())..].chunks(BATCH) {
            // A batch boundary: every batch before is committed with its checkpoint.
            boundary.between_pages().map_err(|why| self.stopped(why, position, findings.len()))?;
            let versions = redis_versions(&mut redis, &ctx.keys.events, batch, now_ms).await?;
            let plan = self.plan(batch, &versions, now_ms);
            gone.extend(plan.gone.iter().take(GONE_EXAMPLES.saturating_sub(gone.len())).cloned());
            let mut next = position.clone();
            next.done += batch.len();
            next.counts.gone_from_redis += plan.gone.len() as u64;
            next.counts.kept_extra += plan.kept_extra;
            for t in batch.iter().flat_map(|f| [f.redis_time, f.target_time]).flatten() {
                let ms = t.timestamp_millis();
                next.first_ms = Some(next.first_ms.map_or(ms, |m| m.min(ms)));
                next.last_ms = Some(next.last_ms.map_or(ms, |m| m.max(ms)));
            }
            next.finished = next.done >= findings.len();
            // Extras with --delete-extra: removed now (or already gone, which is as good).
            next.counts.deleted += (plan.replacing.len() as u64).saturating_sub(plan.rewrites);
            if dry_run {
                next.counts.copied += plan.missing_found;
                next.counts.rewritten += plan.rewrites;
                *position = next;
                continue;
            }
            let (mut saved, run) = (next.clone(), self.run);
            let (rewrites, missing_found) = (plan.rewrites, plan.missing_found);
            let lock = boundary.clone();
            let committed = writer
                .commit_replacing(&plan.page, &plan.replacing, "repair", Method::Insert, move |tx, outcome| {
                    saved.counts.add_written(&plan_counts(outcome.inserted, rewrites, missing_found), outcome.dead_letters_recorded);
                    Box::pin(async move {
                        // Last before the commit: a batch never commits once the lock is gone.
                        lock.confirm_lock(tx).await?;
                        Checkpoint::Repair { run, position: saved }.save(tx).await
                    })
                })
                .await;
            let outcome = match committed {
                Ok(outcome) => outcome,
                Err(error) if boundary.lost_lock(writer.pool(), &error).await => return Err(self.stopped(Why::LockLost, position, findings.len()).into()),
                Err(error) => return Err(error),
            };
            next.counts.add_written(&plan_counts(outcome.inserted, plan.rewrites, plan.missing_found), outcome.dead_letters_recorded);
            *position = next;
            if let Some(reporter) = reporter {
                reporter.set(position.done as u64);
            }
        }
        if findings.is_empty() && !dry_run {
            position.finished = true;
            Checkpoint::Repair { run: self.run, position: position.clone() }.save(&mut *ctx.target.acquire().await?).await?;
        }
        Ok(())
    }

    /// Stopped early after the findings `position` has done.
    fn stopped(&self, why: Why, position: &RepairPosition, findings: usize) -> Stopped {
        Stopped {
            command: "repair".into(),
            why,
            at: format!("after {} of {findings} differences", position.done),
            resume: self.resume.clone(),
            rerun: crate::stop::Rerun::Resumes,
        }
    }

    /// What one batch writes: the Redis versions of missing and different events, the rows
    /// to delete first (the other version of a different event; extras with `--delete-extra`).
    fn plan(&self, batch: &[FoundKey], versions: &HashMap<(Uuid, i64), (Vec<u8>, f64)>, now_ms: i64) -> BatchPlan {
        let mut plan =
            BatchPlan { page: ParsedPage::with_capacity(batch.len()), replacing: vec![], gone: vec![], rewrites: 0, missing_found: 0, kept_extra: 0 };
        for f in batch {
            let version = f.redis_time.and_then(|t| versions.get(&(f.event_id, t.timestamp_millis())));
            match (f.kind, version) {
                (DifferenceKind::Missing, Some((member, score))) => {
                    plan.page.push(member.clone(), Some(*score), now_ms);
                    plan.missing_found += 1;
                }
                (DifferenceKind::Different, Some((member, score))) => {
                    plan.page.push(member.clone(), Some(*score), now_ms);
                    plan.replacing.extend(f.target_time.map(|t| (f.event_id, t)));
                    plan.rewrites += 1;
                }
                (DifferenceKind::Missing | DifferenceKind::Different, None) => {
                    plan.gone.push(GoneEvent { kind: f.kind.as_str(), event_id: f.event_id, time: f.redis_time });
                }
                (DifferenceKind::Extra, _) if self.delete_extra => plan.replacing.extend(f.target_time.map(|t| (f.event_id, t))),
                (DifferenceKind::Extra, _) => plan.kept_extra += 1,
            }
        }
        plan
    }
}

struct BatchPlan {
    page: ParsedPage,
    replacing: Vec<(Uuid, DateTime<Utc>)>,
    gone: Vec<GoneEvent>,
    rewrites: u64,
    missing_found: u64,
    kept_extra: u64,
}

/// (copied, rewritten, already right) from what a batch inserted: every rewrite inserts (its
/// other version was deleted first), the rest of the inserts are copies.
fn plan_counts(inserted: u64, rewrites: u64, missing_found: u64) -> (u64, u64, u64) {
    let copied = inserted.saturating_sub(rewrites);
    (copied, rewrites.min(inserted), missing_found.saturating_sub(copied))
}

impl RepairCounts {
    fn add_written(&mut self, (copied, rewritten, already_right): &(u64, u64, u64), dead_letters: u64) {
        self.copied += copied;
        self.rewritten += rewritten;
        self.already_right += already_right;
        self.dead_letters += dead_letters;
    }
}

/// Redis's version of each missing or different event of the batch, by `(event_id, time)`.
async fn redis_versions(
    redis: &mut crate::connect::RedisConn,
    key: &str,
    batch: &[FoundKey],
    now_ms: i64,
) -> anyhow::Result<HashMap<(Uuid, i64), (Vec<u8>, f64)>> {
    let mut times: Vec<i64> = batch.iter().filter(|f| f.kind != DifferenceKind::Extra).filter_map(|f| f.redis_time.map(|t| t.timestamp_millis())).collect();
    times.sort_unstable();
    times.dedup();
    let mut versions = HashMap::new();
    for members in members_at(redis, key, &times).await? {
        for (member, score) in members {
            if let Ok(event) = TargetEvent::from_member(&member, score, now_ms) {
                versions.insert((event.event_id, event.time_ms()), (member, score));
            }
        }
    }
    Ok(versions)
}

pub fn found_by_kind(findings: &[FoundKey]) -> HashMap<&'static str, u64> {
    let mut found: HashMap<&'static str, u64> = [("missing", 0), ("extra", 0), ("different", 0)].into();
    for f in findings {
        *found.entry(f.kind.as_str()).or_default() += 1;
    }
    found
}

/// The aggregates over what the repair changed, and over the run's window when its
/// aggregate checks differed (the raw rows may have been right all along).
pub async fn refresh(ctx: &Context, mode: crate::store::StorageMode, run: &ValidationRun, position: &RepairPosition) -> anyhow::Result<Option<RefreshOutcome>> {
    let touched = position.counts.copied + position.counts.rewritten + position.counts.deleted > 0;
    let changed = position
        .first_ms
        .zip(position.last_ms)
        .filter(|_| touched)
        .and_then(|(a, b)| DateTime::from_timestamp_millis(a).zip(DateTime::from_timestamp_millis(b + 1)));
    let window = run.window.filter(|_| run.figures.aggregates_differ());
    let range = match (changed, window) {
        (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
        (one, other) => one.or(other),
    };
    let Some((from, to)) = range else { return Ok(None) };
    let t = &ctx.settings.target;
    Ok(Some(aggregates::refresh(&*ctx.store(mode), from, to, t.timezone(), t.raw_retention_days).await?))
}
