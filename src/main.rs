use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use tsmigrate::cli::{self, Cli, Outcome};
use tsmigrate::config::Settings;
use tsmigrate::exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
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

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let settings = Settings::load(cli.global.config.as_deref())?;
    settings.validate()?;
    cli::dispatch(cli, settings).await
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,sqlx=warn",
        _ => "debug,sqlx=info,hyper=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
