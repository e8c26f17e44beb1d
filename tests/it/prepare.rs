//! `tsmigrate prepare` in plain-PostgreSQL mode (runs on every server), through the CLI.

use serde_json::Value;

use crate::support::{field, TestEnv};

async fn relation_exists(env: &TestEnv, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(name).fetch_one(&env.pool).await.unwrap()
}

#[tokio::test]
async fn prepare_postgres_creates_every_object_and_moves_to_prepared() {
    let env = TestEnv::new().await;
    let out = env.cli(&["prepare", "--mode", "postgres"]);
    out.expect_success();
    assert!(out.stdout.contains("phase: new -> prepared"), "{}", out.stdout);

    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "phase"), "prepared");
    assert_eq!(field(&status, "storage_mode"), "postgres");
    let objects = field(&status, "objects").as_array().expect("objects is an array");
    // 8 control/history tables + 2 user-set tables + the events table + 3 aggregates.
    assert_eq!(objects.len(), 14, "{objects:?}");
    for object in objects {
        assert_eq!(field(object, "present"), &Value::Bool(true), "{object}");
    }
    let names: Vec<&str> = objects.iter().map(|o| field(o, "name").as_str().unwrap()).collect();
    for expected in ["analytics_events_ts", "analytics_hourly", "analytics_daily", "analytics_asset_popularity_ts", "tsmigrate.migration_state"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    // Plain mode: a partitioned table with partitions created around now.
    let kind: String = sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = 'analytics_events_ts'::regclass").fetch_one(&env.pool).await.unwrap();
    assert_eq!(kind, "p", "analytics_events_ts is range-partitioned");
    let partitions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'analytics_events_ts'::regclass").fetch_one(&env.pool).await.unwrap();
    assert!(partitions >= 8, "yesterday through 7 days ahead, got {partitions}");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log").fetch_one(&env.pool).await.unwrap();
    assert!(audited >= 1, "prepare is recorded in the audit log");
}

#[tokio::test]
async fn prepare_again_changes_nothing_and_says_so() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.schema_history").fetch_one(&env.pool).await.unwrap();

    let again = env.cli(&["prepare", "--mode", "postgres"]);
    again.expect_success();
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    assert!(again.stdout.contains("phase: prepared (unchanged)"), "{}", again.stdout);

    // Auto mode on a prepared target keeps the prepared mode.
    let report = env.cli(&["prepare", "--json"]).expect_success().details();
    assert_eq!(field(&report, "changed"), &Value::Bool(false));
    assert_eq!(field(&report, "applied"), &Value::Array(vec![]));
    assert_eq!(field(&report, "mode"), "postgres");
    assert_eq!(field(&report, "run.phase_before"), "prepared");
    assert_eq!(field(&report, "run.phase_after"), "prepared");
    assert_eq!(field(&report, "already_applied").as_array().unwrap().len() as i64, migrations);

    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.schema_history").fetch_one(&env.pool).await.unwrap();
    assert_eq!(after, migrations);
}

#[tokio::test]
async fn prepare_dry_run_prints_the_sql_and_changes_nothing() {
    let env = TestEnv::new().await;
    // Default (auto) mode: TimescaleDB where available, plain PostgreSQL otherwise; both create the table.
    let out = env.cli(&["prepare", "--dry-run"]);
    out.expect_success();
    assert!(out.stdout.contains("CREATE TABLE analytics_events_ts"), "{}", out.stdout);
    assert!(out.stdout.contains("nothing was changed"), "{}", out.stdout);

    let json = env.cli(&["prepare", "--dry-run", "--json"]).expect_success().details();
    assert_eq!(field(&json, "run.dry_run"), &Value::Bool(true));
    assert_eq!(field(&json, "changed"), &Value::Bool(false));
    let planned = field(&json, "sql").as_array().expect("dry run lists the SQL");
    assert!(!planned.is_empty());
    assert_eq!(planned.len(), field(&json, "applied").as_array().unwrap().len());

    assert!(!relation_exists(&env, "analytics_events_ts").await);
    assert!(!relation_exists(&env, "tsmigrate.migration_state").await);
    assert!(!relation_exists(&env, "tsmigrate.schema_history").await);
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "phase"), "new");
    assert_eq!(field(&status, "storage_mode"), &Value::Null);
    assert!(field(&status, "objects").as_array().unwrap().iter().all(|o| o["present"] == Value::Bool(false)));
}

#[tokio::test]
async fn prepare_dry_run_on_a_prepared_target_has_nothing_to_apply() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let out = env.cli(&["prepare", "--dry-run"]);
    out.expect_success();
    assert!(out.stdout.contains("nothing to apply"), "{}", out.stdout);
    assert!(!out.stdout.contains("CREATE TABLE"), "{}", out.stdout);
}

#[tokio::test]
async fn a_migration_changed_after_prepare_is_refused() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    // A setting written into the rollup SQL changes that migration's checksum.
    let berlin = env.write_file("berlin.toml", "[target]\nbucket_timezone = \"Europe/Berlin\"\n");
    let out = env.cli(&["--config", berlin.to_str().unwrap(), "prepare", "--mode", "postgres"]);
    out.expect_code(2);
    assert!(out.stderr.contains("migration 202") && out.stderr.contains("was changed after it was applied"), "{}", out.stderr);
    // A recorded checksum that does not match the SQL is refused the same way.
    sqlx::query("UPDATE tsmigrate.schema_history SET checksum = '\\x00' WHERE version = 1").execute(&env.pool).await.unwrap();
    let out = env.cli(&["prepare", "--mode", "postgres"]);
    out.expect_code(2);
    assert!(out.stderr.contains("migration 1 ") && out.stderr.contains("was changed after it was applied"), "{}", out.stderr);
}

/// The relations and functions in the test database that are not TimescaleDB's own.
async fn created_objects(env: &TestEnv) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT CASE WHEN n.nspname = 'public' THEN c.relname::text ELSE n.nspname || '.' || c.relname END
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname IN ('public', 'tsmigrate') AND NOT c.relispartition
         UNION ALL
         SELECT n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'tsmigrate'
         ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// The one object list (status shows it, abort drops it) names everything the migrations
/// create, in each mode: abort leaves only the audit log behind.
#[tokio::test]
async fn abort_drops_every_object_prepare_created_in_both_modes() {
    let probe = TestEnv::new().await;
    let modes: &[&str] = if crate::support::ts_tier_half(&probe, "the timescaledb mode").await { &["postgres", "timescaledb"] } else { &["postgres"] };
    for mode in modes {
        let env = TestEnv::new().await;
        env.cli(&["prepare", "--mode", mode]).expect_success();
        let created = created_objects(&env).await;
        let listed: Vec<String> =
            env.cli(&["abort", "--dry-run", "--json"]).expect_success().details()["drops"].as_array().unwrap().iter().map(|d| d.to_string()).collect();
        for object in created.iter().filter(|o| *o != "tsmigrate.audit_log") {
            assert!(
                listed.iter().any(|d| d.contains(&format!(" {object} ")) || d.ends_with(&format!(" {object}\""))),
                "{mode}: {object} is not in abort's list: {listed:?}"
            );
        }
        env.cli(&["abort", "--yes"]).expect_success();
        assert_eq!(created_objects(&env).await, vec!["tsmigrate.audit_log".to_string()], "{mode}: abort leaves only the audit log");
        env.cleanup().await;
    }
}
