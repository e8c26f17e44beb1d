//! The command line: one module per subcommand, each an `Args` struct and a `run`.
//! Doc comments are the `--help` text.

pub mod assess;
pub mod backfill;
pub mod completions;
pub mod config;
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
/// `tsmigrate status` always says where you are and what to run next; before the first phase,
/// `tsmigrate assess` measures the live system and says whether, when and how to migrate.
///
/// Exit codes: 0 success; 1 validation found differences; 2 could not run (bad input,
/// unreachable server, error, the migration lock lost); 3 refused by a phase gate, the
/// migration lock, or a target and Redis of different migrations; 130 interrupted (long work
/// stops at a page boundary; run it again to resume).
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
    /// Measure the live system and say whether, when and how to migrate (read-only, bounded).
    ///
    /// Measured, not assumed: events/day and the peak hour, minute and second over the window
    /// (the legacy hourly table, the sorted set), the growth trend, how long Redis holds events
    /// before the cap trims them, the events that exist only as hourly aggregates, unique users
    /// a day, member sizes, Redis memory, persistence and eviction policy, and the legacy read
    /// queries' latency (`get_popular_asset_types`, the summary and the comparison, timed on the
    /// legacy read path).
    ///
    /// Projected: the target's size over the retention settings (raw rows and indexes,
    /// aggregates, user sets) with the compression ratio measured on a sample of the real events
    /// (TimescaleDB: a hypertable of the target's shape, compressed; plain PostgreSQL: a
    /// partition's size), the chunk interval, the outbox headroom for an `assess.outage_minutes`
    /// target outage at the measured peak, and the backfill and relay durations at the rates
    /// this machine measured.
    ///
    /// The verdict uses the seed's criteria — over `assess.migrate_above_events_per_day`
    /// (500,000), a legacy query p95 over `assess.slow_query_ms` (1 s), Redis holding less than
    /// `assess.min_redis_hold_hours` (24) before the cap trims, the events key over
    /// `assess.redis_memory_bytes` (1 GiB) — and the growth rule (the legacy design up to
    /// `assess.baseline_events_per_day`, 100,000; TimescaleDB from 10×; other engines from 100×),
    /// and lists the blockers it sees (no TimescaleDB → plain-PostgreSQL mode, Redis without
    /// persistence, an evicting policy, too little memory for the outbox).
    ///
    /// What it reads, bounded: Redis ZCARD, the oldest and newest member, ZCOUNT per minute (the
    /// newest 7 days held) and per second of the busiest minute, INFO, CONFIG GET save, MEMORY
    /// USAGE, and the newest members of the window up to `assess.max_read_events` (100,000) in
    /// pages of 10,000; SELECTs of the legacy hourly table over the window; each legacy read
    /// query `assess.query_runs` (5) times; on the target its version and extensions, and
    /// `assess.sample_events` (10,000) events copied into a table of the target's shape inside a
    /// transaction that is rolled back. It writes nothing to Redis, the legacy tables or
    /// `tsmigrate.*` (and, unlike the phase commands, does not record the migration id).
    ///
    /// Exit codes: 0 it ran (whatever the verdict); 2 it could not run (a server unreachable, a
    /// table missing, --write-config refused).
    ///
    /// Examples: `tsmigrate assess`; `tsmigrate assess --days 30 --json`;
    /// `tsmigrate assess --write-config tsmigrate.toml`.
    Assess(assess::Args),
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
    /// The settings in force and where each came from; check them (without connecting, or --connect).
    #[command(subcommand)]
    Config(config::Command),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the manual page, or write one per command with --dir.
    Man(completions::ManArgs),
}

impl Command {
    /// The command's name as it is typed (`dual-write start`), for output and the envelope.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Assess(_) => "assess",
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
            Command::Config(cmd) => cmd.name(),
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
        }
    }

    /// Commands that work on the settings as loaded, valid or not, or need none at all
    /// (completions, the manual): [`dispatch_without_settings`] runs them.
    pub fn takes_settings_as_loaded(&self) -> bool {
        matches!(self, Command::Config(_) | Command::Completions(_) | Command::Man(_))
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

/// Runs a command for which [`Command::takes_settings_as_loaded`] holds: `settings` is what
/// `Settings::load` returned, not validated (showing and checking bad settings is the point).
pub async fn dispatch_without_settings(cli: Cli, settings: Result<Settings, crate::config::ConfigError>) -> Result<Reply, Failure> {
    let flag = cli.global.log_format.is_some();
    Ok(match cli.command {
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args)?,
        Command::Config(cmd) => config::run(cmd, cli.global.config.as_deref(), settings, flag).await?,
        other => unreachable!("{} needs valid settings", other.name()),
    })
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
    let long_work = matches!(command, Command::Backfill(_) | Command::ImportHistory(_) | Command::Validate(_) | Command::Repair(_) | Command::UserSets(_));
    let (ctx, target_down) = match (Context::connect(settings.clone()).await, &command) {
        (Ok(ctx), _) => (ctx, None),
        // Status reports what it can read, the target being down included.
        (Err(e), Command::Status(_)) => (Context::lazy(settings.clone()).map_err(anyhow::Error::from)?, Some(e.to_string())),
        (Err(e), _) => return Err(anyhow::Error::from(e).into()),
    };
    // Once per command, before it does anything: a target and a Redis of different
    // migrations are never used together. Status reports a mismatch as its verdict instead,
    // the commands that use only the target skip it, and assess skips it because it writes
    // nothing (the check records the id on first contact).
    let mut identity_warning = None;
    if !matches!(command, Command::Status(_) | Command::History(_) | Command::UserSets(_) | Command::Assess(_)) {
        match crate::identity::verify(&ctx).await {
            Ok(outcome) => {
                tracing::debug!(?outcome, "migration identity");
                identity_warning = outcome.warning(&ctx.keys);
            }
            Err(mismatch) => {
                let phase = phase_if_readable(&ctx).await;
                audit_mismatch(&ctx, command.name(), phase, &mismatch).await;
                return Err(Failure { phase, error: mismatch.into() });
            }
        }
    }
    // Long work stops at a page boundary on the first SIGINT/SIGTERM; the others keep the
    // default (they end at once).
    let ctx = if long_work { ctx.with_interrupt(listen_for_interrupts(command.name(), json)?) } else { ctx };
    let result = match command {
        Command::Assess(args) => assess::run(args, &ctx).await,
        Command::Prepare(args) => prepare::run(args, &ctx).await,
        Command::Status(args) => status::run(args, &ctx, target_down, verbose, json).await,
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
        Command::Config(_) | Command::Completions(_) | Command::Man(_) => unreachable!("dispatch_without_settings runs these"),
    };
    match result {
        // A phase command's JSON carries it with its own warnings (the log has it as text).
        Ok(mut reply) => {
            if let (Some(warning), Some(warnings)) = (identity_warning, reply.details.pointer_mut("/run/warnings").and_then(|w| w.as_array_mut())) {
                warnings.push(warning.into());
            }
            Ok(reply)
        }
        Err(error) => Err(Failure { phase: phase_if_readable(&ctx).await, error }),
    }
}

/// The first SIGINT/SIGTERM asks `command` to stop at its next page boundary; a second
/// ends the process at once (exit 130; with `--json`, its envelope).
fn listen_for_interrupts(command: &'static str, json: bool) -> anyhow::Result<crate::stop::Interrupt> {
    let at_once = move |signal: &'static str| {
        let message = format!("{command} was interrupted twice ({signal}) and ended at once, in the middle of a page; that page was not committed");
        let hint = format!("tsmigrate {command}   # resumes after the last committed page");
        eprintln!("error: {message}\n  next: {hint}");
        if json {
            output::Envelope::of_error(command, crate::exit::INTERRUPTED, output::ErrorBody::new(message, Some(hint)), None).print();
        }
        std::process::exit(i32::from(crate::exit::INTERRUPTED));
    };
    crate::stop::listen(at_once).map_err(|e| anyhow::anyhow!("cannot listen for SIGINT/SIGTERM: {e}"))
}

/// A refusal is audited like every other: the target's audit log then shows who ran which
/// command with another migration's Redis. Best effort: the refusal stands either way.
async fn audit_mismatch(ctx: &Context, command: &str, phase: Option<Phase>, mismatch: &crate::identity::Mismatch) {
    let Some(phase) = phase else { return };
    let (reason, next) = output::split_hint(&mismatch.to_string());
    let refusal = phase::Refusal { command: command.into(), reason, next: next.unwrap_or_default() };
    let details = serde_json::json!({ "target_migration_id": mismatch.target, "redis_migration_id": mismatch.redis, "redis_key": mismatch.key });
    let recorded = async {
        let mut conn = ctx.target.acquire().await?;
        crate::phase::state::record_refusal(&mut conn, &crate::state::actor(), command, phase, &refusal, details).await
    };
    if let Err(e) = recorded.await {
        tracing::debug!(error = %format!("{e:#}"), "could not audit the refusal");
    }
}

/// The phase, for the envelope of a failed command; `None` when it cannot be read quickly.
async fn phase_if_readable(ctx: &Context) -> Option<Phase> {
    let read = crate::ledger::migration::load_from_pool(&ctx.target);
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

    /// The options that take a time, by name: each must accept a relative time (`-6h`) as
    /// its own argument, which clap reads as an unknown flag unless the option allows it.
    const TIME_OPTIONS: [&str; 3] = ["from", "to", "end"];

    #[test]
    fn every_time_option_accepts_a_relative_time_as_a_separate_argument() {
        use clap::CommandFactory;
        fn walk(command: &clap::Command, path: &str, found: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if TIME_OPTIONS.contains(&arg.get_id().as_str()) {
                    assert!(arg.is_allow_hyphen_values_set(), "{path} --{} takes a time but would refuse -6h", arg.get_id());
                    found.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut found = vec![];
        walk(&Cli::command(), "tsmigrate", &mut found);
        for expected in ["validate --from", "validate --to", "user-sets build --from", "backfill --to", "legacy flush --from", "seed --end"] {
            assert!(found.iter().any(|f| f.ends_with(expected)), "{expected} not found among {found:?}");
        }
    }

    fn parses(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(line.split_whitespace())
    }

    #[test]
    fn validate_takes_relative_times_as_separate_arguments() {
        let cli = parses("tsmigrate validate --from -6h --to -1h").expect("parses");
        let Command::Validate(args) = cli.command else { panic!("not validate") };
        let (from, to) = (args.from.expect("from"), args.to.expect("to"));
        assert_eq!((to - from).num_hours(), 5, "{from} .. {to}");
        assert!(chrono::Utc::now() - from >= chrono::Duration::hours(6));
    }

    #[test]
    fn user_sets_build_takes_relative_times_as_separate_arguments() {
        let cli = parses("tsmigrate user-sets build --from -2d --to now").expect("parses");
        let Command::UserSets(user_sets::Command::Build(args)) = cli.command else { panic!("not user-sets build") };
        assert_eq!((args.to.expect("to") - args.from.expect("from")).num_days(), 2);
    }

    #[test]
    fn backfill_legacy_flush_and_seed_take_relative_times_as_separate_arguments() {
        let Command::Backfill(args) = parses("tsmigrate backfill --from -6h --to -1h").expect("parses").command else { panic!("not backfill") };
        assert_eq!((args.to.expect("to") - args.from.expect("from")).num_hours(), 5);
        let Command::Legacy(legacy::Command::Flush(args)) = parses("tsmigrate legacy flush --from -3h --to -1h").expect("parses").command else {
            panic!("not legacy flush")
        };
        assert_eq!((args.to.expect("to") - args.from.expect("from")).num_hours(), 2);
        let Command::Seed(args) = parses("tsmigrate seed --end -2h").expect("parses").command else { panic!("not seed") };
        assert!(chrono::Utc::now() - args.end.expect("end") >= chrono::Duration::hours(2));
    }

    #[test]
    fn a_time_option_given_no_time_says_what_a_time_is() {
        let error = parses("tsmigrate validate --to --from").expect_err("--to is not a time").to_string();
        assert!(error.contains("is not a time"), "{error}");
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
