//! Phase commands after validation: cutover, reverse, retire-flush, optimize, complete,
//! abort, shadow. Each supports --dry-run and --json and prints the next step.

use crate::context::Context;
use crate::phase::command::{
    abort::Abort, complete::Complete, cutover::Cutover, optimize::Optimize, retire_flush::RetireFlush, reverse::Reverse, shadow::Shadow,
};
use crate::phase::Options;

use super::options::{Confirm, DryRun, ForceArgs};
use super::{parse_duration, run_phase, Reply};

/// Switch reads to the target (validated → reads_switched). Gate: the latest validation
/// is clean and fresher than migration.validation_freshness_hours (24 h).
#[derive(Debug, clap::Args)]
pub struct CutoverArgs {
    #[command(flatten)]
    pub dry_run: DryRun,
    #[command(flatten)]
    pub force: ForceArgs,
}

/// Send reads back to the legacy path (reads_switched or flush_retired → validated);
/// restores the legacy flush and refills the hours it skipped. Possible until `complete`.
#[derive(Debug, clap::Args)]
pub struct ReverseArgs {
    #[command(flatten)]
    pub dry_run: DryRun,
}

/// Retire the legacy hourly flush (reads_switched → flush_retired): `tsmigrate run` stops
/// flushing and the control key is set for external workers to check. Gate: reads
/// switched for the soak period (migration.soak_hours, 24 h) and a clean validation since.
#[derive(Debug, clap::Args)]
pub struct RetireArgs {
    #[command(flatten)]
    pub dry_run: DryRun,
    /// Soak period to require instead of migration.soak_hours (e.g. 2h, 30m, 1h30m).
    #[arg(long, value_parser = parse_duration)]
    pub soak: Option<chrono::Duration>,
    #[command(flatten)]
    pub force: ForceArgs,
}

/// Retention (raw 90 d, hourly 1 y, daily 5 y), the asset popularity aggregate, and a
/// columnstore report with the compression ratio. Runs once the flush is retired.
#[derive(Debug, clap::Args)]
pub struct OptimizeArgs {
    #[command(flatten)]
    pub dry_run: DryRun,
    /// Compress every chunk older than target.columnstore_after_days now, instead of waiting for the policy.
    #[arg(long)]
    pub compress_now: bool,
}

/// Finish the migration (flush_retired → completed): the legacy Redis keys get an expiry
/// (migration.legacy_key_expiry_days) and reads can no longer be reversed. Needs --yes.
#[derive(Debug, clap::Args)]
pub struct CompleteArgs {
    #[command(flatten)]
    pub dry_run: DryRun,
    #[command(flatten)]
    pub confirm: Confirm,
}

/// Undo `prepare` before reads are switched: drop the target tables, aggregates and
/// control tables (the audit log stays), turn dual-write off. Back to phase new.
#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    #[command(flatten)]
    pub dry_run: DryRun,
    #[command(flatten)]
    pub confirm: Confirm,
}

#[derive(Debug, clap::Args)]
pub struct ShadowArgs {
    /// on: serve from the current source and compare each answer with the other source.
    pub state: ShadowArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShadowArg {
    On,
    Off,
}

impl From<ShadowArg> for crate::state::Shadow {
    fn from(arg: ShadowArg) -> Self {
        match arg {
            ShadowArg::On => crate::state::Shadow::On,
            ShadowArg::Off => crate::state::Shadow::Off,
        }
    }
}

pub async fn cutover(args: CutoverArgs, ctx: &Context) -> anyhow::Result<Reply> {
    run_phase(ctx, &Cutover, &args.dry_run.forced(&args.force)).await
}

pub async fn reverse(args: ReverseArgs, ctx: &Context) -> anyhow::Result<Reply> {
    run_phase(ctx, &Reverse, &args.dry_run.options()).await
}

pub async fn retire(args: RetireArgs, ctx: &Context) -> anyhow::Result<Reply> {
    run_phase(ctx, &RetireFlush { soak: args.soak }, &args.dry_run.forced(&args.force)).await
}

pub async fn optimize(args: OptimizeArgs, ctx: &Context) -> anyhow::Result<Reply> {
    run_phase(ctx, &Optimize { compress_now: args.compress_now }, &args.dry_run.options()).await
}

pub async fn complete(args: CompleteArgs, ctx: &Context) -> anyhow::Result<Reply> {
    run_phase(ctx, &Complete { confirmed: args.confirm.yes }, &args.dry_run.options()).await
}

pub async fn abort(args: AbortArgs, ctx: &Context) -> anyhow::Result<Reply> {
    run_phase(ctx, &Abort { confirmed: args.confirm.yes }, &args.dry_run.options()).await
}

pub async fn shadow(args: ShadowArgs, ctx: &Context) -> anyhow::Result<Reply> {
    run_phase(ctx, &Shadow { state: args.state.into() }, &Options::default()).await
}
