//! Phase commands after validation: cutover, reverse, retire-flush, optimize, complete,
//! abort, shadow. Each supports --dry-run and --json and prints the next step.

use crate::config::Settings;
use crate::phase::lifecycle::{self, Force};
use crate::phase::{abort, optimize};

use super::{emit, parse_duration, reason, Outcome};

/// Switch reads to the target (validated → reads_switched). Gate: the latest validation
/// is clean and fresher than migration.validation_freshness_hours (24 h).
#[derive(Debug, clap::Args)]
pub struct CutoverArgs {
    #[arg(long)]
    pub dry_run: bool,
    /// Pass the validation gate anyway (needs --reason; audited).
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why the gate is being forced (recorded in the audit log; must not be blank).
    #[arg(long, requires = "force", value_parser = reason)]
    pub reason: Option<String>,
}

/// Send reads back to the legacy path (reads_switched or flush_retired → validated);
/// restores the legacy flush and refills the hours it skipped. Possible until `complete`.
#[derive(Debug, clap::Args)]
pub struct ReverseArgs {
    #[arg(long)]
    pub dry_run: bool,
}

/// Retire the legacy hourly flush (reads_switched → flush_retired): `tsmigrate run` stops
/// flushing and the control key is set for external workers to check. Gate: reads
/// switched for the soak period (migration.soak_hours, 24 h) and a clean validation since.
#[derive(Debug, clap::Args)]
pub struct RetireArgs {
    #[arg(long)]
    pub dry_run: bool,
    /// Soak period to require instead of migration.soak_hours (e.g. 2h, 30m).
    #[arg(long, value_parser = parse_duration)]
    pub soak: Option<chrono::Duration>,
    /// Pass the soak/validation gate anyway (needs --reason; audited).
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why the gate is being forced (recorded in the audit log; must not be blank).
    #[arg(long, requires = "force", value_parser = reason)]
    pub reason: Option<String>,
}

/// Retention (raw 90 d, hourly 1 y, daily 5 y), the asset popularity aggregate, and a
/// columnstore report with the compression ratio. Runs once the flush is retired.
#[derive(Debug, clap::Args)]
pub struct OptimizeArgs {
    #[arg(long)]
    pub dry_run: bool,
    /// Compress every chunk older than target.columnstore_after_days now, instead of waiting for the policy.
    #[arg(long)]
    pub compress_now: bool,
}

/// Finish the migration (flush_retired → completed); the legacy Redis keys get an expiry.
#[derive(Debug, clap::Args)]
pub struct CompleteArgs {
    #[arg(long)]
    pub dry_run: bool,
}

/// Undo `prepare` before reads are switched: drop the target tables, aggregates and
/// control tables (the audit log stays), turn dual-write off. Back to phase new.
#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    #[arg(long)]
    pub dry_run: bool,
    /// Confirm: abort deletes every migrated row.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShadowArgs {
    /// on: serve from the current source and compare each answer with the other source.
    #[arg(value_parser = ["on", "off"])]
    pub state: String,
}

pub async fn cutover(args: CutoverArgs, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let report = lifecycle::cutover(settings, args.dry_run, Force { reason: args.reason.filter(|_| args.force) }).await?;
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}

pub async fn reverse(args: ReverseArgs, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let report = lifecycle::reverse(settings, args.dry_run).await?;
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}

pub async fn retire(args: RetireArgs, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let report = lifecycle::retire_flush(settings, args.dry_run, args.soak, Force { reason: args.reason.filter(|_| args.force) }).await?;
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}

pub async fn optimize(args: OptimizeArgs, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let report = optimize::run(settings, args.dry_run, args.compress_now).await?;
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}

pub async fn complete(args: CompleteArgs, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let report = lifecycle::complete(settings, args.dry_run).await?;
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}

pub async fn abort(args: AbortArgs, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let report = abort::run(settings, args.dry_run, args.yes).await?;
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}

pub async fn shadow(args: ShadowArgs, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let report = lifecycle::set_shadow(settings, args.state == "on").await?;
    emit(json, &report, |r| r.human())?;
    Ok(Outcome::Success)
}
