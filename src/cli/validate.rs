use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::context::Context;
use crate::phase::command::validate::Validate;
use crate::phase::Options;
use crate::validate::run::ValidateOptions;
use crate::validate::{Depth, Verdict};

use super::options::DepthArg;
use super::output::{phase_details, Envelope, ErrorBody};
use super::{parse_duration, parse_time, Reply};

/// Compare Redis and the legacy tables with the target, and say exactly what differs.
///
/// Window: the whole hours (in target.bucket_timezone) that both systems fully cover,
/// ending the settle lag before now; the output says why each edge is where it is.
/// --from/--to are rounded down to the hour and clamped into that window.
///
/// Events: per hour, Redis members against analytics_events_ts by count and an
/// order-independent hash; differing hours are narrowed to minutes, then to the events
/// missing in the target, extra in the target, or different under the same id.
/// Aggregates: the legacy hourly and asset tables against analytics_hourly and
/// analytics_asset_popularity_ts, over the hours the legacy flush has covered (refreshed
/// first, unless --no-refresh).
///
/// Exit codes: 0 clean; 1 differences; 2 could not run; 3 refused (phase new or prepared);
/// 130 interrupted (nothing recorded; run it again).
/// Every run that ends is recorded in tsmigrate.validation_runs; a clean run in phase backfilled
/// moves it to validated. Runs in any phase from dual_writing on.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Start of the window (RFC 3339, a date, or -6h); clamped into what both systems cover.
    #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
    pub from: Option<DateTime<Utc>>,
    /// End of the window (exclusive); clamped to now minus the settle lag.
    #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
    pub to: Option<DateTime<Utc>>,
    /// counts: counts per hour only (cheap); events: counts and hashes, narrowed to the differing events.
    #[arg(long, value_enum, default_value_t = DepthArg::Events)]
    pub depth: DepthArg,
    /// Ignore events younger than this (in flight): 90s, 10m, 1h. Default: migration.settle_secs.
    #[arg(long, value_parser = parse_duration)]
    pub settle: Option<chrono::Duration>,
    /// Report format: text, json (the --json envelope) or junit (JUnit XML for CI; not
    /// with --json, which is JSON on stdout).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report in the chosen format to FILE; the text summary still goes to stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Compare the target aggregates as they are, without refreshing them for the window
    /// first (then rows the scheduler has not rolled up yet show as differences).
    #[arg(long)]
    pub no_refresh: bool,
    /// At most this many items listed per kind of difference (totals are always exact).
    #[arg(long, default_value_t = crate::validate::run::DEFAULT_LIMIT)]
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Junit,
}

pub async fn run(args: Args, ctx: &Context, json: bool) -> anyhow::Result<Reply> {
    if json && args.format == Format::Junit {
        anyhow::bail!(
            "--json and --format junit ask for two formats on stdout\n  next: use --format junit --output FILE together with --json, or drop one of them"
        );
    }
    let format = if json { Format::Json } else { args.format };
    let options = ValidateOptions {
        from: args.from,
        to: args.to,
        depth: Depth::from(args.depth),
        settle: args.settle.unwrap_or_else(|| chrono::Duration::seconds(ctx.settings.migration.settle_secs as i64)),
        refresh: !args.no_refresh,
        limit: args.limit,
        command_line: String::new(),
    };
    let options = ValidateOptions { command_line: command_line(&options, &args, ctx), ..options };
    let report = crate::phase::runner::run(ctx, &Validate { options }, &Options::default()).await?;
    let mut reply = Reply::done(phase_details(&report), report.details.human()).with_phase(report.phase_after).with_next_steps(report.next_steps.clone());
    match report.details.verdict() {
        Verdict::Clean => {}
        Verdict::Differences => {
            let hint = reply.next_steps.first().map(|s| s.to_string());
            reply = reply.failing(crate::exit::DIFFERENCES, ErrorBody::new(report.details.differences_line(), hint));
        }
        Verdict::Incomplete => {
            let missing = report.details.could_not_run();
            let message = missing.iter().map(|(check, reason, _)| format!("{check}: {reason}")).collect::<Vec<_>>().join("; ");
            let hint = missing.iter().map(|(check, _, hint)| format!("{check}: {hint}")).collect::<Vec<_>>().join("; ");
            reply =
                reply.failing(crate::exit::ERROR, ErrorBody::new(format!("validation could not run every check, so it is not clean: {message}"), Some(hint)));
        }
    }
    if let Some(path) = &args.output {
        let rendered = match format {
            Format::Junit => report.details.junit(),
            Format::Json => serde_json::to_string_pretty(&Envelope::of_reply("validate", &reply))? + "\n",
            Format::Text => report.details.human(),
        };
        std::fs::write(path, rendered).with_context(|| format!("cannot write the report to {}", path.display()))?;
        // Said on the terminal too, so a CI log shows where its report went.
        reply.text.push_str(&format!("report written to {}\n", path.display()));
    } else if format == Format::Junit {
        // JUnit on stdout, where the text would have gone.
        reply.text = report.details.junit();
    }
    Ok(reply)
}

/// The command line that runs this validation again as it was given (what a stopped run
/// says to run: it starts over).
fn command_line(options: &ValidateOptions, args: &Args, ctx: &Context) -> String {
    let mut line = options.command_line(chrono::Duration::seconds(ctx.settings.migration.settle_secs as i64));
    match args.format {
        Format::Text => {}
        Format::Json => line.push_str(" --format json"),
        Format::Junit => line.push_str(" --format junit"),
    }
    if let Some(path) = &args.output {
        line.push_str(&format!(" --output {}", crate::phase::runner::shell_quoted(&path.display().to_string())));
    }
    line
}
