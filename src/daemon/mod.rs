//! `tsmigrate run`: the long-running process — HTTP server, relay worker, scheduled jobs,
//! the metrics read from the servers. Shutdown is a parameter (a future), so tests drive it
//! without signals. Any number of processes may run at once: the jobs run in the one
//! holding the jobs lease ([`leader`]).

pub mod jobs;
pub mod leader;
pub mod observe;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Settings;
use crate::context::Context;
use crate::dual_write::flag;
use crate::dual_write::relay::{self, Relay, RelayOptions};
use crate::http::{self, AppState};
use crate::identity;
use crate::legacy::LegacyKeys;
use crate::store::writer::TargetWriter;

#[derive(Debug, Clone, Copy)]
pub struct DaemonOptions {
    pub relay: bool,
    /// Compete for the jobs lease and run the scheduled jobs (legacy flush, rollups,
    /// partitions, health checks...) while holding it.
    pub jobs: bool,
}

/// Serves until `shutdown` resolves, then lets the HTTP requests and the relay batch in
/// flight finish before returning.
pub async fn run(
    settings: Settings,
    listener: tokio::net::TcpListener,
    options: DaemonOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The one Context of the process, built here: settings, key layout, target and legacy
    // pools, Redis. The HTTP state, the reads and the jobs hold it; the relay takes its
    // settings and key layout from it (its connections are its own, on its own thread).
    //
    // Ingest and the read cache share one multiplexed connection; the relay and the jobs
    // each get their own, because a blocking read or a job's large range read on the shared
    // connection would hold up every request queued behind it.
    crate::telemetry::metrics_handle();
    let mut redis = crate::db::redis(&settings).await?;
    crate::legacy::adopt_untagged_keys(&mut redis, &settings).await;
    let target = crate::db::serving_pool_lazy(&settings, crate::reads::READ_RELATIONS)?;
    // The legacy tables live in the target database unless a legacy URL says otherwise.
    let legacy = match &settings.database.legacy_url {
        Some(_) => crate::db::legacy_pool_lazy(&settings)?,
        None => target.clone(),
    };
    let ctx = Context::with_target(Arc::new(settings), target).serving_reads(crate::reads::READ_RELATIONS).with_legacy(legacy).with_redis(redis.clone());
    // Before serving anything: a target and a Redis of different migrations are not served
    // together. (A target down now is compared by the periodic check once it is back.)
    let identity = Identity::of(&ctx, redis.clone());
    identity.check().await?;
    let identity_every = Duration::from_secs(ctx.settings.migration.dual_write_check_secs);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    let relay_thread = if options.relay { Some(spawn_relay_thread(&ctx, stop_rx.clone())?) } else { None };
    let mut scheduler = None;
    if options.jobs {
        let lease = leader::Lease::new(Duration::from_secs(ctx.settings.jobs.lease_retry_secs));
        workers.push(tokio::spawn(lease.clone().hold(ctx.settings.database.url.clone(), stop_rx.clone())));
        // The jobs read a lot per command (the legacy flush): the Context's bulk connection,
        // a patient one of their own, serves them as their shared one too. Every run (the
        // hourly validation too) uses the process's pools.
        let bulk = ctx.redis_bulk().await?;
        let jobs = jobs::JobContext { ctx: ctx.clone().with_redis(bulk), lease };
        scheduler = Some(jobs::schedule(jobs).await?);
    }
    let sources =
        observe::Sources { target: ctx.target.clone(), redis: redis.clone(), keys: (*ctx.keys).clone(), group: ctx.settings.redis.outbox_group.clone() };
    workers.push(tokio::spawn(observe::run(sources, observe::EVERY, stop_rx.clone())));
    let state = AppState::new(ctx, redis).cold();
    // Not a worker: shutdown does not wait for it (it ends within its deadline anyway).
    tokio::spawn(http::warm::warm_up(state.clone()));
    workers.push(tokio::spawn(keep_dual_write_flag(state.clone(), stop_rx.clone())));
    let (mismatch_tx, mut mismatch_rx) = tokio::sync::mpsc::channel(1);
    workers.push(tokio::spawn(identity.keep(identity_every, mismatch_tx, stop_rx.clone())));
    let stopped_for = Arc::new(std::sync::Mutex::new(None));
    let stopped = stopped_for.clone();
    let http_shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            Some(mismatch) = mismatch_rx.recv() => {
                *stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(mismatch);
            }
        }
        let _ = stop_tx.send(true);
    };
    http::serve(listener, state, http_shutdown).await?;
    if let Some(mut scheduler) = scheduler {
        let _ = scheduler.shutdown().await;
    }
    for worker in workers {
        let _ = worker.await;
    }
    if let Some(relay) = relay_thread {
        // The relay finishes the batch in flight (committed and acknowledged, or left pending).
        let _ = relay.await;
    }
    let mismatch = stopped_for.lock().unwrap_or_else(|e| e.into_inner()).take();
    match mismatch {
        Some(mismatch) => Err(mismatch.into()),
        None => Ok(()),
    }
}

/// The daemon's target and Redis, compared at start and then as often as the dual-write flag
/// is checked: a Redis replaced under a running daemon (another migration's, or one that
/// lost the id) is noticed within that interval.
struct Identity {
    target: sqlx::PgPool,
    redis: crate::connect::RedisConn,
    keys: LegacyKeys,
    target_url: String,
    redis_url: String,
}

impl Identity {
    fn of(ctx: &Context, redis: crate::connect::RedisConn) -> Identity {
        let settings = &ctx.settings;
        Identity {
            target: ctx.target.clone(),
            redis,
            keys: (*ctx.keys).clone(),
            target_url: settings.database.url.redacted(),
            redis_url: settings.redis.url.redacted(),
        }
    }

    async fn check(&self) -> Result<identity::Outcome, identity::Mismatch> {
        let outcome = identity::verify_with(&self.target, &mut self.redis.clone(), &self.keys, &self.target_url, &self.redis_url).await?;
        tracing::debug!(?outcome, "migration identity");
        Ok(outcome)
    }

    /// Stops the daemon (through `mismatch`) when the pair stops being one migration's:
    /// serving on would relay one migration's events into another's target.
    async fn keep(self, every: Duration, mismatch: tokio::sync::mpsc::Sender<identity::Mismatch>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {},
                _ = stop.changed() => return,
            }
            if let Err(found) = self.check().await {
                tracing::error!("{}; stopping", crate::state::split_hint(&found.to_string()).0);
                let _ = mismatch.send(found).await;
                return;
            }
        }
    }
}

/// Runs the relay on a thread of its own, with its own runtime, Redis connection and
/// target connections. Its work comes in bursts of CPU (a few thousand events parsed and
/// encoded per transaction); on the request runtime's worker threads every burst would
/// delay the requests queued on that thread. Its settings and key layout are the process
/// `Context`'s; its pools and Redis connection are not (they belong to its runtime). The
/// returned receiver resolves when it stopped.
fn spawn_relay_thread(ctx: &Context, stop: watch::Receiver<bool>) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (settings, keys) = (ctx.settings.clone(), ctx.keys.clone());
    std::thread::Builder::new().name(RELAY_THREAD.into()).spawn(move || {
        lower_this_threads_priority();
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the relay's runtime; the relay is not running");
                return;
            }
        };
        runtime.block_on(async move {
            let limits = crate::connect::PgLimits { max_connections: RELAY_CONNECTIONS, ..crate::connect::PgLimits::from_settings(&settings.database) };
            match crate::connect::pg_pool_lazy(&settings.database.url, limits) {
                Ok(target) => supervise_relay(settings, keys, target, stop).await,
                Err(e) => tracing::error!(error = %e, "the relay cannot use the target URL; the relay is not running"),
            }
        });
        let _ = done_tx.send(());
    })?;
    Ok(done_rx)
}

/// On a busy machine requests come first: the relay's thread runs at a lower CPU priority
/// (nice +10), so a backlog is worked off with the CPU that requests leave, and the outbox
/// absorbs the difference meanwhile. Best effort: where it cannot be set, nothing changes.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours;
    // on Linux, PRIO_PROCESS with a thread id sets that thread's nice value.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) != 0 {
            tracing::debug!("could not lower the relay thread's priority");
        }
    }
}

/// The name of the relay's thread (`/proc/<pid>/task/*/comm`; benchmarks read its CPU time).
pub const RELAY_THREAD: &str = "tsmigrate-relay";
/// The relay writes one transaction at a time; a second connection serves the gap bookkeeping.
const RELAY_CONNECTIONS: u32 = 2;

/// Every `migration.dual_write_check_secs`: restores the Redis dual-write flag when Redis lost
/// it while PostgreSQL's migration state says dual-write is on, and tells ingest what the
/// state says (so a missing flag does not turn the outbox off meanwhile).
async fn keep_dual_write_flag(state: AppState, mut stop: watch::Receiver<bool>) {
    let (Some(target), mut redis) = (state.target().cloned(), state.redis.clone()) else {
        return;
    };
    let every = Duration::from_secs(state.ctx.settings.migration.dual_write_check_secs);
    loop {
        match tokio::time::timeout(every.max(Duration::from_secs(5)), flag::check(&target, &mut redis, &state.ctx.keys)).await {
            Ok(Ok(check)) => state.dual_write.set_state_view(check.state_says_on()),
            Ok(Err(e)) => tracing::debug!(error = %format!("{e:#}"), "dual-write flag check failed; next try soon"),
            Err(_) => tracing::debug!("dual-write flag check timed out; next try soon"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {},
            _ = stop.changed() => return,
        }
    }
}

/// Starts the relay once the target says what storage mode it is in, retrying while the
/// target or Redis is unreachable or the target is not prepared yet. The relay reads on a
/// Redis connection of its own (see [`crate::db::relay_redis`]).
async fn supervise_relay(settings: Arc<Settings>, keys: Arc<LegacyKeys>, target: sqlx::PgPool, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        match start_relay(&settings, &target, &keys).await {
            Ok(Some(relay)) => match relay::run_until(relay, stop.clone()).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "relay stopped; restarting"),
            },
            Ok(None) => tracing::debug!("target not prepared yet; relay waits"),
            Err(e) => tracing::warn!(error = %e, "relay cannot start yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {},
            _ = stop.changed() => {},
        }
    }
}

/// A relay for the target's storage mode, or `None` while the target is not prepared.
async fn start_relay(settings: &Settings, target: &sqlx::PgPool, keys: &Arc<LegacyKeys>) -> anyhow::Result<Option<Relay>> {
    let state = crate::ledger::migration::load_from_pool(target).await?;
    let Some(mode) = state.storage_mode else {
        return Ok(None);
    };
    let redis = crate::db::relay_redis(settings).await?;
    let writer = Arc::new(TargetWriter::new(target.clone(), mode));
    Ok(Some(Relay::new(redis, writer, keys.clone(), RelayOptions::from_settings(settings))))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}
