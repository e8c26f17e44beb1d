//! The scheduled jobs of `tsmigrate run`.

use serde_json::{json, Value};

/// Plain-mode jobs that stand in for TimescaleDB's policies: (name, target, schedule, config).
pub fn plain_mode_jobs() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        ("rollup_refresh", "analytics_hourly, analytics_daily, analytics_asset_popularity_ts", "5 minutes", json!({"window": "3 hours"})),
        ("partition_upkeep", "analytics_events_ts", "1 hour", json!({"create_ahead_days": 7})),
        ("raw_retention", "analytics_events_ts", "1 day", json!({"drop_after_days": 90})),
    ]
}
