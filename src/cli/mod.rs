//! The command line: one module per subcommand, each an `Args` struct and a `run`.
//! Doc comments are the `--help` text.

pub mod backfill;
pub mod dual_write;
pub mod import_history;
pub mod legacy;
pub mod lifecycle;
pub mod options;
pub mod prepare;
pub mod relay;
pub mod run;
pub mod seed;
pub mod status;
pub mod user_sets;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::Settings;
use crate::context::Context;
pub use crate::duration::{parse_duration, parse_time};
use crate::phase::{self, Options, PhaseCommand};

/// Migrate a Redis analytics event pipeline to TimescaleDB in safe, reversible phases.
///
/// Phases: prepare → dual-write start → backfill → validate → cutover → retire-flush → optimize → complete.
/// `tsmigrate status` always says where you are and what to run next.
///
/// Exit codes: 0 success; 1 validation found differences; 2 could not run (bad input,
/// unreachable server, error); 3 refused by a phase gate or the migration lock.
#[derive(Debug, Parser)]
#[command(name = "tsmigrate", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Settings file (TOML). Default: $TSMIGRATE_CONFIG, else ./tsmigrate.toml when present, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print a machine-readable JSON result on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines on stderr as text or JSON (one object per line). Default: the `log.format`
    /// setting ($TSMIGRATE_LOG_FORMAT), else text. Text is coloured only on a terminal.
    #[arg(long, global = true, value_name = "FORMAT", value_enum)]
    pub log_format: Option<options::LogFormatArg>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the target: hypertable (or partitioned table), aggregates, policies, control tables.
    Prepare(prepare::Args),
    /// Show phase, storage mode, objects, policies, both systems' counts and the next step.
    Status(status::Args),
    /// Generate realistic legacy traffic through the legacy write path (demos, tests, benchmarks).
    Seed(seed::Args),
    /// The legacy system: its tables and its hourly flush worker.
    #[command(subcommand)]
    Legacy(legacy::Command),
    /// Dual-write: every new event to Redis and the target (through the outbox stream).
    #[command(subcommand, name = "dual-write")]
    DualWrite(dual_write::Command),
    /// Copy the events Redis already holds into the target (resumable, idempotent).
    Backfill(backfill::Args),
    /// Copy legacy aggregates older than the Redis horizon into the history tables.
    ImportHistory(import_history::Args),
    /// Compare Redis and the legacy tables with the target; exit 0 clean, 1 differences.
    Validate(validate::Args),
    /// Run a relay worker alone (outbox stream, or --tail the sorted set).
    Relay(relay::Args),
    /// Switch reads to the target (gate: a fresh clean validation).
    Cutover(lifecycle::CutoverArgs),
    /// Send reads back to the legacy path (any time before `complete`).
    Reverse(lifecycle::ReverseArgs),
    /// Retire the legacy hourly flush worker (gate: soak period + clean validation).
    RetireFlush(lifecycle::RetireArgs),
    /// Retention, asset popularity aggregate, compression report.
    Optimize(lifecycle::OptimizeArgs),
    /// Finish the migration.
    Complete(lifecycle::CompleteArgs),
    /// Remove what prepare created (only before reads are switched).
    Abort(lifecycle::AbortArgs),
    /// Shadow reads on/off: compare every answer with the other source.
    Shadow(lifecycle::ShadowArgs),
    /// Run the service: HTTP API, relay worker and scheduled jobs.
    Run(run::Args),
    /// The user sets that count unique users exactly (build them now, rebuild a range).
    #[command(subcommand, name = "user-sets")]
    UserSets(user_sets::Command),
}

/// How a command ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Validation ran and found differences.
    Differences,
}

/// Runs a parsed command line with loaded settings. Commands that work on the target
/// get a [`Context`] built here, once.
pub async fn dispatch(cli: Cli, settings: Settings) -> anyhow::Result<Outcome> {
    let json = cli.global.json;
    let command = match cli.command {
        Command::Seed(args) => return seed::run(args, &settings, json).await,
        Command::Legacy(cmd) => return legacy::run(cmd, &settings, json).await,
        Command::Relay(args) => return relay::run(args, &settings, json).await,
        Command::Run(args) => return run::run(args, settings).await,
        command => command,
    };
    let ctx = Context::connect(settings).await?;
    match command {
        Command::Prepare(args) => prepare::run(args, &ctx, json).await,
        Command::Status(args) => status::run(args, &ctx, json).await,
        Command::DualWrite(cmd) => dual_write::run(cmd, &ctx, json).await,
        Command::Backfill(args) => backfill::run(args, &ctx, json).await,
        Command::ImportHistory(args) => import_history::run(args, &ctx, json).await,
        Command::Validate(args) => validate::run(args, &ctx, json).await,
        Command::Cutover(args) => lifecycle::cutover(args, &ctx, json).await,
        Command::Reverse(args) => lifecycle::reverse(args, &ctx, json).await,
        Command::RetireFlush(args) => lifecycle::retire(args, &ctx, json).await,
        Command::Optimize(args) => lifecycle::optimize(args, &ctx, json).await,
        Command::Complete(args) => lifecycle::complete(args, &ctx, json).await,
        Command::Abort(args) => lifecycle::abort(args, &ctx, json).await,
        Command::Shadow(args) => lifecycle::shadow(args, &ctx, json).await,
        Command::UserSets(cmd) => user_sets::run(cmd, &ctx, json).await,
        Command::Seed(_) | Command::Legacy(_) | Command::Relay(_) | Command::Run(_) => unreachable!("dispatched above"),
    }
}

/// Prints a report: JSON on stdout with `--json`, text otherwise.
pub fn emit<T: Serialize>(json: bool, report: &T, human: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", human(report));
    }
    Ok(())
}

/// Runs a phase command through the runner and prints its report.
pub async fn run_phase<C: PhaseCommand>(ctx: &Context, command: &C, options: &Options, json: bool) -> anyhow::Result<Outcome> {
    let report = phase::runner::run(ctx, command, options).await?;
    emit(json, &report.to_json(), |_| report.human())?;
    Ok(Outcome::Success)
}

/// A count that must be at least 1 (`--page-size 0` would never make progress).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// The reason for forcing a gate: recorded in the audit log, so it must say something.
pub fn reason(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the reason must not be empty: say why the gate is being forced (it is recorded in the audit log)".into());
    }
    Ok(s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn counts_and_reasons_must_say_something() {
        assert_eq!(positive("5"), Ok(5));
        assert!(positive("0").unwrap_err().contains("at least 1"));
        assert!(positive("-1").is_err());
        assert_eq!(reason(" disk full ").unwrap(), "disk full");
        assert!(reason("").unwrap_err().contains("must not be empty"));
        assert!(reason("   ").is_err());
    }
}
