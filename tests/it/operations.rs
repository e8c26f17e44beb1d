//! Operating it safely on a real system: repairing what a validation found, gates that a
//! check which could not run never opens, tsmigrate's history beside the application's
//! own sqlx history, guards on commands that cannot be undone, one JSON envelope for every
//! command, `history`, and errors that name the setting.

use serde_json::Value;

use crate::scenario::{prepare_and_dual_write, seed, target_counts, Mode};
use crate::support::{field, ChildGuard, TestEnv};
use crate::validate::{inject, migrate, seed_end};

async fn phase(env: &TestEnv) -> String {
    sqlx::query_scalar("SELECT phase FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap()
}

fn steps(envelope: &Value) -> Vec<String> {
    envelope["next_steps"].as_array().unwrap().iter().filter_map(|s| s["command"].as_str().map(str::to_string)).collect()
}

fn counts(report: &Value) -> (u64, u64, u64, u64, u64) {
    let c = field(report, "counts");
    let n = |k: &str| field(c, k).as_u64().unwrap();
    (n("copied"), n("rewritten"), n("deleted"), n("kept_extra"), n("gone_from_redis"))
}

#[tokio::test]
async fn repair_fixes_exactly_what_the_validation_found_then_validation_is_clean() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    let injected = inject(&env.pool).await;
    let rows_before = target_counts(&env).await;

    // Validation names the command that fixes each kind of difference.
    let dirty = env.cli(&["validate", "--json"]).expect_code(1).json();
    let advice = steps(&dirty);
    assert_eq!(advice, ["tsmigrate repair", "tsmigrate repair --delete-extra", "tsmigrate validate"], "{dirty}");
    assert!(dirty["next_steps"][0]["why"].as_str().unwrap().contains("copies the 2 missing events from Redis"), "{dirty}");
    // Status agrees: blocked, and the next step is repair (not cutover).
    let status = env.cli(&["status", "--check", "--json"]).expect_code(3).json();
    assert_eq!(steps(&status)[0], "tsmigrate repair");

    let dry = env.cli(&["repair", "--dry-run", "--json"]).expect_success().details();
    assert_eq!(counts(&dry), (2, 3, 0, 2, 0), "what it would do: {dry}");
    assert_eq!(target_counts(&env).await, rows_before, "a dry run writes nothing");

    let repaired = env.cli(&["repair", "--json"]).expect_success().json();
    let details = field(&repaired, "details");
    assert_eq!(counts(details), (2, 3, 0, 2, 0), "{details}");
    assert_eq!(steps(&repaired)[0], "tsmigrate validate", "then it says to re-validate");
    for id in &injected.missing {
        let back: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_events_ts WHERE event_id = $1::uuid").bind(id).fetch_one(&env.pool).await.unwrap();
        assert_eq!(back, 1, "missing {id} copied back once");
    }
    // Run again for the same validation: already done, nothing twice.
    let again = env.cli(&["repair", "--json"]).expect_success().details();
    assert_eq!(field(&again, "already_done"), true, "{again}");
    assert_eq!(target_counts(&env).await.0, rows_before.0 + 2, "two copied back; the extra two are kept");

    // What is left is the extras: the next validation finds only them; deleting is explicit.
    let left = env.cli(&["validate", "--json"]).expect_code(1).details();
    let events = field(&left, "events");
    assert_eq!((events["missing"]["total"].as_u64(), events["extra"]["total"].as_u64(), events["different"]["total"].as_u64()), (Some(0), Some(2), Some(0)));
    let extra_minutes: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT DISTINCT date_trunc('minute', target_time) FROM tsmigrate.validation_findings WHERE kind = 'extra' AND run_id = (SELECT max(run_id) FROM tsmigrate.validation_findings)",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM tsmigrate.user_set_marks").execute(&env.pool).await.unwrap();
    let deleted = env.cli(&["repair", "--delete-extra", "--json"]).expect_success().details();
    assert_eq!(counts(&deleted), (0, 0, 2, 0, 0), "{deleted}");
    let marked: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT minute FROM tsmigrate.user_set_marks WHERE minute = ANY($1)").bind(&extra_minutes).fetch_all(&env.pool).await.unwrap();
    assert!(!extra_minutes.is_empty());
    assert_eq!(marked.len(), extra_minutes.len(), "the user sets of the deleted rows' minutes are stale until rebuilt");
    let clean = env.cli(&["validate", "--json"]).expect_success().details();
    assert_eq!(field(&clean, "result"), "clean");
    assert_eq!(phase(&env).await, "validated");
    let audited: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM tsmigrate.audit_log WHERE command = 'repair' ORDER BY id").fetch_all(&env.pool).await.unwrap();
    assert_eq!(audited, ["unchanged", "unchanged", "unchanged"], "every repair is in the audit log (the phase stays)");
    let recorded: Value =
        sqlx::query_scalar("SELECT details FROM tsmigrate.audit_log WHERE command = 'repair' ORDER BY id LIMIT 1").fetch_one(&env.pool).await.unwrap();
    assert_eq!(recorded["counts"]["copied"], 2, "{recorded}");
    env.cleanup().await;
}

#[tokio::test]
async fn repair_names_what_redis_no_longer_holds_and_runs_in_later_phases() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    let injected = inject(&env.pool).await;
    env.cli(&["validate"]).expect_code(1);
    // One missing event is trimmed from Redis before the repair.
    let gone = injected.missing.iter().next().unwrap().clone();
    let members: Vec<(String, f64)> =
        redis::cmd("ZRANGE").arg(env.keys().events).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut env.redis().await).await.unwrap();
    let (member, _) = members
        .iter()
        .find(|(m, s)| {
            tsmigrate::event::TargetEvent::from_member(m.as_bytes(), *s, chrono::Utc::now().timestamp_millis()).is_ok_and(|e| e.event_id.to_string() == gone)
        })
        .expect("the missing event is in Redis");
    let _: i64 = redis::cmd("ZREM").arg(env.keys().events).arg(member).query_async(&mut env.redis().await).await.unwrap();
    // Reads switched: repair still runs (every phase before complete).
    sqlx::query("UPDATE tsmigrate.migration_state SET phase = 'reads_switched', read_source = 'target', reads_switched_at = now()")
        .execute(&env.pool)
        .await
        .unwrap();
    let out = env.cli(&["repair", "--json"]);
    let report = out.expect_success().details();
    assert_eq!(counts(&report).0, 1, "the other missing event is copied: {report}");
    assert_eq!(counts(&report).4, 1, "{report}");
    assert_eq!(field(&report, "gone_examples")[0]["event_id"], gone.as_str());
    let text = env.cli(&["repair"]).expect_success().stdout.clone();
    assert!(text.contains("already ran to the end"), "{text}");
    assert_eq!(phase(&env).await, "reads_switched", "repair leaves the phase as it is");
    // A backfill may run again after validation too (a second, idempotent pass).
    let pass = env.cli(&["backfill", "--no-history", "--json"]).expect_success().details();
    assert_eq!(field(&pass, "inserted"), 0, "{pass}");
    // Not before dual-write, not after complete.
    sqlx::query("UPDATE tsmigrate.migration_state SET phase = 'completed'").execute(&env.pool).await.unwrap();
    let refused = env.cli(&["repair"]);
    refused.expect_code(3);
    assert!(refused.stderr.contains("until the migration is complete"), "{}", refused.stderr);
    env.cleanup().await;
}

#[tokio::test]
async fn repair_before_any_validation_is_refused_with_the_next_step() {
    let env = TestEnv::new().await;
    seed(&env, 100, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    let envelope = env.cli(&["repair", "--json"]).expect_code(3).json();
    assert!(envelope["error"]["message"].as_str().unwrap().contains("no validation has run yet"), "{envelope}");
    assert_eq!(steps(&envelope), ["tsmigrate validate --depth events"]);
}

#[tokio::test]
async fn a_killed_repair_resumes_after_its_last_committed_batch() {
    let env = TestEnv::new().await;
    seed(&env, 2600, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    env.cli(&["backfill", "--no-history"]).expect_success();
    sqlx::query("DELETE FROM analytics_events_ts WHERE event_id IN (SELECT event_id FROM analytics_events_ts ORDER BY event_id LIMIT 1500)")
        .execute(&env.pool)
        .await
        .unwrap();
    env.cli(&["validate", "--from", "2000-01-01", "--json"]).expect_code(1);
    // The 1001st finding (the first of the second batch of 1000): another transaction
    // writes its row and holds it, so the repair's second batch waits there.
    let (event_id, time): (uuid::Uuid, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT event_id, redis_time FROM tsmigrate.validation_findings
         ORDER BY kind, event_id, redis_time NULLS FIRST, target_time NULLS FIRST OFFSET 1000 LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO analytics_events_ts (time, event_id, event_name, category) VALUES ($1, $2, 'held', 'held')")
        .bind(time)
        .bind(event_id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut command = env.clean_command(&["repair"], &[]);
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = ChildGuard::spawn(command);
    env.wait_until_tsmigrate_waits_for_a_lock("the repair's second batch").await;
    child.child().kill().unwrap();
    child.child().wait().unwrap();
    holder.rollback().await.unwrap();

    let saved: Value = sqlx::query_scalar("SELECT position FROM tsmigrate.checkpoints WHERE name LIKE 'repair:%'").fetch_one(&env.pool).await.unwrap();
    assert_eq!(saved["done"], 1000, "the first batch committed with its checkpoint: {saved}");
    assert_eq!(target_counts(&env).await.0, 2600 - 1500 + 1000, "the killed batch left nothing");
    let resumed = env.cli(&["repair", "--json"]).expect_success().details();
    assert_eq!(field(&resumed, "resumed_after"), 1000);
    assert_eq!(counts(&resumed).0, 1500, "both runs together copied every missing event once: {resumed}");
    assert_eq!(target_counts(&env).await, (2600, 2600), "no gap, no duplicate");
}

#[tokio::test]
async fn a_validation_whose_legacy_check_cannot_run_is_not_clean_and_opens_no_gate() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    // The legacy database is an empty one: no hourly table, no asset table.
    let empty = format!("{}_legacy", env.db_name);
    env.admin_sql(&format!("CREATE DATABASE {empty}")).await;
    let legacy_url = env.settings.database.url.with_database(&empty);
    let over = [("LEGACY_DATABASE_URL", legacy_url.expose())];
    let out = env.cli_with_env(&["validate", "--json"], &over);
    let envelope = out.expect_code(2).json();
    let message = envelope["error"]["message"].as_str().unwrap();
    assert!(message.contains("legacy hourly: the legacy table analytics_events does not exist"), "{message}");
    assert!(message.contains("asset popularity: the legacy table analytics_asset_popularity does not exist"), "each check names its own table: {message}");
    assert!(message.contains(&empty), "the database is named: {message}");
    let hint = envelope["error"]["hint"].as_str().unwrap();
    assert!(hint.contains("legacy.hourly_table") && hint.contains("legacy.asset_table") && hint.contains("LEGACY_DATABASE_URL"), "{hint}");
    assert_eq!(envelope["details"]["legacy_hourly"]["status"], "could_not_run");
    assert_eq!(phase(&env).await, "backfilled", "not clean: the phase does not move");
    let recorded: String = sqlx::query_scalar("SELECT result FROM tsmigrate.validation_runs ORDER BY id DESC LIMIT 1").fetch_one(&env.pool).await.unwrap();
    assert_eq!(recorded, "error");
    // The JUnit file names the checks that could not run as errors, with the same cases as always.
    let junit = env.dir().join("checks.xml");
    env.cli_with_env(&["validate", "--format", "junit", "--output", junit.to_str().unwrap()], &over).expect_code(2);
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let could_not_run = doc.descendants().filter(|n| n.has_tag_name("error") && n.attribute("type") == Some("could_not_run")).count();
    assert_eq!(could_not_run, 2, "{xml}");
    let suites = doc.root_element();
    assert_eq!((suites.attribute("tests"), suites.attribute("failures"), suites.attribute("errors")), (Some("6"), Some("0"), Some("2")), "{xml}");
    let text = env.cli_with_env(&["validate"], &over);
    text.expect_code(2);
    assert!(text.stdout.contains("COULD NOT RUN: the legacy table analytics_events does not exist"), "{}", text.stdout);
    assert!(text.stderr.contains("validation could not run every check"), "{}", text.stderr);
    sqlx::query("UPDATE tsmigrate.migration_state SET phase = 'validated'").execute(&env.pool).await.unwrap();
    let refused = env.cli(&["cutover"]);
    refused.expect_code(3);
    assert!(refused.stderr.contains("could not run"), "{}", refused.stderr);
    env.admin_sql(&format!("DROP DATABASE {empty} WITH (FORCE)")).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_counts_depth_validation_opens_the_gate_only_where_the_settings_allow_it() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    let out = env.cli(&["validate", "--depth", "counts", "--json"]);
    let envelope = out.expect_success().json();
    assert_eq!(envelope["details"]["result"], "clean");
    assert!(envelope["details"]["run"]["warnings"][0].as_str().unwrap().contains("migration.counts_depth_opens_gates"), "{envelope}");
    assert_eq!(steps(&envelope), ["tsmigrate validate --depth events"]);
    assert_eq!(phase(&env).await, "backfilled");
    let text = env.cli(&["validate", "--depth", "counts"]).expect_success().stdout.clone();
    assert!(text.contains("WARNING: a validation at counts depth does not open the cutover gate"), "{text}");

    let allowed = env.write_file("counts.toml", "[migration]\ncounts_depth_opens_gates = true\n");
    env.cli(&["--config", allowed.to_str().unwrap(), "validate", "--depth", "counts"]).expect_success();
    assert_eq!(phase(&env).await, "validated");
    env.cli(&["cutover"]).expect_code(3);
    env.cli(&["--config", allowed.to_str().unwrap(), "cutover"]).expect_success();
    env.cleanup().await;
}

/// The application's own sqlx history, as sqlx creates it, with two of its migrations.
async fn application_history(env: &TestEnv) {
    sqlx::raw_sql(
        "CREATE TABLE public._sqlx_migrations (
             version BIGINT PRIMARY KEY, description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
             success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL);
         INSERT INTO public._sqlx_migrations VALUES
             (20240101000000, 'create users', now(), true, '\\x01', 1000),
             (20240201000000, 'create orders', now(), true, '\\x02', 1000);
         CREATE TABLE public.users (id bigint PRIMARY KEY, email text);
         CREATE TABLE public.orders (id bigint PRIMARY KEY, user_id bigint REFERENCES public.users);
         INSERT INTO public.users VALUES (1, 'a@example.com');",
    )
    .execute(&env.pool)
    .await
    .unwrap();
}

async fn application_rows(env: &TestEnv) -> (Vec<i64>, i64) {
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM public._sqlx_migrations ORDER BY version").fetch_all(&env.pool).await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM public.users").fetch_one(&env.pool).await.unwrap();
    (versions, users)
}

#[tokio::test]
async fn tsmigrate_keeps_its_history_apart_from_the_applications_and_abort_touches_only_its_own() {
    let env = TestEnv::new().await;
    application_history(&env).await;
    let prepared = env.cli(&["prepare", "--mode", "postgres", "--json"]).expect_success().details();
    assert_eq!(field(&prepared, "history_moved"), &Value::Array(vec![]));
    let ours: Vec<i64> = sqlx::query_scalar("SELECT version FROM tsmigrate.schema_history ORDER BY version").fetch_all(&env.pool).await.unwrap();
    assert!(ours.contains(&1) && ours.contains(&201), "{ours:?}");
    assert_eq!(application_rows(&env).await, (vec![20240101000000, 20240201000000], 1), "the application's history is untouched");
    env.cli(&["prepare"]).expect_success();

    let dry = env.cli(&["abort", "--dry-run", "--json"]).expect_success().details();
    let drops: Vec<&str> = field(&dry, "drops").as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(drops.iter().all(|d| !d.contains("_sqlx_migrations") && !d.contains("users") && !d.contains("orders")), "{drops:?}");
    assert!(drops.iter().any(|d| d.contains("tsmigrate.schema_history")), "{drops:?}");
    env.cli(&["abort", "--yes"]).expect_success();
    assert_eq!(application_rows(&env).await, (vec![20240101000000, 20240201000000], 1), "abort never touches what it did not create");
    let orders: bool = sqlx::query_scalar("SELECT to_regclass('public.orders') IS NOT NULL").fetch_one(&env.pool).await.unwrap();
    assert!(orders);
}

#[tokio::test]
async fn an_installation_with_its_history_in_sqlx_migrations_is_upgraded_in_place() {
    let env = TestEnv::new().await;
    application_history(&env).await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    // What an earlier tsmigrate left: its rows in public._sqlx_migrations, beside the application's.
    sqlx::raw_sql(
        "INSERT INTO public._sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
             SELECT version, description, installed_on, true, checksum, execution_ms * 1000000 FROM tsmigrate.schema_history;
         DROP TABLE tsmigrate.schema_history;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let moved: i64 = sqlx::query_scalar("SELECT count(*) FROM public._sqlx_migrations").fetch_one(&env.pool).await.unwrap();
    assert!(moved > 2);
    let dry = env.cli(&["prepare", "--dry-run"]).expect_success().stdout.clone();
    assert!(dry.contains("would move tsmigrate's history of"), "{dry}");
    assert!(dry.contains("nothing to apply"), "an upgrade is not a second install: {dry}");
    let report = env.cli(&["prepare", "--json"]).expect_success().details();
    assert_eq!(field(&report, "history_moved").as_array().unwrap().len() as i64, moved - 2, "{report}");
    assert_eq!(field(&report, "applied"), &Value::Array(vec![]), "nothing applied again");
    assert_eq!(application_rows(&env).await, (vec![20240101000000, 20240201000000], 1), "only tsmigrate's rows moved");
    let history = env.cli(&["history", "--json"]).expect_success().details();
    let migrations = field(&history, "migrations").as_array().unwrap();
    assert!(migrations.iter().all(|m| m["state"] == "applied"), "{migrations:?}");
}

#[tokio::test]
async fn seed_refuses_live_keys_or_a_started_migration_unless_yes() {
    let env = TestEnv::new().await;
    env.cli(&["seed", "--events", "100", "--days", "1"]).expect_success();
    let count = |env: &TestEnv| {
        let env = env.settings.clone();
        async move {
            let mut redis = tsmigrate::db::redis(&env).await.unwrap();
            redis::cmd("ZCARD").arg(tsmigrate::legacy::LegacyKeys::from_settings(&env).events).query_async::<i64>(&mut redis).await.unwrap()
        }
    };
    let refused = env.cli(&["seed", "--events", "100", "--days", "1"]);
    refused.expect_code(3);
    assert!(refused.stderr.contains("already holds 100 events") && refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(count(&env).await, 100, "nothing written");
    env.cli(&["seed", "--events", "100", "--days", "1", "--seed", "9", "--yes"]).expect_success();
    assert_eq!(count(&env).await, 200);

    let fresh = TestEnv::new().await;
    fresh.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let started = fresh.cli(&["seed", "--events", "10", "--json"]);
    let envelope = started.expect_code(3).json();
    assert!(envelope["error"]["message"].as_str().unwrap().contains("a migration has started on the target (phase prepared)"), "{envelope}");
}

#[tokio::test]
async fn every_command_prints_one_envelope_with_json_success_or_failure() {
    let env = TestEnv::new().await;
    let expect = |args: &[&str], code: i32, command: &str| {
        let out = env.cli(args);
        let envelope = out.expect_code(code).json();
        assert_eq!(envelope["command"], command, "{args:?}: {}", out.stdout);
        assert_eq!(envelope["ok"], code == 0);
        envelope
    };
    // Refused, before anything exists: the phase is read and named.
    let refused = expect(&["cutover", "--json"], 3, "cutover");
    assert_eq!(refused["phase"], "new");
    assert!(refused["error"]["message"].as_str().unwrap().contains("cutover refused"), "{refused}");
    assert_eq!(steps(&refused), ["tsmigrate prepare"]);
    // Usage errors, clap's and ours.
    expect(&["validate", "--json", "--format", "junit"], 2, "validate");
    let usage = expect(&["prepare", "--json", "--mode", "bogus"], 2, "prepare");
    assert_eq!(usage["phase"], Value::Null, "not read");
    expect(&["dual-write", "start", "--json", "--nope"], 2, "dual-write start");
    // The database down.
    let out = env.cli_with_env(&["prepare", "--json"], &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")]);
    let down = out.expect_code(2).json();
    assert!(down["error"]["hint"].as_str().unwrap().contains("nothing accepts connections at 127.0.0.1:1: start PostgreSQL there"), "{down}");
    // Successes.
    expect(&["legacy", "setup", "--json"], 0, "legacy setup");
    expect(&["seed", "--events", "200", "--days", "1", "--json"], 0, "seed");
    expect(&["legacy", "flush", "--json"], 0, "legacy flush");
    let prepared = expect(&["prepare", "--mode", "postgres", "--json"], 0, "prepare");
    assert_eq!(prepared["phase"], "prepared");
    assert_eq!(prepared["details"]["run"]["phase_before"], "new");
    expect(&["status", "--json"], 0, "status");
    expect(&["history", "--json"], 0, "history");
    expect(&["dual-write", "start", "--json"], 0, "dual-write start");
    expect(&["relay", "--once", "--json"], 0, "relay");
    expect(&["backfill", "--json"], 0, "backfill");
    expect(&["import-history", "--json"], 0, "import-history");
    expect(&["shadow", "on", "--json"], 0, "shadow");
    expect(&["complete", "--json"], 3, "complete");
    expect(&["optimize", "--json"], 3, "optimize");
    expect(&["abort", "--json"], 3, "abort");
    expect(&["abort", "--dry-run", "--json"], 0, "abort");
}

#[tokio::test]
async fn history_lists_the_migrations_and_the_audit_log_newest_first() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    env.cli(&["backfill"]).expect_code(3);
    env.cli(&["dual-write", "start"]).expect_success();
    let history = env.cli(&["history", "--json"]).expect_success().details();
    let audit = field(&history, "audit_log").as_array().unwrap();
    let commands: Vec<(&str, &str)> = audit.iter().map(|a| (a["command"].as_str().unwrap(), a["outcome"].as_str().unwrap())).collect();
    assert_eq!(commands, [("dual-write start", "done"), ("backfill", "refused"), ("prepare", "done")]);
    assert!(audit[1]["reason"].as_str().unwrap().contains("needs phase dual_writing"), "{audit:?}");
    let migrations = field(&history, "migrations").as_array().unwrap();
    assert!(migrations.iter().all(|m| m["state"] == "applied" && m["installed_by"].is_string()), "{migrations:?}");
    assert_eq!(migrations[0]["version"], 1);
    let text = env.cli(&["history"]).expect_success().stdout.clone();
    assert!(text.contains("migrations (tsmigrate.schema_history, postgres mode):"), "{text}");
    assert!(text.contains("audit log (newest first, 3 of 3):"), "{text}");
}

#[tokio::test]
async fn backfill_without_the_legacy_tables_says_which_table_where_and_what_to_do() {
    let env = TestEnv::new().await;
    seed(&env, 100, false);
    sqlx::query("DROP TABLE analytics_events").execute(&env.pool).await.unwrap();
    prepare_and_dual_write(&env, Mode::Postgres);
    let out = env.cli(&["backfill"]);
    out.expect_code(2);
    let said = out.stderr.clone();
    assert!(said.contains("the legacy table analytics_events (legacy.hourly_table) does not exist in postgres://"), "{said}");
    assert!(said.contains("tsmigrate legacy setup") && said.contains("--no-history"), "{said}");
    assert_eq!(said.matches("does not exist").count(), 1, "said once: {said}");
    assert_eq!(target_counts(&env).await.0, 0, "checked before copying anything");
    env.cli(&["backfill", "--no-history"]).expect_success();
}

#[tokio::test]
async fn durations_are_written_the_same_in_the_config_file_and_on_the_command_line() {
    let env = TestEnv::new().await;
    let config = env.write_file("tsmigrate.toml", "[migration]\nsoak_hours = \"2d\"\nsettle_secs = \"5m\"\n[redis]\nrelay_block_ms = \"1s\"\n");
    env.cli(&["--config", config.to_str().unwrap(), "status"]).expect_success();
    let half = env.write_file("half.toml", "[migration]\nsoak_hours = \"1h30m\"\n");
    let out = env.cli(&["--config", half.to_str().unwrap(), "status"]);
    out.expect_code(2);
    assert!(out.stderr.contains("not a whole number of hours"), "{}", out.stderr);
}

#[tokio::test]
async fn during_the_soak_status_says_when_it_ends() {
    let env = TestEnv::new().await;
    env.cli(&["legacy", "setup"]).expect_success();
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    // 2 h 30 min into a 24 h soak: 21 h 30 min remain, far from an hour boundary however long the test takes.
    sqlx::query(
        "UPDATE tsmigrate.migration_state SET phase = 'reads_switched', read_source = 'target', reads_switched_at = now() - interval '2 hours 30 minutes'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let envelope = env.cli(&["status", "--check", "--json"]).expect_success().json();
    let status = field(&envelope, "details");
    assert_eq!(field(status, "verdict"), "healthy", "waiting is not blocked: {status}");
    assert!(field(status, "verdict_reason").as_str().unwrap().contains("soaking until"), "{status}");
    assert!(field(status, "soak_ends_at").is_string());
    let first = &envelope["next_steps"][0];
    assert_eq!(first["command"], Value::Null);
    let why = first["why"].as_str().unwrap();
    assert!(why.contains("soak period to end at") && why.contains("(in 21h"), "{first}");
    let ends: chrono::DateTime<chrono::Utc> = field(status, "soak_ends_at").as_str().unwrap().parse().expect("soak_ends_at is a time");
    let switched: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT reads_switched_at FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
    // Within a second: the status prints whole seconds, the database keeps microseconds.
    assert!((ends - (switched + chrono::Duration::hours(24))).num_seconds().abs() <= 1, "the soak ends 24 h after the switch: {ends} vs {switched}");
}

#[tokio::test]
async fn output_into_a_closed_pipe_is_not_a_panic() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    // `tsmigrate history | head -0`: the reader is gone before the command writes.
    let mut command = env.command(&["history"], &[]);
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn a_target_missing_migrations_of_this_version_fails_status_until_prepare() {
    let env = TestEnv::new().await;
    env.cli(&["legacy", "setup"]).expect_success();
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    // As if prepared by a tsmigrate that did not have migration 5 yet.
    sqlx::query("DELETE FROM tsmigrate.schema_history WHERE version = 5").execute(&env.pool).await.unwrap();
    let status = env.cli(&["status", "--check", "--json"]).expect_code(2).details();
    assert_eq!(field(&status, "migrations_pending"), &serde_json::json!([5]));
    assert!(field(&status, "verdict_reason").as_str().unwrap().contains("`tsmigrate prepare`"), "{status}");
    let prepared = env.cli(&["prepare", "--json"]).expect_success().details();
    assert_eq!(field(&prepared, "applied")[0]["version"], 5);
    env.cli(&["status", "--check"]).expect_success();
}
