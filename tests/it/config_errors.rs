//! Bad configuration and unreachable servers: exit code 2, a message that says what is
//! wrong and what to do, and never a password.

use crate::support::{field, timescaledb_support, TestEnv, TimescaleSupport};

/// The error `prepare --mode timescaledb` must give on a server that cannot load TimescaleDB.
#[track_caller]
fn assert_explains_missing_timescaledb(support: TimescaleSupport, stderr: &str) {
    match support {
        TimescaleSupport::Missing => assert!(stderr.contains("TimescaleDB extension is not available"), "{stderr}"),
        TimescaleSupport::NotPreloaded => assert!(stderr.contains("shared_preload_libraries"), "{stderr}"),
        TimescaleSupport::Usable => unreachable!(),
    }
    assert!(stderr.contains("--mode postgres"), "{stderr}");
}

#[tokio::test]
async fn a_non_postgres_database_url_is_rejected_without_showing_the_password() {
    let env = TestEnv::new().await;
    let out = env.cli_with_env(&["status"], &[("DATABASE_URL", "mysql://app:hunter2secret@db.example/analytics")]);
    out.expect_code(2);
    assert!(out.stderr.contains("DATABASE_URL") && out.stderr.contains("scheme \"mysql\""), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2secret") && !out.stdout.contains("hunter2secret"), "{}", out.stderr);
}

#[tokio::test]
async fn a_closed_postgres_port_says_cannot_connect_without_the_password() {
    let env = TestEnv::new().await;
    let out = env.cli_with_env(&["status"], &[("DATABASE_URL", "postgres://postgres:secretpw@127.0.0.1:1/x")]);
    out.expect_code(2);
    assert!(out.stderr.contains("cannot connect to PostgreSQL"), "{}", out.stderr);
    assert!(out.stderr.contains("127.0.0.1:1"), "{}", out.stderr);
    assert!(!out.stderr.contains("secretpw") && !out.stdout.contains("secretpw"), "{}", out.stderr);
}

#[tokio::test]
async fn a_missing_database_suggests_createdb() {
    let env = TestEnv::new().await;
    let missing = format!("{}_missing", env.db_name);
    let url = env.settings.database.url.with_database(&missing);
    for args in [&["status"][..], &["prepare", "--mode", "postgres"][..]] {
        let out = env.cli_with_env(args, &[("DATABASE_URL", url.expose())]);
        out.expect_code(2);
        assert!(out.stderr.contains(&format!("database \"{missing}\" does not exist")), "{}", out.stderr);
        assert!(out.stderr.contains("createdb"), "{}", out.stderr);
    }
}

#[tokio::test]
async fn an_unreachable_redis_stops_seed_with_a_clear_error() {
    let env = TestEnv::new().await;
    let out = env.cli_with_env(&["seed", "--events", "10"], &[("REDIS_URL", "redis://:redispw@127.0.0.1:1")]);
    out.expect_code(2);
    assert!(out.stderr.contains("cannot connect to Redis"), "{}", out.stderr);
    assert!(out.stderr.contains("REDIS_URL"), "{}", out.stderr);
    assert!(!out.stderr.contains("redispw"), "{}", out.stderr);
}

#[tokio::test]
async fn timescaledb_mode_on_a_plain_prepared_target_is_refused_clearly() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let out = env.cli(&["prepare", "--mode", "timescaledb"]);
    out.expect_code(2);
    match timescaledb_support(&env.pool).await {
        TimescaleSupport::Usable => {
            assert!(out.stderr.contains("prepared in postgres mode") && out.stderr.contains("cannot be switched"), "{}", out.stderr)
        }
        support => assert_explains_missing_timescaledb(support, &out.stderr),
    }
    // Nothing changed.
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "storage_mode"), "postgres");
    assert_eq!(field(&status, "phase"), "prepared");
}

#[tokio::test]
async fn timescaledb_mode_without_the_extension_explains_what_to_do() {
    let env = TestEnv::new().await;
    let support = timescaledb_support(&env.pool).await;
    if support == TimescaleSupport::Usable {
        // The other side of this branch runs on servers without TimescaleDB (and in unit
        // tests of `Capabilities::choose`); here the forced mode must simply work.
        env.cli(&["prepare", "--mode", "timescaledb", "--dry-run"]).expect_success();
        crate::support::notice(
            "config_errors::timescaledb_mode_without_the_extension_explains_what_to_do: TimescaleDB is available, so the missing-extension half did not run",
        );
        return;
    }
    let out = env.cli(&["prepare", "--mode", "timescaledb"]);
    out.expect_code(2);
    assert_explains_missing_timescaledb(support, &out.stderr);
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "phase"), "new");
}

#[tokio::test]
async fn a_config_file_with_an_unknown_key_names_the_key() {
    let env = TestEnv::new().await;
    let path = env.write_file("bad.toml", "[redis]\nevents_kee = \"analytics:events\"\n");
    let out = env.cli(&["--config", path.to_str().unwrap(), "status"]);
    out.expect_code(2);
    assert!(out.stderr.contains("events_kee"), "{}", out.stderr);
    assert!(out.stderr.contains("bad.toml"), "{}", out.stderr);
    // The same file found through TSMIGRATE_CONFIG.
    let out = env.cli_with_env(&["status"], &[("TSMIGRATE_CONFIG", path.to_str().unwrap())]);
    out.expect_code(2);
    assert!(out.stderr.contains("events_kee"), "{}", out.stderr);
}

#[tokio::test]
async fn a_tsmigrate_toml_in_the_working_directory_is_read() {
    let env = TestEnv::new().await;
    // The CLI runs in the env's own directory; a file there is the default config.
    env.write_file("tsmigrate.toml", "[target]\nbucket_timezone = \"Mars/Olympus\"\n");
    let out = env.cli(&["status"]);
    out.expect_code(2);
    assert!(out.stderr.contains("Mars/Olympus") && out.stderr.contains("IANA"), "{}", out.stderr);
    std::fs::remove_file(env.dir().join("tsmigrate.toml")).unwrap();
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "phase"), "new");
}

#[tokio::test]
async fn environment_variables_win_over_the_same_keys_in_the_config_file() {
    let env = TestEnv::new().await;
    // The file names servers and a prefix that do not exist; the environment (set by
    // `cli`) names the real ones. Only the environment's values can make this work.
    let path = env.write_file(
        "elsewhere.toml",
        "[database]\nurl = \"postgres://postgres@127.0.0.1:1/nowhere\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\nkey_prefix = \"not-this-prefix:\"\n",
    );
    let path = path.to_str().unwrap();
    env.cli(&["--config", path, "seed", "--events", "25", "--days", "1", "--users", "5"]).expect_success();
    let status = env.cli(&["--config", path, "status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "redis")["events"], 25, "the seed wrote under the environment's prefix: {status}");
    // Without the variable, the file's value is used (and cannot connect).
    let mut command = env.command(&["--config", path, "status"], &[]);
    command.env_remove("DATABASE_URL");
    let out = command.output().expect("run the tsmigrate binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot connect to PostgreSQL") && stderr.contains("127.0.0.1:1"), "{stderr}");
}

#[tokio::test]
async fn config_wins_over_tsmigrate_config_which_wins_over_the_working_directory_file() {
    let env = TestEnv::new().await;
    let bad = |name: &str| env.write_file(name, &format!("[target]\nbucket_timezone = \"Mars/{name}\"\n")).to_str().unwrap().to_string();
    let (flag, from_env) = (bad("flag.toml"), bad("env.toml"));
    bad("tsmigrate.toml");
    let out = env.cli_with_env(&["--config", &flag, "status"], &[("TSMIGRATE_CONFIG", &from_env)]);
    out.expect_code(2);
    assert!(out.stderr.contains("Mars/flag.toml"), "--config is read first: {}", out.stderr);
    let out = env.cli_with_env(&["status"], &[("TSMIGRATE_CONFIG", &from_env)]);
    out.expect_code(2);
    assert!(out.stderr.contains("Mars/env.toml"), "then $TSMIGRATE_CONFIG: {}", out.stderr);
    let out = env.cli(&["status"]);
    out.expect_code(2);
    assert!(out.stderr.contains("Mars/tsmigrate.toml"), "then ./tsmigrate.toml: {}", out.stderr);
}

#[tokio::test]
async fn blank_reasons_and_zero_page_sizes_are_usage_errors() {
    let env = TestEnv::new().await;
    for args in [&["cutover", "--force", "--reason", ""][..], &["cutover", "--force", "--reason", "   "][..], &["retire-flush", "--force", "--reason", ""][..]]
    {
        let out = env.cli(args);
        out.expect_code(2);
        assert!(out.stderr.contains("reason must not be empty"), "{args:?}: {}", out.stderr);
    }
    for args in [&["backfill", "--page-size", "0"][..], &["backfill", "--max-rate", "0"][..]] {
        let out = env.cli(args);
        out.expect_code(2);
        assert!(out.stderr.contains("must be at least 1"), "{args:?}: {}", out.stderr);
    }
    let out = env.cli(&["backfill", "--from", "-2h"]);
    out.expect_code(2);
    assert!(out.stderr.contains("--to"), "{}", out.stderr);
    // Nothing reached the database: the migration was never touched.
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "phase"), "new");
}
