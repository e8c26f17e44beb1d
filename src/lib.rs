//! tsmigrate: migrate a Redis analytics event pipeline to TimescaleDB (or plain
//! PostgreSQL) in safe, reversible phases while the application keeps running.
//!
//! Map of the crate:
//! - [`config`]     settings from a TOML file and the environment; secrets redacted.
//! - [`connect`], [`db`] connecting to PostgreSQL and Redis with errors that say what to do.
//! - [`context`]    settings, pools and Redis built once at the edge and handed down.
//! - [`identity`]   which migration a target and a Redis belong to; a mismatched pair is refused.
//! - [`calendar`]   minutes, hours and days in the bucket time zone; [`duration`] durations as people write them.
//! - [`event`]      the event in each shape (incoming, Redis member, target row) and its identity.
//! - [`fingerprint`] the per-event fingerprint validation compares and the writer stores with each row.
//! - [`legacy`]     the legacy system: Redis layout, writer, hourly flush worker, traffic generator.
//! - [`store`]      the target in its storage mode (one `Store` per mode): migrations, writer, aggregates, dead letters, user sets.
//! - [`state`]      the persisted migration state (phase, storage mode, read source); read by every layer.
//! - [`phase`]      the state machine, gates, audit log, the runner and one file per phase command.
//! - [`assess`]     measuring the live system: whether, when and how to migrate (read-only).
//! - [`status`]     where the migration stands (`tsmigrate status`, `GET /admin/status`).
//! - [`dual_write`] the outbox stream, relay and tail.
//! - [`validate`]   comparing Redis and the legacy tables with the target (pure diff core, collectors, reports).
//! - [`reads`]      the read API's answers from the legacy path or the target (unique users from user sets), cache, shadow compare.
//! - [`http`]       the HTTP API (ingest, reads, health, metrics).
//! - [`schedule`]   the scheduled jobs by name and default schedule.
//! - [`daemon`]     the long-running `tsmigrate run` process and its jobs.
//! - [`cli`]        the command line, one module per subcommand.
//! - [`progress`]   progress reporting for long work; [`stop`] how it stops early (interrupt, lost lock) at a page boundary.
//! - [`remembered`] a server-read value trusted for a while (flags, read source, horizon).
//! - [`telemetry`]  the Prometheus recorder behind `/metrics`.
//! - [`human`]      how counts, rates, sizes, times and quantities are written for people.

pub mod assess;
pub mod backfill;
pub mod calendar;
pub mod cli;
pub mod config;
pub mod connect;
pub mod context;
pub mod daemon;
pub mod db;
pub mod dual_write;
pub mod duration;
pub mod event;
pub mod fingerprint;
pub mod http;
pub mod human;
pub mod identity;
pub mod ledger;
pub mod legacy;
pub mod phase;
pub mod progress;
pub mod reads;
pub mod remembered;
pub mod repair;
pub mod schedule;
pub mod state;
pub mod status;
pub mod stop;
pub mod store;
pub mod telemetry;
pub mod validate;

/// Process exit codes (documented in `tsmigrate --help`).
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// Validation ran and found differences.
    pub const DIFFERENCES: u8 = 1;
    /// Could not run: bad input or configuration, unreachable server, unexpected error.
    pub const ERROR: u8 = 2;
    /// Refused: a phase gate, another phase command holds the lock, or the target and Redis
    /// belong to different migrations.
    pub const REFUSED: u8 = 3;
    /// Interrupted (SIGINT/SIGTERM) and stopped at a page boundary; a re-run resumes.
    pub const INTERRUPTED: u8 = 130;
}

/// The exit code for an error that ended a command.
pub fn exit_code_for(error: &anyhow::Error) -> u8 {
    if let Some(stopped) = error.downcast_ref::<stop::Stopped>() {
        stopped.exit_code()
    } else if error.downcast_ref::<phase::Refusal>().is_some()
        || error.downcast_ref::<phase::state::LockHeld>().is_some()
        || error.downcast_ref::<identity::Mismatch>().is_some()
    {
        exit::REFUSED
    } else {
        exit::ERROR
    }
}
