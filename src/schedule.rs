//! The scheduled jobs of `tsmigrate run` by name, with their default schedules: what the
//! settings (`jobs.schedules`), the metrics and the daemon's scheduler all name. The jobs
//! themselves are `daemon::jobs`.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobName {
    /// The legacy hourly flush, until it is retired.
    LegacyFlush,
    /// Hourly consistency validation at events depth (what `tsmigrate validate` runs by
    /// default, so a clean run opens the gates as the command does), once the target is backfilled.
    Validation,
    /// Plain mode: recompute the recent hours of the rollup tables.
    RollupRefresh,
    /// Plain mode: create the partitions ahead.
    PartitionUpkeep,
    /// Plain mode: drop partitions older than raw retention.
    RawRetention,
    /// TimescaleDB mode: are the policies' jobs failing?
    TimescaledbJobHealth,
    /// After completion: the legacy Redis keys get their expiry.
    LegacyKeyExpiry,
    /// Build the user sets of closed minutes, hours and days (and rebuild marked ones).
    UserSets,
}

impl JobName {
    pub const ALL: [JobName; 8] = [
        JobName::LegacyFlush,
        JobName::Validation,
        JobName::RollupRefresh,
        JobName::PartitionUpkeep,
        JobName::RawRetention,
        JobName::TimescaledbJobHealth,
        JobName::LegacyKeyExpiry,
        JobName::UserSets,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobName::LegacyFlush => "legacy_flush",
            JobName::Validation => "validation",
            JobName::RollupRefresh => "rollup_refresh",
            JobName::PartitionUpkeep => "partition_upkeep",
            JobName::RawRetention => "raw_retention",
            JobName::TimescaledbJobHealth => "timescaledb_job_health",
            JobName::LegacyKeyExpiry => "legacy_key_expiry",
            JobName::UserSets => "user_sets",
        }
    }

    /// When it runs (cron with seconds, UTC).
    pub fn schedule(self) -> &'static str {
        match self {
            JobName::LegacyFlush => "0 5 * * * *",
            JobName::Validation => "0 20 * * * *",
            JobName::RollupRefresh => "0 */5 * * * *",
            JobName::PartitionUpkeep => "0 10 * * * *",
            JobName::RawRetention => "0 30 3 * * *",
            JobName::TimescaledbJobHealth => "0 */5 * * * *",
            JobName::LegacyKeyExpiry => "0 40 * * * *",
            // Often: reads answer the minutes not built yet from raw rows.
            JobName::UserSets => "*/15 * * * * *",
        }
    }
}

/// Parses a cron expression the way the daemon's scheduler does (six fields, seconds first;
/// day of month and weekday must both match), so settings are checked before anything runs.
pub fn parse_cron(when: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Required).dom_and_dow(true).build().parse(when)
}
