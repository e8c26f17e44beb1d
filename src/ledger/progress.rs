//! Long work (backfill, validation, repair) writes how far it got into `tsmigrate.progress`
//! about once a second, so `tsmigrate status` shows it from any terminal: done of total,
//! rate and ETA. The rate is a recent one: each write keeps the one before it (`sample_done`,
//! `sample_at`), so the rate is that of the last sample interval, and 0 once the count has
//! stood still for longer than a few of them. Whether a run is still running is not guessed from how old its row is:
//! the run holds an advisory lock named after its task on a connection of its own while it
//! works, so the lock's holder in `pg_locks` says at once whether it runs. A run that
//! stopped early (interrupted, its lock lost, its process killed) leaves its row unfinished
//! and holds no lock: status says it is not running and how to resume. Reporting is best
//! effort: it never fails the work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use crate::stop::Rerun;

/// How often a reporter writes its count.
const EVERY: Duration = Duration::from_secs(1);
/// A running run whose count has not moved for this long is shown as stalled.
pub const STALLED_AFTER: chrono::Duration = chrono::Duration::seconds(15);
/// A running run whose count has not moved for this long (and for twice its last sample
/// interval) goes at 0 units/s: it has no ETA.
const QUIET_AFTER: chrono::Duration = chrono::Duration::seconds(2);

/// The advisory lock a running task holds: `hashtext` of this plus the task's name.
const RUNNING_LOCK_PREFIX: &str = "tsmigrate.progress:";

/// One run's progress as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskProgress {
    pub task: String,
    pub actor: String,
    pub unit: String,
    pub started_at: DateTime<Utc>,
    /// When the count last moved.
    pub updated_at: DateTime<Utc>,
    pub done: i64,
    /// Done by earlier runs this one resumed from (not part of its rate).
    pub done_at_start: i64,
    pub total: Option<i64>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A connection of the run holds its task's lock: it is still working. An unfinished
    /// run that is not running stopped early (interrupted, lock lost, killed).
    pub running: bool,
    /// The count and time of the write before the latest (the start, before the first):
    /// the rate is that of the interval from there to `updated_at`.
    pub sample_done: i64,
    pub sample_at: DateTime<Utc>,
    /// The command line that runs the task again, as the run was given (`None`: a row
    /// written before it was kept, `tsmigrate <task>`).
    pub command: Option<String>,
    /// What running it again does: resume, or start over (a validation).
    pub rerun: Rerun,
}

impl TaskProgress {
    /// Done of total, never past 100 (the total is an estimate that events arriving in
    /// range can pass).
    pub fn percent(&self) -> Option<f64> {
        self.total.filter(|t| *t > 0).map(|t| crate::progress::percent(self.done.max(0) as u64, t as u64))
    }

    /// The total, or what is done when that is more (the estimate was passed).
    fn total_shown(&self) -> Option<i64> {
        self.total.map(|t| t.max(self.done))
    }

    /// Units per second over the last sample interval (not the whole run's average): 0 once
    /// a running run's count has not moved for twice that interval (at least
    /// [`QUIET_AFTER`]); `None` before its first write after the start.
    pub fn rate(&self, now: DateTime<Utc>) -> Option<f64> {
        let interval = self.updated_at - self.sample_at;
        if interval <= chrono::Duration::zero() {
            return None;
        }
        if self.running && self.finished_at.is_none() && now - self.updated_at > (interval * 2).max(QUIET_AFTER) {
            return Some(0.0);
        }
        Some((self.done - self.sample_done).max(0) as f64 / (interval.num_milliseconds() as f64 / 1000.0))
    }

    /// Seconds left at this run's rate.
    pub fn eta_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        let left = self.total? - self.done;
        self.rate(now).filter(|r| *r > 0.0).map(|r| left.max(0) as f64 / r)
    }

    /// Unfinished and no longer running: it stopped early; a re-run resumes.
    pub fn stopped(&self) -> bool {
        self.finished_at.is_none() && !self.running
    }

    /// Running, but its count has not moved for [`STALLED_AFTER`].
    pub fn stalled(&self, now: DateTime<Utc>) -> bool {
        self.running && self.finished_at.is_none() && now - self.updated_at > STALLED_AFTER
    }

    /// The command line that resumes (or repeats: [`Self::rerun`]) the task.
    pub fn resume_command(&self) -> String {
        self.command.clone().unwrap_or_else(|| format!("tsmigrate {}", self.task))
    }

    /// One line for people: `backfill: 45% (27,000 of 60,000 events), 9,800 events/s, ETA 3s`.
    pub fn line(&self, now: DateTime<Utc>) -> String {
        let of = self.total_shown().map(|t| format!(" of {}", crate::human::count(t))).unwrap_or_default();
        let done = crate::human::count(self.done);
        let mut line = format!("{}: {done}{of} {}", self.task, self.unit);
        if let Some(p) = self.percent() {
            line = format!("{}: {p:.0}% ({done}{of} {})", self.task, self.unit);
        }
        if self.stopped() {
            return format!(
                "{line}; NOT RUNNING: stopped at {} (interrupted, or its process or connection died); `{}` {}",
                crate::human::utc(self.updated_at),
                self.resume_command(),
                self.rerun.does()
            );
        }
        if self.stalled(now) {
            return format!(
                "{line}; STALLED: still running, nothing done since {} ({}, since {})",
                crate::human::utc(self.updated_at),
                self.actor,
                self.started_at.format("%H:%M:%S UTC")
            );
        }
        if let Some(rate) = self.rate(now) {
            line.push_str(&format!(", {}", crate::human::rate(rate, &self.unit)));
        }
        if let Some(eta) = self.eta_seconds(now) {
            line.push_str(&format!(", ETA {}", crate::duration::show(chrono::Duration::seconds(eta.ceil() as i64))));
        }
        line.push_str(&format!(" ({}, since {})", self.actor, self.started_at.format("%H:%M:%S UTC")));
        line
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    task: String,
    actor: String,
    unit: String,
    started_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    done: i64,
    done_at_start: i64,
    total: Option<i64>,
    finished_at: Option<DateTime<Utc>>,
    running: bool,
    sample_done: i64,
    sample_at: DateTime<Utc>,
    command: Option<String>,
    starts_over: bool,
}

/// The runs not finished: running, or stopped early.
pub async fn unfinished(pool: &PgPool) -> sqlx::Result<Vec<TaskProgress>> {
    if !super::exists(pool, "progress").await? {
        return Ok(vec![]);
    }
    let rows: Vec<Row> = sqlx::query_as(
        // The columns of 0010 read through jsonb: a target that has not applied it yet
        // (status before `prepare` upgrades it) shows the start as the sample.
        "SELECT p.task, p.actor, p.unit, p.started_at, p.updated_at, p.done, p.done_at_start, p.total, p.finished_at,
                EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                        WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()
                          AND l.objid = hashtext($1 || p.task)::oid) AS running,
                coalesce((to_jsonb(p)->>'sample_done')::bigint, p.done_at_start) AS sample_done,
                coalesce((to_jsonb(p)->>'sample_at')::timestamptz, p.started_at) AS sample_at,
                to_jsonb(p)->>'command' AS command,
                coalesce((to_jsonb(p)->>'starts_over')::boolean, false) AS starts_over
         FROM tsmigrate.progress p WHERE p.finished_at IS NULL ORDER BY p.started_at",
    )
    .bind(RUNNING_LOCK_PREFIX)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TaskProgress {
            task: r.task,
            actor: r.actor,
            unit: r.unit,
            started_at: r.started_at,
            updated_at: r.updated_at,
            done: r.done,
            done_at_start: r.done_at_start,
            total: r.total,
            finished_at: r.finished_at,
            running: r.running,
            sample_done: r.sample_done,
            sample_at: r.sample_at,
            command: r.command,
            rerun: if r.starts_over { Rerun::StartsOver } else { Rerun::Resumes },
        })
        .collect())
}

/// Writes one run's count every second until it ends. Cheap to update: an atomic. Holds
/// the task's lock on a connection of its own while the run lasts (what says it runs).
pub struct Reporter {
    done: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Hands the connection back when stopped (`None`: there was none to be had).
    writer: tokio::task::JoinHandle<Option<PgConnection>>,
}

impl Reporter {
    /// Starts the run's row (`done` already done by earlier runs, `total` when known;
    /// `again`: the command line that runs it again as it was given, and what that does).
    pub async fn start(pool: &PgPool, task: &str, unit: &str, again: (&str, Rerun), done: u64, total: Option<u64>) -> Reporter {
        let conn = match begin(pool, task, unit, again, done, total).await {
            Ok(conn) => Some(conn),
            Err(e) => {
                tracing::debug!(error = %e, task, "cannot record progress (status will not show it)");
                None
            }
        };
        let counter = Arc::new(AtomicU64::new(done));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (task_name, count) = (task.to_string(), counter.clone());
        let writer = tokio::spawn(async move {
            let mut conn = conn?;
            let mut written = done;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {},
                    _ = stopped.changed() => return Some(conn),
                }
                let now = count.load(Ordering::Relaxed);
                if now != written && write(&mut conn, &task_name, now, false).await.is_ok() {
                    written = now;
                }
            }
        });
        Reporter { done: counter, stop, writer }
    }

    /// The counter to update (share it with the work).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    pub fn set(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
    }

    /// Writes the final count and marks the run finished (also after a failure: the work
    /// ended; a re-run starts it again).
    pub async fn finish(self, _pool: &PgPool, task: &str) {
        self.close(task, true).await
    }

    /// Ends the run as `outcome` says: a run that stopped early at a page boundary
    /// ([`crate::stop::Stopped`]) stays unfinished (status: not running, resume with…),
    /// any other end is finished.
    pub async fn end<T>(self, pool: &PgPool, task: &str, outcome: &anyhow::Result<T>) {
        match outcome {
            Err(e) if e.is::<crate::stop::Stopped>() => self.close(task, false).await,
            _ => self.finish(pool, task).await,
        }
    }

    /// Writes the final count and lets go of the task's lock (closing its connection).
    async fn close(self, task: &str, finished: bool) {
        let _ = self.stop.send(true);
        let Ok(Some(mut conn)) = self.writer.await else { return };
        if let Err(e) = write(&mut conn, task, self.done.load(Ordering::Relaxed), finished).await {
            tracing::debug!(error = %e, task, "cannot record the end of the run's progress");
        }
        let _ = conn.close().await;
    }
}

/// The run's row and its running lock, on a connection taken out of the pool for the run.
async fn begin(pool: &PgPool, task: &str, unit: &str, again: (&str, Rerun), done: u64, total: Option<u64>) -> sqlx::Result<PgConnection> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::query(
        "INSERT INTO tsmigrate.progress (task, actor, unit, started_at, updated_at, done, done_at_start, total, finished_at,
                                         sample_done, sample_at, command, starts_over)
         VALUES ($1, $2, $3, now(), now(), $4, $4, $5, NULL, $4, now(), $6, $7)
         ON CONFLICT (task) DO UPDATE SET actor = $2, unit = $3, started_at = now(), updated_at = now(), done = $4,
             done_at_start = $4, total = $5, finished_at = NULL, sample_done = $4, sample_at = now(), command = $6, starts_over = $7",
    )
    .bind(task)
    .bind(crate::state::actor())
    .bind(unit)
    .bind(done as i64)
    .bind(total.map(|t| t as i64))
    .bind(again.0)
    .bind(again.1 == Rerun::StartsOver)
    .execute(&mut conn)
    .await?;
    // Not waited for: a second run of the same task (two validations) shows as running anyway.
    sqlx::query("SELECT pg_try_advisory_lock(hashtext($1 || $2))").bind(RUNNING_LOCK_PREFIX).bind(task).execute(&mut conn).await?;
    Ok(conn)
}

async fn write(conn: &mut PgConnection, task: &str, done: u64, finished: bool) -> sqlx::Result<()> {
    sqlx::query(
        // The right-hand sides read the row as it was: the previous write becomes the sample.
        "UPDATE tsmigrate.progress SET sample_done = done, sample_at = updated_at, done = $2, updated_at = now(),
             finished_at = CASE WHEN $3 THEN now() ELSE finished_at END
         WHERE task = $1",
    )
    .bind(task)
    .bind(done as i64)
    .bind(finished)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-07T07:00:00Z").unwrap().with_timezone(&Utc) + chrono::Duration::seconds(seconds)
    }

    /// Started at 0 from 1,000 done by an earlier run; 6,000 done at 10 s, 5,800 at 9 s: the
    /// run's average is 500/s, its last second 200/s.
    fn sample(running: bool) -> TaskProgress {
        TaskProgress {
            task: "backfill".into(),
            actor: "ops@host".into(),
            unit: "events".into(),
            started_at: at(0),
            updated_at: at(10),
            done: 6_000,
            done_at_start: 1_000,
            total: Some(11_000),
            finished_at: None,
            running,
            sample_done: 5_800,
            sample_at: at(9),
            command: None,
            rerun: Rerun::Resumes,
        }
    }

    #[test]
    fn the_rate_and_eta_are_the_last_sample_intervals_not_the_runs_average() {
        let p = sample(true);
        assert_eq!(p.percent().map(|p| p.round()), Some(55.0));
        assert_eq!(p.rate(at(10)), Some(200.0), "the last interval's, not the run's 500/s");
        assert_eq!(p.eta_seconds(at(10)), Some(25.0));
        assert!(p.line(at(10)).starts_with("backfill: 55% (6,000 of 11,000 events), 200 events/s, ETA 25s"), "{}", p.line(at(10)));
        assert_eq!(p.rate(at(11)), Some(200.0), "a second without a write is one sample interval, not a stall");
    }

    #[test]
    fn a_stall_brings_the_rate_to_0_and_takes_the_eta_away_then_shows_as_stalled() {
        let p = sample(true);
        assert_eq!(p.rate(at(13)), Some(0.0), "quiet for more than twice the last interval");
        assert_eq!(p.eta_seconds(at(13)), None);
        let line = p.line(at(13));
        assert!(line.contains(", 0 events/s") && !line.contains("ETA"), "{line}");
        assert!(!p.stalled(at(13)) && !p.stopped());
        assert!(p.stalled(at(30)));
        let line = p.line(at(30));
        assert!(line.contains("STALLED: still running") && !line.contains("ETA"), "{line}");
    }

    #[test]
    fn slow_pages_keep_their_rate_between_writes() {
        // A write every 5 s (large pages, a rate limit): 6 s without one is not a stall yet.
        let p = TaskProgress { sample_at: at(5), sample_done: 5_000, ..sample(true) };
        assert_eq!(p.rate(at(16)), Some(200.0));
        assert_eq!(p.rate(at(21)), Some(0.0));
    }

    #[test]
    fn before_its_first_write_a_run_has_no_rate() {
        let p = TaskProgress { updated_at: at(0), sample_at: at(0), done: 1_000, sample_done: 1_000, ..sample(true) };
        assert_eq!((p.rate(at(1)), p.eta_seconds(at(1))), (None, None));
    }

    #[test]
    fn a_finished_or_stopped_run_keeps_its_last_intervals_rate() {
        let p = sample(false);
        assert_eq!(p.rate(at(100)), Some(200.0));
    }

    #[test]
    fn an_unfinished_run_that_holds_no_lock_is_not_running_at_once() {
        let p = sample(false);
        assert!(p.stopped());
        let line = p.line(at(10));
        assert!(line.contains("NOT RUNNING") && line.contains("`tsmigrate backfill` resumes it"), "{line}");
    }

    #[test]
    fn a_stopped_validation_names_its_command_line_and_says_it_starts_over() {
        let p = TaskProgress {
            task: "validate".into(),
            command: Some("tsmigrate validate --from 2026-12-07T01:00:00Z --to 2026-12-07T03:00:00Z".into()),
            rerun: Rerun::StartsOver,
            ..sample(false)
        };
        assert_eq!(p.resume_command(), "tsmigrate validate --from 2026-12-07T01:00:00Z --to 2026-12-07T03:00:00Z");
        let line = p.line(at(10));
        assert!(line.contains("`tsmigrate validate --from 2026-12-07T01:00:00Z --to 2026-12-07T03:00:00Z` starts it over"), "{line}");
        assert!(!line.contains("resumes"), "{line}");
    }

    #[test]
    fn passing_the_estimated_total_shows_100_percent_of_what_was_done() {
        let p = TaskProgress { done: 12_390, sample_done: 12_190, total: Some(10_000), ..sample(true) };
        assert_eq!(p.percent(), Some(100.0));
        let line = p.line(at(10));
        assert!(line.starts_with("backfill: 100% (12,390 of 12,390 events)"), "{line}");
        assert_eq!(p.eta_seconds(at(10)), Some(0.0));
    }
}
