use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use tsmigrate::cli::output::{Envelope, ErrorBody};
use tsmigrate::cli::{self, Cli, Failure, Reply};
use tsmigrate::config::{ConfigError, LogFormat, Settings};
use tsmigrate::exit;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args).map_err(no_irreversible_tip) {
        Ok(cli) => cli,
        // --json promises one JSON document, a usage error included (not --help or --version).
        Err(e) if e.use_stderr() && args.iter().any(|a| a == "--json") => {
            let _ = e.print();
            Envelope::of_error(&typed_command(&args), exit::ERROR, ErrorBody::new(usage_message(&e), Some("see --help".into())), None).print();
            return ExitCode::from(exit::ERROR);
        }
        Err(e) => e.exit(),
    };
    let json = cli.global.json;
    let command = cli.command.name();
    // Settings are read before logging starts, since they say how to log; a file that
    // cannot be read is reported below like any error.
    let settings = Settings::load(cli.global.config.as_deref());
    let format = cli.global.log_format.map(LogFormat::from).or(settings.as_ref().ok().map(|s| s.log.format)).unwrap_or_default();
    init_tracing(cli.global.verbose, format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(run(cli, settings)) {
        Ok(reply) => {
            if json {
                Envelope::of_reply(command, &reply).print();
            } else {
                tsmigrate::cli::output::to_stdout(&reply.text);
            }
            if let Some(error) = reply.error.as_ref().filter(|_| reply.exit_code == exit::ERROR) {
                eprintln!("error: {}", error.message);
                if let Some(hint) = &error.hint {
                    eprintln!("  next: {hint}");
                }
            }
            ExitCode::from(reply.exit_code)
        }
        Err(Failure { error, phase }) => {
            print_error(&error);
            let code = tsmigrate::exit_code_for(&error);
            if json {
                let mut envelope = Envelope::of_error(command, code, ErrorBody::of(&error), phase);
                // Where the work stopped, for a script that resumes it.
                if let Some(stopped) = error.downcast_ref::<tsmigrate::stop::Stopped>() {
                    envelope.details = stopped.details();
                }
                envelope.print();
            }
            ExitCode::from(code)
        }
    }
}

/// The error, each cause that says something the message did not (a message often already
/// quotes its cause), and each distinct `next:` once, last.
fn print_error(error: &anyhow::Error) {
    for line in tsmigrate::cli::output::error_lines(error) {
        eprintln!("{line}");
    }
}

/// A mistyped command is never answered with "a similar subcommand exists: 'complete'": that
/// command cannot be undone, and a typo of another (`completions`, `complet`) is no reason to
/// point anyone at it. The rest of clap's message stays.
fn no_irreversible_tip(e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let suggests_complete = match e.get(ContextKind::SuggestedSubcommand) {
        Some(ContextValue::String(s)) => s == "complete",
        Some(ContextValue::Strings(all)) => all.iter().any(|s| s == "complete"),
        _ => false,
    };
    if e.kind() != ErrorKind::InvalidSubcommand || !suggests_complete {
        return e;
    }
    let mut plain = clap::Error::new(ErrorKind::InvalidSubcommand).with_cmd(&<Cli as clap::CommandFactory>::command());
    for (kind, value) in e.context() {
        if kind != ContextKind::SuggestedSubcommand {
            plain.insert(kind, value.clone());
        }
    }
    plain.insert(ContextKind::Suggested, ContextValue::StyledStrs(vec!["`tsmigrate --help` lists the commands".into()]));
    plain
}

/// The subcommand words of a command line clap refused (`dual-write start`), for the envelope.
fn typed_command(args: &[std::ffi::OsString]) -> String {
    let words: Vec<String> = args.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).take_while(|a| !a.starts_with('-')).take(2).collect();
    match words.as_slice() {
        [] => "tsmigrate".into(),
        [group, sub] if ["dual-write", "legacy", "config", "user-sets"].contains(&group.as_str()) => format!("{group} {sub}"),
        [first, ..] => first.clone(),
    }
}

/// clap's message without its "error: " prefix and usage block.
fn usage_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid command line");
    first.trim_start_matches("error: ").to_string()
}

async fn run(cli: Cli, settings: Result<Settings, ConfigError>) -> Result<Reply, Failure> {
    if cli.command.takes_settings_as_loaded() {
        return cli::dispatch_without_settings(cli, settings).await;
    }
    let mut settings = settings.map_err(anyhow::Error::from)?;
    settings.validate().map_err(anyhow::Error::from)?;
    if let Some(format) = cli.global.log_format.map(LogFormat::from) {
        settings.log.format = format;
    }
    cli::dispatch(cli, settings).await
}

fn init_tracing(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info,sqlx=warn",
        _ => "debug,sqlx=info,hyper=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // The target (the module path: tsmigrate::dual_write::relay, tsmigrate::daemon::jobs…) names
    // the component each line comes from.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(true);
    match format {
        // Colour codes are for a terminal; in a file or a log pipeline they are noise.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.with_ansi(false).json().with_current_span(false).init(),
    }
}
