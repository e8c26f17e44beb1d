//! `tsmigrate validate`: exactly the injected differences are found and reported (JSON,
//! unified diff, JUnit), clean systems validate clean and move the phase, both storage
//! modes agree, the exit codes, and the Rust fingerprint agrees with PostgreSQL's.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use tsmigrate::event::TargetEvent;
use tsmigrate::store::writer::TargetWriter;
use tsmigrate::store::StorageMode;
use tsmigrate::validate::collect::sql;
use tsmigrate::validate::fingerprint::{jsonb_text, Fingerprinter};

use crate::support::{field, TestEnv};

/// The seeded traffic ends here (the same for every env of a test, so both modes see the same events).
pub fn seed_end() -> DateTime<Utc> {
    Utc::now().duration_trunc(Duration::hours(1)).unwrap() - Duration::hours(1)
}

/// Seeds a day of messy traffic (legacy flush included), prepares `mode`, starts dual-write, backfills.
pub fn migrate(env: &TestEnv, mode: &str, end: DateTime<Utc>) {
    let end = end.to_rfc3339();
    env.cli(&["seed", "--events", "3000", "--days", "1", "--users", "60", "--messy", "--end", &end]).expect_success();
    env.cli(&["prepare", "--mode", mode]).expect_success();
    env.cli(&["dual-write", "start"]).expect_success();
    env.cli(&["backfill"]).expect_success();
}

/// A little legacy traffic and a target prepared in plain mode (phase prepared).
async fn seeded_and_prepared() -> TestEnv {
    let env = TestEnv::new().await;
    env.cli(&["seed", "--events", "300", "--days", "1", "--users", "20"]).expect_success();
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    env
}

async fn phase(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT phase FROM tsmigrate.migration_state").fetch_one(pool).await.unwrap()
}

/// What was injected, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub missing: BTreeSet<String>,
    pub extra: BTreeSet<String>,
    /// id -> the fields that differ.
    pub different: Vec<(String, Vec<String>)>,
}

/// Rows of one hour well inside the window (`hour` hours after the first event's hour), in a
/// deterministic order. Each kind of difference gets an hour of its own, so their count
/// differences never cancel out whatever the time of day the test runs at.
async fn pick(pool: &PgPool, hour: i32, count: i64) -> Vec<String> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT event_id::text FROM analytics_events_ts
         WHERE time >= date_trunc('hour', (SELECT min(time) FROM analytics_events_ts)) + make_interval(hours => $1)
           AND time < date_trunc('hour', (SELECT min(time) FROM analytics_events_ts)) + make_interval(hours => $1 + 1)
         ORDER BY event_id LIMIT $2",
    )
    .bind(hour)
    .bind(count)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(ids.len() as i64, count, "hour {hour} of the seeded data holds too few events to inject into");
    ids
}

/// Deletes `count` target rows of `hour` (as [`pick`] counts hours); returns their ids.
async fn delete_picked(pool: &PgPool, hour: i32, count: i64) -> Vec<String> {
    let ids = pick(pool, hour, count).await;
    for id in &ids {
        sqlx::query("DELETE FROM analytics_events_ts WHERE event_id = $1::uuid").bind(id).execute(pool).await.unwrap();
    }
    ids
}

/// Deletes 2 target rows (hour 4), inserts 2 extra (hour 8), alters 2 (properties; user_id), shifts 1
/// from hour 12 to hour 13 (or 11): four hours differ in their counts.
pub async fn inject(pool: &PgPool) -> Injected {
    let mut injected = Injected::default();
    for id in pick(pool, 4, 2).await {
        sqlx::query("DELETE FROM analytics_events_ts WHERE event_id = $1::uuid").bind(&id).execute(pool).await.unwrap();
        injected.missing.insert(id);
    }
    for (i, source) in pick(pool, 8, 2).await.into_iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-00000000000{i}");
        sqlx::query(
            "INSERT INTO analytics_events_ts (time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer)
             SELECT time + interval '1 second', $2::uuid, event_name, category, user_id, session_id, properties, device_info, page_url, referrer
             FROM analytics_events_ts WHERE event_id = $1::uuid",
        )
        .bind(&source)
        .bind(&id)
        .execute(pool)
        .await
        .unwrap();
        injected.extra.insert(id);
    }
    let altered = pick(pool, 10, 2).await;
    sqlx::query("UPDATE analytics_events_ts SET properties = properties || '{\"injected\": true}' WHERE event_id = $1::uuid")
        .bind(&altered[0])
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE analytics_events_ts SET user_id = 'someone_else' WHERE event_id = $1::uuid").bind(&altered[1]).execute(pool).await.unwrap();
    injected.different.push((altered[0].clone(), vec!["properties".into()]));
    injected.different.push((altered[1].clone(), vec!["user_id".into()]));
    let shifted = pick(pool, 12, 1).await.remove(0);
    // An hour later — or earlier in the last hour of a UTC day: a hypertable row cannot move
    // into another day's chunk. Either way two hours differ in their counts.
    sqlx::query(
        "UPDATE analytics_events_ts
         SET time = time + CASE WHEN extract(hour FROM time AT TIME ZONE 'UTC') = 23 THEN interval '-1 hour' ELSE interval '1 hour' END
         WHERE event_id = $1::uuid",
    )
    .bind(&shifted)
    .execute(pool)
    .await
    .unwrap();
    injected.different.push((shifted, vec!["time".into()]));
    injected.different.sort();
    injected
}

fn ids(listed: &Value) -> BTreeSet<String> {
    field(listed, "items").as_array().unwrap().iter().map(|e| field(e, "event_id").as_str().unwrap().to_string()).collect()
}

/// What a JSON report says was found, in the shape of [`Injected`].
fn found(report: &Value) -> Injected {
    let events = field(report, "events");
    let mut different: Vec<(String, Vec<String>)> = field(field(events, "different"), "items")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(field(e, "kind"), "different");
            let fields = field(e, "fields").as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
            (field(e, "event_id").as_str().unwrap().to_string(), fields)
        })
        .collect();
    different.sort();
    for kind in ["missing", "extra"] {
        for item in field(field(events, kind), "items").as_array().unwrap() {
            assert_eq!(field(item, "kind"), kind);
        }
    }
    Injected { missing: ids(field(events, "missing")), extra: ids(field(events, "extra")), different }
}

#[tokio::test]
async fn clean_systems_validate_clean_and_move_the_phase_to_validated() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());

    // Another phase command holds the lock: the validation still runs and is clean, but says the phase did not move.
    let mut holder = env.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('tsmigrate.phase'))").execute(&mut *holder).await.unwrap();
    let report = env.cli(&["validate", "--json"]).expect_success().details();
    assert_eq!(field(&report, "result"), "clean");
    assert!(field(&report, "run.warnings")[0].as_str().unwrap().contains("not moved"), "{report}");
    assert_eq!(field(&report, "run.phase_after"), "backfilled");
    assert_eq!(phase(&env.pool).await, "backfilled");
    sqlx::query("SELECT pg_advisory_unlock(hashtext('tsmigrate.phase'))").execute(&mut *holder).await.unwrap();
    drop(holder);

    let out = env.cli(&["validate"]);
    out.expect_success();
    assert!(out.stdout.contains("validate: clean"), "{}", out.stdout);
    assert!(out.stdout.contains("phase: backfilled -> validated"), "{}", out.stdout);
    assert!(out.stdout.contains("now minus settle 5m, rounded down to the hour"), "{}", out.stdout);
    assert_eq!(phase(&env.pool).await, "validated");

    let runs: Vec<(String, String, Option<DateTime<Utc>>, Value)> =
        sqlx::query_as("SELECT result, depth, window_from, figures FROM tsmigrate.validation_runs ORDER BY id").fetch_all(&env.pool).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.0 == "clean" && r.1 == "events" && r.2.is_some()));
    let figures = &runs[1].3;
    assert!(figures["redis_events"].as_u64().unwrap() > 2000, "{figures}");
    assert_eq!(figures["redis_events"], figures["target_events"]);
    assert!(figures["dead_letters"].as_u64().unwrap() > 0, "the messy seed writes non-JSON members: {figures}");
    assert_eq!(figures["legacy_hourly"]["differences"], 0, "{figures}");
    assert!(figures["legacy_hourly"]["rows_compared"].as_u64().unwrap() > 0, "{figures}");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.audit_log WHERE command = 'validate' AND to_phase = 'validated'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(audited, 1);
    env.cleanup().await;
}

/// A clean run over a few hours says what it left unchecked and opens no gate: events
/// missing elsewhere keep cutover refused, naming the range still unchecked; only a clean
/// run over the whole migrated range moves the phase and opens the cutover gate.
#[tokio::test]
async fn a_narrow_clean_validation_opens_no_gate_and_names_what_is_unchecked() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    // Missing from the target, about a day ago: far outside the hours validated below.
    let deleted = delete_picked(&env.pool, 2, 30).await;

    let narrow = env.cli(&["validate", "--from=-5h", "--to=-3h", "--json"]).expect_success().details();
    assert_eq!(field(&narrow, "result"), "clean", "{narrow}");
    let window = field(&narrow, "window");
    assert_eq!(field(window, "whole_range"), false, "{window}");
    let unchecked = field(window, "unchecked").as_array().unwrap().clone();
    assert!(!unchecked.is_empty(), "{window}");
    assert_eq!(field(window, "range.from"), field(&unchecked[0], "from"), "the older hours are unchecked: {window}");
    let warnings = field(&narrow, "run.warnings").to_string();
    assert!(warnings.contains("opens no gate") && warnings.contains("still unchecked"), "{narrow}");
    assert_eq!(field(&narrow, "run.phase_after"), "backfilled", "a narrow run moves no phase");
    assert_eq!(phase(&env.pool).await, "backfilled");
    let text = env.cli(&["validate", "--from=-5h", "--to=-3h"]);
    text.expect_success();
    assert!(text.stdout.contains("coverage: PART of the migrated range") && text.stdout.contains("this run opens no gate"), "{}", text.stdout);
    let recorded: (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT range_from, range_to FROM tsmigrate.validation_runs ORDER BY id DESC LIMIT 1").fetch_one(&env.pool).await.unwrap();
    assert!(recorded.0.is_some() && recorded.1.is_some(), "the run records the range it had to cover: {recorded:?}");

    // Cutover is refused, and says what is still unchecked and how to check it.
    let refused = env.cli(&["cutover", "--json"]);
    refused.expect_code(3);
    let envelope = refused.json();
    let first_unchecked: DateTime<Utc> = field(&unchecked[0], "from").as_str().unwrap().parse().unwrap();
    let hint = field(&envelope, "error.hint").as_str().unwrap().to_string();
    assert!(hint.contains("unchecked") && hint.contains(&first_unchecked.format("%Y-%m-%dT%H:%MZ").to_string()), "{envelope}");
    assert_eq!(field(&envelope, "next_steps")[0]["command"], "tsmigrate validate", "{envelope}");
    let status = env.cli(&["status", "--json"]).json();
    assert_eq!(field(&status, "next_steps")[0]["command"], "tsmigrate validate", "{status}");
    assert_eq!(field(&status, "details.last_validation.whole_range"), false, "{status}");
    let status_text = env.cli(&["status"]).stdout;
    assert!(status_text.contains("over part of the migrated range only"), "{status_text}");

    // The whole range finds what is missing; repaired and validated whole, the gate opens.
    let whole = env.cli(&["validate", "--json"]);
    whole.expect_code(1);
    assert_eq!(field(&whole.details(), "window.whole_range"), true);
    assert_eq!(field(&whole.details(), "events.missing.total"), deleted.len() as u64);
    env.cli(&["repair"]).expect_success();
    let clean = env.cli(&["validate", "--json"]).expect_success().details();
    assert_eq!(field(&clean, "run.phase_after"), "validated", "{clean}");
    env.cli(&["cutover", "--json"]).expect_success();
    assert_eq!(phase(&env.pool).await, "reads_switched");
    env.cleanup().await;
}

#[tokio::test]
async fn injected_differences_are_found_and_reported_exactly() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    let injected = inject(&env.pool).await;

    let junit_path = env.dir().join("validation.junit.xml");
    let out = env.cli(&["validate", "--format", "junit", "--output", junit_path.to_str().unwrap()]);
    out.expect_code(1);
    assert!(out.stdout.contains("validate: DIFFERENCES"), "the text summary goes to stdout: {}", out.stdout);

    let report = env.cli(&["validate", "--json"]).expect_code(1).details();
    assert_eq!(field(&report, "result"), "differences");
    assert_eq!(found(&report), injected);
    let events = field(&report, "events");
    for (kind, total) in [("missing", 2), ("extra", 2), ("different", 3)] {
        assert_eq!(field(field(events, kind), "total"), total, "{kind}");
    }
    assert_eq!(field(events, "redis_events").as_u64().unwrap() + 2 - 2, field(events, "target_events").as_u64().unwrap());
    // Deleted and extra rows change the legacy-vs-target hourly counts too.
    assert_eq!(field(field(&report, "legacy_hourly"), "status"), "differences");
    assert_eq!(phase(&env.pool).await, "backfilled", "differences do not move the phase");

    // The unified diff: each missing event is a `-` line (Redis only), each extra a `+` line.
    let diff = field(&report, "diff").as_str().unwrap();
    assert!(diff.contains("--- redis\n+++ target\n"), "{diff}");
    assert!(diff.contains("--- legacy\n+++ target\n"), "{diff}");
    let lines: Vec<&str> = diff.lines().collect();
    for id in &injected.missing {
        assert!(lines.iter().any(|l| l.starts_with("-  ") && l.contains(id.as_str())), "missing {id} as a - line:\n{diff}");
        assert!(!lines.iter().any(|l| l.starts_with('+') && l.contains(id.as_str())), "{diff}");
    }
    for id in &injected.extra {
        assert!(lines.iter().any(|l| l.starts_with("+  ") && l.contains(id.as_str())), "extra {id} as a + line:\n{diff}");
    }
    for (id, _) in &injected.different {
        assert!(lines.iter().any(|l| l.starts_with("-  ") && l.contains(id.as_str())), "{diff}");
        assert!(lines.iter().any(|l| l.starts_with("+  ") && l.contains(id.as_str())), "{diff}");
    }

    // JUnit: valid XML with the same test cases in every run (one per check), the events
    // check failing with what it found, the aggregate checks as they came out.
    let xml = std::fs::read_to_string(&junit_path).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("JUnit file is not XML: {e}\n{xml}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let suites: Vec<_> = root.children().filter(|n| n.has_tag_name("testsuite")).collect();
    let names: Vec<&str> = suites.iter().map(|s| s.attribute("name").unwrap()).collect();
    assert_eq!(names, vec!["events", "legacy_hourly", "asset_popularity"]);
    let case_names = |suite: &roxmltree::Node| -> Vec<String> {
        suite.children().filter(|n| n.has_tag_name("testcase")).map(|c| c.attribute("name").unwrap().to_string()).collect()
    };
    assert_eq!(case_names(&suites[0]), ["event counts per hour", "missing events", "extra events", "different events"]);
    assert_eq!(case_names(&suites[1]), ["legacy hourly table vs analytics_hourly"]);
    assert_eq!(case_names(&suites[2]), ["legacy asset popularity vs analytics_asset_popularity_ts"]);
    let failure = |suite: &roxmltree::Node, case: &str| -> String {
        let node = suite.children().find(|n| n.attribute("name") == Some(case)).unwrap_or_else(|| panic!("no case {case}"));
        node.children().find(|n| n.has_tag_name("failure")).map(|f| f.attribute("message").unwrap().to_string()).unwrap_or_default()
    };
    let hours_differing = field(field(events, "hours_differing"), "total").as_u64().unwrap();
    assert_eq!(failure(&suites[0], "event counts per hour"), format!("{hours_differing} of {} hours differ", field(events, "hours_compared")));
    assert_eq!(failure(&suites[0], "missing events"), "2 events in Redis, not in the target");
    assert_eq!(failure(&suites[0], "extra events"), "2 events in the target, not in Redis");
    assert_eq!(failure(&suites[0], "different events"), "3 events the same event id with other content or time");
    assert_eq!(suites[0].attribute("failures"), Some("4"));
    assert_eq!(root.attribute("failures").unwrap().parse::<usize>().unwrap(), root.descendants().filter(|n| n.has_tag_name("failure")).count());
    assert_eq!(root.attribute("tests"), Some("6"), "one case per check, whatever was found");

    // Counts depth: only count differences (an altered event keeps the count), no event lists.
    let counts = env.cli(&["validate", "--depth", "counts", "--json"]).expect_code(1).details();
    assert_eq!(field(field(&counts, "events"), "missing"), &Value::Null);
    assert_eq!(field(field(field(&counts, "events"), "hours_differing"), "total").as_u64(), Some(4), "hours 4, 8, 12 and 13 (or 11) differ in their counts");

    let results: Vec<String> = sqlx::query_scalar("SELECT result FROM tsmigrate.validation_runs ORDER BY id").fetch_all(&env.pool).await.unwrap();
    assert_eq!(results, vec!["differences"; 3]);
    env.cleanup().await;
}

/// The member Redis holds for the target row `event_id` (found by its time), parsed, with
/// its score; only members carrying an `id` of their own (editing one keeps its event id).
async fn member_of(env: &TestEnv, redis: &mut tsmigrate::connect::RedisConn, event_id: &str) -> Option<(Vec<u8>, Value, f64)> {
    let time_ms: i64 = sqlx::query_scalar("SELECT (extract(epoch FROM time) * 1000)::bigint FROM analytics_events_ts WHERE event_id = $1::uuid")
        .bind(event_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let members: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(env.keys().events)
        .arg(time_ms as f64 - 0.5)
        .arg(format!("({}", time_ms as f64 + 0.5))
        .arg("WITHSCORES")
        .query_async(redis)
        .await
        .unwrap();
    members.into_iter().find_map(|(member, score)| {
        let event = TargetEvent::from_member(&member, score, Utc::now().timestamp_millis()).ok()?;
        let parsed: Value = serde_json::from_slice(&member).ok()?;
        (event.event_id.to_string() == event_id && parsed["id"].is_string()).then_some((member, parsed, score))
    })
}

/// The digest path (the fingerprints every write path stores with its rows, summed per
/// minute) finds every difference hashing every row from its content finds, planted on both
/// sides: rows deleted, added (one copying another's stored fingerprint), changed by SQL
/// (properties, user id, time), and in Redis an event gained, one lost, one edited, and a
/// member that is no event (a dead letter, not a difference).
#[tokio::test]
async fn stored_fingerprints_find_every_difference_hashing_every_row_finds() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    let (rows, stored): (i64, i64) = sqlx::query_as("SELECT count(*), count(stored_fingerprint) FROM analytics_events_ts").fetch_one(&env.pool).await.unwrap();
    assert!(rows > 0 && stored == rows, "every backfilled row carries its stored fingerprint: {stored} of {rows}");
    let mut injected = inject(&env.pool).await;

    // A copy made by SQL that carries its source's stored fingerprint along.
    let source = pick(&env.pool, 6, 1).await.remove(0);
    let copy = "00000000-0000-4000-8000-000000000009".to_string();
    sqlx::query(
        "INSERT INTO analytics_events_ts (time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer, stored_fingerprint)
         SELECT time + interval '2 seconds', $2::uuid, event_name, category, user_id, session_id, properties, device_info, page_url, referrer, stored_fingerprint
         FROM analytics_events_ts WHERE event_id = $1::uuid",
    )
    .bind(&source)
    .bind(&copy)
    .execute(&env.pool)
    .await
    .unwrap();
    injected.extra.insert(copy);

    // Redis side.
    let mut redis = env.redis().await;
    let key = env.keys().events;
    let mut edited = None;
    for id in pick(&env.pool, 14, 20).await {
        if let Some((old, mut member, score)) = member_of(&env, &mut redis, &id).await {
            let removed: i64 = redis::cmd("ZREM").arg(&key).arg(&old).query_async(&mut redis).await.unwrap();
            assert_eq!(removed, 1);
            member["event_name"] = json!("edited in redis");
            let _: i64 = redis::cmd("ZADD").arg(&key).arg(score).arg(member.to_string()).query_async(&mut redis).await.unwrap();
            edited = Some(id);
            break;
        }
    }
    let edited = edited.expect("an event with an id of its own in hour 14");
    injected.different.push((edited, vec!["event_name".into()]));
    for id in pick(&env.pool, 16, 20).await {
        if let Some((member, _, _)) = member_of(&env, &mut redis, &id).await {
            let removed: i64 = redis::cmd("ZREM").arg(&key).arg(&member).query_async(&mut redis).await.unwrap();
            assert_eq!(removed, 1);
            injected.extra.insert(id);
            break;
        }
    }
    let gained = "00000000-0000-4000-8000-0000000000aa".to_string();
    let score: f64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM min(time)) * 1000)::float8 + 1 FROM analytics_events_ts
         WHERE time >= date_trunc('hour', (SELECT min(time) FROM analytics_events_ts)) + interval '18 hours'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let member = json!({"id": gained, "event_name": "gained", "category": "redis only"}).to_string();
    let _: i64 = redis::cmd("ZADD").arg(&key).arg(score).arg(member).query_async(&mut redis).await.unwrap();
    injected.missing.insert(gained);
    let _: i64 = redis::cmd("ZADD").arg(&key).arg(score + 1.0).arg("{not an event").query_async(&mut redis).await.unwrap();
    injected.different.sort();
    assert_eq!((injected.missing.len(), injected.extra.len(), injected.different.len()), (3, 4, 4), "{injected:?}");

    let digests = env.cli(&["validate", "--json"]).expect_code(1).details();
    assert_eq!(found(&digests), injected, "with stored fingerprints");
    // The same systems, every row hashed from its content: the same findings, hour for hour.
    sqlx::query("UPDATE analytics_events_ts SET stored_fingerprint = NULL").execute(&env.pool).await.unwrap();
    let hashed = env.cli(&["validate", "--json"]).expect_code(1).details();
    assert_eq!(found(&hashed), injected, "hashing every row");
    for part in ["hours_differing", "missing", "extra", "different"] {
        assert_eq!(field(field(&digests, "events"), part)["total"], field(field(&hashed, "events"), part)["total"], "{part}");
    }
    assert_eq!(field(field(&digests, "events"), "target_events"), field(field(&hashed, "events"), "target_events"));
    env.cleanup().await;
}

/// Rows "written before the raw digest existed": their raw digest cleared without touching
/// their stored fingerprint (the trigger that clears both on UPDATE is bypassed).
async fn forget_raw_digests(pool: &PgPool, ids: &[String]) {
    let fingerprints = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(stored_fingerprint) FROM analytics_events_ts").fetch_one(pool).await.unwrap();
        n
    };
    let before = fingerprints().await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE analytics_events_ts SET raw_digest = NULL WHERE event_id = ANY($1::uuid[])").bind(ids).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(fingerprints().await, before, "their stored fingerprints stay");
}

/// What raw digests (each row's hash of the member it was parsed from) settle and what they
/// leave to the fingerprints. "Different" means what the fingerprints say: a Redis member
/// spelled otherwise (key order, whitespace) than the one its row was written from has
/// another raw digest, so its minute is parsed, and it is no difference; an UPDATEd row (even
/// one that changes nothing), and rows written before the raw digest existed, have none, so
/// their minutes are parsed too. Every write path stores it; the recorded dead letters
/// settle with the rows. Then the injected differences, with every raw digest, with none in
/// the oldest hours (parsed at once, the others hashed first), and without any (every member
/// parsed in one pass, none hashed, as before raw digests): the same findings.
#[tokio::test]
async fn raw_digests_settle_only_what_the_fingerprints_would_and_leave_the_rest_to_them() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    let (rows, raw): (i64, i64) = sqlx::query_as("SELECT count(*), count(raw_digest) FROM analytics_events_ts").fetch_one(&env.pool).await.unwrap();
    assert!(rows > 0 && raw == rows, "every backfilled row carries its raw digest: {raw} of {rows}");
    // Totals of a report's event check (none listed when no hour differs).
    let total = |report: &Value, part: &str| report["events"][part]["total"].as_u64().unwrap_or(0);
    let clean = env.cli(&["validate", "--json", "--no-refresh"]).details();
    for part in ["missing", "extra", "different", "hours_differing"] {
        assert_eq!(total(&clean, part), 0, "{part}: {clean}");
    }
    assert!(field(&clean, "events.dead_letters").as_u64().unwrap() > 0, "the messy seed's dead letters are counted: {clean}");
    assert!(clean["timings_ms"]["redis_hash"].is_u64(), "Redis's members were hashed: {clean}");

    // Redis: a member rewritten with its keys in another order and spaces, same score.
    let mut redis = env.redis().await;
    let key = env.keys().events;
    let mut respelled = None;
    for id in pick(&env.pool, 5, 20).await {
        if let Some((old, member, score)) = member_of(&env, &mut redis, &id).await {
            let object = member.as_object().unwrap();
            let mut keys: Vec<&String> = object.keys().collect();
            keys.reverse();
            let text = format!("{{ {} }}", keys.iter().map(|k| format!("{} : {}", json!(k), object[*k])).collect::<Vec<_>>().join(" ,  "));
            assert_ne!(text.as_bytes(), old.as_slice());
            let _: i64 = redis::cmd("ZREM").arg(&key).arg(&old).query_async(&mut redis).await.unwrap();
            let _: i64 = redis::cmd("ZADD").arg(&key).arg(score).arg(&text).query_async(&mut redis).await.unwrap();
            respelled = Some(id);
            break;
        }
    }
    assert!(respelled.is_some(), "an event with an id of its own in hour 5");
    // The target: an UPDATE that changes nothing, and an hour of rows written before raw digests.
    let touched = pick(&env.pool, 7, 1).await.remove(0);
    sqlx::query("UPDATE analytics_events_ts SET user_id = user_id WHERE event_id = $1::uuid").bind(&touched).execute(&env.pool).await.unwrap();
    let cleared: Option<i64> =
        sqlx::query_scalar("SELECT raw_digest FROM analytics_events_ts WHERE event_id = $1::uuid").bind(&touched).fetch_one(&env.pool).await.unwrap();
    assert_eq!(cleared, None, "an UPDATE clears the raw digest");
    let old_rows = pick(&env.pool, 9, 10).await;
    forget_raw_digests(&env.pool, &old_rows).await;

    let same = env.cli(&["validate", "--json", "--no-refresh"]).details();
    for part in ["missing", "extra", "different", "hours_differing"] {
        assert_eq!(total(&same, part), 0, "{part}: {same}");
    }
    for part in ["redis_events", "target_events", "dead_letters", "dead_letters_by_reason"] {
        assert_eq!(field(&same, "events")[part], field(&clean, "events")[part], "{part}");
    }

    // The injected differences: found exactly, and as every minute parsed finds them.
    let injected = inject(&env.pool).await;
    let digests = env.cli(&["validate", "--json", "--no-refresh"]).expect_code(1).details();
    assert_eq!(found(&digests), injected, "with raw digests");
    // Rows written before raw digests existed: the first 12 hours (where the missing, extra
    // and altered events are) have none, the rest keep theirs. Those hours are parsed at once,
    // the others hashed first.
    let old_hours: Vec<String> = sqlx::query_scalar(
        "SELECT event_id::text FROM analytics_events_ts
         WHERE time < date_trunc('hour', (SELECT min(time) FROM analytics_events_ts)) + interval '12 hours'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    forget_raw_digests(&env.pool, &old_hours).await;
    let partly = env.cli(&["validate", "--json", "--no-refresh"]).expect_code(1).details();
    assert_eq!(found(&partly), injected, "the oldest hours without raw digests");
    assert!(partly["timings_ms"]["redis_hash"].is_u64(), "the hours with raw digests were hashed: {partly}");
    // A target none of whose rows has a raw digest: no member is hashed, every one is parsed
    // in a single pass, as before raw digests existed.
    forget_raw_digests(&env.pool, &sqlx::query_scalar::<_, String>("SELECT event_id::text FROM analytics_events_ts").fetch_all(&env.pool).await.unwrap()).await;
    let parsed = env.cli(&["validate", "--json", "--no-refresh"]).expect_code(1).details();
    assert_eq!(found(&parsed), injected, "every minute parsed");
    assert!(parsed["timings_ms"]["redis_hash"].is_null() && parsed["timings_ms"]["redis_parse"].is_u64(), "nothing hashed, all parsed: {parsed}");
    for other in [&partly, &parsed] {
        for part in ["hours_differing", "missing", "extra", "different"] {
            assert_eq!(field(field(&digests, "events"), part)["total"], field(field(other, "events"), part)["total"], "{part}");
        }
        for part in ["redis_events", "target_events", "dead_letters", "dead_letters_by_reason"] {
            assert_eq!(field(&digests, "events")[part], field(other, "events")[part], "{part}");
        }
    }
    env.cleanup().await;
}

/// The hourly validation job of `tsmigrate run` validates the whole migrated range: its run
/// is recorded with that range, a dirty one fails the job, and a clean one moves the phase
/// and opens the cutover gate as `tsmigrate validate` does.
#[tokio::test]
async fn the_hourly_validation_job_covers_the_whole_range_and_opens_the_gate() {
    use std::sync::Arc;
    use tsmigrate::daemon::jobs::{run_job, JobContext, JobName, JobOutcome};
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    delete_picked(&env.pool, 2, 3).await;
    let ctx = JobContext {
        ctx: tsmigrate::context::Context::with_target(Arc::new(env.settings.clone()), env.pool.clone())
            .with_legacy(env.pool.clone())
            .with_redis(env.redis().await),
        lease: tsmigrate::daemon::leader::Lease::sole(),
    };
    let dirty = run_job(&ctx, JobName::Validation).await;
    assert!(matches!(&dirty, JobOutcome::Failed(why) if why.contains("found differences")), "{dirty:?}");
    env.cli(&["repair"]).expect_success();
    let JobOutcome::Done(figures) = run_job(&ctx, JobName::Validation).await else { panic!("the repaired systems validate clean") };
    assert_eq!(figures["whole_range"], true, "{figures}");
    let whole: bool = sqlx::query_scalar("SELECT window_from <= range_from AND window_to >= range_to FROM tsmigrate.validation_runs ORDER BY id DESC LIMIT 1")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(whole, "the job's run is recorded as covering the whole range");
    assert_eq!(phase(&env.pool).await, "validated");
    env.cli(&["cutover"]).expect_success();
    env.cleanup().await;
}

/// `tsmigrate findings` shows what a run recorded: every finding, by kind, as text, the JSON
/// envelope and CSV; the latest run unless `--run` names another; clear errors otherwise.
#[tokio::test]
async fn findings_show_what_a_run_recorded_as_text_json_and_csv() {
    let env = TestEnv::new().await;
    migrate(&env, "postgres", seed_end());
    let none = env.cli(&["findings", "--json"]);
    none.expect_code(2);
    assert!(field(&none.json(), "error.message").as_str().unwrap().contains("no validation run is recorded yet"), "{}", none.stdout);
    assert_eq!(none.json()["next_steps"][0]["command"], "tsmigrate validate");

    let injected = inject(&env.pool).await;
    let run_id = field(&env.cli(&["validate", "--json"]).expect_code(1).details(), "run_id").as_i64().unwrap();
    let ids_of = |details: &Value, kind: &str| -> BTreeSet<String> {
        field(details, "findings").as_array().unwrap().iter().filter(|f| f["kind"] == kind).map(|f| f["event_id"].as_str().unwrap().to_string()).collect()
    };

    let all = env.cli(&["findings", "--json"]).expect_success().details();
    assert_eq!(field(&all, "run.id"), run_id);
    assert_eq!(field(&all, "run.result"), "differences");
    assert_eq!(field(&all, "total"), 7, "2 missing, 2 extra, 3 different: {all}");
    assert_eq!(ids_of(&all, "missing"), injected.missing);
    assert_eq!(ids_of(&all, "extra"), injected.extra);
    assert_eq!(ids_of(&all, "different"), injected.different.iter().map(|(id, _)| id.clone()).collect::<BTreeSet<_>>());

    let missing = env.cli(&["findings", "--kind", "missing", "--json"]).expect_success().details();
    assert_eq!(field(&missing, "kinds"), &json!(["missing"]));
    assert_eq!(ids_of(&missing, "missing"), injected.missing);
    assert_eq!(field(&missing, "total"), 2, "only the kind asked for: {missing}");
    let two = env.cli(&["findings", "--kind", "extra,different", "--run", &run_id.to_string(), "--json"]).expect_success().details();
    assert_eq!(field(&two, "total"), 5, "{two}");
    let json_format = env.cli(&["findings", "--format", "json"]).expect_success().json();
    assert_eq!(field(&json_format, "details.total"), 7, "--format json prints the envelope");

    let csv = env.cli(&["findings", "--kind", "extra", "--format", "csv"]);
    csv.expect_success();
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(lines[0], "run_id,kind,event_id,redis_time,target_time");
    assert_eq!(lines.len(), 3, "a header and one line per extra event:\n{}", csv.stdout);
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 5, "{line}");
        assert_eq!((cells[0], cells[1]), (run_id.to_string().as_str(), "extra"));
        assert!(injected.extra.contains(cells[2]), "{line}");
        assert_eq!(cells[3], "", "an extra event is not in Redis: {line}");
        assert!(cells[4].parse::<DateTime<Utc>>().is_ok(), "{line}");
    }

    let text = env.cli(&["findings"]);
    text.expect_success();
    assert!(text.stdout.contains(&format!("validation run #{run_id} (differences, events depth")), "{}", text.stdout);
    assert!(injected.missing.iter().all(|id| text.stdout.contains(id.as_str())), "{}", text.stdout);

    // A later clean run is the default; the earlier one is still there by number.
    env.cli(&["repair", "--delete-extra"]).expect_success();
    env.cli(&["validate"]).expect_success();
    let latest = env.cli(&["findings", "--json"]).expect_success().details();
    assert_eq!(field(&latest, "total"), 0, "{latest}");
    assert_ne!(field(&latest, "run.id"), run_id);
    assert_eq!(field(&env.cli(&["findings", "--run", &run_id.to_string(), "--json"]).expect_success().details(), "total"), 7);

    let unknown = env.cli(&["findings", "--run", "999999", "--json"]);
    unknown.expect_code(2);
    assert!(field(&unknown.json(), "error.message").as_str().unwrap().contains("there is no validation run #999999; the latest is #"), "{}", unknown.stdout);
    let both = env.cli(&["findings", "--format", "csv", "--json"]);
    both.expect_code(2);
    assert!(both.json()["error"]["message"].as_str().unwrap().contains("two formats"));
    env.cleanup().await;
}

/// The TimescaleDB half of "both modes agree"; the plain half, against the injected
/// differences themselves, is `injected_differences_are_found_and_reported_exactly`.
#[tokio::test]
async fn both_storage_modes_report_the_same_differences_timescaledb() {
    let plain = TestEnv::new().await;
    let ts = TestEnv::new().await;
    require_timescaledb_or_skip!(ts);
    let end = seed_end();
    migrate(&plain, "postgres", end);
    migrate(&ts, "timescaledb", end);
    let (a, b) = (inject(&plain.pool).await, inject(&ts.pool).await);
    assert_eq!(a, b, "the same seed and picks inject the same differences");
    let reports: Vec<Value> = [&plain, &ts].iter().map(|env| env.cli(&["validate", "--json"]).expect_code(1).details()).collect();
    assert_eq!(found(&reports[0]), a);
    assert_eq!(found(&reports[1]), a);
    for key in ["redis_events", "target_events", "dead_letters", "hours_compared", "hours_differing"] {
        assert_eq!(field(&reports[0]["events"], key), field(&reports[1]["events"], key), "{key}");
    }
    for check in ["legacy_hourly", "asset_popularity"] {
        assert_eq!(reports[0][check]["differences"], reports[1][check]["differences"], "{check}");
        assert_eq!(reports[0][check]["rows_compared"], reports[1][check]["rows_compared"], "{check}");
    }
    assert_eq!(field(&reports[1], "storage_mode"), "timescaledb");
    plain.cleanup().await;
    ts.cleanup().await;
}

#[tokio::test]
async fn exit_codes_say_refused_and_could_not_run() {
    let env = seeded_and_prepared().await;
    let refused = env.cli(&["validate"]);
    refused.expect_code(3);
    assert!(refused.stderr.contains("phase prepared") && refused.stderr.contains("dual-write start"), "{}", refused.stderr);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.validation_runs").fetch_one(&env.pool).await.unwrap();
    assert_eq!(runs, 0, "a refused validation is not a run");

    env.cli(&["dual-write", "start"]).expect_success();
    let unreachable = env.cli_with_env(&["validate"], &[("REDIS_URL", "redis://127.0.0.1:1")]);
    unreachable.expect_code(2);
    assert!(unreachable.stderr.contains("cannot connect to Redis"), "{}", unreachable.stderr);
    let recorded: (String, String, Value) = sqlx::query_as("SELECT result, phase, figures FROM tsmigrate.validation_runs").fetch_one(&env.pool).await.unwrap();
    assert_eq!((recorded.0.as_str(), recorded.1.as_str()), ("error", "dual_writing"));
    assert!(recorded.2["error"].as_str().unwrap().contains("Redis"), "{:?}", recorded.2);
    env.cleanup().await;
}

#[tokio::test]
async fn validation_before_backfill_covers_only_the_dual_written_hours() {
    let env = seeded_and_prepared().await;
    env.cli(&["dual-write", "start"]).expect_success();
    // No whole hour after the completion point has closed yet: nothing to compare, exit 2, and why.
    let out = env.cli(&["validate", "--settle", "90s"]);
    out.expect_code(2);
    assert!(out.stderr.contains("dual-write started") && out.stderr.contains("next:"), "{}", out.stderr);
    assert_eq!(phase(&env.pool).await, "dual_writing");
    env.cleanup().await;
}

/// Members with awkward JSON, each written by the project's writer (COPY and INSERT paths):
/// PostgreSQL's `properties::text` and fingerprint must equal the Rust ones, row by row.
#[tokio::test]
async fn rust_jsonb_text_and_fingerprints_match_postgres() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let tricky: Vec<&str> = vec![
        r#"{"b": 1, "aa": {"z": [1, {"y": null, "x": [true, false]}], "a": {}}, "a": [], "ä": "umlaut key", "ab": "x"}"#,
        r#"{"ab": "x", "a": [], "ä": "umlaut key", "aa": {"a": {}, "z": [1, {"x": [true, false], "y": null}]}, "b": 1}"#,
        r#"{"price": 1.50, "big": 1e21, "small": 1.5e-7, "neg": -3, "sum": 0.30000000000000004, "scaled": 1.25e1}"#,
        r#"{"u64": 18446744073709551615, "i64": -9223372036854775808, "huge": 123456789012345678901234, "one": 1.0, "negzero": -0.0}"#,
        r#"{"e15": 1e15, "e16": 1e16, "tiny": 1e-5, "neg_small": -1.5e-7, "frac": 0.1, "third": 0.3333333333333333}"#,
        r#"{"text": "quote \" backslash \\ slash / tab \t newline \n cr \r bs \b ff \f ctl \u0001 \u001f del \u007f"}"#,
        r#"{"unicode": "héllo wörld 日本語 😀 \u00e9 \ud83d\ude00", "emoji_key_😀": "v", "null_text": "\\N"}"#,
        r#"{"nested": {"deep": {"deeper": {"deepest": [[], [[]], {}, [{"k": "v"}]]}}}, "list": [1, "two", 3.5, null]}"#,
    ];
    let now = Utc::now().timestamp_millis();
    let base = now - 3_600_000;
    let events: Vec<TargetEvent> = tricky
        .iter()
        .enumerate()
        .map(|(i, props)| {
            let member = json!({
                "id": format!("tricky-{i}"),
                "event_name": if i == 5 { "tab\tin name" } else { "tricky" },
                "category": "test",
                "user_id": if i % 2 == 0 { json!(42) } else { json!(null) },
                "session_id": "s\\N",
                "properties": serde_json::from_str::<Value>(props).unwrap(),
                "device_info": {"os": "linux", "screen": {"w": 1920, "h": 1080.0}},
                "page_url": if i == 3 { json!(null) } else { json!("https://example.com/ä?q=1&r=\"2\"") },
            });
            TargetEvent::from_member(member.to_string().as_bytes(), (base + i as i64 * 1001) as f64, now).unwrap()
        })
        .collect();
    let writer = TargetWriter::new(env.pool.clone(), StorageMode::Postgres);
    writer.ensure_partitions(&events).await.unwrap();
    let (copied, inserted) = events.split_at(events.len() / 2);
    let mut tx = env.pool.begin().await.unwrap();
    assert_eq!(writer.copy(&mut tx, copied).await.unwrap().inserted as usize, copied.len());
    assert_eq!(writer.insert(&mut tx, inserted).await.unwrap().inserted as usize, inserted.len());
    tx.commit().await.unwrap();

    let from = DateTime::from_timestamp_millis(base).unwrap();
    let rows: Vec<(uuid::Uuid, i64, String, i64)> =
        sqlx::query_as(sql::EVENT_FINGERPRINTS).bind(from).bind(from + Duration::hours(1)).fetch_all(&env.pool).await.unwrap();
    assert_eq!(rows.len(), events.len());
    let texts: Vec<(uuid::Uuid, String, String)> =
        sqlx::query_as("SELECT event_id, properties::text, device_info::text FROM analytics_events_ts").fetch_all(&env.pool).await.unwrap();
    let mut fingerprinter = Fingerprinter::default();
    for event in &events {
        let (_, properties, device_info) = texts.iter().find(|t| t.0 == event.event_id).unwrap();
        assert_eq!(&jsonb_text(&event.properties), properties, "properties of {:?}", event.properties);
        assert_eq!(&jsonb_text(&event.device_info), device_info);
        let (_, time_ms, _, fingerprint) = rows.iter().find(|r| r.0 == event.event_id).unwrap();
        assert_eq!(*time_ms, event.time_ms());
        assert_eq!(fingerprinter.fingerprint(event), *fingerprint as u64, "fingerprint of {:?}", event.properties);
    }
    // Both write paths stored with each row the fingerprint SQL computes from its content.
    let stored: Vec<(uuid::Uuid, Option<i64>)> =
        sqlx::query_as("SELECT event_id, stored_fingerprint FROM analytics_events_ts").fetch_all(&env.pool).await.unwrap();
    for (id, stored) in &stored {
        let (_, _, _, fingerprint) = rows.iter().find(|r| r.0 == *id).unwrap();
        assert_eq!(*stored, Some(*fingerprint), "stored fingerprint of {id}");
    }
    // Key order and number formatting are not differences: rows 0 and 1 hold the same object.
    assert_eq!(jsonb_text(&events[0].properties), jsonb_text(&events[1].properties));

    // The hour sum in SQL, reduced modulo 2^64, is the wrapping sum of the Rust fingerprints.
    let sum: String = sqlx::query_scalar(&format!("SELECT sum(fingerprint)::text FROM ({}) f", sql::EVENT_FINGERPRINTS))
        .bind(from)
        .bind(from + Duration::hours(1))
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let rust_sum = events.iter().fold(0u64, |acc, e| acc.wrapping_add(fingerprinter.fingerprint(e)));
    assert_eq!(tsmigrate::validate::collect::target::wrap_sum(&sum).unwrap(), rust_sum);
    env.cleanup().await;
}
