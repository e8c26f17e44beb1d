use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use tsmigrate::cli::{self, Cli, Outcome};
use tsmigrate::config::{ConfigError, LogFormat, Settings};
use tsmigrate::exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Ok(Outcome::Success) => ExitCode::from(exit::SUCCESS),
        Ok(Outcome::Differences) => ExitCode::from(exit::DIFFERENCES),
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(tsmigrate::exit_code_for(&error))
        }
    }
}

async fn run(cli: Cli, settings: Result<Settings, ConfigError>) -> anyhow::Result<Outcome> {
    let mut settings = settings?;
    settings.validate()?;
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match format {
        // Colour codes are for a terminal; in a file or a log pipeline they are noise.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.with_ansi(false).json().with_current_span(false).init(),
    }
}
