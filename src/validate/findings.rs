//! The findings validation runs recorded (`tsmigrate.validation_findings`, written by
//! [`super::run`]): every event-level difference a run found, not only those it listed.
//! `repair` works from them; `tsmigrate findings` shows them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::diff::DifferenceKind;

/// A recorded validation run, as the findings name it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRun {
    pub id: i64,
    pub finished_at: DateTime<Utc>,
    /// `clean`, `differences` or `error` (could not run), as recorded.
    pub result: String,
    pub depth: String,
    pub window_from: Option<DateTime<Utc>>,
    pub window_to: Option<DateTime<Utc>>,
}

/// One recorded event-level difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: DifferenceKind,
    pub event_id: Uuid,
    /// The event's time in Redis (`None`: not in Redis).
    pub redis_time: Option<DateTime<Utc>>,
    /// The event's time in the target (`None`: not in the target).
    pub target_time: Option<DateTime<Utc>>,
}

type RunRow = (i64, DateTime<Utc>, String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Run `id`, or the latest run when `id` is `None`; `None` when there is no such run (or no
/// run at all).
pub async fn recorded_run(pool: &PgPool, id: Option<i64>) -> anyhow::Result<Option<RecordedRun>> {
    let row: Option<RunRow> = sqlx::query_as(
        "SELECT id, finished_at, result, depth, window_from, window_to FROM tsmigrate.validation_runs
         WHERE $1::bigint IS NULL OR id = $1 ORDER BY finished_at DESC, id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, finished_at, result, depth, window_from, window_to)| RecordedRun { id, finished_at, result, depth, window_from, window_to }))
}

type FindingRow = (String, Uuid, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The findings of `run` of the given kinds (every kind when `kinds` is empty), in a fixed
/// order: a resumed repair picks up after the same ones.
pub async fn recorded(pool: &PgPool, run: i64, kinds: &[DifferenceKind]) -> anyhow::Result<Vec<Finding>> {
    let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    let rows: Vec<FindingRow> = sqlx::query_as(
        "SELECT kind, event_id, redis_time, target_time FROM tsmigrate.validation_findings
         WHERE run_id = $1 AND (cardinality($2::text[]) = 0 OR kind = ANY($2))
         ORDER BY kind, event_id, redis_time NULLS FIRST, target_time NULLS FIRST",
    )
    .bind(run)
    .bind(&kinds)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(kind, event_id, redis_time, target_time)| {
            let kind = DifferenceKind::parse(&kind).ok_or_else(|| anyhow::anyhow!("unknown kind of difference {kind:?} in tsmigrate.validation_findings"))?;
            Ok(Finding { kind, event_id, redis_time, target_time })
        })
        .collect()
}
