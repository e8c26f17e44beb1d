//! The one list of what `prepare` creates: `status` reports it, `abort` drops it, and a
//! test checks that it names every relation the migrations create in each mode.

use serde::Serialize;
use sqlx::PgPool;

use super::schema::HISTORY_TABLE;

/// What an object is for, which decides who shows it and whether `abort` drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Shown by `status` and `prepare`, dropped by `abort`.
    Reported,
    /// Bookkeeping nobody needs to see (job runs, functions, the migrator's table); dropped by `abort`.
    Internal,
    /// Shown, and kept by `abort`: the audit log outlives the migration it records.
    Kept,
}

/// How an object is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Table,
    MaterializedView,
    Function,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    pub name: &'static str,
    /// What `status` calls it.
    pub kind: &'static str,
    pub form: Form,
    pub role: Role,
}

const fn object(name: &'static str, kind: &'static str, form: Form, role: Role) -> Object {
    Object { name, kind, form, role }
}

/// Created in both modes by `sql/control`.
pub const CONTROL: [Object; 18] = [
    object("tsmigrate.migration_state", "control table", Form::Table, Role::Reported),
    object("tsmigrate.audit_log", "control table", Form::Table, Role::Kept),
    object("tsmigrate.checkpoints", "control table", Form::Table, Role::Reported),
    object("tsmigrate.validation_runs", "control table", Form::Table, Role::Reported),
    object("tsmigrate.validation_findings", "control table", Form::Table, Role::Internal),
    object("tsmigrate.dead_letter", "control table", Form::Table, Role::Reported),
    object("tsmigrate.outbox_gaps", "control table", Form::Table, Role::Reported),
    object("tsmigrate.history_hourly", "history table", Form::Table, Role::Reported),
    object("tsmigrate.history_asset_popularity", "history table", Form::Table, Role::Reported),
    object("tsmigrate.user_sets", "user sets", Form::Table, Role::Reported),
    object("tsmigrate.user_ordinals", "user dictionary", Form::Table, Role::Reported),
    object("tsmigrate.user_set_marks", "control table", Form::Table, Role::Internal),
    object("tsmigrate.job_runs", "control table", Form::Table, Role::Internal),
    object("tsmigrate.job_run_log", "control table", Form::Table, Role::Internal),
    object("tsmigrate.job_slots", "control table", Form::Table, Role::Internal),
    object("tsmigrate.progress", "control table", Form::Table, Role::Internal),
    object(HISTORY_TABLE, "migrations", Form::Table, Role::Internal),
    object("tsmigrate.forget_stored_fingerprint", "function", Form::Function, Role::Internal),
];

#[derive(Debug, Clone, Serialize)]
pub struct ObjectStatus {
    pub name: String,
    pub kind: String,
    pub present: bool,
}

/// The reported objects of `objects` and whether each exists now (by name).
pub async fn present(pool: &PgPool, objects: &[Object]) -> sqlx::Result<Vec<ObjectStatus>> {
    let shown: Vec<&Object> = objects.iter().filter(|o| o.role != Role::Internal).collect();
    let names: Vec<&str> = shown.iter().map(|o| o.name).collect();
    let present: Vec<bool> = sqlx::query_scalar("SELECT to_regclass(n) IS NOT NULL FROM UNNEST($1::text[]) WITH ORDINALITY AS t(n, i) ORDER BY i")
        .bind(&names)
        .fetch_all(pool)
        .await?;
    Ok(shown.iter().zip(present).map(|(o, present)| ObjectStatus { name: o.name.to_string(), kind: o.kind.to_string(), present }).collect())
}

/// What abort drops, one statement per object, in order: views before the tables they
/// read, functions last.
pub fn drop_statements(objects: &[Object]) -> Vec<String> {
    let order = [(Form::MaterializedView, "MATERIALIZED VIEW", " CASCADE"), (Form::Table, "TABLE", " CASCADE"), (Form::Function, "FUNCTION", "")];
    order
        .iter()
        .flat_map(|(form, what, cascade)| {
            objects.iter().filter(move |o| o.form == *form && o.role != Role::Kept).map(move |o| format!("DROP {what} IF EXISTS {}{cascade}", o.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_drops_views_first_and_keeps_the_audit_log() {
        let objects = [CONTROL.as_slice(), &[object("v", "continuous aggregate", Form::MaterializedView, Role::Reported)]].concat();
        let statements = drop_statements(&objects);
        assert!(statements[0].starts_with("DROP MATERIALIZED VIEW IF EXISTS v"), "{statements:?}");
        assert!(statements.iter().any(|s| s.contains("tsmigrate.job_runs")) && statements.iter().any(|s| s.contains(HISTORY_TABLE)), "{statements:?}");
        assert!(!statements.iter().any(|s| s.contains("audit_log")), "{statements:?}");
    }
}
