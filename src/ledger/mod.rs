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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The control tables `sql/control/` creates that are the migration's records (the
    /// store's data tables there — history, user sets — are the store's).
    fn ledger_tables() -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/control");
        let create = regex::Regex::new(r"CREATE TABLE (?:IF NOT EXISTS )?tsmigrate\.([a-z_]+)").unwrap();
        let mut tables: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flat_map(|f| create.captures_iter(&std::fs::read_to_string(f.unwrap().path()).unwrap()).map(|c| c[1].to_string()).collect::<Vec<_>>())
            .filter(|t| !t.starts_with("history_") && !t.starts_with("user_"))
            .collect();
        tables.sort();
        tables
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_other_module_runs_sql_on_the_control_tables() {
        let tables = ledger_tables();
        assert!(tables.len() >= 10 && tables.iter().any(|t| t == "validation_runs"), "{tables:?}");
        let sql = regex::Regex::new(&format!(r"(?:FROM|INTO|UPDATE|JOIN|regclass\(')\s*tsmigrate\.(?:{})\b", tables.join("|"))).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![];
        rust_files(&root.join("src"), &mut files);
        let mut found = vec![];
        for file in files {
            let path = file.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if path.starts_with("src/ledger/") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            found.extend(
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim_start().starts_with("//") && sql.is_match(l))
                    .map(|(n, l)| format!("{path}:{}: {}", n + 1, l.trim())),
            );
        }
        assert!(found.is_empty(), "SQL on the control tables belongs in src/ledger/:\n{}", found.join("\n"));
    }
}
