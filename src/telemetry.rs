//! Prometheus metrics: one recorder per process, rendered by `GET /metrics`.
//!
//! Every metric is described here ([`METRICS`]: name, type, unit, help) and every series
//! whose label values are known in advance (jobs, phases, sources, kinds, reasons,
//! endpoints) is registered with 0 when the recorder is installed, so a dashboard or an
//! alert sees 0 rather than nothing before the first event. Names follow the Prometheus
//! conventions: base units (`_seconds`, `_bytes`), `_total` for counters.
//!
//! Gauges read from a server (phase, last validation, backfill progress, Redis memory,
//! TimescaleDB jobs, dead letters by reason) are set by `daemon::observe`.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::schedule::JobName;
use crate::state::Phase;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, type, unit and the `# HELP` text.
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, unit: Option<Unit>, help: &'static str) -> Metric {
    Metric { name, kind, unit, help }
}

use Kind::{Counter as C, Gauge as G, Histogram as H};

/// Every metric `tsmigrate` exports. README.md lists the same.
pub const METRICS: &[Metric] = &[
    m("tsmigrate_build_info", G, None, "Always 1; the version label says which build runs."),
    m("tsmigrate_phase", G, None, "1 for the migration's current phase, 0 for the others (from tsmigrate.migration_state)."),
    m("tsmigrate_read_source", G, None, "1 for the source the read API answers from (legacy or target), 0 for the other."),
    m("tsmigrate_leader", G, None, "1 when this replica holds the jobs lease and runs the scheduled jobs, else 0."),
    m("tsmigrate_ingest_events_total", C, None, "Events accepted by POST /api/v1/analytics and written to Redis."),
    m(
        "tsmigrate_write_seconds",
        H,
        Some(Unit::Seconds),
        "Duration of one write: an ingest batch to Redis (system=redis), a relay batch to the target (system=target).",
    ),
    m("tsmigrate_outbox_entries", G, None, "Entries in the outbox stream not yet relayed to the target."),
    m("tsmigrate_outbox_lag_seconds", G, Some(Unit::Seconds), "Age of the oldest outbox entry not yet relayed (0 when empty)."),
    m("tsmigrate_relay_events_total", C, None, "Outbox entries written to the target and acknowledged by this process's relay."),
    m(
        "tsmigrate_relay_errors_total",
        C,
        None,
        "Relay steps that failed, by kind: data (rows the target refuses), connection (the target; retried) or redis (reading or acknowledging the outbox; retried).",
    ),
    m(
        "tsmigrate_redis_command_timeouts_total",
        C,
        None,
        "Redis commands that got no answer within their deadline, by connection (shared, relay, bulk); each discards its connection.",
    ),
    m(
        "tsmigrate_redis_connections_replaced_total",
        C,
        None,
        "Redis connections discarded after a missed deadline or a broken socket, by connection; the next command opens a new one.",
    ),
    m(
        "tsmigrate_ingest_unknown_outcomes_total",
        C,
        None,
        "Ingest batches answered 503 whose write was sent but not confirmed (outcome unknown; a retry with the same ids is safe).",
    ),
    m(
        "tsmigrate_legacy_counter_writes_failed_total",
        C,
        None,
        "Redis Cluster: batches whose events (and outbox entry) were written but whose legacy counters or sessions, written after them in other slots, failed (those counters are short by the batch).",
    ),
    m(
        "tsmigrate_ingest_replicas_short_total",
        C,
        None,
        "Ingest batches written but acknowledged by fewer replicas than redis.wait_replicas within redis.wait_timeout_ms (answered 503, outcome unknown).",
    ),
    m(
        "tsmigrate_outbox_gaps_total",
        C,
        None,
        "Possible gaps recorded while dual-writing: the relay found its consumer group missing, or Redis evicted keys (see tsmigrate.outbox_gaps).",
    ),
    m("tsmigrate_dead_letters_total", C, None, "Dead letters this process stored, by the path that found them."),
    m("tsmigrate_dead_letter_rows", G, None, "Rows in tsmigrate.dead_letter, by reason code (all processes, all paths)."),
    m("tsmigrate_backfill_read_events", G, None, "Events the backfill has read from Redis so far (from its checkpoint)."),
    m("tsmigrate_backfill_inserted_events", G, None, "Events the backfill has inserted into the target so far (from its checkpoint)."),
    m("tsmigrate_backfill_finished", G, None, "1 once the backfill checkpoint says it reached the completion point."),
    m("tsmigrate_validation_differences", G, None, "Differences the last validation run found (0 when clean)."),
    m("tsmigrate_last_validation_clean", G, None, "1 when the last validation run was clean, 0 when it found differences or failed."),
    m("tsmigrate_last_validation_timestamp_seconds", G, Some(Unit::Seconds), "Unix time the last validation run finished (0: never)."),
    m("tsmigrate_job_runs_total", C, None, "Scheduled job runs in this process, by job and status (success, skipped, failed)."),
    m("tsmigrate_job_failures_total", C, None, "Scheduled job runs that failed in this process, by job."),
    m("tsmigrate_timescaledb_failing_jobs", G, None, "TimescaleDB background jobs of the target whose last run failed."),
    m("tsmigrate_redis_persistence_enabled", G, None, "1 when the Redis holding the outbox persists it (AOF or RDB snapshots), 0 when it does not."),
    m("tsmigrate_redis_memory_used_bytes", G, Some(Unit::Bytes), "Redis used_memory."),
    m("tsmigrate_redis_memory_max_bytes", G, Some(Unit::Bytes), "Redis maxmemory (0: no limit)."),
    m("tsmigrate_redis_evicting", G, None, "1 when the Redis holding the outbox evicts keys without an expiry when full (allkeys-* policy and a maxmemory)."),
    m("tsmigrate_redis_evicted_keys", G, None, "Redis INFO stats evicted_keys: keys evicted since the server started (growth during dual-write is a recorded possible loss)."),
    m("tsmigrate_read_seconds", H, Some(Unit::Seconds), "Duration of one read API answer, by source and endpoint."),
    m(
        "tsmigrate_reads_total",
        C,
        None,
        "Read API answers computed from the target (cache hits not counted), by database (replica or primary) and reason (within_limit, or why not the replica).",
    ),
    m(
        "tsmigrate_read_replica_lag_seconds",
        G,
        Some(Unit::Seconds),
        "How far the read replica's replay point was behind the primary at its last check (NaN: unknown or unreachable; 0 without a replica).",
    ),
    m("tsmigrate_read_replica_serving", G, None, "1 when the last check of the read replica let reads go to it, else 0 (also without a replica)."),
    m("tsmigrate_read_cache_errors_total", C, None, "Read cache operations that failed (the answer was computed without the cache)."),
    m(
        "tsmigrate_http_read_timeouts_total",
        C,
        None,
        "Requests answered 503 because no answer was ready within http.request_timeout_secs (a server behind the endpoint slow or hung).",
    ),
    m("tsmigrate_shadow_comparisons_total", C, None, "Shadow reads compared with the answer served, by endpoint."),
    m("tsmigrate_shadow_mismatches_total", C, None, "Shadow reads whose answer differed from the one served, by endpoint."),
    m("tsmigrate_shadow_skipped_total", C, None, "Shadow reads skipped (too many in flight), by endpoint."),
    m("tsmigrate_shadow_errors_total", C, None, "Shadow reads that failed, by endpoint."),
    m("tsmigrate_dual_write_flag_missing_total", C, None, "Ingest batches that found the Redis dual-write flag missing and used the migration state."),
    m("tsmigrate_dual_write_flag_restored_total", C, None, "Times the daemon restored a dual-write flag Redis had lost."),
];

/// Label values known before any event, so their series exist (0) from the start.
const READ_SOURCES: [&str; 2] = ["legacy", "target"];
const ENDPOINTS: [&str; 5] = ["summary", "hourly", "popular-asset-types", "comparison", "intervals"];
const DEAD_LETTER_SOURCES: [&str; 4] = ["backfill", "relay", "tail", "repair"];
pub const RELAY_ERROR_KINDS: [&str; 3] = ["data", "connection", "redis"];
pub const DEAD_LETTER_REASONS: [&str; 9] =
    ["not_utf8", "not_json", "not_object", "missing_field", "wrong_type", "bad_score", "unstorable", "rejected_by_target", "conflicting_content"];
/// The `tsmigrate_reads_total` label pairs (database, reason); `reads::replica::Why` says
/// the same (checked there).
pub const READ_DATABASES: [(&str, &str); 8] = [
    ("replica", "within_limit"),
    ("primary", "no_replica"),
    ("primary", "shadow"),
    ("primary", "lagging"),
    ("primary", "lag_unknown"),
    ("primary", "unreachable"),
    ("primary", "not_standby"),
    ("primary", "other_cluster"),
];
const JOB_STATUSES: [&str; 3] = ["success", "skipped", "failed"];

/// The process's recorder, installed on first use with every metric described and
/// registered. `None` if another recorder was installed first (metrics then go there).
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder =
                PrometheusBuilder::new().set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]).ok()?.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe_all();
            register_all();
            Some(handle)
        })
        .as_ref()
}

fn describe_all() {
    for metric in METRICS {
        match (metric.kind, metric.unit) {
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(metric.name, unit, metric.help),
            (Kind::Counter, None) => metrics::describe_counter!(metric.name, metric.help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(metric.name, unit, metric.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(metric.name, metric.help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(metric.name, unit, metric.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Touches every series with known labels: counters by 0, gauges at 0. Histograms are
/// left alone: the exporter renders a histogram only once it has a sample.
fn register_all() {
    metrics::gauge!("tsmigrate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for phase in Phase::ALL {
        metrics::gauge!("tsmigrate_phase", "phase" => phase.as_str()).set(0.0);
    }
    for source in READ_SOURCES {
        metrics::gauge!("tsmigrate_read_source", "source" => source).set(0.0);
    }
    for name in [
        "tsmigrate_ingest_events_total",
        "tsmigrate_relay_events_total",
        "tsmigrate_outbox_gaps_total",
        "tsmigrate_read_cache_errors_total",
        "tsmigrate_http_read_timeouts_total",
        "tsmigrate_dual_write_flag_missing_total",
        "tsmigrate_dual_write_flag_restored_total",
        "tsmigrate_ingest_unknown_outcomes_total",
        "tsmigrate_legacy_counter_writes_failed_total",
        "tsmigrate_ingest_replicas_short_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in METRICS.iter().filter(|m| m.kind == Kind::Gauge && !has_labels(m.name)).map(|m| m.name) {
        metrics::gauge!(name).set(0.0);
    }
    for kind in RELAY_ERROR_KINDS {
        metrics::counter!("tsmigrate_relay_errors_total", "kind" => kind).increment(0);
    }
    for connection in crate::connect::RedisRole::ALL {
        metrics::counter!("tsmigrate_redis_command_timeouts_total", "connection" => connection.as_str()).increment(0);
        metrics::counter!("tsmigrate_redis_connections_replaced_total", "connection" => connection.as_str()).increment(0);
    }
    for source in DEAD_LETTER_SOURCES {
        metrics::counter!("tsmigrate_dead_letters_total", "source" => source).increment(0);
    }
    for reason in DEAD_LETTER_REASONS {
        metrics::gauge!("tsmigrate_dead_letter_rows", "reason" => reason).set(0.0);
    }
    for endpoint in ENDPOINTS {
        for name in
            ["tsmigrate_shadow_comparisons_total", "tsmigrate_shadow_mismatches_total", "tsmigrate_shadow_skipped_total", "tsmigrate_shadow_errors_total"]
        {
            metrics::counter!(name, "endpoint" => endpoint).increment(0);
        }
    }
    for (database, reason) in READ_DATABASES {
        metrics::counter!("tsmigrate_reads_total", "database" => database, "reason" => reason).increment(0);
    }
    for job in JobName::ALL {
        metrics::counter!("tsmigrate_job_failures_total", "job" => job.as_str()).increment(0);
        for status in JOB_STATUSES {
            metrics::counter!("tsmigrate_job_runs_total", "job" => job.as_str(), "status" => status).increment(0);
        }
    }
}

/// Gauges that carry labels are registered with their label values above, never bare.
fn has_labels(name: &str) -> bool {
    matches!(name, "tsmigrate_build_info" | "tsmigrate_phase" | "tsmigrate_read_source" | "tsmigrate_dead_letter_rows")
}

/// Sets a `{label}` gauge family so exactly `current` is 1.
pub fn set_one_hot(name: &'static str, label: &'static str, values: &[&'static str], current: &str) {
    for value in values {
        metrics::gauge!(name, label => *value).set(if *value == current { 1.0 } else { 0.0 });
    }
}

/// The read sources, for [`set_one_hot`].
pub const SOURCES: [&str; 2] = READ_SOURCES;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_conventions() {
        for metric in METRICS {
            assert!(metric.name.starts_with("tsmigrate_"), "{}", metric.name);
            assert_eq!(metric.kind == Kind::Counter, metric.name.ends_with("_total"), "{}: counters and only counters end in _total", metric.name);
            match metric.unit {
                Some(Unit::Seconds) => assert!(metric.name.ends_with("_seconds"), "{}", metric.name),
                Some(Unit::Bytes) => assert!(metric.name.ends_with("_bytes"), "{}", metric.name),
                _ => {}
            }
            assert!(!metric.help.is_empty());
        }
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "each metric once");
    }
}
