//! README promises about `tsmigrate run` and ingest that no other test holds: the hourly
//! validation job records a run, the legacy key expiry job sets the expiry once the
//! migration is complete, the TimescaleDB job-health check reports a failing policy job,
//! the possible-gap and flag-restored counters go up, and `ingest.resend_window_secs = 0`
//! turns the first-seen stamping off.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;
use tsmigrate::context::Context;
use tsmigrate::daemon::jobs::{run_job, JobContext, JobName, JobOutcome};

use crate::daemon_process::{batch, eventually, metric, Service};
use crate::scenario::{prepare_and_dual_write, seed, Mode};
use crate::support::{scan_keys, TestEnv};

/// Seeded, prepared in plain mode, dual-writing and backfilled.
fn backfilled(env: &TestEnv) {
    seed(env, 400, false);
    prepare_and_dual_write(env, Mode::Postgres);
    env.cli(&["backfill"]).expect_success();
}

fn job_context(env: &TestEnv, redis: tsmigrate::connect::RedisConn) -> JobContext {
    JobContext {
        ctx: Context::with_target(Arc::new(env.settings.clone()), env.pool.clone()).with_legacy(env.pool.clone()).with_redis(redis),
        lease: tsmigrate::daemon::leader::Lease::sole(),
    }
}

#[tokio::test]
async fn the_validation_job_of_tsmigrate_run_records_a_run() {
    let env = TestEnv::new().await;
    backfilled(&env);
    // Every few seconds instead of hourly; the job is the same.
    env.write_file("tsmigrate.toml", "[jobs.schedules]\nvalidation = \"*/3 * * * * *\"\n");
    let mut service = Service::start(&env, &["--no-relay"], &[]).await;
    let (s, e) = (&service, &env);
    eventually(s, "recorded a successful validation job run", move || async move {
        let status: Option<String> =
            sqlx::query_scalar("SELECT last_status FROM tsmigrate.job_runs WHERE job = 'validation'").fetch_optional(&e.pool).await.unwrap();
        status.as_deref() == Some("success")
    })
    .await;
    assert_eq!(service.terminate().await, 0);
    let (depth, result): (String, String) =
        sqlx::query_as("SELECT depth, result FROM tsmigrate.validation_runs ORDER BY id LIMIT 1").fetch_one(&env.pool).await.unwrap();
    assert_eq!((depth.as_str(), result.as_str()), ("events", "clean"), "the job's run is recorded like any validation");
    let phase: String = sqlx::query_scalar("SELECT phase FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
    assert_eq!(phase, "validated", "a clean scheduled run moves the phase like the command");
    env.cleanup().await;
}

#[tokio::test]
async fn the_legacy_key_expiry_job_sets_the_expiry_once_the_migration_is_complete() {
    let env = TestEnv::new().await;
    backfilled(&env);
    let mut redis = env.redis().await;
    let ctx = job_context(&env, redis.clone());
    assert!(matches!(run_job(&ctx, JobName::LegacyKeyExpiry).await, JobOutcome::Skipped(_)), "not before complete");
    let events = env.keys().events;
    assert_eq!(redis.ttl::<_, i64>(&events).await.unwrap(), -1, "no expiry before complete");

    sqlx::query("UPDATE tsmigrate.migration_state SET phase = 'completed'").execute(&env.pool).await.unwrap();
    let keys = env.keys();
    let legacy = [&keys.events, &keys.event_counters, &keys.category_counters, &keys.sessions];
    let mut present = 0;
    for key in legacy {
        present += redis.exists::<_, i64>(key).await.unwrap();
    }
    assert_eq!(run_job(&ctx, JobName::LegacyKeyExpiry).await, JobOutcome::Done(json!({"expiries_set": present})));
    let days = i64::from(env.settings.migration.legacy_key_expiry_days);
    for key in legacy {
        if redis.exists::<_, bool>(key).await.unwrap() {
            let ttl: i64 = redis.ttl(key).await.unwrap();
            assert!(ttl > (days - 1) * 86_400 && ttl <= days * 86_400, "{key} expires in {days} days: ttl {ttl}");
        }
    }
    // An expiry already set is kept, not pushed back.
    assert_eq!(run_job(&ctx, JobName::LegacyKeyExpiry).await, JobOutcome::Done(json!({"expiries_set": 0})));
    let runs: (String, i64) =
        sqlx::query_as("SELECT last_status, runs FROM tsmigrate.job_runs WHERE job = 'legacy_key_expiry'").fetch_one(&env.pool).await.unwrap();
    assert_eq!(runs, ("success".to_string(), 3));
    env.cleanup().await;
}

#[tokio::test]
async fn the_job_health_check_reports_a_failing_timescaledb_job() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    env.cli(&["prepare", "--mode", "timescaledb"]).expect_success();
    let ctx = job_context(&env, env.redis().await);
    assert_eq!(run_job(&ctx, JobName::TimescaledbJobHealth).await, JobOutcome::Done(json!({"failing": 0})));
    // A background job of this database that fails when it runs.
    sqlx::raw_sql(
        "CREATE PROCEDURE tsm_always_fails(job_id int, config jsonb) LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'tsm probe failure'; END $$;
         SELECT add_job('tsm_always_fails', '1 hour', initial_start => now());",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    crate::support::eventually("the failing job's run", Duration::from_secs(60), || async {
        let failed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.job_stats s JOIN timescaledb_information.jobs j USING (job_id)
             WHERE j.proc_name = 'tsm_always_fails' AND s.last_run_status = 'Failed')",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        failed.then_some(())
    })
    .await;
    match run_job(&ctx, JobName::TimescaledbJobHealth).await {
        JobOutcome::Failed(why) => assert!(why.contains("tsm_always_fails"), "{why}"),
        other => panic!("a failing policy job is a failed health check: {other:?}"),
    }
    env.cleanup().await;
}

#[tokio::test]
async fn the_flag_restored_and_possible_gap_counters_go_up() {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    env.write_file("tsmigrate.toml", "[migration]\ndual_write_check_secs = 1\n");
    let service = Service::start(&env, &[], &[]).await;
    let (s, e) = (&service, &env);
    let counter = |name: &'static str| async move { metric(&s.metrics().await, name) };
    assert_eq!(counter("tsmigrate_dual_write_flag_restored_total").await, Some(0.0));
    assert_eq!(counter("tsmigrate_outbox_gaps_total").await, Some(0.0));
    let mut redis = env.redis().await;
    let keys = env.keys();
    // The relay has its consumer group before anything is taken away.
    eventually(s, "created the consumer group", move || async move {
        let mut redis = e.redis().await;
        let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO").arg("GROUPS").arg(e.keys().outbox).query_async(&mut redis).await;
        groups.is_ok()
    })
    .await;

    // Redis loses the flag: the service restores it from PostgreSQL's state, and counts it.
    let _: () = redis.del(&keys.dual_write_flag).await.unwrap();
    eventually(s, "restored the dual-write flag", move || async move { counter("tsmigrate_dual_write_flag_restored_total").await == Some(1.0) }).await;
    let flag: Option<String> = redis.get(&keys.dual_write_flag).await.unwrap();
    assert_eq!(flag.as_deref(), Some("1"));

    // Redis loses the outbox and its group while dual-write is on: a possible gap.
    let _: () = redis.del(&keys.outbox).await.unwrap();
    let (body, _) = batch(2);
    assert_eq!(service.ingest(&body, None).await.0, 202);
    eventually(s, "counted the possible gap", move || async move { counter("tsmigrate_outbox_gaps_total").await == Some(1.0) }).await;
    let gaps: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.outbox_gaps").fetch_one(&env.pool).await.unwrap();
    assert_eq!(gaps, 1, "the counted gap is the recorded one");
    env.cleanup().await;
}

#[tokio::test]
async fn a_resend_window_of_zero_turns_first_seen_stamping_off() {
    let env = TestEnv::with_settings(|s| s.ingest.resend_window_secs = 0).await;
    let router = crate::dual_write::router(&env).await;
    let event = r#"{"events":[{"id":"resend-off","event_name":"click","category":"ui"}]}"#;
    assert_eq!(crate::dual_write::post(&router, event, None).await.0.as_u16(), 202);
    // The resend arrives in a later millisecond than the first was stamped with, for certain.
    let answered = chrono::Utc::now().timestamp_millis();
    while chrono::Utc::now().timestamp_millis() <= answered {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(crate::dual_write::post(&router, event, None).await.0.as_u16(), 202);
    let mut redis = env.redis().await;
    let members: u64 = redis.zcard(env.keys().events).await.unwrap();
    assert_eq!(members, 2, "each arrival stamped with its own time: two members");
    let remembered = scan_keys(&mut redis, &format!("{}:", env.keys().first_seen)).await.unwrap();
    assert!(remembered.is_empty(), "no first-seen key is written: {remembered:?}");
}

#[tokio::test]
async fn sigterm_as_soon_as_it_listens_is_a_clean_shutdown() {
    let env = TestEnv::new().await;
    // The moment it says it listens, a SIGTERM is handled: no request is lost to the
    // signal's default action, and the exit is the clean one.
    let daemon = crate::servers::Daemon::start_with(&env, None, &["--no-relay", "--no-jobs"], &[]);
    let logs = daemon.logs();
    assert_eq!(daemon.stop(), 0, "{logs}");
}
