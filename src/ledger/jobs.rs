//! The scheduled jobs' records: `tsmigrate.job_runs` (each job's last run and counts),
//! `tsmigrate.job_run_log` (one row per run, with its replica, kept 30 days) and
//! `tsmigrate.job_slots` (cron ticks claimed, so a tick runs once across replicas).
//! Before `prepare` none of them exists: recording is skipped, a tick is not claimed.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::schedule::JobName;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Success,
    Skipped,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::Skipped => "skipped",
            RunStatus::Failed => "failed",
        }
    }
}

/// One finished run to record.
#[derive(Debug, Clone)]
pub struct FinishedRun<'a> {
    pub job: JobName,
    pub started: DateTime<Utc>,
    pub status: RunStatus,
    pub error: Option<&'a str>,
    pub replica: &'a str,
}

/// Records a run: the job's row, then which replica ran it (separately, so a target not
/// migrated this far still records runs). Best effort: a target without the tables (not
/// prepared) records nothing.
pub async fn record(pool: &PgPool, run: &FinishedRun<'_>) {
    let status = run.status.as_str();
    let _ = sqlx::query(
        "INSERT INTO tsmigrate.job_runs (job, last_started_at, last_finished_at, last_status, last_error, runs, failures)
         VALUES ($1, $2, now(), $3, $4, 1, $5)
         ON CONFLICT (job) DO UPDATE SET last_started_at = $2, last_finished_at = now(), last_status = $3,
             last_error = $4, runs = tsmigrate.job_runs.runs + 1, failures = tsmigrate.job_runs.failures + $5",
    )
    .bind(run.job.as_str())
    .bind(run.started)
    .bind(status)
    .bind(run.error)
    .bind(i64::from(run.status == RunStatus::Failed))
    .execute(pool)
    .await;
    let _ = sqlx::query("UPDATE tsmigrate.job_runs SET replica = $2 WHERE job = $1").bind(run.job.as_str()).bind(run.replica).execute(pool).await;
    let _ = sqlx::query(
        "WITH expired AS (DELETE FROM tsmigrate.job_run_log WHERE job = $1 AND started_at < now() - interval '30 days')
         INSERT INTO tsmigrate.job_run_log (job, replica, started_at, finished_at, status) VALUES ($1, $2, $3, now(), $4)",
    )
    .bind(run.job.as_str())
    .bind(run.replica)
    .bind(run.started)
    .bind(status)
    .execute(pool)
    .await;
}

/// Claims cron tick `tick` of `job` for `replica`: `Ok(false)` when another replica claimed
/// it already. An error (no table before prepare) claims nothing: the caller runs anyway.
pub async fn claim_tick(pool: &PgPool, job: JobName, tick: DateTime<Utc>, replica: &str) -> sqlx::Result<bool> {
    let claimed = sqlx::query(
        "WITH expired AS (DELETE FROM tsmigrate.job_slots WHERE job = $1 AND slot < now() - interval '30 days')
         INSERT INTO tsmigrate.job_slots (job, slot, replica) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(job.as_str())
    .bind(tick)
    .bind(replica)
    .execute(pool)
    .await?;
    Ok(claimed.rows_affected() > 0)
}

/// A job's last run as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    pub job: String,
    pub last_status: Option<String>,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
    pub failures: i64,
    pub last_error: Option<String>,
}

type LastRunRow = (String, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, i64, Option<String>);

/// Every job's last run, by name.
pub async fn last_runs(pool: &PgPool) -> sqlx::Result<Vec<LastRun>> {
    let rows: Vec<LastRunRow> =
        sqlx::query_as("SELECT job, last_status, last_started_at, last_finished_at, failures, last_error FROM tsmigrate.job_runs ORDER BY job")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(job, last_status, last_started_at, last_finished_at, failures, last_error)| LastRun {
            job,
            last_status,
            last_started_at,
            last_finished_at,
            failures,
            last_error,
        })
        .collect())
}
