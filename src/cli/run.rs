use crate::config::Settings;
use crate::http;

use super::Outcome;

/// Run the service until SIGTERM or Ctrl-C: the HTTP ingest endpoint
/// (`POST /api/v1/analytics`), `/health` and `/ready`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (overrides http.bind / TSMIGRATE_BIND).
    #[arg(long)]
    pub bind: Option<String>,
}

pub async fn run(args: Args, settings: Settings) -> anyhow::Result<Outcome> {
    let bind = args.bind.unwrap_or_else(|| settings.http.bind.clone());
    let redis = crate::db::redis(&settings).await?;
    let target = crate::db::target_pool(&settings).await.ok();
    let listener = tokio::net::TcpListener::bind(&bind).await.map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    eprintln!("tsmigrate listening on http://{}", listener.local_addr()?);
    let state = http::AppState::new(settings, redis, target);
    http::serve(listener, state, crate::daemon::shutdown_signal()).await?;
    Ok(Outcome::Success)
}
