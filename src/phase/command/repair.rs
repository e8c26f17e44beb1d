//! `tsmigrate repair`: fixes exactly what the latest validation found, from Redis — the
//! events missing in the target are copied, the events the target holds in another
//! version are rewritten, and the events only the target has are deleted only with
//! `--delete-extra`. An event Redis no longer holds (trimmed by the cap) cannot be repaired
//! from it; the report says so instead of pretending. Then the aggregates over what changed
//! (and over the window, when the aggregates differed) are refreshed.
//!
//! Idempotent and resumable: the findings are worked through in a fixed order, and each
//! batch commits with its checkpoint (`repair:<run>`), so a re-run resumes after the last
//! batch and a finished repair is not done twice. Runs in every phase from dual-write to
//! before `complete`, while dual-write goes on (every write is idempotent). Audited like
//! every phase command; `--dry-run` says what it would do, reading Redis but writing nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::context::Context;
use crate::event::TargetEvent;
use crate::human;
use crate::legacy::reader::members_at;
use crate::phase::report::{Details, PhaseReport};
use crate::phase::runner::{default_next_steps, Applied, Commit, PhaseCommand, Run};
use crate::phase::{Transition, REPAIR};
use crate::state::NextStep;
use crate::stop::{Boundary, Rerun, Stopped, Why};
use crate::store::aggregates::{self, RefreshOutcome};
use crate::store::writer::{Method, ParsedPage, TargetWriter};
use crate::store::{checkpoint, progress};
use crate::validate::diff::DifferenceKind;
use crate::validate::findings::{recorded, Finding};

/// Findings per transaction (each reads their Redis versions in one round trip).
const BATCH: usize = 1_000;
/// Events Redis no longer holds, named in the report.
const GONE_EXAMPLES: usize = 10;

pub struct Repair {
    /// Delete the events only the target holds (without it they are counted and kept).
    pub delete_extra: bool,
}

/// The validation run repaired.
#[derive(Debug, Clone)]
struct RunToRepair {
    id: i64,
    result: String,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    aggregates_differ: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Counts {
    /// Missing events copied from Redis.
    pub copied: u64,
    /// Events the target held in another version, rewritten from Redis.
    pub rewritten: u64,
    /// Events only the target held, deleted (`--delete-extra`).
    pub deleted: u64,
    /// Events only the target holds, kept (no `--delete-extra`).
    pub kept_extra: u64,
    /// Already as Redis has them (fixed meanwhile, e.g. by the relay).
    pub already_right: u64,
    /// Redis no longer holds them (trimmed by the cap): they cannot be repaired from it.
    pub gone_from_redis: u64,
    pub dead_letters: u64,
}

/// Saved with every batch: how many findings (in order) are done, and what was done.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Position {
    done: usize,
    counts: Counts,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    finished: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct GoneEvent {
    pub kind: &'static str,
    pub event_id: Uuid,
    pub time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepairDetails {
    #[serde(skip)]
    dry_run: bool,
    /// The validation run whose findings are repaired.
    pub validation_run: i64,
    pub validation_result: String,
    pub delete_extra: bool,
    pub found: HashMap<&'static str, u64>,
    /// Counted (dry run: would be) over every run of this repair.
    pub counts: Counts,
    /// Findings already repaired by an earlier, interrupted run (resumed after them).
    pub resumed_after: usize,
    /// This repair had already finished: nothing was done again.
    pub already_done: bool,
    pub gone_examples: Vec<GoneEvent>,
    pub refresh: Option<RefreshOutcome>,
}

impl PhaseCommand for Repair {
    type Details = RepairDetails;

    fn stops_at_pages(&self) -> bool {
        true
    }

    fn transition(&self) -> &'static Transition {
        &REPAIR
    }

    async fn gate(&self, ctx: &Context, _run: &mut Run) -> anyhow::Result<Result<Value, String>> {
        let Some(latest) = latest_run(&ctx.target).await? else {
            return Ok(Err("no validation has run yet: there is nothing to repair".into()));
        };
        let depth: String = sqlx::query_scalar("SELECT depth FROM tsmigrate.validation_runs WHERE id = $1").bind(latest.id).fetch_one(&ctx.target).await?;
        let findings: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tsmigrate.validation_findings WHERE run_id = $1").bind(latest.id).fetch_one(&ctx.target).await?;
        if depth == "counts" && latest.result != "clean" && findings == 0 && !latest.aggregates_differ {
            return Ok(Err(format!("the latest validation (#{}) ran at counts depth: it lists no events to repair", latest.id)));
        }
        Ok(Ok(json!({"validation_run": latest.id, "result": latest.result, "findings": findings})))
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<RepairDetails>> {
        let target = latest_run(&ctx.target).await?.ok_or_else(|| anyhow::anyhow!("no validation run to repair"))?;
        let findings = recorded(&ctx.target, target.id, &[]).await?;
        let name = format!("repair:{}", target.id);
        let saved: Option<Position> = checkpoint::load(&mut *ctx.target.acquire().await?, &name).await?;
        let mut position = saved.unwrap_or_default();
        let mut details = RepairDetails {
            dry_run: run.dry_run,
            validation_run: target.id,
            validation_result: target.result.clone(),
            delete_extra: self.delete_extra,
            found: found_by_kind(&findings),
            counts: position.counts.clone(),
            resumed_after: if position.finished { 0 } else { position.done },
            already_done: position.finished,
            gone_examples: vec![],
            refresh: None,
        };
        if position.finished {
            return Ok(Applied::new(details, Commit::Stay));
        }
        let mode = run.state.storage_mode.ok_or_else(|| anyhow::anyhow!("storage mode missing from the migration state"))?;
        let writer = TargetWriter::new(ctx.target.clone(), mode);
        let reporter = match run.dry_run {
            true => None,
            false => Some(
                progress::Reporter::start(
                    &ctx.target,
                    "repair",
                    "differences",
                    (&self.invocation(), Rerun::Resumes),
                    position.done as u64,
                    Some(findings.len() as u64),
                )
                .await,
            ),
        };
        let worked = self.work(ctx, &writer, &findings, &name, &mut position, &mut details, run.dry_run, reporter.as_ref(), &run.boundary).await;
        if let Some(reporter) = reporter {
            reporter.end(&ctx.target, "repair", &worked).await;
        }
        worked?;
        details.counts = position.counts.clone();
        if !run.dry_run {
            details.refresh = refresh(ctx, mode, &target, &position).await?;
        }
        let audit = json!({"validation_run": target.id, "counts": details.counts, "delete_extra": self.delete_extra, "resumed_after": details.resumed_after});
        Ok(Applied { audit, ..Applied::new(details, Commit::Stay) })
    }

    fn command_line(&self, _report: &PhaseReport<RepairDetails>) -> String {
        self.invocation()
    }

    fn next_steps(&self, report: &PhaseReport<RepairDetails>) -> Vec<NextStep> {
        if report.dry_run && report.details.nothing_to_repair() {
            // A real run would change nothing: where the gates point, never `repair` again.
            let onward: Vec<NextStep> =
                report.gated_next.iter().filter(|s| s.command.as_deref().is_none_or(|c| !c.starts_with("tsmigrate repair"))).cloned().collect();
            if !onward.is_empty() {
                return onward;
            }
        }
        default_next_steps(self, report)
    }

    fn invocation(&self) -> String {
        format!("tsmigrate repair{}", if self.delete_extra { " --delete-extra" } else { "" })
    }
}

impl RepairDetails {
    /// The validation it works from found nothing, or this repair already ran to the end.
    fn nothing_to_repair(&self) -> bool {
        self.already_done || self.found.values().sum::<u64>() == 0
    }
}

impl Repair {
    /// Works through the findings from `position`, a batch per transaction with its checkpoint.
    #[allow(clippy::too_many_arguments)]
    async fn work(
        &self,
        ctx: &Context,
        writer: &TargetWriter,
        findings: &[Finding],
        name: &str,
        position: &mut Position,
        details: &mut RepairDetails,
        dry_run: bool,
        reporter: Option<&progress::Reporter>,
        boundary: &Boundary,
    ) -> anyhow::Result<()> {
        let mut redis = ctx.redis().await?;
        let now_ms = Utc::now().timestamp_millis();
        for batch in findings[position.done.min(findings.len())..].chunks(BATCH) {
            // A batch boundary: every batch before is committed with its checkpoint.
            boundary.between_pages().map_err(|why| self.stopped(why, position, findings.len()))?;
            let versions = redis_versions(&mut redis, &ctx.keys.events, batch, now_ms).await?;
            let plan = self.plan(batch, &versions, now_ms);
            details.gone_examples.extend(plan.gone.iter().take(GONE_EXAMPLES.saturating_sub(details.gone_examples.len())).cloned());
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
            let (mut saved, checkpoint_name) = (next.clone(), name.to_string());
            let (rewrites, missing_found) = (plan.rewrites, plan.missing_found);
            let lock = boundary.clone();
            let committed = writer
                .commit_replacing(&plan.page, &plan.replacing, "repair", Method::Insert, move |tx, outcome| {
                    saved.counts.add_written(&plan_counts(outcome.inserted, rewrites, missing_found), outcome.dead_letters_recorded);
                    Box::pin(async move {
                        // Last before the commit: a batch never commits once the lock is gone.
                        lock.confirm_lock(tx).await?;
                        checkpoint::save(tx, &checkpoint_name, &saved).await
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
            checkpoint::save(&mut *ctx.target.acquire().await?, name, &*position).await?;
        }
        Ok(())
    }

    /// Stopped early after the findings `position` has done.
    fn stopped(&self, why: Why, position: &Position, findings: usize) -> Stopped {
        Stopped {
            command: "repair".into(),
            why,
            at: format!("after {} of {findings} differences", position.done),
            resume: self.invocation(),
            rerun: crate::stop::Rerun::Resumes,
        }
    }

    /// What one batch writes: the Redis versions of missing and different events, the rows
    /// to delete first (the other version of a different event; extras with `--delete-extra`).
    fn plan(&self, batch: &[Finding], versions: &HashMap<(Uuid, i64), (Vec<u8>, f64)>, now_ms: i64) -> BatchPlan {
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

impl Counts {
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
    batch: &[Finding],
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

type RunRow = (i64, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Value);

async fn latest_run(pool: &sqlx::PgPool) -> anyhow::Result<Option<RunToRepair>> {
    let row: Option<RunRow> =
        sqlx::query_as("SELECT id, result, window_from, window_to, figures FROM tsmigrate.validation_runs ORDER BY finished_at DESC, id DESC LIMIT 1")
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, result, from, to, figures)| {
        let differing = |check: &str| figures[check]["differences"].as_u64().unwrap_or(0) > 0;
        RunToRepair { id, result, window: from.zip(to), aggregates_differ: differing("legacy_hourly") || differing("asset_popularity") }
    }))
}

fn found_by_kind(findings: &[Finding]) -> HashMap<&'static str, u64> {
    let mut found: HashMap<&'static str, u64> = [("missing", 0), ("extra", 0), ("different", 0)].into();
    for f in findings {
        *found.entry(f.kind.as_str()).or_default() += 1;
    }
    found
}

/// The aggregates over what the repair changed, and over the run's window when its
/// aggregate checks differed (the raw rows may have been right all along).
async fn refresh(ctx: &Context, mode: crate::store::StorageMode, run: &RunToRepair, position: &Position) -> anyhow::Result<Option<RefreshOutcome>> {
    let touched = position.counts.copied + position.counts.rewritten + position.counts.deleted > 0;
    let changed = position
        .first_ms
        .zip(position.last_ms)
        .filter(|_| touched)
        .and_then(|(a, b)| DateTime::from_timestamp_millis(a).zip(DateTime::from_timestamp_millis(b + 1)));
    let window = run.window.filter(|_| run.aggregates_differ);
    let range = match (changed, window) {
        (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
        (one, other) => one.or(other),
    };
    let Some((from, to)) = range else { return Ok(None) };
    let t = &ctx.settings.target;
    Ok(Some(aggregates::refresh(&*ctx.store(mode), from, to, t.timezone(), t.raw_retention_days).await?))
}

impl Details for RepairDetails {
    fn text(&self) -> String {
        let found = |k: &str| self.found.get(k).copied().unwrap_or(0);
        let mut o = format!(
            "validation run #{} ({}): {} missing in the target, {} different, {} extra\n",
            self.validation_run,
            self.validation_result,
            found("missing"),
            found("different"),
            found("extra")
        );
        if self.already_done {
            o.push_str("this repair already ran to the end: nothing was done again (validate, then repair what a new run finds)\n");
            return o;
        }
        if self.resumed_after > 0 {
            o.push_str(&format!("resumed after {} differences repaired by an earlier run\n", self.resumed_after));
        }
        let c = &self.counts;
        let verb = |done: &'static str, would: &'static str| if self.dry_run { would } else { done };
        o.push_str(&format!("{} {} from Redis\n", verb("copied", "would copy"), human::plural(c.copied, "missing event")));
        o.push_str(&format!("{} {} from Redis\n", verb("rewrote", "would rewrite"), human::plural(c.rewritten, "different event")));
        if self.delete_extra {
            o.push_str(&format!("{} {} only the target held\n", verb("deleted", "would delete"), human::plural(c.deleted, "event")));
        } else if c.kept_extra > 0 {
            o.push_str(&format!("kept {} only the target holds (--delete-extra deletes them)\n", human::plural(c.kept_extra, "event")));
        }
        if c.already_right > 0 {
            o.push_str(&format!("{} already right (written meanwhile)\n", human::plural(c.already_right, "event")));
        }
        if c.dead_letters > 0 {
            o.push_str(&format!("{} the target refused: dead letters (see tsmigrate.dead_letter)\n", human::plural(c.dead_letters, "event")));
        }
        if c.gone_from_redis > 0 {
            o.push_str(&format!(
                "NOT REPAIRED: {} Redis no longer holds (trimmed by its cap, or changed since the validation); they cannot be copied from it:\n",
                human::plural(c.gone_from_redis, "event")
            ));
            for g in &self.gone_examples {
                o.push_str(&format!("  {} {} at {}\n", g.kind, g.event_id, g.time.map(human::utc).unwrap_or_else(|| "-".into())));
            }
        }
        if let Some(r) = &self.refresh {
            o.push_str(&format!(
                "aggregates refreshed: {} .. {}\n",
                r.from.map(|t| t.to_string()).unwrap_or_default(),
                r.to.map(|t| t.to_string()).unwrap_or_default()
            ));
        }
        o
    }
}
