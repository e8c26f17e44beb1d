//! Prometheus metrics: one recorder per process, rendered by `GET /metrics`.
//!
//! Names: `tsmigrate_ingest_events_total`, `tsmigrate_write_seconds{system}`,
//! `tsmigrate_outbox_entries`, `tsmigrate_outbox_lag_seconds`, `tsmigrate_relay_events_total`,
//! `tsmigrate_relay_failures_total`, `tsmigrate_dead_letters_total{source}` (new rows in
//! `tsmigrate.dead_letter` by path), `tsmigrate_validation_differences`,
//! `tsmigrate_read_seconds{source,endpoint}`, `tsmigrate_shadow_mismatches_total{endpoint}`,
//! `tsmigrate_job_runs_total{job,status}`, `tsmigrate_job_failures_total{job}`,
//! `tsmigrate_timescaledb_failing_jobs`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use. `None` if another recorder was
/// installed first (metrics then go there).
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder =
                PrometheusBuilder::new().set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]).ok()?.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}
