//! The integration tests: one binary, one module per area. Every test creates its own
//! database and Redis key prefix through [`support::TestEnv`], so they run in parallel,
//! in any order, against real PostgreSQL and Redis (`scripts/services.sh` starts them).
//!
//! Tests in [`timescaledb`] form the TimescaleDB tier: they skip (loudly) on a server
//! without the extension, unless `TSMIGRATE_REQUIRE_TIMESCALEDB=1`.

#[macro_use]
pub mod support;

mod architecture;
mod assess;
mod backfill;
mod cli_tools;
mod cluster;
mod config_errors;
mod daemon;
mod daemon_process;
mod data_loss;
pub mod dual_write;
mod event_ids;
mod fault;
mod fault_matrix;
mod identity;
mod ingest_unavailable;
mod input;
mod legacy;
mod lifecycle;
mod observability;
mod operations;
mod outage;
mod poison;
mod prepare;
mod promises_cli;
mod promises_deadlines;
mod promises_service;
mod promises_tls;
pub mod proxy;
mod read_replica;
mod reads;
pub mod redis_cluster;
mod redis_faults;
mod relay_isolation;
mod runbooks;
mod scenario;
mod seed;
pub mod servers;
mod status;
mod stop;
mod timescaledb;
mod tls;
mod user_sets;
pub mod validate;
