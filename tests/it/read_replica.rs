//! Reads on a hot standby (`database.read_url`): a private primary and a standby streaming
//! from it (`pg_basebackup -R`, see `servers::PgServer::standby`), the migration run on the
//! primary. A caught-up replica answers exactly what the primary answers; with replay paused
//! and new rows on the primary its answers stay honest (without the new rows, `as_of` before
//! they committed) until its lag passes `database.read_max_lag_secs`, and then the primary
//! answers; a replica that is down sends reads to the primary. `status` and the metrics say
//! where reads go.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tsmigrate::config::SecretUrl;
use tsmigrate::http::{app, AppState};
use tsmigrate::reads::minute_floor;
use tsmigrate::reads::replica::{ReplicaView, Why};

use crate::daemon_process::metric;
use crate::servers::{PgOptions, PgServer};
use crate::support::{eventually, field, TestEnv};

/// Questions over the recent past (raw rows, the aggregates' settled hours, every endpoint).
const QUESTIONS: [&str; 5] = [
    "/api/v1/analytics/summary?from=-1d&to=now",
    "/api/v1/analytics/hourly?from=-1d&to=now",
    "/api/v1/analytics/intervals?bucket=10m&since=6h",
    "/api/v1/analytics/comparison?period=12h",
    "/api/v1/analytics/popular-asset-types?days=2",
];
const INTERVALS: &str = "/api/v1/analytics/intervals?bucket=10m&since=6h";

/// A primary, its standby, and a test database on the primary (replicated to the standby)
/// with a day of events backfilled and reads switched to the target.
async fn migrated_with_standby() -> (PgServer, PgServer, TestEnv) {
    let primary = tokio::task::block_in_place(|| PgServer::start(PgOptions::default()));
    let standby = tokio::task::block_in_place(|| primary.standby());
    let env = TestEnv::on_server(SecretUrl::new(primary.url("postgres")), |s| s.http.cache_ttl_secs = 0).await;
    let end = minute_floor(Utc::now()).to_rfc3339();
    tokio::task::block_in_place(|| {
        env.cli(&["seed", "--events", "1500", "--days", "1", "--users", "40", "--end", &end]).expect_success();
        env.cli(&["prepare", "--mode", "postgres"]).expect_success();
        env.cli(&["dual-write", "start"]).expect_success();
        env.cli(&["backfill"]).expect_success();
    });
    sqlx::query("UPDATE tsmigrate.migration_state SET read_source = 'target', shadow = false").execute(&env.pool).await.unwrap();
    (primary, standby, env)
}

/// The read API on `env`'s target, reading `read_url` within `max_lag_secs` when given.
async fn server(env: &TestEnv, read_url: Option<String>, max_lag_secs: u64) -> (AppState, Router) {
    let mut settings = env.settings.clone();
    settings.database.read_url = read_url.map(SecretUrl::new);
    settings.database.read_max_lag_secs = max_lag_secs;
    let pool = tsmigrate::db::target_pool(&settings).await.expect("target pool");
    let state = AppState::new(tsmigrate::context::Context::with_target(Arc::new(settings), pool), env.redis().await);
    (state.clone(), app(state))
}

async fn get(router: &Router, uri: &str) -> Value {
    let response = router.clone().oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap()).await.expect("router answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    assert_eq!(body["source"], "target", "{uri}: {body}");
    body
}

fn time(answer: &Value, key: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(field(answer, key).as_str().unwrap()).unwrap().with_timezone(&Utc)
}

/// Every question asked of both servers within one minute (relative windows resolve against
/// the request's minute).
async fn both(replica: &Router, primary: &Router, questions: &[&str]) -> Vec<(Value, Value)> {
    for _ in 0..5 {
        let minute = minute_floor(Utc::now());
        let mut answers = Vec::new();
        for q in questions {
            answers.push((get(replica, q).await, get(primary, q).await));
        }
        if minute_floor(Utc::now()) == minute {
            return answers;
        }
    }
    panic!("could not ask both servers within one minute");
}

async fn view(state: &AppState) -> ReplicaView {
    state.replica.current(&state.ctx).await.expect("a replica is set")
}

/// Waits until `state`'s replica check says `why`.
async fn until_replica(state: &AppState, why: Why) -> ReplicaView {
    eventually(&format!("the replica check to say {why:?}"), Duration::from_secs(90), || async {
        let v = view(state).await;
        (v.why == why).then_some(v)
    })
    .await
}

fn reads_total(database: &str, reason: &str) -> f64 {
    let text = tsmigrate::telemetry::metrics_handle().expect("the test process's recorder").render();
    metric(&text, &format!(r#"tsmigrate_reads_total{{database="{database}",reason="{reason}"}}"#)).unwrap_or(0.0)
}

fn status(env: &TestEnv, read_url: &str) -> Value {
    let out = tokio::task::block_in_place(|| env.cli_with_env(&["status", "--json"], &[("DATABASE_READ_URL", read_url)]));
    out.details()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_replica_answers_as_the_primary_does_and_a_replica_that_is_down_sends_reads_to_the_primary() {
    let (_primary, standby, env) = migrated_with_standby().await;
    let read_url = standby.url(&env.db_name);
    let (state, replica) = server(&env, Some(read_url.clone()), 3600).await;
    let (_, primary) = server(&env, None, 3600).await;
    let caught_up = eventually("the standby to replay everything", Duration::from_secs(90), || async {
        let v = view(&state).await;
        (v.serving() && v.lag_seconds == Some(0.0)).then_some(v)
    })
    .await;
    assert_eq!(caught_up.reads_go_to, "replica");
    assert_eq!(caught_up.replay_paused, Some(false));

    let served = reads_total("replica", "within_limit");
    for ((from_replica, from_primary), q) in both(&replica, &primary, &QUESTIONS).await.iter().zip(QUESTIONS) {
        // The replica's as_of is its replay point when that is earlier than the request's minute
        // (a check made in the minute before): never later than the primary's.
        assert!(time(from_replica, "as_of") <= time(from_primary, "as_of"), "{q}: {from_replica} {from_primary}");
        let (mut a, mut b) = (from_replica.clone(), from_primary.clone());
        for v in [&mut a, &mut b] {
            v.as_object_mut().unwrap().remove("as_of");
        }
        assert_eq!(a, b, "the replica and the primary disagree on {q}");
    }
    let intervals = get(&primary, INTERVALS).await;
    assert!(field(&intervals, "total_events").as_i64().unwrap() > 0, "the answers are about real data: {intervals}");
    assert!(reads_total("replica", "within_limit") >= served + QUESTIONS.len() as f64, "the replica answered");

    let shown = status(&env, &read_url);
    let shown = field(&shown, "read_replica");
    assert_eq!((shown["reads_go_to"].as_str(), shown["why"].as_str()), (Some("replica"), Some("within_limit")), "{shown}");
    assert!(!shown["url"].as_str().unwrap().is_empty());
    let text = tokio::task::block_in_place(|| env.cli_with_env(&["status"], &[("DATABASE_READ_URL", &read_url)]));
    assert!(text.stdout.contains("replica:") && text.stdout.contains("reads go to the replica"), "{}", text.stdout);

    // The standby goes away: reads go to the primary, with the same answers.
    tokio::task::block_in_place(|| standby.stop());
    let down = until_replica(&state, Why::Unreachable).await;
    assert_eq!(down.reads_go_to, "primary");
    assert!(down.error.is_some(), "{down:?}");
    let fallback = reads_total("primary", "unreachable");
    for (from_replica_setting, from_primary) in both(&replica, &primary, &[INTERVALS, QUESTIONS[0]]).await {
        assert_eq!(field(&from_replica_setting, "total_events"), field(&from_primary, "total_events"));
        assert_eq!(field(&from_replica_setting, "as_of"), field(&from_primary, "as_of"));
    }
    assert!(reads_total("primary", "unreachable") >= fallback + 2.0, "the fallback is counted");
    let shown = status(&env, &read_url);
    let replica_shown = field(&shown, "read_replica");
    assert_eq!((replica_shown["reads_go_to"].as_str(), replica_shown["why"].as_str()), (Some("primary"), Some("unreachable")), "{shown}");
    let warnings = field(&shown, "warnings").to_string();
    assert!(warnings.contains("go to the primary, not the read replica"), "{warnings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replay_paused_the_replica_answers_as_of_its_replay_point_until_its_lag_passes_the_limit() {
    let (primary_server, standby, env) = migrated_with_standby().await;
    let read_url = standby.url(&env.db_name);
    // One server trusts the replica for an hour of lag, one for a second.
    let (patient_state, patient) = server(&env, Some(read_url.clone()), 3600).await;
    let (strict_state, strict) = server(&env, Some(read_url.clone()), 1).await;
    let (_, primary) = server(&env, None, 3600).await;
    eventually("the standby to replay everything", Duration::from_secs(90), || async {
        let v = view(&patient_state).await;
        (v.serving() && v.lag_seconds == Some(0.0)).then_some(())
    })
    .await;
    let before = field(&get(&primary, INTERVALS).await, "total_events").as_i64().unwrap();

    let replica_db = sqlx::PgPool::connect(&read_url).await.expect("connect to the standby");
    sqlx::query("SELECT pg_wal_replay_pause()").execute(&replica_db).await.unwrap();
    eventually("replay to pause", Duration::from_secs(60), || async {
        let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()").fetch_one(&replica_db).await.unwrap();
        (state == "paused").then_some(())
    })
    .await;
    // New events on the primary, in the last minutes (raw rows in every answer).
    let at = minute_floor(Utc::now()) - chrono::Duration::minutes(3);
    sqlx::query(
        "INSERT INTO analytics_events_ts (time, event_id, event_name, category, user_id)
         SELECT $1, gen_random_uuid(), 'replica_probe', 'test', 'probe-' || g FROM generate_series(1, 25) g",
    )
    .bind(at)
    .execute(&env.pool)
    .await
    .unwrap();
    let committed_by = Utc::now();
    assert_eq!(field(&get(&primary, INTERVALS).await, "total_events").as_i64(), Some(before + 25));

    // Under the limit: the replica answers what it has, and says as of when.
    // (A check is trusted for a second: wait for one made since the pause.)
    let patient_view = eventually("a check that sees replay paused", Duration::from_secs(30), || async {
        let v = view(&patient_state).await;
        (v.replay_paused == Some(true)).then_some(v)
    })
    .await;
    assert_eq!(patient_view.why, Why::WithinLimit, "{patient_view:?}");
    let honest = get(&patient, INTERVALS).await;
    assert_eq!(field(&honest, "total_events").as_i64(), Some(before), "the paused replica does not have the new rows: {honest}");
    let as_of = time(&honest, "as_of");
    assert!(as_of < committed_by, "as_of {as_of} is before the new rows committed ({committed_by}), since they are not in the answer");
    let replayed_to = view(&patient_state).await.replayed_to.expect("a replay point");
    assert!(as_of <= replayed_to, "as_of {as_of} is never later than the replay point {replayed_to}");

    // Past the limit: the primary answers, exactly, as of the request's minute.
    let lagging = reads_total("primary", "lagging");
    let strict_view = until_replica(&strict_state, Why::Lagging).await;
    assert!(strict_view.lag_seconds.unwrap() > 1.0, "{strict_view:?}");
    for (from_strict, from_primary) in both(&strict, &primary, &[INTERVALS]).await {
        assert_eq!(field(&from_strict, "total_events").as_i64(), Some(before + 25), "{from_strict}");
        assert_eq!(field(&from_strict, "as_of"), field(&from_primary, "as_of"));
    }
    assert!(reads_total("primary", "lagging") > lagging, "the fallback is counted");
    env.write_file("tsmigrate.toml", "[database]\nread_max_lag_secs = 1\n");
    let shown = status(&env, &read_url);
    let shown = field(&shown, "read_replica");
    assert_eq!(
        (shown["reads_go_to"].as_str(), shown["why"].as_str(), shown["replay_paused"].as_bool()),
        (Some("primary"), Some("lagging"), Some(true)),
        "{shown}"
    );
    assert!(shown["lag_seconds"].as_f64().unwrap() > 1.0, "{shown}");

    // Replay resumes: the replica catches up and answers again, with the new rows.
    sqlx::query("SELECT pg_wal_replay_resume()").execute(&replica_db).await.unwrap();
    until_replica(&strict_state, Why::WithinLimit).await;
    let caught_up = get(&strict, INTERVALS).await;
    assert_eq!(field(&caught_up, "total_events").as_i64(), Some(before + 25), "{caught_up}");
    replica_db.close().await;
    drop(primary_server);
}

/// A standby that hangs (every connection to it, open or new, blackholed): the replica check
/// gives up within its deadline, reads go to the primary with the primary's answers, and
/// once the standby answers again reads return to it without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_sends_reads_to_the_primary_and_they_return_when_it_answers() {
    use crate::proxy::{Fault, FaultProxy};
    let (_primary, standby, env) = migrated_with_standby().await;
    let direct = standby.url(&env.db_name);
    let proxy = FaultProxy::start(crate::fault::pg_addr(&direct));
    let (state, replica) = server(&env, Some(proxy.url_through(&direct)), 3600).await;
    let (_, primary) = server(&env, None, 3600).await;
    until_replica(&state, Why::WithinLimit).await;
    let served = reads_total("replica", "within_limit");
    get(&replica, INTERVALS).await;
    assert!(reads_total("replica", "within_limit") > served, "the replica answered before the fault");

    proxy.set(Fault::Blackhole);
    let hung = until_replica(&state, Why::Unreachable).await;
    assert_eq!(hung.reads_go_to, "primary", "{hung:?}");
    let fallback = reads_total("primary", "unreachable");
    for (from_replica_setting, from_primary) in both(&replica, &primary, &[INTERVALS, QUESTIONS[0]]).await {
        assert_eq!(field(&from_replica_setting, "total_events"), field(&from_primary, "total_events"), "{from_replica_setting} {from_primary}");
    }
    assert!(reads_total("primary", "unreachable") >= fallback + 2.0, "the primary answered while the replica hung");

    proxy.set(Fault::Pass);
    until_replica(&state, Why::WithinLimit).await;
    let served = reads_total("replica", "within_limit");
    get(&replica, INTERVALS).await;
    assert!(reads_total("replica", "within_limit") > served, "the replica answers again");
}
