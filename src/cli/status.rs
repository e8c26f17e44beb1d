use crate::context::Context;
use crate::status;

use super::output::ErrorBody;
use super::Reply;

/// Where the migration stands, for on-call: a verdict first (healthy, lagging, blocked or
/// failing, with the reason), then the phase, the outbox lag, both systems' counts, the
/// last validation, job failures, the target it looks at (password redacted), long work
/// running (backfill, validation, repair: percent, rate, ETA, from any terminal), and the
/// next step as the gates see it. -v adds objects, policies, storage, dead letters and
/// Redis durability; --json has everything.
///
/// When the target or Redis is unreachable, or they belong to different migrations, status
/// still prints what it could read, then exits 2.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Exit non-zero unless the verdict is healthy, for cron and CI: 1 lagging, 3 blocked,
    /// 2 failing (or a server could not be reached).
    #[arg(long)]
    pub check: bool,
    /// Redraw the view every INTERVAL (default 2s) until Ctrl-C. On a terminal the screen is
    /// cleared between views; in a pipe or a file each view follows the last, without escape
    /// codes. Not with --json or --check (poll `status --json` instead).
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = crate::duration::parse_duration)]
    pub watch: Option<chrono::Duration>,
}

/// `target_down`: why the target could not be connected (status still reports the rest).
pub async fn run(args: Args, ctx: &Context, target_down: Option<String>, verbose: bool, json: bool) -> anyhow::Result<Reply> {
    if let Some(every) = args.watch {
        return watch(ctx, target_down, verbose, every, json || args.check).await;
    }
    let status = status::gather(ctx, target_down).await;
    let reply = Reply::done(&status, status.human(verbose)).with_next_steps(status.next_steps.clone());
    let reply = match status.phase {
        Some(phase) => reply.with_phase(phase),
        None => reply,
    };
    let unhealthy = || ErrorBody::new(format!("{}: {}", status.verdict.as_str(), status.verdict_reason), None);
    if let Some(mismatch) = &status.identity_mismatch {
        let (message, hint) = crate::state::split_hint(&mismatch.to_string());
        return Ok(reply.failing(crate::exit::ERROR, ErrorBody::new(message, hint)));
    }
    Ok(match status.unreachable() {
        Some((down, hint)) => reply.failing(crate::exit::ERROR, ErrorBody::new(format!("status is incomplete: {down}"), hint)),
        None if args.check && status.verdict != status::Verdict::Healthy => reply.failing(status.verdict.exit_code(), unhealthy()),
        None => reply,
    })
}

/// `status --watch`: the text view again and again until Ctrl-C. It prints as it goes (a
/// view nobody sees until the end would be no view), so its reply holds nothing more to print.
async fn watch(ctx: &Context, target_down: Option<String>, verbose: bool, every: chrono::Duration, machine: bool) -> anyhow::Result<Reply> {
    use std::io::IsTerminal;
    if machine {
        anyhow::bail!("status --watch redraws a view for people; it cannot be combined with --json or --check\n  next: run tsmigrate status --json (or --check) from a loop instead");
    }
    let every = every.to_std().unwrap_or_default().max(std::time::Duration::from_millis(100));
    let terminal = std::io::stdout().is_terminal();
    let mut target_down = target_down;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let status = status::gather(ctx, target_down.take()).await;
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
        let header =
            format!("tsmigrate status at {now}, every {} (Ctrl-C to stop)\n", crate::duration::show(chrono::Duration::from_std(every).unwrap_or_default()));
        // Clear and home only on a terminal; a pipe or a file gets plain views one after another.
        let frame = if terminal { format!("\x1b[2J\x1b[H{header}{}", status.human(verbose)) } else { format!("{header}{}\n", status.human(verbose)) };
        super::output::to_stdout(&frame);
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    Ok(Reply::done(serde_json::json!({ "watched": true }), String::new()))
}
