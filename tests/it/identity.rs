//! Each migration's identity, held by the target and by Redis: a `DATABASE_URL` and a
//! `REDIS_URL`/prefix of different migrations are refused by every command that uses both,
//! and a Redis that lost the id gets it back with a warning.

use redis::AsyncCommands;
use uuid::Uuid;

use crate::support::{field, TestEnv};

async fn target_id(env: &TestEnv) -> Option<Uuid> {
    sqlx::query_scalar("SELECT migration_id FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap()
}

async fn redis_id(env: &TestEnv) -> Option<String> {
    env.redis().await.get(&env.keys().migration_id).await.unwrap()
}

/// With a CLI run's own database, `other`'s Redis prefix: the pair of two different migrations.
fn crossed(other: &TestEnv) -> [(&'static str, &str); 1] {
    [("TSMIGRATE_REDIS_PREFIX", other.prefix.as_str())]
}

#[tokio::test]
async fn prepare_gives_the_migration_one_id_in_both_systems_and_abort_removes_it() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let id = target_id(&env).await.expect("prepare made an id");
    assert_eq!(redis_id(&env).await, Some(id.to_string()), "prepare wrote the same id to Redis");
    // Next to the events key, so one hash tag can keep both in one Redis Cluster slot.
    assert_eq!(env.keys().migration_id, format!("{}{{{}}}:migration_id", env.prefix, env.keys().events));

    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "identity.state"), "matched");
    assert_eq!(field(&status, "identity.id"), id.to_string().as_str());
    let verbose = env.cli(&["status", "-v"]);
    verbose.expect_success();
    assert!(verbose.stdout.contains(&format!("migration id: {id} (the target and Redis agree)")), "{}", verbose.stdout);

    env.cli(&["abort", "--yes"]).expect_success();
    assert_eq!(redis_id(&env).await, None, "abort removes the identity with the migration");
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let again = target_id(&env).await.expect("a new prepare makes a new id");
    assert_ne!(again, id);
    assert_eq!(redis_id(&env).await, Some(again.to_string()));
    env.cleanup().await;
}

#[tokio::test]
async fn a_mismatched_pair_is_refused_by_every_command_that_uses_both() {
    let (ours, theirs) = tokio::join!(TestEnv::new(), TestEnv::new());
    ours.cli(&["prepare", "--mode", "postgres"]).expect_success();
    ours.cli(&["dual-write", "start"]).expect_success();
    theirs.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let (our_id, their_id) = (target_id(&ours).await.unwrap(), target_id(&theirs).await.unwrap());
    let env = crossed(&theirs);

    let commands: &[&[&str]] = &[
        &["backfill", "--json"],
        &["backfill", "--from", "-2h", "--to", "-1h", "--json"],
        &["validate", "--json"],
        &["repair", "--json"],
        &["dual-write", "stop", "--json"],
        &["cutover", "--json"],
        &["seed", "--events", "10", "--yes", "--json"],
        &["relay", "--once", "--json"],
        &["prepare", "--json"],
    ];
    for args in commands {
        let out = ours.cli_with_env(args, &env);
        out.expect_code(3);
        let envelope = out.json();
        let message = envelope["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("different migrations"), "{args:?}: {message}");
        assert!(message.contains(&our_id.to_string()) && message.contains(&their_id.to_string()), "{args:?} names both ids: {message}");
        let hint = envelope["error"]["hint"].as_str().unwrap_or_default();
        assert!(hint.contains("DATABASE_URL") && hint.contains("REDIS_URL") && hint.contains("TSMIGRATE_REDIS_PREFIX"), "{args:?}: {hint}");
        // Seed and relay are not phase commands: their envelopes do not read the phase.
        if !["seed", "relay"].contains(&args[0]) {
            assert_eq!(envelope["phase"], "dual_writing", "{args:?}");
        }
        assert!(out.stderr.contains("different migrations"), "{args:?}: {}", out.stderr);
    }
    // Nothing was done: the phase did not move, and neither Redis got an event or an id change.
    let phase: String = sqlx::query_scalar("SELECT phase FROM tsmigrate.migration_state").fetch_one(&ours.pool).await.unwrap();
    assert_eq!(phase, "dual_writing");
    let events: u64 = theirs.redis().await.zcard(&theirs.keys().events).await.unwrap();
    assert_eq!(events, 0, "seed wrote nothing into the other migration's Redis");
    assert_eq!(redis_id(&theirs).await, Some(their_id.to_string()));
    assert_eq!(redis_id(&ours).await, Some(our_id.to_string()));
    // Audited like any refusal, in the target's log (seed works without the target's state).
    let audited: Vec<String> = sqlx::query_scalar("SELECT command FROM tsmigrate.audit_log WHERE outcome = 'refused' AND reason LIKE '%different migrations%'")
        .fetch_all(&ours.pool)
        .await
        .unwrap();
    for command in ["backfill", "validate", "repair", "dual-write stop", "cutover", "prepare"] {
        assert!(audited.iter().any(|c| c == command), "{command} not in {audited:?}");
    }

    // Status reports the pair as failing rather than refusing to look.
    let out = ours.cli_with_env(&["status", "--json"], &env);
    out.expect_code(2);
    let envelope = out.json();
    assert_eq!(field(&envelope, "details.verdict"), "failing");
    let reason = field(&envelope, "details.verdict_reason").as_str().unwrap();
    assert!(reason.contains(&our_id.to_string()) && reason.contains(&their_id.to_string()), "{reason}");
    assert_eq!(field(&envelope, "details.identity_mismatch.target"), our_id.to_string().as_str());
    assert!(envelope["error"]["hint"].as_str().unwrap_or_default().contains("REDIS_URL"), "{envelope}");
    let text = ours.cli_with_env(&["status"], &env);
    text.expect_code(2);
    assert!(text.stdout.contains("FAILING") && text.stdout.contains("different migrations"), "{}", text.stdout);

    // The daemon does not serve the pair.
    let out = ours.cli_with_env(&["run", "--bind", "127.0.0.1:0", "--no-jobs", "--no-relay"], &env);
    out.expect_code(3);
    assert!(out.stderr.contains("different migrations"), "{}", out.stderr);
    tokio::join!(ours.cleanup(), theirs.cleanup());
}

#[tokio::test]
async fn an_unprepared_target_is_not_prepared_against_another_migrations_redis() {
    let (fresh, theirs) = tokio::join!(TestEnv::new(), TestEnv::new());
    theirs.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let their_id = target_id(&theirs).await.unwrap();
    let out = fresh.cli_with_env(&["prepare", "--mode", "postgres", "--json"], &crossed(&theirs));
    out.expect_code(3);
    let envelope = out.json();
    let message = envelope["error"]["message"].as_str().unwrap();
    assert!(message.contains(&their_id.to_string()) && message.contains("has no migration"), "{message}");
    let hint = envelope["error"]["hint"].as_str().unwrap();
    assert!(hint.contains(&format!("DEL {}", theirs.keys().migration_id)), "{hint}");
    let prepared: bool = sqlx::query_scalar("SELECT to_regclass('tsmigrate.migration_state') IS NOT NULL").fetch_one(&fresh.pool).await.unwrap();
    assert!(!prepared, "nothing was created on the target");
    tokio::join!(fresh.cleanup(), theirs.cleanup());
}

#[tokio::test]
async fn a_redis_that_lost_the_id_gets_it_back_with_a_warning() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let id = target_id(&env).await.unwrap();
    let mut redis = env.redis().await;
    let _: () = redis.del(&env.keys().migration_id).await.unwrap();

    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "identity.state"), "restored");
    let warnings = field(&status, "warnings").as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("lost this migration's identity")), "{warnings:?}");
    assert_eq!(redis_id(&env).await, Some(id.to_string()));

    let _: () = redis.del(&env.keys().migration_id).await.unwrap();
    let out = env.cli(&["dual-write", "start"]);
    out.expect_success();
    assert!(out.stderr.contains("lost this migration's identity") && out.stderr.contains(&id.to_string()), "{}", out.stderr);
    assert_eq!(redis_id(&env).await, Some(id.to_string()));
    let _: () = redis.del(&env.keys().migration_id).await.unwrap();
    let report = env.cli(&["dual-write", "start", "--json"]).expect_success().details();
    let warnings = field(&report, "run.warnings").as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("lost this migration's identity")), "{report}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_migration_prepared_before_identities_gets_one_on_first_contact() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    // As an earlier tsmigrate left it: no id on either side.
    sqlx::query("UPDATE tsmigrate.migration_state SET migration_id = NULL, migration_id_in_redis_since = NULL").execute(&env.pool).await.unwrap();
    let _: () = env.redis().await.del(&env.keys().migration_id).await.unwrap();

    let out = env.cli(&["dual-write", "start"]);
    out.expect_success();
    assert!(!out.stderr.contains("lost"), "an id written for the first time is no loss: {}", out.stderr);
    let id = target_id(&env).await.expect("first contact made an id");
    assert_eq!(redis_id(&env).await, Some(id.to_string()));
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "identity.state"), "matched");
    env.cleanup().await;
}

#[tokio::test]
async fn a_running_service_stops_when_its_redis_turns_out_to_be_another_migrations() {
    use std::time::Duration;
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let id = target_id(&env).await.unwrap();
    let config = env.write_file("often.toml", "[migration]\ndual_write_check_secs = 1\n");
    let daemon = crate::servers::Daemon::start_with(&env, Some(&config), &["--no-jobs", "--no-relay"], &[]);
    let client = reqwest::Client::new();
    // It serves: the comparison at start found one migration.
    crate::support::eventually("the service answers", Duration::from_secs(30), || async {
        client.get(daemon.url("/health")).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())
    })
    .await;
    let other = Uuid::new_v4();
    let _: () = env.redis().await.set(&env.keys().migration_id, other.to_string()).await.unwrap();
    crate::support::eventually("the service stops", Duration::from_secs(30), || async { client.get(daemon.url("/health")).send().await.err().map(|_| ()) })
        .await;
    crate::support::eventually("the reason in its log", Duration::from_secs(10), || async {
        let logs = daemon.logs();
        (logs.contains("different migrations") && logs.contains(&id.to_string()) && logs.contains(&other.to_string())).then_some(())
    })
    .await;
    assert_eq!(daemon.stop(), 3, "a mismatch found while running ends the service as a refusal");
    env.cleanup().await;
}
