use crate::config::{LogFormat, Settings};
use crate::daemon;

use super::Reply;

/// Run the service until SIGTERM or Ctrl-C: the HTTP API (`POST /api/v1/analytics`,
/// the read API, `/health`, `/ready`, `/metrics`), the relay worker that drains the
/// dual-write outbox into the target, and the scheduled jobs (legacy flush until retired,
/// hourly validation, plain-mode rollups/partitions/retention, TimescaleDB job health,
/// legacy key expiry after completion). Starts even while the target is down (ingest needs only Redis); the relay
/// catches up when it returns. On shutdown, requests and the relay batch in flight finish.
/// Run as many replicas as you like: every one serves ingest and reads, their relays share
/// the outbox consumer group, and the scheduled jobs run in the one holding the jobs lease
/// (a PostgreSQL advisory lock; it moves to another replica within `jobs.lease_retry_secs`
/// of the holder dying).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (overrides http.bind / TSMIGRATE_BIND).
    #[arg(long)]
    pub bind: Option<String>,
    /// Do not run the relay worker in this process.
    #[arg(long)]
    pub no_relay: bool,
    /// Never run the scheduled jobs in this process (do not compete for the jobs lease).
    #[arg(long)]
    pub no_jobs: bool,
}

pub async fn run(args: Args, mut settings: Settings) -> anyhow::Result<Reply> {
    if let Some(bind) = args.bind {
        settings.http.bind = bind;
    }
    let listener = tokio::net::TcpListener::bind(&settings.http.bind).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.http.bind))?;
    let address = listener.local_addr()?;
    // The signal handlers are installed when the shutdown future is first polled: poll it
    // once before saying it listens, so a SIGTERM from then on is a clean shutdown rather
    // than the signal's default action (the process killed, exit by signal).
    let mut shutdown = Box::pin(daemon::shutdown_signal());
    let _ = futures::FutureExt::now_or_never(&mut shutdown);
    let listening = format!("tsmigrate listening on http://{address}");
    // Always printed (whatever the log level), in the log's own format.
    match settings.log.format {
        LogFormat::Text => eprintln!("{listening}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({"timestamp": chrono::Utc::now(), "level": "INFO", "fields": {"message": listening}, "target": "tsmigrate::cli::run"})
        ),
    }
    daemon::run(settings, listener, daemon::DaemonOptions { relay: !args.no_relay, jobs: !args.no_jobs }, shutdown).await?;
    Ok(Reply::done(serde_json::json!({"listened_on": address.to_string(), "stopped": "signal"}), String::new()))
}
