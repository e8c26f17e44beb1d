//! Bringing the aggregates up to date over a time range, in both modes.
//!
//! TimescaleDB: `CALL refresh_continuous_aggregate` per view, outside any transaction,
//! in day-aligned chunks. Plain: `tsmigrate.refresh_rollups`. Either way the range is
//! clamped so it never reaches further back than raw retention: refreshing a window
//! whose raw rows retention already dropped would delete the aggregate rows.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sqlx::PgPool;

use super::{StorageMode, ASSET_VIEW, DAILY_VIEW, HOURLY_VIEW};
use crate::calendar::{day_start, local_day};

/// Days per refresh call: bounded work per call, progress between calls.
const CHUNK_DAYS: i64 = 7;

#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct RefreshOutcome {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub chunks: usize,
    /// Set when the start was moved forward to stay inside raw retention.
    pub clamped_from: Option<DateTime<Utc>>,
}

/// The refresh window for `[from, to)`: widened to whole days in `tz` (a partial bucket at
/// an edge would not be refreshed) and clamped to raw retention. `None` when nothing is left.
pub fn window(from: DateTime<Utc>, to: DateTime<Utc>, tz: Tz, raw_retention_days: u32, now: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>, bool)> {
    let mut start = day_start(local_day(from, tz), tz);
    let end = day_start(local_day(to - Duration::milliseconds(1), tz) + Duration::days(1), tz);
    // One day of margin: the retention job may be about to drop the oldest day.
    let oldest_safe = day_start(local_day(now - Duration::days(i64::from(raw_retention_days)), tz) + Duration::days(2), tz);
    let clamped = start < oldest_safe;
    if clamped {
        start = oldest_safe;
    }
    (start < end && from < to).then_some((start, end, clamped))
}

#[tracing::instrument(skip(pool), err)]
pub async fn refresh(
    pool: &PgPool,
    mode: StorageMode,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tz: Tz,
    raw_retention_days: u32,
) -> sqlx::Result<RefreshOutcome> {
    let Some((start, end, clamped)) = window(from, to, tz, raw_retention_days, Utc::now()) else {
        return Ok(RefreshOutcome::default());
    };
    let mut outcome = RefreshOutcome { from: Some(start), to: Some(end), clamped_from: clamped.then_some(start), ..Default::default() };
    let mut chunk_start = start;
    while chunk_start < end {
        let chunk_end = (chunk_start + Duration::days(CHUNK_DAYS)).min(end);
        match mode {
            StorageMode::Timescaledb => {
                for view in [HOURLY_VIEW, DAILY_VIEW, ASSET_VIEW] {
                    // No transaction here: refresh_continuous_aggregate refuses to run inside one.
                    sqlx::query("CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)")
                        .bind(view)
                        .bind(chunk_start)
                        .bind(chunk_end)
                        .execute(pool)
                        .await?;
                }
            }
            StorageMode::Postgres => {
                sqlx::query("SELECT tsmigrate.refresh_rollups($1, $2)").bind(chunk_start).bind(chunk_end).execute(pool).await?;
            }
        }
        outcome.chunks += 1;
        chunk_start = chunk_end;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn window_is_day_aligned_and_stays_inside_raw_retention() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let from = Utc.with_ymd_and_hms(2025, 5, 20, 13, 30, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2025, 5, 21, 2, 0, 0).unwrap();
        let (s, e, clamped) = window(from, to, Tz::UTC, 90, now).unwrap();
        assert_eq!((s, e, clamped), (Utc.with_ymd_and_hms(2025, 5, 20, 0, 0, 0).unwrap(), Utc.with_ymd_and_hms(2025, 5, 22, 0, 0, 0).unwrap(), false));
        let old = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let (s, _, clamped) = window(old, to, Tz::UTC, 90, now).unwrap();
        assert!(clamped);
        assert!(s > now - Duration::days(90));
        assert!(window(old, old + Duration::days(1), Tz::UTC, 90, now).is_none());
    }
}
