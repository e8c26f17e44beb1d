//! `tsmigrate assess`: measure the live system and say whether, when and how to migrate.
//! Not a phase command: no phase, no lock, no audit; it reads only.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::assess::{self, Assessment};
use crate::context::Context;
use crate::state::NextStep;

use super::Reply;

/// Measure the live system and say whether, when and how to migrate (read-only).
///
/// Measured, not assumed: events/day and the peak hour, minute and second over the window
/// (the legacy hourly table, the sorted set), the growth trend, how long Redis holds events
/// before the cap trims them, the events that exist only as hourly aggregates, unique users
/// a day, member sizes, Redis memory, persistence and eviction policy, and the legacy read
/// queries' latency (`get_popular_asset_types`, the summary and the comparison, timed on the
/// legacy read path).
///
/// Projected: the target's size over the retention settings (raw rows and indexes,
/// aggregates, user sets) with the compression ratio measured on a sample of the real events
/// (TimescaleDB: a hypertable of the target's shape, compressed; plain PostgreSQL: a
/// partition's size), the chunk interval, the outbox headroom for an `assess.outage_minutes`
/// target outage at the measured peak, and the backfill and relay durations at the rates
/// this machine measured.
///
/// The verdict uses the seed's criteria — over `assess.migrate_above_events_per_day`
/// (500,000), a legacy query p95 over `assess.slow_query_ms` (1 s), Redis holding less than
/// `assess.min_redis_hold_hours` (24) before the cap trims, the events key over
/// `assess.redis_memory_bytes` (1 GiB) — and the growth rule (the legacy design up to
/// `assess.baseline_events_per_day`, 100,000; TimescaleDB from 10×; other engines from 100×),
/// and lists the blockers it sees (no TimescaleDB → plain-PostgreSQL mode, Redis without
/// persistence, an evicting policy, too little memory for the outbox).
///
/// What it reads, bounded: Redis ZCARD, the oldest and newest member, ZCOUNT per minute (the
/// newest 7 days held) and per second of the busiest minute, INFO, CONFIG GET save, MEMORY
/// USAGE, and the newest members of the window up to `assess.max_read_events` (100,000) in
/// pages of 10,000; SELECTs of the legacy hourly table over the window; each legacy read
/// query `assess.query_runs` (5) times; on the target its version and extensions, and
/// `assess.sample_events` (10,000) events copied into a table of the target's shape inside a
/// transaction that is rolled back. It writes nothing to Redis, the legacy tables or
/// `tsmigrate.*` (and, unlike the phase commands, does not record the migration id).
///
/// Exit codes: 0 it ran (whatever the verdict); 2 it could not run (a server unreachable, a
/// table missing, --write-config refused).
///
/// Examples: `tsmigrate assess`; `tsmigrate assess --days 30 --json`;
/// `tsmigrate assess --write-config tsmigrate.toml`.
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
