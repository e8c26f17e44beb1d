//! Option groups shared by the phase commands, flattened into each command's arguments
//! (like sqlx-cli's `opt.rs`), so `--dry-run`, `--force --reason` and `--yes` mean the
//! same everywhere.

use crate::config::{LogFormat, ModeChoice};
use crate::phase::{Force, Options};
use crate::validate::Depth;

use super::reason;

#[derive(Debug, Clone, clap::Args)]
pub struct DryRun {
    /// Check the phase and the gate and show what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ForceArgs {
    /// Pass the gate anyway (needs --reason; audited). Never passes the phase order.
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why the gate is being forced (recorded in the audit log; must not be blank).
    #[arg(long, requires = "force", value_parser = reason)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Confirm {
    /// Confirm a command that deletes data or cannot be undone.
    #[arg(long)]
    pub yes: bool,
}

impl DryRun {
    pub fn options(&self) -> Options {
        Options::dry_run(self.dry_run)
    }

    pub fn forced(&self, force: &ForceArgs) -> Options {
        Options { dry_run: self.dry_run, force: Force { reason: force.reason.clone().filter(|_| force.force) } }
    }
}

/// `--mode` (clap stays in `cli`: the library's `ModeChoice` knows nothing of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// TimescaleDB when the server can load it, plain PostgreSQL otherwise.
    Auto,
    /// Require the TimescaleDB extension.
    Timescaledb,
    /// Plain PostgreSQL: native partitions and tool-maintained rollups.
    Postgres,
}

impl From<ModeArg> for ModeChoice {
    fn from(arg: ModeArg) -> ModeChoice {
        match arg {
            ModeArg::Auto => ModeChoice::Auto,
            ModeArg::Timescaledb => ModeChoice::Timescaledb,
            ModeArg::Postgres => ModeChoice::Postgres,
        }
    }
}

/// `--depth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DepthArg {
    /// Counts per hour only (`ZCOUNT` against `count(*)`): cheap, finds no altered event.
    Counts,
    /// Counts and hashes per hour, narrowed to the differing events.
    Events,
}

impl From<DepthArg> for Depth {
    fn from(arg: DepthArg) -> Depth {
        match arg {
            DepthArg::Counts => Depth::Counts,
            DepthArg::Events => Depth::Events,
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// One line per event for people (coloured only when stderr is a terminal).
    Text,
    /// One JSON object per line, for a log pipeline.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> LogFormat {
        match arg {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}
