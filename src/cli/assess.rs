//! `tsmigrate assess`: measure the live system and say whether, when and how to migrate.
//! Not a phase command: no phase, no lock, no audit; it reads only.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::assess::{self, Assessment};
use crate::context::Context;
use crate::state::NextStep;

use super::Reply;

/// `tsmigrate assess` (its help is the command's doc comment in `cli::Command`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The window measured: this many days before the last hour the legacy flush wrote.
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub days: u32,
    /// Write a tsmigrate.toml with the measured choices (keys, cap, mode, retention, chunk
    /// interval, batch sizes, the criteria), each commented with why. URLs are not written.
    #[arg(long, value_name = "FILE")]
    pub write_config: Option<PathBuf>,
    /// With --write-config: replace FILE if it exists (refused otherwise).
    #[arg(long, requires = "write_config")]
    pub force: bool,
}

/// What `--json` puts in `details`.
#[derive(Debug, Serialize)]
struct Details<'a> {
    #[serde(flatten)]
    assessment: &'a Assessment,
    /// The settings file written by --write-config; `null` without it.
    config_written: Option<String>,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<Reply> {
    let assessment = assess::assess(ctx, args.days).await?;
    let mut text = assess::report::text(&assessment);
    let mut written = None;
    if let Some(path) = &args.write_config {
        let body = assess::config_file::render(&ctx.settings, &assessment.measured, assessment.projected.as_ref(), &assessment.verdict);
        write_config(path, &body, args.force)?;
        text.push_str(&format!("wrote {} (check it: tsmigrate config check --config {})\n", path.display(), path.display()));
        written = Some(path.display().to_string());
    }
    let mut next = Vec::new();
    if written.is_none() {
        next.push(NextStep::run("tsmigrate assess --write-config tsmigrate.toml", "these choices as a settings file, commented with why"));
    }
    if assessment.verdict.decision != assess::verdict::Decision::NotYet {
        next.push(NextStep::run("tsmigrate prepare --dry-run", "what the target would get (runbooks/01-prepare.md)"));
    }
    let details = Details { assessment: &assessment, config_written: written };
    let reply = Reply::done(&details, text).with_next_steps(next);
    Ok(reply)
}

fn write_config(path: &std::path::Path, body: &str, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{} exists; assess does not overwrite a settings file\n  next: tsmigrate assess --write-config {} --force   # or name another file",
            path.display(),
            path.display()
        ),
        _ => anyhow::anyhow!("cannot write {}: {e}\n  next: name a file in a directory you can write to", path.display()),
    })?;
    file.write_all(body.as_bytes()).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
