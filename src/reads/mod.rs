//! The read API's answers, from the legacy path or from the target, as the migration
//! state says (`tsmigrate.migration_state.read_source`).
//!
//! Both sources answer through the same composition (this module) over the same few
//! primitives ([`legacy`], [`target`]), so the same question gets the same answer before
//! and after the switch:
//!
//! * A source's **raw start** is the start of the hour holding the oldest event it still
//!   has raw (legacy: the oldest member of the Redis sorted set; target: the oldest row of
//!   `analytics_events_ts`).
//! * Hours **before** the raw start come from hourly **history** (legacy: the hourly table
//!   the flush worker fills; target: `tsmigrate.history_hourly`, plus aggregate rows whose
//!   raw rows retention already dropped). A history hour counts when it *starts* inside
//!   the asked range: history cannot be cut finer than an hour.
//! * The **horizon hour** (the one at the raw start) takes, per (event_name, category), the
//!   larger of history and raw: Redis may have trimmed the beginning of that hour, and
//!   the legacy flush counted it while it was whole (the flush's own `GREATEST` rule).
//! * Everything **after** comes from raw (legacy: Redis; target: the hourly aggregate for
//!   whole settled hours, the raw table for partial edge hours and the unsettled recent ones).
//!
//! Unique users: exact (distinct over raw) when no history row contributed to the answer;
//! otherwise the sum of hourly uniques per (hour, event_name, category) — an upper bound —
//! and the answer says `unique_users_exact: false`. Both sources apply the same rule. The
//! target counts exactly from user sets ([`sets`]: bitmaps per minute, hour and day, raw rows
//! only where a set is missing or stale), with the same answer as raw rows
//! ([`Route::RawRows`], kept to check and measure against) and at a cost that follows the
//! number of buckets, not of events; they also keep a summary exact where retention has
//! dropped the raw rows.
//!
//! Members that are not valid events count nowhere, on either side (on the target they are
//! dead letters). Invariant: this module and its primitives only read; they never write.
//!
//! Modules, one concern each: [`request`] (what is asked and answered; pure), [`routing`]
//! (which source answers), [`replica`] (whether the target's reads go to its read replica,
//! and its replay point), [`context`] (what a read needs, shared by the process),
//! [`compose`] (the composition over the primitives), [`buckets`] and [`rules`] (pure
//! arithmetic and merge rules), the primitives per source ([`legacy`], [`target`], [`sets`]),
//! [`cache`] (the answers' cache-aside in Redis), [`shadow`] (comparing the sources) and
//! [`control`] (the queries on tsmigrate's own tables).

pub mod buckets;
pub mod cache;
pub mod compose;
pub mod context;
pub mod control;
pub mod legacy;
pub mod replica;
pub mod request;
pub mod routing;
pub mod rules;
pub mod sets;
pub mod shadow;
pub mod target;

pub use buckets::{bin_start, bucket_count, bucket_starts, hours_nest, Pieces, Split, AGGREGATE_SETTLE, BUCKET_ORIGIN_MS};
pub use context::{HorizonCache, ReadContext, Route, TargetDatabase, HORIZON_REFRESH};
pub use request::{
    format_span, minute_floor, wire_time, Answer, AssetRow, Comparison, DayAssetRow, EventFilter, GroupTotal, HourRow, Intervals, RawSummary, ReadError,
    Request, Summary, TimeRange, UserCount, MAX_BUCKETS, MAX_PERIOD_DAYS, MAX_POPULAR_DAYS, MAX_RANGE_DAYS,
};
pub use routing::{ReadSource, Routing, RoutingCache, ROUTING_REFRESH};
pub use rules::{merge_max, popular_of, summarize, totals_of, trend};

/// The relations the target's reads plan over: what a serving pool primes each new
/// connection on (`connect::PgLimits::serving`), so that no request pays a fresh backend's
/// first look at a hypertable of many chunks.
pub const READ_RELATIONS: &[&str] = &[
    crate::store::EVENTS_TABLE,
    crate::store::HOURLY_VIEW,
    crate::store::DAILY_VIEW,
    crate::store::ASSET_VIEW,
    "tsmigrate.user_sets",
    "tsmigrate.user_set_marks",
    "tsmigrate.user_ordinals",
    "tsmigrate.history_hourly",
    "tsmigrate.history_asset_popularity",
];

#[cfg(test)]
mod testing {
    use super::{HourRow, TimeRange};
    use chrono::{DateTime, Utc};

    pub fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    pub fn range(from: &str, to: &str) -> TimeRange {
        TimeRange { from: t(from), to: t(to) }
    }

    pub fn row(hour: &str, name: &str, count: i64, users: i64) -> HourRow {
        HourRow { hour: t(hour), event_name: name.into(), category: "c".into(), event_count: count, unique_users: users }
    }
}
