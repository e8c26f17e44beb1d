use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::dual_write::relay::{self, Relay, RelayOptions, RelayOutcome};
use crate::dual_write::tail::{Tail, TailOutcome};
use crate::legacy::LegacyKeys;
use crate::store::writer::TargetWriter;

use super::Reply;

/// Run a relay worker on its own: drain the outbox stream into the target (several may
/// run at once; they share the consumer group). `tsmigrate run` hosts one too.
///
/// With --tail, follow the events sorted set by score instead (for applications that
/// write Redis themselves and cannot add the outbox XADD), re-reading
/// migration.tail_lookback_secs for late events.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Follow the sorted set instead of the outbox stream.
    #[arg(long)]
    pub tail: bool,
    /// Process what is there now and exit (for cron-style use and scripts).
    #[arg(long)]
    pub once: bool,
}

// Long: the two relay modes (outbox, --tail) with their own loops and output; each is short.
pub async fn run(args: Args, settings: &Settings) -> anyhow::Result<Reply> {
    let pool = crate::db::target_pool_lazy(settings)?;
    let state = crate::ledger::migration::load_from_pool(&pool).await?;
    let mode = state.storage_mode.ok_or_else(|| crate::phase::Refusal {
        command: "relay".into(),
        reason: "the target is not prepared".into(),
        next: "tsmigrate prepare".into(),
    })?;
    let redis = crate::db::relay_redis(settings).await?;
    let keys = Arc::new(LegacyKeys::from_settings(settings));
    crate::identity::verify_with(&pool, &mut redis.clone(), &keys, &settings.database.url.redacted(), &settings.redis.url.redacted()).await?;
    let writer = Arc::new(TargetWriter::new(pool, mode));
    if args.tail {
        let start = state.completion_point.unwrap_or_else(chrono::Utc::now).timestamp_millis() as f64;
        let mut tail = Tail::new(redis, writer, keys, Duration::from_secs(settings.migration.tail_lookback_secs), start);
        let (mut read, mut inserted) = (0usize, 0u64);
        let mut sweeps = 0u64;
        loop {
            match tail.step(sweeps % 30 == 0).await? {
                TailOutcome::Copied { read: r, inserted: i, .. } => {
                    read += r;
                    inserted += i;
                }
                TailOutcome::TargetUnavailable { error } if args.once => anyhow::bail!("target unavailable: {error}"),
                TailOutcome::TargetUnavailable { error } => tracing::warn!(%error, "target unavailable; retrying"),
            }
            sweeps += 1;
            if args.once {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        return Ok(Reply::done(serde_json::json!({"read": read, "inserted": inserted}), format!("tail: {read} read, {inserted} inserted\n")));
    }
    let mut relay = Relay::new(redis, writer, keys, RelayOptions::from_settings(settings));
    if args.once {
        if let Some(RelayOutcome::GroupRecreated { gap: Some(gap) }) = relay.ensure_group().await? {
            eprintln!("warning: {}; repair: {}", gap.describe(), gap.repair_command());
        }
        let (mut entries, mut events, mut inserted) = (0usize, 0usize, 0u64);
        loop {
            match relay.step().await? {
                RelayOutcome::Relayed { entries: e, events: n, inserted: i, .. } => {
                    entries += e;
                    events += n;
                    inserted += i;
                }
                RelayOutcome::Idle => break,
                RelayOutcome::GroupRecreated { gap: Some(gap) } => eprintln!("warning: {}; repair: {}", gap.describe(), gap.repair_command()),
                RelayOutcome::GroupRecreated { gap: None } => {}
                RelayOutcome::TargetUnavailable { error } => anyhow::bail!("target unavailable, nothing acknowledged: {error}"),
            }
        }
        return Ok(Reply::done(
            serde_json::json!({"entries": entries, "events": events, "inserted": inserted}),
            format!("relay: {entries} outbox entries, {events} events, {inserted} new rows\n"),
        ));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::daemon::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    relay::run_until(relay, stop_rx).await?;
    Ok(Reply::done(serde_json::json!({"stopped": "signal"}), String::new()))
}
