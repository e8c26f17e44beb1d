//! The integration tests: one binary, one module per area. Every test creates its own
//! database and Redis key prefix through [`support::TestEnv`], so they run in parallel,
//! in any order, against real PostgreSQL and Redis (`scripts/services.sh` starts them).
//!
//! Tests in [`timescaledb`] form the TimescaleDB tier: they skip (loudly) on a server
//! without the extension, unless `TSMIGRATE_REQUIRE_TIMESCALEDB=1`.

#[macro_use]
pub mod support;

mod architecture;
mod backfill;
mod config_errors;
mod daemon;
mod daemon_process;
mod data_loss;
pub mod dual_write;
mod event_ids;
mod fault;
mod fault_matrix;
mod ingest_unavailable;
mod legacy;
mod lifecycle;
mod observability;
mod operations;
mod outage;
mod poison;
mod prepare;
pub mod proxy;
mod reads;
mod redis_faults;
mod relay_isolation;
mod scenario;
mod seed;
pub mod servers;
mod status;
mod timescaledb;
mod tls;
mod user_sets;
pub mod validate;
