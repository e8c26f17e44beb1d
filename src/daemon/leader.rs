//! Which replica runs the scheduled jobs. Any number of `tsmigrate run` processes may run
//! at once (each serves ingest and reads, and their relays share the consumer group), but
//! the legacy flush, validation and rollups must run in exactly one. That one holds a
//! session advisory lock (the jobs lease) on a connection of its own: the lock dies with
//! the connection, so when the holder dies PostgreSQL releases it and another replica,
//! retrying every [`Lease::retry`], takes it within seconds.
//!
//! A job checks right before it runs that PostgreSQL still counts this replica's lease
//! connection as the holder ([`Lease::confirm`]), so a replica that lost its connection
//! without noticing yet does not run a job the new holder also runs.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgPool};
use tokio::sync::watch;

use crate::config::SecretUrl;

/// The advisory lock's key (`hashtext` of it); distinct from the phase lock's.
pub const JOBS_LOCK_KEY: &str = "tsmigrate.jobs_lease";

/// This replica's name in `tsmigrate.job_runs`: `TSMIGRATE_REPLICA`, else `host:pid`
/// (a pod's hostname is its name).
pub fn replica_name() -> String {
    if let Some(name) = std::env::var("TSMIGRATE_REPLICA").ok().filter(|n| !n.is_empty()) {
        return name;
    }
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

/// The jobs lease as this replica sees it. Cheap to clone.
#[derive(Clone)]
pub struct Lease {
    leader: Arc<AtomicBool>,
    /// The lease connection's backend pid while it holds the lock (0 otherwise).
    backend: Arc<AtomicI32>,
    pub replica: Arc<str>,
    pub retry: Duration,
}

impl Lease {
    pub fn new(retry: Duration) -> Lease {
        Lease { leader: Arc::default(), backend: Arc::default(), replica: replica_name().into(), retry }
    }

    /// A lease that is always held: for a single process told to run the jobs without
    /// competing (tests that drive jobs directly).
    pub fn sole() -> Lease {
        let lease = Lease::new(Duration::from_secs(5));
        lease.leader.store(true, Ordering::SeqCst);
        lease
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Does PostgreSQL still count this replica's lease connection as the lock holder?
    /// A sole lease is always confirmed.
    pub async fn confirm(&self, pool: &PgPool) -> bool {
        if !self.is_leader() {
            return false;
        }
        let backend = self.backend.load(Ordering::SeqCst);
        if backend == 0 {
            return true;
        }
        crate::stop::holds_advisory_lock(pool, JOBS_LOCK_KEY, backend).await.unwrap_or(false)
    }

    /// Records whether this replica holds the lease. `stopping`: it is let go on purpose
    /// (shutdown), which is news for the operator only as information, not as a warning.
    fn set(&self, backend: Option<i32>, stopping: bool) {
        let was = self.leader.swap(backend.is_some(), Ordering::SeqCst);
        self.backend.store(backend.unwrap_or(0), Ordering::SeqCst);
        metrics::gauge!("tsmigrate_leader").set(f64::from(u8::from(backend.is_some())));
        match (was, backend.is_some()) {
            (false, true) => tracing::info!(replica = %self.replica, "this replica holds the jobs lease and runs the scheduled jobs"),
            (true, false) if stopping => {
                tracing::info!(replica = %self.replica, "this replica released the jobs lease on shutdown; another replica may take it over")
            }
            (true, false) => tracing::warn!(replica = %self.replica, "this replica lost the jobs lease; another replica runs the scheduled jobs"),
            _ => {}
        }
    }

    /// Tries to take the lease, keeps it while its connection lives, and tries again every
    /// `retry` after losing it, until `stop` changes. Drops the lease on the way out.
    pub async fn hold(self, url: SecretUrl, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            if let Err(e) = self.hold_once(&url, &mut stop).await {
                tracing::debug!(error = %format!("{e:#}"), "jobs lease connection failed; trying again");
            }
            // Let go because the process stops: released, not lost.
            if *stop.borrow() {
                break;
            }
            self.set(None, false);
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {},
                _ = stop.changed() => {},
            }
        }
        self.set(None, true);
    }

    /// One lease connection: try the lock, then check the connection, every `retry`.
    async fn hold_once(&self, url: &SecretUrl, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        let deadline = self.retry.max(Duration::from_secs(5));
        // A connection of its own (the lock lives and dies with it), with the pools' options
        // and scrubbed errors.
        let mut conn = crate::connect::pg_connection(url, deadline).await?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await?;
        loop {
            let step = async {
                if self.is_leader() {
                    sqlx::query("SELECT 1").execute(&mut conn).await.map(|_| true)
                } else {
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))").bind(JOBS_LOCK_KEY).fetch_one(&mut conn).await
                }
            };
            match tokio::time::timeout(deadline, step).await {
                Ok(Ok(true)) if !self.is_leader() => self.set(Some(backend), false),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => anyhow::bail!("the lease connection did not answer within {deadline:?}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {},
                _ = stop.changed() => {
                    // Closing the connection releases the lock at once for the next holder.
                    let _ = conn.close().await;
                    return Ok(());
                }
            }
        }
    }
}
