//! How long work stops early, and only at a page boundary: when the operator interrupts
//! it (SIGINT, SIGTERM) or when the connection holding the migration lock is lost. Work
//! that commits in pages asks [`Boundary::between_pages`] before each page and
//! [`Boundary::confirm_lock`] inside each page's transaction; a stop is the error
//! [`Stopped`], which says where the work stopped and how to resume, and maps to exit 130
//! (interrupted) or 2 (lock lost).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

use crate::state::PHASE_LOCK_KEY;

/// The process exit code of an interrupted command (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT: u8 = crate::exit::INTERRUPTED;

/// Set once the operator asked the command to stop. Cheap to clone and to ask.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    inner: Arc<InterruptInner>,
}

#[derive(Debug, Default)]
struct InterruptInner {
    /// 0: not asked; otherwise the index + 1 of the signal in [`SIGNALS`].
    signal: AtomicU8,
    notify: Notify,
}

const SIGNALS: [&str; 2] = ["SIGINT", "SIGTERM"];

impl Interrupt {
    /// Asks the work to stop at its next page boundary; `signal` names why (`SIGINT`).
    pub fn request(&self, signal: &'static str) {
        let index = SIGNALS.iter().position(|s| *s == signal).unwrap_or(0) as u8 + 1;
        let _ = self.inner.signal.compare_exchange(0, index, Ordering::SeqCst, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// The signal that asked to stop, if one did.
    pub fn requested(&self) -> Option<&'static str> {
        match self.inner.signal.load(Ordering::SeqCst) {
            0 => None,
            i => Some(SIGNALS[(i as usize - 1).min(SIGNALS.len() - 1)]),
        }
    }

    /// Resolves once a stop is asked (at once if it already was).
    pub async fn wait(&self) -> &'static str {
        loop {
            let notified = self.inner.notify.notified();
            if let Some(signal) = self.requested() {
                return signal;
            }
            notified.await;
        }
    }
}

/// Listens for SIGINT and SIGTERM: the first asks the work to stop at its next page
/// boundary (and says so on stderr), a second one runs `at_once` (which exits: the operator
/// insists). Must be called inside the runtime.
pub fn listen(at_once: impl Fn(&'static str) + Send + 'static) -> std::io::Result<Interrupt> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = Interrupt::default();
    let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    let asked = interrupt.clone();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            if asked.requested().is_some() {
                at_once(name);
                return;
            }
            eprintln!("{name}: stopping at the next page boundary (what is committed stays; the command then says what carries on from there); interrupt again to stop at once");
            asked.request(name);
        }
    });
    Ok(interrupt)
}

/// Why the work stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The operator interrupted it with this signal.
    Interrupted(&'static str),
    /// The connection that held the migration lock is gone (a server restart, a terminated
    /// backend, a cut network): carrying on would be carrying on unlocked.
    LockLost,
}

/// What running the command again does with the work that stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rerun {
    /// It carries on from its checkpoint (paged work: backfill, repair, user-sets build).
    Resumes,
    /// It does the work again from the start (a validation, a history import, a backfill
    /// window): nothing of the stopped run is picked up.
    StartsOver,
}

impl Rerun {
    pub fn as_str(self) -> &'static str {
        match self {
            Rerun::Resumes => "resumes",
            Rerun::StartsOver => "starts_over",
        }
    }

    /// What the command line does, for people: `resumes it`, `starts it over`.
    pub fn does(self) -> &'static str {
        match self {
            Rerun::Resumes => "resumes it",
            Rerun::StartsOver => "starts it over",
        }
    }
}

/// Work that stopped early: what was committed stays; `resume` is the command line that
/// carries on from there, or — when `rerun` says so — does the work again from the start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.text())]
pub struct Stopped {
    pub command: String,
    pub why: Why,
    /// Where it stopped, for people: `after 24 pages (2400 of about 6000 events)`.
    pub at: String,
    /// The command line to run again, with the options the stopped run had.
    pub resume: String,
    pub rerun: Rerun,
}

impl Stopped {
    fn text(&self) -> String {
        let (boundary, after, note) = match self.rerun {
            Rerun::Resumes => (" at a page boundary", "everything before that is committed", "resumes where it stopped"),
            Rerun::StartsOver => ("", "it does not resume: running it again starts over", "starts over"),
        };
        let why = match &self.why {
            Why::Interrupted(signal) => format!("{} was interrupted ({signal}) and stopped{boundary}", self.command),
            Why::LockLost => format!(
                "{} stopped{boundary}: the connection holding the migration lock was lost (the server restarted, or the connection was terminated or cut), and it does not carry on unlocked",
                self.command
            ),
        };
        format!("{why} {}; {after}\n  next: {}   # {note}", self.at, self.resume)
    }

    /// The exit code: 130 interrupted, 2 could not carry on.
    pub fn exit_code(&self) -> u8 {
        match self.why {
            Why::Interrupted(_) => INTERRUPTED_EXIT,
            Why::LockLost => crate::exit::ERROR,
        }
    }

    /// The audit log's outcome.
    pub fn outcome(&self) -> &'static str {
        match self.why {
            Why::Interrupted(_) => "interrupted",
            Why::LockLost => "lock_lost",
        }
    }

    /// What the envelope and the audit entry keep of it.
    pub fn details(&self) -> serde_json::Value {
        let signal = match self.why {
            Why::Interrupted(signal) => Some(signal),
            Why::LockLost => None,
        };
        serde_json::json!({"stopped": self.outcome(), "signal": signal, "stopped_at": self.at, "resume": self.resume, "rerun": self.rerun.as_str()})
    }
}

/// What long work asks at each page boundary: was it interrupted, and (inside the page's
/// transaction) does its lock connection still hold the migration lock.
#[derive(Debug, Clone, Default)]
pub struct Boundary {
    pub interrupt: Interrupt,
    /// The backend pid of the connection holding the migration lock, when the work holds it.
    lock_holder: Option<i32>,
}

impl Boundary {
    pub fn new(interrupt: Interrupt, lock_holder: Option<i32>) -> Boundary {
        Boundary { interrupt, lock_holder }
    }

    /// Before the next page: `Err` when the operator asked to stop.
    pub fn between_pages(&self) -> Result<(), Why> {
        match self.interrupt.requested() {
            Some(signal) => Err(Why::Interrupted(signal)),
            None => Ok(()),
        }
    }

    /// Inside a page's transaction, before it commits: `Err(LockLost)` when PostgreSQL no
    /// longer counts the lock connection as the holder of the migration lock (the page
    /// then rolls back). One indexed look at `pg_locks`; no lock held, nothing to confirm.
    pub async fn confirm_lock(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        let Some(pid) = self.lock_holder else { return Ok(()) };
        if holds_migration_lock(conn, pid).await? {
            Ok(())
        } else {
            Err(LockLost.into())
        }
    }

    /// After a page failed to commit: was it because the lock connection is gone? A
    /// server restart fails the page's own connection before it can confirm the lock, so
    /// the lock is looked at again on a fresh connection; a lock that cannot be confirmed
    /// (the server is still down) is as good as lost.
    pub async fn lost_lock(&self, pool: &PgPool, error: &anyhow::Error) -> bool {
        let Some(pid) = self.lock_holder else { return false };
        if error.is::<LockLost>() {
            return true;
        }
        let confirmed = async { holds_migration_lock(&mut *pool.acquire().await?, pid).await };
        !confirmed.await.unwrap_or(false)
    }

    /// Runs `work` unless the operator asks to stop first (at once if they asked already):
    /// for steps after the last page (a closing refresh), abandoned where they wait.
    pub async fn unless_interrupted<F: std::future::Future>(&self, work: F) -> Result<F::Output, Why> {
        self.between_pages()?;
        tokio::select! {
            done = work => Ok(done),
            signal = self.interrupt.wait() => Err(Why::Interrupted(signal)),
        }
    }

    /// Waits `wait` (a rate limit's pause), cut short by an interrupt.
    pub async fn pause(&self, wait: std::time::Duration) {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = self.interrupt.wait() => {},
        }
    }
}

/// The marker error of a page that found its lock gone (turned into [`Stopped`] by the
/// work, which knows where it stopped).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the connection holding the migration lock was lost")]
pub struct LockLost;

/// Whether backend `pid` holds the migration lock in this database.
pub async fn holds_migration_lock(conn: &mut PgConnection, pid: i32) -> sqlx::Result<bool> {
    holds_advisory_lock(conn, PHASE_LOCK_KEY, pid).await
}

/// Whether backend `pid` holds the session advisory lock `hashtext(key)` in this database:
/// what PostgreSQL says, not what the holder believes (its connection may be gone).
pub async fn holds_advisory_lock<'e>(executor: impl sqlx::PgExecutor<'e>, key: &str, pid: i32) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                        WHERE l.locktype = 'advisory' AND l.objid = hashtext($1)::oid AND l.pid = $2 AND l.granted
                          AND d.datname = current_database())",
    )
    .bind(key)
    .bind(pid)
    .fetch_one(executor)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupt_is_asked_once_and_names_its_signal() {
        let interrupt = Interrupt::default();
        let boundary = Boundary::new(interrupt.clone(), None);
        assert_eq!(boundary.between_pages(), Ok(()));
        interrupt.request("SIGTERM");
        interrupt.request("SIGINT");
        assert_eq!(interrupt.requested(), Some("SIGTERM"), "the first signal is the reason");
        assert_eq!(boundary.between_pages(), Err(Why::Interrupted("SIGTERM")));
    }

    #[test]
    fn a_stop_says_where_and_how_to_resume_and_maps_to_its_exit_code() {
        let stopped = Stopped {
            command: "backfill".into(),
            why: Why::Interrupted("SIGINT"),
            at: "after 3 pages".into(),
            resume: "tsmigrate backfill".into(),
            rerun: Rerun::Resumes,
        };
        let (message, next) = crate::state::split_hint(&stopped.to_string());
        assert!(message.starts_with("backfill was interrupted (SIGINT) and stopped at a page boundary after 3 pages"), "{message}");
        assert_eq!(next.as_deref(), Some("tsmigrate backfill   # resumes where it stopped"));
        assert_eq!(stopped.exit_code(), 130);
        let lost = Stopped { why: Why::LockLost, ..stopped };
        assert_eq!(lost.exit_code(), 2);
        assert!(lost.to_string().contains("does not carry on unlocked"));
        assert_eq!(lost.details()["stopped"], "lock_lost");
        assert_eq!(lost.details()["rerun"], "resumes");
    }

    #[test]
    fn work_that_starts_over_says_so_and_not_that_it_resumes() {
        let stopped = Stopped {
            command: "validate".into(),
            why: Why::Interrupted("SIGINT"),
            at: "before it committed anything".into(),
            resume: "tsmigrate validate --from 2026-12-07T01:00:00Z --depth counts".into(),
            rerun: Rerun::StartsOver,
        };
        let (message, next) = crate::state::split_hint(&stopped.to_string());
        assert!(message.starts_with("validate was interrupted (SIGINT) and stopped before it committed anything; it does not resume"), "{message}");
        assert!(!message.contains("page boundary"), "{message}");
        assert_eq!(next.as_deref(), Some("tsmigrate validate --from 2026-12-07T01:00:00Z --depth counts   # starts over"));
        assert_eq!(stopped.details()["rerun"], "starts_over");
        assert_eq!(stopped.details()["resume"], "tsmigrate validate --from 2026-12-07T01:00:00Z --depth counts");
    }

    #[tokio::test]
    async fn closing_work_runs_unless_an_interrupt_comes_first() {
        let interrupt = Interrupt::default();
        let boundary = Boundary::new(interrupt.clone(), None);
        assert_eq!(boundary.unless_interrupted(async { 7 }).await, Ok(7));
        let (waited, ()) = tokio::join!(boundary.unless_interrupted(std::future::pending::<()>()), async {
            tokio::task::yield_now().await;
            interrupt.request("SIGINT");
        });
        assert_eq!(waited, Err(Why::Interrupted("SIGINT")), "abandoned where it waits");
        let mut ran = false;
        assert_eq!(boundary.unless_interrupted(async { ran = true }).await, Err(Why::Interrupted("SIGINT")));
        assert!(!ran, "asked before: not started");
    }

    #[tokio::test]
    async fn waiting_for_an_interrupt_ends_when_it_is_asked() {
        let interrupt = Interrupt::default();
        let waiter = tokio::spawn({
            let interrupt = interrupt.clone();
            async move { interrupt.wait().await }
        });
        interrupt.request("SIGINT");
        assert_eq!(waiter.await.unwrap(), "SIGINT");
        assert_eq!(interrupt.wait().await, "SIGINT", "asked before: at once");
    }
}
