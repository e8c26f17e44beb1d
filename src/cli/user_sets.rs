use crate::human::plural;
use chrono::Utc;

use crate::context::Context;
use crate::store::user_sets::build::{self, BuildOptions};

use super::{parse_time, Reply};

/// The user sets reads count unique users with (exact, per minute, hour and day).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build the sets of closed buckets now, as the `user_sets` job of `tsmigrate run` does
    /// every 15 seconds (waits for a build in progress to finish first).
    ///
    /// With --from and --to, the sets of that range are rebuilt from raw rows, for example
    /// after rows were changed with SQL outside tsmigrate's write paths.
    Build(BuildArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Rebuild from this time (RFC 3339, a date, or relative like -2d).
    #[arg(long, value_parser = parse_time, requires = "to", allow_hyphen_values = true)]
    pub from: Option<chrono::DateTime<Utc>>,
    /// Rebuild until this time (exclusive; `now` works).
    #[arg(long, value_parser = parse_time, requires = "from", allow_hyphen_values = true)]
    pub to: Option<chrono::DateTime<Utc>>,
}

pub async fn run(command: Command, ctx: &Context) -> anyhow::Result<Reply> {
    let Command::Build(args) = command;
    let marked = match (args.from, args.to) {
        (Some(from), Some(to)) if from < to => build::mark_range(&ctx.target, from, to).await?,
        (Some(_), Some(_)) => anyhow::bail!("--to must be after --from"),
        _ => 0,
    };
    let options = BuildOptions::from_settings(&ctx.settings.target, true);
    // Each batch of buckets commits with the marks it consumed: stopping between (or
    // rolling back the one in hand) leaves the rest marked for the next build.
    let built = tokio::select! {
        built = build::build(&ctx.target, options, Utc::now()) => built?.unwrap_or_default(),
        signal = ctx.interrupt.wait() => return Err(crate::stop::Stopped {
            command: "user-sets build".into(),
            why: crate::stop::Why::Interrupted(signal),
            at: "between batches of buckets (the minutes not built yet stay marked)".into(),
            resume: "tsmigrate user-sets build".into(),
            // The range --from/--to asked for is marked already: a plain build carries on.
            rerun: crate::stop::Rerun::Resumes,
        }
        .into()),
    };
    let report = serde_json::json!({ "marked_minutes": marked, "built": built });
    let text = format!(
        "user sets built: {}, {}, {} ({} marked for rebuild, {} expired rows removed)\n",
        plural(built.minutes, "minute"),
        plural(built.hours, "hour"),
        plural(built.days, "day"),
        plural(marked, "minute"),
        built.expired
    );
    Ok(Reply::done(report, text))
}
