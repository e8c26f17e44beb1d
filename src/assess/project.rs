//! What the measured figures mean for the target: its size over the retention settings, the
//! chunk interval, the outbox headroom Redis needs for a target outage, and how long the
//! relay and the backfill take at the rates this machine measured. Pure.

use serde::Serialize;

use super::measure::Measured;
use crate::config::Settings;
use crate::store::StorageMode;

/// A user-set row: this much fixed, per (event_name, category) group, per user (a roaring
/// bitmap stores a small set's ordinals in 2 bytes each). A model, stated in the output.
pub const USER_SET_ROW_BYTES: f64 = 200.0;
pub const USER_SET_GROUP_BYTES: f64 = 30.0;
pub const USER_SET_USER_BYTES: f64 = 2.0;
/// A recent chunk (indexes included) should fit in this share of `shared_buffers`.
pub const CHUNK_MEMORY_SHARE: f64 = 0.25;
/// What prepare creates: daily chunks (TimescaleDB) or daily partitions (plain PostgreSQL).
pub const PREPARED_CHUNK_SECS: i64 = 86_400;
/// An outbox entry costs its events' bytes and this much more (the stream's own bookkeeping).
pub const OUTBOX_OVERHEAD: f64 = 1.2;

#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    pub events_per_day: f64,
    pub raw: Raw,
    pub aggregates: Aggregates,
    pub user_sets: UserSets,
    /// Raw + aggregates + user sets.
    pub total_bytes: f64,
    pub chunk: Chunk,
    pub outbox: Outbox,
    pub durations: Durations,
}

#[derive(Debug, Clone, Serialize)]
pub struct Raw {
    pub retention_days: u32,
    pub rows: f64,
    /// Measured on the sample: heap and indexes per row, uncompressed.
    pub bytes_per_row: Option<f64>,
    pub table_bytes: Option<f64>,
    pub index_bytes: Option<f64>,
    /// Measured on the sample; `None` where there is no columnstore (plain PostgreSQL).
    pub compression_ratio: Option<f64>,
    /// Chunks older than this are compressed (TimescaleDB).
    pub columnstore_after_days: Option<u32>,
    /// What the raw events take at the end of retention, compression applied where it is.
    pub stored_bytes: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Aggregates {
    pub hourly_rows: f64,
    pub daily_rows: f64,
    /// Rows × the legacy hourly table's bytes a row.
    pub bytes: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserSets {
    /// Minute, hour and day sets, kept as long as the daily aggregate.
    pub rows: f64,
    pub bytes: Option<f64>,
    pub model: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Chunk {
    /// The recommended chunk (or partition) interval, in seconds.
    pub interval_secs: i64,
    pub interval: String,
    /// What one chunk of that interval holds, uncompressed, indexes included.
    pub chunk_bytes: Option<f64>,
    pub shared_buffers_bytes: Option<i64>,
    /// What prepare creates (daily) fits this server, or the reason it does not.
    pub prepared_daily_fits: Option<bool>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outbox {
    pub outage_minutes: u32,
    /// The busiest rate measured (peak minute, else peak hour).
    pub peak_events_per_sec: Option<f64>,
    pub events: Option<f64>,
    pub bytes: Option<f64>,
    /// maxmemory minus used memory; `None` without a maxmemory (bounded by the machine only).
    pub free_bytes: Option<i64>,
    pub fits: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Durations {
    /// `COPY` into the sample table, indexes maintained.
    pub copy_events_per_sec: Option<f64>,
    /// Members read from Redis a second.
    pub redis_read_events_per_sec: Option<f64>,
    /// Reading and copying one after the other, as backfill pages do.
    pub backfill_events_per_sec: Option<f64>,
    pub backfill_events: u64,
    pub backfill_secs: Option<f64>,
    /// The relay drains an outage's outbox while new events keep coming, in this long.
    pub relay_drain_secs: Option<f64>,
    /// Copy rate over the peak rate: how many times the peak the relay keeps up with.
    pub relay_headroom: Option<f64>,
}

/// Chunk intervals considered, shortest first.
const INTERVALS: [(i64, &str); 5] = [(3_600, "1 hour"), (6 * 3_600, "6 hours"), (12 * 3_600, "12 hours"), (86_400, "1 day"), (7 * 86_400, "7 days")];

/// The projection of `m` under `settings`; `None` without a measured volume.
pub fn project(m: &Measured, settings: &Settings) -> Option<Projection> {
    let per_day = m.volume.events_per_day?;
    let t = &settings.target;
    let sample = m.target.sample.as_ref();
    let timescale = m.target.mode == StorageMode::Timescaledb;
    let ratio = sample.and_then(|s| s.compression_ratio()).filter(|_| timescale);
    let bytes_per_row = sample.map(|s| s.bytes_per_row());
    let rows = per_day * f64::from(t.raw_retention_days);
    let stored_bytes = bytes_per_row.map(|bpr| match ratio {
        Some(ratio) => {
            let hot = per_day * f64::from(t.columnstore_after_days.min(t.raw_retention_days));
            (hot * bpr) + (rows - hot) * bpr / ratio
        }
        None => rows * bpr,
    });
    let raw = Raw {
        retention_days: t.raw_retention_days,
        rows,
        bytes_per_row,
        table_bytes: sample.map(|s| rows * s.table_bytes as f64 / s.rows.max(1) as f64),
        index_bytes: sample.map(|s| rows * s.index_bytes as f64 / s.rows.max(1) as f64),
        compression_ratio: ratio,
        columnstore_after_days: timescale.then_some(t.columnstore_after_days),
        stored_bytes,
    };
    let groups = m.volume.groups_per_hour.unwrap_or(0.0);
    let hourly_rows = groups * 24.0 * f64::from(t.hourly_retention_days);
    let daily_rows = groups * f64::from(t.daily_retention_days);
    let aggregates = Aggregates { hourly_rows, daily_rows, bytes: m.volume.hourly_row_bytes.map(|b| (hourly_rows + daily_rows) * b) };
    let users = m.redis.unique_users.as_ref();
    // Minute sets are kept as long as raw rows, hour and day sets as long as the daily aggregate.
    let (raw_days, kept_days) = (f64::from(t.raw_retention_days), f64::from(t.daily_retention_days));
    let user_sets = UserSets {
        rows: 1440.0 * raw_days + 25.0 * kept_days,
        bytes: users.map(|u| {
            let row = |users: f64| USER_SET_ROW_BYTES + USER_SET_GROUP_BYTES * groups + USER_SET_USER_BYTES * users;
            1440.0 * row(u.per_minute) * raw_days + (24.0 * row(u.per_hour) + row(u.users as f64)) * kept_days
        }),
        model: format!(
            "a set row: {USER_SET_ROW_BYTES} B + {USER_SET_GROUP_BYTES} B a group + {USER_SET_USER_BYTES} B a user; minute sets kept {} days, hour and day sets {} days",
            t.raw_retention_days, t.daily_retention_days
        ),
    };
    let total_bytes = stored_bytes.unwrap_or(0.0) + aggregates.bytes.unwrap_or(0.0) + user_sets.bytes.unwrap_or(0.0);
    let chunk = chunk(per_day, bytes_per_row, m.target.shared_buffers_bytes);
    let outbox = outbox(m, settings);
    let durations = durations(m, per_day, outbox.peak_events_per_sec, outbox.events);
    Some(Projection { events_per_day: per_day, raw, aggregates, user_sets, total_bytes, chunk, outbox, durations })
}

/// The longest interval whose chunk fits [`CHUNK_MEMORY_SHARE`] of `shared_buffers`. Pure.
pub fn chunk(per_day: f64, bytes_per_row: Option<f64>, shared_buffers: Option<i64>) -> Chunk {
    let bytes_of = |secs: i64| bytes_per_row.map(|bpr| per_day * secs as f64 / 86_400.0 * bpr);
    let budget = shared_buffers.map(|b| b as f64 * CHUNK_MEMORY_SHARE);
    let (secs, name, reason) = match budget {
        Some(budget) if bytes_per_row.is_some() => {
            let fitting = INTERVALS.iter().rev().find(|(secs, _)| bytes_of(*secs).is_some_and(|b| b <= budget));
            match fitting {
                Some((secs, name)) => {
                    (*secs, *name, format!("the longest interval whose chunk fits 25 % of shared_buffers ({})", crate::human::bytes(budget as u64)))
                }
                None => (INTERVALS[0].0, INTERVALS[0].1, "even an hour's chunk exceeds 25 % of shared_buffers: raise shared_buffers".to_string()),
            }
        }
        _ => (PREPARED_CHUNK_SECS, "1 day", "no sample or no shared_buffers reading: what prepare creates".to_string()),
    };
    let prepared_daily_fits = match (bytes_of(PREPARED_CHUNK_SECS), budget) {
        (Some(day), Some(budget)) => Some(day <= budget),
        _ => None,
    };
    Chunk { interval_secs: secs, interval: name.to_string(), chunk_bytes: bytes_of(secs), shared_buffers_bytes: shared_buffers, prepared_daily_fits, reason }
}

fn outbox(m: &Measured, settings: &Settings) -> Outbox {
    let minutes = settings.assess.outage_minutes;
    let peak = m.redis.peak_minute.as_ref().map(|p| p.events_per_sec).into_iter().chain(m.volume.peak_hour.as_ref().map(|p| p.events_per_sec)).reduce(f64::max);
    let events = peak.map(|rate| rate * f64::from(minutes) * 60.0);
    let bytes = match (events, &m.redis.member_bytes) {
        (Some(events), Some(sizes)) => Some(events * sizes.mean * OUTBOX_OVERHEAD),
        _ => None,
    };
    let d = &m.redis.durability;
    let free_bytes = match (d.maxmemory.filter(|m| *m > 0), d.used_memory) {
        (Some(max), Some(used)) => Some(max as i64 - used as i64),
        _ => None,
    };
    let fits = match (bytes, free_bytes) {
        (Some(bytes), Some(free)) => Some(bytes <= free as f64),
        _ => None,
    };
    Outbox { outage_minutes: minutes, peak_events_per_sec: peak, events, bytes, free_bytes, fits }
}

fn durations(m: &Measured, per_day: f64, peak: Option<f64>, backlog: Option<f64>) -> Durations {
    let copy = m.target.sample.as_ref().and_then(|s| s.copy_rate());
    let read = (m.redis.read_secs > 0.0 && m.redis.members_read > 0).then(|| m.redis.members_read as f64 / m.redis.read_secs);
    let backfill = match (read, copy) {
        (Some(r), Some(c)) => Some(1.0 / (1.0 / r + 1.0 / c)),
        _ => None,
    };
    let incoming = per_day / 86_400.0;
    let relay_drain_secs = match (backlog, copy) {
        (Some(backlog), Some(copy)) if copy > incoming => Some(backlog / (copy - incoming)),
        _ => None,
    };
    Durations {
        copy_events_per_sec: copy,
        redis_read_events_per_sec: read,
        backfill_events_per_sec: backfill,
        backfill_events: m.redis.members,
        backfill_secs: backfill.map(|rate| m.redis.members as f64 / rate),
        relay_drain_secs,
        relay_headroom: match (copy, peak) {
            (Some(copy), Some(peak)) if peak > 0.0 => Some(copy / peak),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_is_the_longest_interval_that_fits_a_quarter_of_shared_buffers() {
        // 1,000 bytes a row, 8,640,000 events a day = 100 events/s = 360 MB an hour.
        let c = chunk(8_640_000.0, Some(1000.0), Some(128 << 20));
        assert_eq!(c.interval, "1 hour", "{c:?}");
        assert!(c.reason.contains("raise shared_buffers"));
        assert_eq!(c.prepared_daily_fits, Some(false));
        // 86,400 events a day of 1,000 bytes = 86 MB a day: a day fits 25 % of 1 GiB, a week does not.
        let c = chunk(86_400.0, Some(1000.0), Some(1 << 30));
        assert_eq!((c.interval.as_str(), c.prepared_daily_fits), ("1 day", Some(true)), "{c:?}");
        let c = chunk(86_400.0, None, None);
        assert_eq!(c.interval_secs, PREPARED_CHUNK_SECS);
        assert_eq!(c.chunk_bytes, None);
    }
}
