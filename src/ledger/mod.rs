//! The ledger: the one owner of tsmigrate's control tables (`tsmigrate.*`, created by
//! `sql/control/`), as typed records. Every other module reads and writes them through these
//! calls; none runs SQL on them itself (store migrations aside: `store::schema` keeps its own
//! `tsmigrate.schema_history`, and the data tables the store and the reads fill — history,
//! user sets — are the store's).
//!
//! One file per record family:
//!
//! * [`migration`]   the migration state (`Phase`, `StorageMode`, `ReadSource`, shadow) and
//!   its identity; changed only by `PhaseGuard::commit` (and abort, shadow).
//! * [`audit`]       the audit log: one writer, one reader.
//! * [`validation`]  validation runs and their findings, typed (`Verdict`, `Depth`,
//!   `DifferenceKind`, `FoundKey`); "the latest validation" is [`validation::latest`].
//! * [`checkpoint`]  resumable positions (backfill, repair, tail, relay, Redis evictions), typed.
//! * [`gaps`]        possible gaps in dual-write (`tsmigrate.outbox_gaps`).
//! * [`progress`]    long work's done/total for status.
//! * [`jobs`]        scheduled job runs, their log and claimed ticks.
//! * [`dead_letter`] members and rows that could not become events.
//!
//! The ledger uses only sqlx and the base modules' types: everything above may call it.

pub mod audit;
pub mod checkpoint;
pub mod dead_letter;
pub mod gaps;
pub mod jobs;
pub mod migration;
pub mod progress;
pub mod validation;

/// Does the control table `table` (`tsmigrate.<table>`) exist yet? Before `prepare` none does.
pub(crate) async fn exists<'e, E: sqlx::PgExecutor<'e>>(executor: E, table: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT to_regclass('tsmigrate.' || $1) IS NOT NULL").bind(table).fetch_one(executor).await
}
