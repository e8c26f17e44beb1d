//! The collectors: each asks one system for what the diff core compares, pushing the work
//! into that server (SQL aggregation on PostgreSQL; `ZCOUNT` and paged range reads on
//! Redis). Individual target events are fetched only for minutes whose counts or hashes
//! differ. The SQL lives in `validation/*.sql`, included here, so those files stay the truth.

pub mod aggregates;
pub mod redis;
pub mod target;

/// The SQL validate runs (see `validation/README.md`).
pub mod sql {
    pub const EVENT_FINGERPRINTS: &str = include_str!("../../../validation/event_fingerprints.sql");
    pub const EVENT_MINUTES: &str = include_str!("../../../validation/event_minutes.sql");
    pub const EVENT_COUNTS: &str = include_str!("../../../validation/event_counts.sql");
    pub const RAW_DIGEST_COVERAGE: &str = include_str!("../../../validation/raw_digest_coverage.sql");
    pub const EVENTS_BY_KEY: &str = crate::store::writer::EVENTS_BY_KEY;
    pub const DEAD_LETTER_MINUTES: &str = crate::ledger::dead_letter::PER_MINUTE;
    pub const TARGET_HOURLY: &str = include_str!("../../../validation/target_hourly.sql");
    pub const TARGET_ASSETS: &str = include_str!("../../../validation/target_assets.sql");
    pub const LEGACY_HOURLY: &str = include_str!("../../../validation/legacy_hourly.sql");
    pub const LEGACY_ASSETS: &str = include_str!("../../../validation/legacy_assets.sql");
    pub const LEGACY_MAX_HOUR: &str = include_str!("../../../validation/legacy_max_hour.sql");

    /// `event_minutes.sql` with `event_fingerprints.sql` spliced in, restricted to the rows
    /// stored without a fingerprint.
    pub fn event_minutes() -> String {
        EVENT_MINUTES.replace("/*event_fingerprints*/", &EVENT_FINGERPRINTS.replace("/*rows*/", "AND stored_fingerprint IS NULL"))
    }

    /// A legacy query with the configured table names (validated plain identifiers).
    pub fn legacy(template: &str, legacy: &crate::config::LegacySettings) -> String {
        template.replace("{{hourly_table}}", &legacy.hourly_table).replace("{{asset_table}}", &legacy.asset_table)
    }
}
