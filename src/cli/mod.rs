//! The command line: one module per subcommand, each an `Args` struct and a `run`.
//! Doc comments are the `--help` text.

pub mod backfill;
pub mod dual_write;
pub mod findings;
pub mod history;
pub mod import_history;
pub mod legacy;
pub mod lifecycle;
pub mod options;
pub mod output;
pub mod prepare;
pub mod relay;
pub mod repair;
pub mod run;
pub mod seed;
pub mod status;
pub mod user_sets;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::context::Context;
pub use crate::duration::{parse_duration, parse_time};
use crate::phase::{self, Options, PhaseCommand};
use crate::state::Phase;
pub use output::Reply;

/// Migrate a Redis analytics event pipeline to TimescaleDB in safe, reversible phases.
///
/// Phases: prepare → dual-write start → backfill → validate (→ repair → validate) → cutover → retire-flush → optimize → complete.
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
    /// Print one JSON document on stdout instead of text, success or failure alike: the
    /// envelope of schemas/envelope.schema.json (version, command, ok, exit_code, phase,
    /// error, next_steps, details).
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
    /// For on-call: a verdict (healthy, lagging, blocked, failing) and the reason, then the phase, lag, counts, validation, jobs, progress and next step.
    Status(status::Args),
    /// tsmigrate's migrations (applied and pending) and the audit log of phase commands.
    History(history::Args),
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
    /// Compare Redis and the legacy tables with the target; exit 0 clean, 1 differences, 2 a check could not run.
    Validate(validate::Args),
    /// The differences a validation run recorded, event by event (text, JSON or CSV).
    ///
    /// Every event a validation run found missing in the target, extra in it, or different
    /// (all of them, not only those `validate` listed): what `repair` fixes. Default: the
    /// latest run. A run at counts depth records none (it sees hours, not events:
    /// `tsmigrate validate --depth events` lists them).
    ///
    /// csv: a header line, then one line per finding: run_id,kind,event_id,redis_time,target_time
    /// (an empty time: the event is not on that side). json: the --json envelope, the findings
    /// under details.findings.
    ///
    /// Examples: `tsmigrate findings`;
    /// `tsmigrate findings --run 12 --kind missing --format csv > missing.csv`;
    /// `tsmigrate findings --kind extra,different --json`.
    Findings(findings::Args),
    /// Fix exactly what the latest validation found, from Redis (extra events only with --delete-extra).
    Repair(repair::Args),
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

impl Command {
    /// The command's name as it is typed (`dual-write start`), for output and the envelope.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Prepare(_) => "prepare",
            Command::Status(_) => "status",
            Command::History(_) => "history",
            Command::Seed(_) => "seed",
            Command::Legacy(legacy::Command::Setup) => "legacy setup",
            Command::Legacy(legacy::Command::Flush(_)) => "legacy flush",
            Command::DualWrite(dual_write::Command::Start(_)) => "dual-write start",
            Command::DualWrite(dual_write::Command::Stop(_)) => "dual-write stop",
            Command::Backfill(_) => "backfill",
            Command::ImportHistory(_) => "import-history",
            Command::Validate(_) => "validate",
            Command::Findings(_) => "findings",
            Command::Repair(_) => "repair",
            Command::Relay(_) => "relay",
            Command::Cutover(_) => "cutover",
            Command::Reverse(_) => "reverse",
            Command::RetireFlush(_) => "retire-flush",
            Command::Optimize(_) => "optimize",
            Command::Complete(_) => "complete",
            Command::Abort(_) => "abort",
            Command::Shadow(_) => "shadow",
            Command::Run(_) => "run",
            Command::UserSets(user_sets::Command::Build(_)) => "user-sets build",
        }
    }
}

/// A command that ended in an error, with the phase when it could be read.
#[derive(Debug)]
pub struct Failure {
    pub error: anyhow::Error,
    pub phase: Option<Phase>,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure { error, phase: None }
    }
}

/// Runs a parsed command line with loaded settings. Commands that work on the target
/// get a [`Context`] built here, once.
pub async fn dispatch(cli: Cli, settings: Settings) -> Result<Reply, Failure> {
    let json = cli.global.json;
    let command = match cli.command {
        Command::Seed(args) => return Ok(seed::run(args, &settings, json).await?),
        Command::Legacy(cmd) => return Ok(legacy::run(cmd, &settings).await?),
        Command::Relay(args) => return Ok(relay::run(args, &settings).await?),
        Command::Run(args) => return Ok(run::run(args, settings).await?),
        command => command,
    };
    let verbose = cli.global.verbose > 0;
    let (ctx, target_down) = match (Context::connect(settings.clone()).await, &command) {
        (Ok(ctx), _) => (ctx, None),
        // Status reports what it can read, the target being down included.
        (Err(e), Command::Status(_)) => (
            Context::with_target(std::sync::Arc::new(settings.clone()), crate::db::target_pool_lazy(&settings).map_err(anyhow::Error::from)?),
            Some(e.to_string()),
        ),
        (Err(e), _) => return Err(anyhow::Error::from(e).into()),
    };
    let result = match command {
        Command::Prepare(args) => prepare::run(args, &ctx).await,
        Command::Status(args) => status::run(args, &ctx, target_down, verbose).await,
        Command::History(args) => history::run(args, &ctx).await,
        Command::DualWrite(cmd) => dual_write::run(cmd, &ctx).await,
        Command::Backfill(args) => backfill::run(args, &ctx, json).await,
        Command::ImportHistory(args) => import_history::run(args, &ctx).await,
        Command::Validate(args) => validate::run(args, &ctx, json).await,
        Command::Findings(args) => findings::run(args, &ctx, json).await,
        Command::Repair(args) => repair::run(args, &ctx).await,
        Command::Cutover(args) => lifecycle::cutover(args, &ctx).await,
        Command::Reverse(args) => lifecycle::reverse(args, &ctx).await,
        Command::RetireFlush(args) => lifecycle::retire(args, &ctx).await,
        Command::Optimize(args) => lifecycle::optimize(args, &ctx).await,
        Command::Complete(args) => lifecycle::complete(args, &ctx).await,
        Command::Abort(args) => lifecycle::abort(args, &ctx).await,
        Command::Shadow(args) => lifecycle::shadow(args, &ctx).await,
        Command::UserSets(cmd) => user_sets::run(cmd, &ctx).await,
        Command::Seed(_) | Command::Legacy(_) | Command::Relay(_) | Command::Run(_) => unreachable!("dispatched above"),
    };
    match result {
        Ok(reply) => Ok(reply),
        Err(error) => Err(Failure { phase: phase_if_readable(&ctx).await, error }),
    }
}

/// The phase, for the envelope of a failed command; `None` when it cannot be read quickly.
async fn phase_if_readable(ctx: &Context) -> Option<Phase> {
    let read = crate::state::load_from_pool(&ctx.target);
    tokio::time::timeout(std::time::Duration::from_secs(2), read).await.ok()?.ok().map(|state| state.phase)
}

/// Runs a phase command through the runner; its report is the reply.
pub async fn run_phase<C: PhaseCommand>(ctx: &Context, command: &C, options: &Options) -> anyhow::Result<Reply> {
    let report = phase::runner::run(ctx, command, options).await?;
    Ok(Reply::done(output::phase_details(&report), report.human()).with_phase(report.phase_after).with_next_steps(report.next_steps.clone()))
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
