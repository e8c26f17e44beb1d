//! Long work (backfill, validation, repair) writes how far it got into `tsmigrate.progress`
//! about once a second, so `tsmigrate status` shows it from any terminal: done of total,
//! rate and ETA. A run that died leaves its row unfinished; status calls it stalled once
//! nothing has moved for a while. Reporting is best effort: it never fails the work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// How often a reporter writes its count.
const EVERY: Duration = Duration::from_secs(1);
/// A run whose count has not been written for this long is shown as stalled.
pub const STALLED_AFTER: chrono::Duration = chrono::Duration::seconds(60);

/// One run's progress as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskProgress {
    pub task: String,
    pub actor: String,
    pub unit: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub done: i64,
    /// Done by earlier runs this one resumed from (not part of its rate).
    pub done_at_start: i64,
    pub total: Option<i64>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl TaskProgress {
    pub fn percent(&self) -> Option<f64> {
        self.total.filter(|t| *t > 0).map(|t| (self.done as f64 / t as f64 * 100.0).min(100.0))
    }

    /// Units per second over this run.
    pub fn rate(&self) -> Option<f64> {
        let seconds = (self.updated_at - self.started_at).num_milliseconds() as f64 / 1000.0;
        (seconds > 0.0).then(|| (self.done - self.done_at_start) as f64 / seconds)
    }

    /// Seconds left at this run's rate.
    pub fn eta_seconds(&self) -> Option<f64> {
        let left = self.total? - self.done;
        self.rate().filter(|r| *r > 0.0).map(|r| left.max(0) as f64 / r)
    }

    pub fn stalled(&self, now: DateTime<Utc>) -> bool {
        self.finished_at.is_none() && now - self.updated_at > STALLED_AFTER
    }

    /// One line for people: `backfill: 45% (27,000 of 60,000 events), 9,800 events/s, ETA 3s`.
    pub fn line(&self, now: DateTime<Utc>) -> String {
        let of = self.total.map(|t| format!(" of {}", crate::human::count(t))).unwrap_or_default();
        let done = crate::human::count(self.done);
        let mut line = format!("{}: {done}{of} {}", self.task, self.unit);
        if let Some(p) = self.percent() {
            line = format!("{}: {p:.0}% ({done}{of} {})", self.task, self.unit);
        }
        if self.stalled(now) {
            return format!("{line}; STALLED: nothing written since {} (interrupted? run it again to resume)", crate::human::utc(self.updated_at));
        }
        if let Some(rate) = self.rate() {
            line.push_str(&format!(", {}", crate::human::rate(rate, &self.unit)));
        }
        if let Some(eta) = self.eta_seconds() {
            line.push_str(&format!(", ETA {}", crate::duration::show(chrono::Duration::seconds(eta.ceil() as i64))));
        }
        line.push_str(&format!(" ({}, since {})", self.actor, self.started_at.format("%H:%M:%S UTC")));
        line
    }
}

type Row = (String, String, String, DateTime<Utc>, DateTime<Utc>, i64, i64, Option<i64>, Option<DateTime<Utc>>);

/// The runs not finished (running, or stalled).
pub async fn unfinished(pool: &PgPool) -> sqlx::Result<Vec<TaskProgress>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('tsmigrate.progress') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(vec![]);
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT task, actor, unit, started_at, updated_at, done, done_at_start, total, finished_at
         FROM tsmigrate.progress WHERE finished_at IS NULL ORDER BY started_at",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(task, actor, unit, started_at, updated_at, done, done_at_start, total, finished_at)| TaskProgress {
            task,
            actor,
            unit,
            started_at,
            updated_at,
            done,
            done_at_start,
            total,
            finished_at,
        })
        .collect())
}

/// Writes one run's count every second until finished. Cheap to update: an atomic.
pub struct Reporter {
    done: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    writer: tokio::task::JoinHandle<()>,
}

impl Reporter {
    /// Starts the run's row (`done` already done by earlier runs, `total` when known).
    pub async fn start(pool: &PgPool, task: &str, unit: &str, done: u64, total: Option<u64>) -> Reporter {
        let actor = crate::state::actor();
        let started = sqlx::query(
            "INSERT INTO tsmigrate.progress (task, actor, unit, started_at, updated_at, done, done_at_start, total, finished_at)
             VALUES ($1, $2, $3, now(), now(), $4, $4, $5, NULL)
             ON CONFLICT (task) DO UPDATE SET actor = $2, unit = $3, started_at = now(), updated_at = now(), done = $4,
                 done_at_start = $4, total = $5, finished_at = NULL",
        )
        .bind(task)
        .bind(&actor)
        .bind(unit)
        .bind(done as i64)
        .bind(total.map(|t| t as i64))
        .execute(pool)
        .await;
        if let Err(e) = started {
            tracing::debug!(error = %e, task, "cannot record progress (status will not show it)");
        }
        let counter = Arc::new(AtomicU64::new(done));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (pool, task_name, count) = (pool.clone(), task.to_string(), counter.clone());
        let writer = tokio::spawn(async move {
            let mut written = u64::MAX;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {},
                    _ = stopped.changed() => return,
                }
                let now = count.load(Ordering::Relaxed);
                if now != written && write(&pool, &task_name, now, false).await.is_ok() {
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
    /// stopped, nothing is running).
    pub async fn finish(self, pool: &PgPool, task: &str) {
        let _ = self.stop.send(true);
        let _ = self.writer.await;
        if let Err(e) = write(pool, task, self.done.load(Ordering::Relaxed), true).await {
            tracing::debug!(error = %e, task, "cannot record the end of the run's progress");
        }
    }
}

async fn write(pool: &PgPool, task: &str, done: u64, finished: bool) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE tsmigrate.progress SET done = $2, updated_at = now(), finished_at = CASE WHEN $3 THEN now() ELSE finished_at END
         WHERE task = $1",
    )
    .bind(task)
    .bind(done as i64)
    .bind(finished)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rate_and_eta_come_from_this_runs_counts() {
        let start = Utc::now() - chrono::Duration::seconds(10);
        let p = TaskProgress {
            task: "backfill".into(),
            actor: "ops@host".into(),
            unit: "events".into(),
            started_at: start,
            updated_at: start + chrono::Duration::seconds(10),
            done: 6_000,
            done_at_start: 1_000,
            total: Some(11_000),
            finished_at: None,
        };
        assert_eq!(p.percent().map(|p| p.round()), Some(55.0));
        assert_eq!(p.rate(), Some(500.0), "resumed work is not this run's");
        assert_eq!(p.eta_seconds(), Some(10.0));
        assert!(p.line(p.updated_at).starts_with("backfill: 55% (6,000 of 11,000 events), 500 events/s, ETA 10s"), "{}", p.line(p.updated_at));
        assert!(p.line(p.updated_at + chrono::Duration::minutes(5)).contains("STALLED"));
    }
}
