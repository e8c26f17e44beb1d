//! Validation runs (`tsmigrate.validation_runs`) and the event-level differences they found
//! (`tsmigrate.validation_findings`), as typed records: the shared vocabulary of validate,
//! the gates, status, the daemon's gauges, repair and `tsmigrate findings` ([`Verdict`],
//! [`Depth`], [`DifferenceKind`], [`FoundKey`]). A run is read in one shape
//! ([`ValidationRun`], by [`latest`] or [`run`]), its figures parsed once, here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::state::Phase;

/// How deep validation looks at the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Depth {
    /// Counts per hour only (`ZCOUNT` against `count(*)`): cheap, finds no altered event.
    Counts,
    /// Counts and hashes per hour, narrowed to the differing events.
    Events,
}

impl Depth {
    pub fn as_str(self) -> &'static str {
        match self {
            Depth::Counts => "counts",
            Depth::Events => "events",
        }
    }

    /// As recorded in `tsmigrate.validation_runs.depth`.
    pub fn parse(s: &str) -> Option<Depth> {
        [Depth::Counts, Depth::Events].into_iter().find(|d| d.as_str() == s)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clean,
    Differences,
    /// A check could not run (a legacy table missing, nothing to compare it with): the
    /// run is not clean, whatever the others found. Recorded as `error`.
    Incomplete,
}

impl Verdict {
    /// As recorded in `tsmigrate.validation_runs.result`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Differences => "differences",
            Verdict::Incomplete => "error",
        }
    }

    /// As recorded in `tsmigrate.validation_runs.result`.
    pub fn parse(s: &str) -> Option<Verdict> {
        [Verdict::Clean, Verdict::Differences, Verdict::Incomplete].into_iter().find(|v| v.as_str() == s)
    }
}

/// The kinds of event-level difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DifferenceKind {
    /// In Redis, not in the target.
    Missing,
    /// In the target, not in Redis.
    Extra,
    /// The same event id with different content or time.
    Different,
}

impl DifferenceKind {
    pub const ALL: [DifferenceKind; 3] = [DifferenceKind::Missing, DifferenceKind::Extra, DifferenceKind::Different];

    pub fn parse(s: &str) -> Option<DifferenceKind> {
        DifferenceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::Missing => "missing",
            DifferenceKind::Extra => "extra",
            DifferenceKind::Different => "different",
        }
    }
}

/// One event-level difference, where it is on each side: found by the diff core, recorded
/// with its run, read back by repair and `tsmigrate findings`. Enough to read it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FoundKey {
    pub kind: DifferenceKind,
    pub event_id: Uuid,
    /// The event's time in Redis (`None`: not in Redis).
    pub redis_time: Option<DateTime<Utc>>,
    /// The event's time in the target (`None`: not in the target).
    pub target_time: Option<DateTime<Utc>>,
}

/// `[from, to)`.
pub type Hours = (DateTime<Utc>, DateTime<Utc>);

/// The figures of a run the other modules act on, parsed from `validation_runs.figures`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunFigures {
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// Legacy hourly rows that differ from the target's.
    pub hourly_differences: u64,
    /// Asset popularity rows that differ from the target's.
    pub asset_differences: u64,
}

impl RunFigures {
    fn parse(figures: &Value) -> RunFigures {
        let n = |v: &Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0);
        RunFigures {
            missing: n(&figures["missing"]),
            extra: n(&figures["extra"]),
            different: n(&figures["different"]),
            hourly_differences: n(&figures["legacy_hourly"]["differences"]),
            asset_differences: n(&figures["asset_popularity"]["differences"]),
        }
    }

    /// Did an aggregate check (legacy hourly, asset popularity) differ?
    pub fn aggregates_differ(&self) -> bool {
        self.hourly_differences > 0 || self.asset_differences > 0
    }
}

/// A recorded validation run.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationRun {
    pub id: i64,
    pub finished_at: DateTime<Utc>,
    pub verdict: Verdict,
    pub depth: Depth,
    /// The hours it compared, `[from, to)` (`None`: it failed before choosing them).
    pub window: Option<Hours>,
    /// The whole migrated range it had to compare to open a gate (`None`: not recorded, by a
    /// run that failed early or an earlier tsmigrate).
    pub range: Option<Hours>,
    pub figures: RunFigures,
}

impl ValidationRun {
    /// Whether it compared the whole migrated range; `None` when that was not recorded.
    pub fn whole_range(&self) -> Option<bool> {
        let ((from, to), (range_from, range_to)) = self.window.zip(self.range)?;
        Some(from <= range_from && to >= range_to)
    }
}

type RunRow = (i64, DateTime<Utc>, String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Value);

/// Run `id`, or the latest run when `id` is `None` (the newest to finish); `None` when there
/// is no such run, no run at all, or no table yet.
pub async fn run(conn: &mut PgConnection, id: Option<i64>) -> anyhow::Result<Option<ValidationRun>> {
    if !super::exists(&mut *conn, "validation_runs").await? {
        return Ok(None);
    }
    let row: Option<RunRow> = sqlx::query_as(
        "SELECT id, finished_at, result, depth, window_from, window_to, range_from, range_to, figures FROM tsmigrate.validation_runs
         WHERE $1::bigint IS NULL OR id = $1 ORDER BY finished_at DESC, id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    let Some((id, finished_at, result, depth, window_from, window_to, range_from, range_to, figures)) = row else { return Ok(None) };
    Ok(Some(ValidationRun {
        id,
        finished_at,
        verdict: Verdict::parse(&result).ok_or_else(|| anyhow::anyhow!("unknown result {result:?} of validation run #{id}"))?,
        depth: Depth::parse(&depth).ok_or_else(|| anyhow::anyhow!("unknown depth {depth:?} of validation run #{id}"))?,
        window: window_from.zip(window_to),
        range: range_from.zip(range_to),
        figures: RunFigures::parse(&figures),
    }))
}

/// The latest recorded validation run: what the gates, status, the daemon's gauges and
/// repair act on.
pub async fn latest(conn: &mut PgConnection) -> anyhow::Result<Option<ValidationRun>> {
    run(conn, None).await
}

/// [`latest`] on a connection of `pool`.
pub async fn latest_from_pool(pool: &PgPool) -> anyhow::Result<Option<ValidationRun>> {
    latest(&mut *pool.acquire().await?).await
}

/// A run that ended, to record.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub window: Hours,
    pub range: Hours,
    pub depth: Depth,
    pub verdict: Verdict,
    pub phase: Phase,
    /// What it counted (`validate::ValidationReport::figures`).
    pub figures: Value,
    pub duration_ms: u64,
}

/// Records a run and every event-level difference it found (what `repair` works from), in
/// one transaction. Returns the run's id.
pub async fn record(pool: &PgPool, run: &NewRun, found: &[FoundKey]) -> sqlx::Result<i64> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tsmigrate.validation_runs (started_at, finished_at, window_from, window_to, range_from, range_to, depth, result, phase, figures, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(run.started_at)
    .bind(run.finished_at)
    .bind(run.window.0)
    .bind(run.window.1)
    .bind(run.range.0)
    .bind(run.range.1)
    .bind(run.depth.as_str())
    .bind(run.verdict.as_str())
    .bind(run.phase.as_str())
    .bind(&run.figures)
    .bind(run.duration_ms as i64)
    .fetch_one(&mut *tx)
    .await?;
    if !found.is_empty() {
        sqlx::query(
            "INSERT INTO tsmigrate.validation_findings (run_id, kind, event_id, redis_time, target_time)
             SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::timestamptz[], $5::timestamptz[])",
        )
        .bind(id)
        .bind(found.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>())
        .bind(found.iter().map(|f| f.event_id).collect::<Vec<_>>())
        .bind(found.iter().map(|f| f.redis_time).collect::<Vec<_>>())
        .bind(found.iter().map(|f| f.target_time).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// A run that failed, to record as `error` (it finishes now).
#[derive(Debug, Clone)]
pub struct FailedRun {
    pub started_at: DateTime<Utc>,
    /// The hours it was to compare and the migrated range, when it got as far as choosing them.
    pub window: Option<(Hours, Hours)>,
    pub depth: Depth,
    pub phase: Phase,
    pub error: String,
    pub duration_ms: u64,
}

pub async fn record_failed(pool: &PgPool, run: &FailedRun) -> sqlx::Result<()> {
    let (window, range) = (run.window.map(|w| w.0), run.window.map(|w| w.1));
    sqlx::query(
        "INSERT INTO tsmigrate.validation_runs (started_at, finished_at, window_from, window_to, range_from, range_to, depth, result, phase, figures, duration_ms)
         VALUES ($1, now(), $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(run.started_at)
    .bind(window.map(|w| w.0))
    .bind(window.map(|w| w.1))
    .bind(range.map(|r| r.0))
    .bind(range.map(|r| r.1))
    .bind(run.depth.as_str())
    .bind(Verdict::Incomplete.as_str())
    .bind(run.phase.as_str())
    .bind(serde_json::json!({"error": run.error}))
    .bind(run.duration_ms as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// How many findings `run` recorded.
pub async fn count_findings(pool: &PgPool, run: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM tsmigrate.validation_findings WHERE run_id = $1").bind(run).fetch_one(pool).await
}

type FindingRow = (String, Uuid, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The findings of `run` of the given kinds (every kind when `kinds` is empty), in a fixed
/// order: a resumed repair picks up after the same ones.
pub async fn findings(pool: &PgPool, run: i64, kinds: &[DifferenceKind]) -> anyhow::Result<Vec<FoundKey>> {
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
            Ok(FoundKey { kind, event_id, redis_time, target_time })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_whatever_a_run_recorded() {
        let figures =
            serde_json::json!({"missing": 2, "extra": 1, "different": 0, "legacy_hourly": {"rows_compared": 9, "differences": 3}, "asset_popularity": null});
        let parsed = RunFigures::parse(&figures);
        assert_eq!(parsed, RunFigures { missing: 2, extra: 1, different: 0, hourly_differences: 3, asset_differences: 0 });
        assert!(parsed.aggregates_differ());
        assert_eq!(RunFigures::parse(&serde_json::json!({"error": "boom"})), RunFigures::default());
    }

    #[test]
    fn vocabulary_round_trips() {
        for k in DifferenceKind::ALL {
            assert_eq!(DifferenceKind::parse(k.as_str()), Some(k));
        }
        for v in [Verdict::Clean, Verdict::Differences, Verdict::Incomplete] {
            assert_eq!(Verdict::parse(v.as_str()), Some(v));
        }
        assert_eq!(Depth::parse("counts"), Some(Depth::Counts));
    }
}
