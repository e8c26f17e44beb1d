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
}

/// `target_down`: why the target could not be connected (status still reports the rest).
pub async fn run(args: Args, ctx: &Context, target_down: Option<String>, verbose: bool) -> anyhow::Result<Reply> {
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
