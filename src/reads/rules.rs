//! The rules both sources compose their answers by, pure: history and raw rows merged
//! (the larger wins in the horizon hour), per-group totals, the summary (exact unique
//! users only without history), the legacy function's popularity order, the trend.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};

use super::request::{AssetRow, DayAssetRow, GroupTotal, HourRow, Summary, TimeRange};

/// `current - previous`, and that as a percentage of `previous` (two decimals; `None` when
/// `previous` is 0: no percentage of nothing).
pub fn trend(current: i64, previous: i64) -> (i64, Option<f64>) {
    let trend = current - previous;
    let percentage = (previous != 0).then(|| (trend as f64 / previous as f64 * 10_000.0).round() / 100.0);
    (trend, percentage)
}

/// History and raw rows together; where both have a row for the same (hour, event_name,
/// category) — only the horizon hour — the larger counts win. Sorted by hour, name, category.
pub fn merge_max(history: Vec<HourRow>, raw: Vec<HourRow>) -> Vec<HourRow> {
    let mut merged: BTreeMap<(DateTime<Utc>, String, String), HourRow> = BTreeMap::new();
    for row in history.into_iter().chain(raw) {
        let key = (row.hour, row.event_name.clone(), row.category.clone());
        match merged.get_mut(&key) {
            Some(existing) => {
                existing.event_count = existing.event_count.max(row.event_count);
                existing.unique_users = existing.unique_users.max(row.unique_users);
            }
            None => {
                merged.insert(key, row);
            }
        }
    }
    merged.into_values().collect()
}

/// Per-group totals of hourly rows.
pub fn totals_of(rows: &[HourRow]) -> Vec<GroupTotal> {
    let mut totals: BTreeMap<(&str, &str), GroupTotal> = BTreeMap::new();
    for row in rows {
        let total = totals.entry((&row.event_name, &row.category)).or_insert_with(|| GroupTotal {
            event_name: row.event_name.clone(),
            category: row.category.clone(),
            ..Default::default()
        });
        total.event_count += row.event_count;
        total.hourly_unique_users += row.unique_users;
    }
    totals.into_values().collect()
}

/// The summary of per-group totals; `distinct_users` when the answer is exact.
pub fn summarize(range: TimeRange, totals: &[GroupTotal], distinct_users: Option<i64>) -> Summary {
    let mut summary = Summary {
        range,
        total_events: 0,
        unique_users: distinct_users.unwrap_or(0),
        unique_users_exact: distinct_users.is_some(),
        by_type: BTreeMap::new(),
        by_category: BTreeMap::new(),
    };
    for total in totals.iter().filter(|t| t.event_count > 0) {
        summary.total_events += total.event_count;
        *summary.by_type.entry(total.event_name.clone()).or_default() += total.event_count;
        *summary.by_category.entry(total.category.clone()).or_default() += total.event_count;
        if distinct_users.is_none() {
            summary.unique_users += total.hourly_unique_users;
        }
    }
    summary
}

/// Daily asset rows to the legacy function's answer: history and current rows (each folded
/// per day and type), the larger winning where both have a day (the horizon day), then
/// summed per type and ordered like `ORDER BY generation_count DESC, asset_type`.
pub fn popular_of(history: Vec<DayAssetRow>, current: Vec<DayAssetRow>) -> Vec<AssetRow> {
    fn fold(rows: Vec<DayAssetRow>) -> BTreeMap<(NaiveDate, String), (i64, i64)> {
        let mut out: BTreeMap<(NaiveDate, String), (i64, i64)> = BTreeMap::new();
        for row in rows {
            let entry = out.entry((row.day, row.asset_type)).or_default();
            entry.0 += row.generation_count;
            entry.1 += row.unique_creators;
        }
        out
    }
    let mut days = fold(history);
    for (key, (count, creators)) in fold(current) {
        let entry = days.entry(key).or_default();
        *entry = (entry.0.max(count), entry.1.max(creators));
    }
    let mut by_type: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for ((_, asset_type), (count, creators)) in days {
        let entry = by_type.entry(asset_type).or_default();
        entry.0 += count;
        entry.1 += creators;
    }
    let mut rows: Vec<AssetRow> =
        by_type.into_iter().map(|(asset_type, (generation_count, unique_creators))| AssetRow { asset_type, generation_count, unique_creators }).collect();
    rows.sort_by(|a, b| b.generation_count.cmp(&a.generation_count).then_with(|| a.asset_type.cmp(&b.asset_type)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reads::testing::{range, row};

    #[test]
    fn trend_is_a_difference_and_a_percentage_of_the_previous_period() {
        assert_eq!(trend(150, 100), (50, Some(50.0)));
        assert_eq!(trend(1, 3), (-2, Some(-66.67)));
        assert_eq!(trend(7, 0), (7, None));
        assert_eq!(trend(0, 0), (0, None));
    }

    #[test]
    fn merging_keeps_the_larger_history_or_raw_row() {
        let history = vec![row("2025-03-01T05:00:00Z", "click", 10, 4), row("2025-03-01T04:00:00Z", "click", 3, 1)];
        let raw = vec![row("2025-03-01T05:00:00Z", "click", 6, 5), row("2025-03-01T06:00:00Z", "click", 2, 2)];
        let merged = merge_max(history, raw);
        assert_eq!(
            merged,
            vec![row("2025-03-01T04:00:00Z", "click", 3, 1), row("2025-03-01T05:00:00Z", "click", 10, 5), row("2025-03-01T06:00:00Z", "click", 2, 2)]
        );
    }

    #[test]
    fn summaries_are_exact_only_without_history() {
        let rows = vec![row("2025-03-01T04:00:00Z", "click", 3, 2), row("2025-03-01T05:00:00Z", "click", 4, 2), row("2025-03-01T05:00:00Z", "view", 1, 1)];
        let r = range("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z");
        let approx = summarize(r, &totals_of(&rows), None);
        assert_eq!((approx.total_events, approx.unique_users, approx.unique_users_exact), (8, 5, false));
        assert_eq!(approx.by_type.get("click"), Some(&7));
        assert_eq!(approx.by_category.get("c"), Some(&8));
        let exact = summarize(r, &totals_of(&rows), Some(3));
        assert_eq!((exact.unique_users, exact.unique_users_exact), (3, true));
    }

    #[test]
    fn popular_asset_types_order_like_the_legacy_function() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let a = |day: &str, ty: &str, n: i64, u: i64| DayAssetRow { day: d(day), asset_type: ty.into(), generation_count: n, unique_creators: u };
        // The horizon day (03-02) is in both: the larger wins. 'unknown' twice on one day: summed.
        let history = vec![a("2025-03-01", "image", 5, 2), a("2025-03-02", "image", 9, 3)];
        let current = vec![
            a("2025-03-02", "image", 4, 4),
            a("2025-03-03", "logo", 14, 1),
            a("2025-03-03", "unknown", 1, 1),
            a("2025-03-03", "unknown", 2, 1),
            a("2025-03-03", "audio", 3, 1),
        ];
        let rows = popular_of(history, current);
        let flat: Vec<(&str, i64, i64)> = rows.iter().map(|r| (r.asset_type.as_str(), r.generation_count, r.unique_creators)).collect();
        assert_eq!(flat, vec![("image", 14, 6), ("logo", 14, 1), ("audio", 3, 1), ("unknown", 3, 2)]);
    }
}
