//! Bringing the aggregates up to date over a time range, in both modes.
//!
//! In day-aligned chunks, each refreshed by the store of the mode ([`Store::refresh_chunk`]),
//! outside any transaction. The range is
//! clamped so it never reaches further back than raw retention: refreshing a window
//! whose raw rows retention already dropped would delete the aggregate rows.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::Store;
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

#[tracing::instrument(skip(store), fields(mode = %store.mode()), err)]
pub async fn refresh(store: &dyn Store, from: DateTime<Utc>, to: DateTime<Utc>, tz: Tz, raw_retention_days: u32) -> sqlx::Result<RefreshOutcome> {
    let Some((start, end, clamped)) = window(from, to, tz, raw_retention_days, Utc::now()) else {
        return Ok(RefreshOutcome::default());
    };
    let mut outcome = RefreshOutcome { from: Some(start), to: Some(end), clamped_from: clamped.then_some(start), ..Default::default() };
    let mut chunk_start = start;
    while chunk_start < end {
        let chunk_end = (chunk_start + Duration::days(CHUNK_DAYS)).min(end);
        store.refresh_chunk(chunk_start, chunk_end).await?;
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
