//! Poison events and retries: one event the target cannot store never stalls a path
//! (ingest refuses it; relay, tail, backfill, its window repair and the legacy flush set it aside as a dead
//! letter or a counted skip and carry on), a resend without a timestamp is one row, a
//! conflicting version of an event is a dead letter with both versions, and members
//! scored where no path reads them are reported by backfill and validate.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, TimeZone, Utc};
use http_body_util::BodyExt;
use rand::Rng;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tower::ServiceExt;
use tsmigrate::dual_write::relay::RelayOutcome;
use tsmigrate::dual_write::tail::{Tail, TailOutcome};
use tsmigrate::event::{IncomingEvent, IngestLimits};
use tsmigrate::legacy::{flush, schema, writer};
use tsmigrate::store::writer::TargetWriter;
use tsmigrate::store::StorageMode;

use crate::dual_write::{drain, post, relay_for, router};
use crate::scenario::{prepare_and_dual_write, target_counts, Mode};
use crate::support::{field, TestEnv};

/// A member as an application writing Redis itself would: compact JSON.
fn member(id: &str, name: &str, properties: Value) -> String {
    json!({"id": id, "event_name": name, "category": "test", "properties": properties}).to_string()
}

/// An event name too long for a btree index row (PostgreSQL refuses it with SQLSTATE
/// 54000): random, so compression cannot shrink it under the limit. Ingest would refuse it
/// (256 characters at most), but applications writing Redis themselves do not ask ingest.
fn unindexable_name() -> String {
    rand::rng().sample_iter(&rand::distr::Alphanumeric).take(8000).map(char::from).collect()
}

fn storage(mode: Mode) -> StorageMode {
    match mode {
        Mode::Postgres => StorageMode::Postgres,
        Mode::Timescaledb => StorageMode::Timescaledb,
    }
}

/// (source, raw, score, reason_code, reason) of every dead letter, oldest first.
type Letter = (String, Vec<u8>, Option<f64>, String, String);

async fn letters(env: &TestEnv) -> Vec<Letter> {
    sqlx::query_as("SELECT source, raw, score, reason_code, reason FROM tsmigrate.dead_letter ORDER BY id").fetch_all(&env.pool).await.unwrap()
}

#[track_caller]
fn letter<'a>(all: &'a [Letter], code: &str) -> &'a Letter {
    all.iter().find(|l| l.3 == code).unwrap_or_else(|| panic!("no {code} dead letter in {:?}", all.iter().map(|l| (&l.3, &l.4)).collect::<Vec<_>>()))
}

/// An outbox entry as the ingest `MULTI` (or an application adding the same `XADD`) writes it.
async fn xadd(redis: &mut tsmigrate::connect::RedisConn, stream: &str, member: &str, score: Option<i64>) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*").arg("m").arg(member);
    if let Some(score) = score {
        cmd.arg("s").arg(score);
    }
    cmd.query_async::<String>(redis).await.unwrap();
}

#[tokio::test]
async fn ingest_refuses_nul_characters_naming_the_field() {
    let env = TestEnv::new().await;
    let router = router(&env).await;
    let body = json!({"events": [
        {"event_name": "ok", "category": "c"},
        {"event_name": "a\u{0}b", "category": "c"},
        {"event_name": "ok", "category": "c", "properties": {"k\u{0}": "v"}},
        {"event_name": "ok", "category": "c", "device_info": {"os": ["linux", "\u{0}"]}},
    ]})
    .to_string();
    assert!(body.contains(r#""a\u0000b""#), "the NUL travels as the JSON escape: {body}");
    let (status, answer) = post(&router, &body, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    let named: Vec<(u64, String)> = rejected.iter().map(|r| (r["index"].as_u64().unwrap(), r["problems"][0].as_str().unwrap().to_string())).collect();
    assert_eq!(named.len(), 3, "{answer}");
    for ((index, problem), (want_index, want_field)) in named.iter().zip([(1, "event_name "), (2, "properties.k\\0 "), (3, "device_info.os[1] ")]) {
        assert_eq!(*index, want_index);
        assert!(problem.starts_with(want_field) && problem.contains("NUL"), "{problem}");
    }
    let mut redis = env.redis().await;
    let stored: u64 = redis.zcard(env.keys().events).await.unwrap();
    assert_eq!(stored, 0, "nothing of the batch was written");
}

async fn relay_sets_poison_aside(mode: Mode) {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, mode);
    let mut redis = env.redis().await;
    let outbox = env.keys().outbox;
    let now = Utc::now().timestamp_millis();
    let nul = member("nul", "a\u{0}b", json!({}));
    let long = member("too-long", &unindexable_name(), json!({}));
    let no_score = member("no-score", "click", json!({}));
    for (m, score) in [
        (member("good-1", "click", json!({})), Some(now - 5000)),
        (nul.clone(), Some(now - 4000)),
        (member("good-2", "click", json!({"k": "v"})), Some(now - 3000)),
        (long.clone(), Some(now - 2000)),
        (no_score.clone(), None),
        (member("good-3", "search", json!({})), Some(now - 1000)),
    ] {
        xadd(&mut redis, &outbox, &m, score).await;
    }
    let mut relay = relay_for(&env, env.redis().await, env.pool.clone(), storage(mode), Duration::from_secs(60));
    relay.ensure_group().await.unwrap();
    assert_eq!(relay.step().await.unwrap(), RelayOutcome::Relayed { entries: 6, events: 6, inserted: 3, dead_letters: 3 });
    assert_eq!(target_counts(&env).await, (3, 3), "the good events around the poison landed");
    let left: u64 = redis.xlen(&outbox).await.unwrap();
    let pending: (u64, redis::Value, redis::Value, redis::Value) =
        redis::cmd("XPENDING").arg(&outbox).arg(&env.settings.redis.outbox_group).query_async(&mut redis).await.unwrap();
    assert_eq!((left, pending.0), (0, 0), "every entry was acknowledged and deleted");

    let all = letters(&env).await;
    assert_eq!(all.len(), 3, "{all:?}");
    let unstorable = letter(&all, "unstorable");
    assert_eq!((unstorable.0.as_str(), unstorable.1.as_slice(), unstorable.2), ("relay", nul.as_bytes(), Some((now - 4000) as f64)));
    assert!(unstorable.4.contains("event_name") && unstorable.4.contains("NUL"), "{}", unstorable.4);
    let refused = letter(&all, "rejected_by_target");
    assert_eq!(refused.1, long.as_bytes(), "raw bytes kept");
    assert!(refused.4.contains("54000"), "the server's reason: {}", refused.4);
    assert_eq!(letter(&all, "bad_score").1, no_score.as_bytes());

    // The stream moves on.
    xadd(&mut redis, &outbox, &member("good-4", "click", json!({})), Some(now)).await;
    assert_eq!(drain(&mut relay).await, 1);
    assert_eq!(target_counts(&env).await, (4, 4));
}

#[tokio::test]
async fn relay_stores_the_good_events_around_poison_and_acknowledges_all_plain() {
    relay_sets_poison_aside(Mode::Postgres).await;
}

#[tokio::test]
async fn relay_stores_the_good_events_around_poison_and_acknowledges_all_timescaledb() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    relay_sets_poison_aside(Mode::Timescaledb).await;
}

#[tokio::test]
async fn a_conflicting_version_of_an_event_is_a_dead_letter_with_both_versions() {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let mut redis = env.redis().await;
    let outbox = env.keys().outbox;
    let at = Utc::now().timestamp_millis() - 10_000;
    let first = member("evt-7", "purchase", json!({"plan": "pro"}));
    let other = member("evt-7", "purchase", json!({"plan": "team"}));
    // The identical member twice (a redelivery) is no conflict; another version is.
    for m in [&first, &first, &other] {
        xadd(&mut redis, &outbox, m, Some(at)).await;
    }
    let mut relay = relay_for(&env, env.redis().await, env.pool.clone(), StorageMode::Postgres, Duration::from_secs(60));
    assert_eq!(relay.step().await.unwrap(), RelayOutcome::Relayed { entries: 3, events: 3, inserted: 1, dead_letters: 1 });
    let stored: Value = sqlx::query_scalar("SELECT properties FROM analytics_events_ts").fetch_one(&env.pool).await.unwrap();
    assert_eq!(stored, json!({"plan": "pro"}), "the first version stays");
    let all = letters(&env).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let conflict = letter(&all, "conflicting_content");
    assert_eq!(conflict.1, other.as_bytes(), "the new version's bytes");
    assert!(conflict.4.contains("properties") && conflict.4.contains(r#""plan":"pro""#), "the stored version is named: {}", conflict.4);

    // Later (another batch, another path) the same conflict is recorded once.
    xadd(&mut redis, &outbox, &other, Some(at)).await;
    assert_eq!(relay.step().await.unwrap(), RelayOutcome::Relayed { entries: 1, events: 1, inserted: 0, dead_letters: 1 });
    assert_eq!(letters(&env).await.len(), 1);
}

#[tokio::test]
async fn a_resend_without_timestamp_is_one_row_and_a_changed_resend_a_conflict() {
    let env = TestEnv::new().await;
    prepare_and_dual_write(&env, Mode::Postgres);
    let router = router(&env).await;
    let event = r#"{"events":[{"id":"resend-1","event_name":"click","category":"ui"}]}"#;
    assert_eq!(post(&router, event, None).await.0, StatusCode::ACCEPTED);
    // A later millisecond for certain: without the first time remembered, the resend would be another row.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(post(&router, event, None).await.0, StatusCode::ACCEPTED);
    let mut redis = env.redis().await;
    let members: u64 = redis.zcard(env.keys().events).await.unwrap();
    assert_eq!(members, 1, "the resend is the identical member");
    let key = format!("{}:{}", env.keys().first_seen, tsmigrate::event::id_from_string("resend-1"));
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= 86_400, "the first time is remembered for the resend window: ttl {ttl}");

    let changed = r#"{"events":[{"id":"resend-1","event_name":"click","category":"ui","properties":{"changed":true}}]}"#;
    assert_eq!(post(&router, changed, None).await.0, StatusCode::ACCEPTED);
    let mut relay = relay_for(&env, env.redis().await, env.pool.clone(), StorageMode::Postgres, Duration::from_secs(60));
    assert_eq!(drain(&mut relay).await, 1);
    assert_eq!(target_counts(&env).await, (1, 1), "one row for the event and its resend");
    let all = letters(&env).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let conflict = letter(&all, "conflicting_content");
    assert!(String::from_utf8_lossy(&conflict.1).contains(r#""changed":true"#));
    assert!(conflict.4.contains(r#""properties":{}"#), "{}", conflict.4);
}

#[tokio::test]
async fn tail_mode_sets_poison_aside_and_is_not_carried_away_by_infinite_scores() {
    let env = TestEnv::new().await;
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let mut redis = env.redis().await;
    let keys = env.keys();
    let now = Utc::now().timestamp_millis();
    let nul = member("t-nul", "click", json!({"q": "x\u{0}"}));
    let members: [(String, f64); 6] = [
        (member("t-1", "click", json!({})), (now - 50_000) as f64),
        (nul.clone(), (now - 40_000) as f64),
        (member("t-long", &unindexable_name(), json!({})), (now - 30_000) as f64),
        (member("t-2", "click", json!({})), (now - 20_000) as f64),
        (member("t-inf", "click", json!({})), f64::INFINITY),
        (member("t-future", "click", json!({})), (now + 10 * 86_400_000) as f64),
    ];
    for (m, score) in &members {
        let _: () = redis::cmd("ZADD")
            .arg(&keys.events)
            .arg(if score.is_infinite() { "+inf".to_string() } else { score.to_string() })
            .arg(m)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let writer = Arc::new(TargetWriter::new(env.pool.clone(), StorageMode::Postgres));
    let mut tail = Tail::new(env.redis().await, writer, Arc::new(keys.clone()), Duration::from_secs(600), (now - 120_000) as f64);
    assert_eq!(tail.step(false).await.unwrap(), TailOutcome::Copied { read: 4, inserted: 2, dead_letters: 2 });
    let all = letters(&env).await;
    assert_eq!((letter(&all, "unstorable").1.as_slice(), letter(&all, "rejected_by_target").0.as_str()), (nul.as_bytes(), "tail"));

    // The position stayed among real event times: the next event is still picked up.
    let fresh = member("t-3", "click", json!({}));
    let _: () = redis.zadd(&keys.events, fresh, now + 1000).await.unwrap();
    match tail.step(false).await.unwrap() {
        TailOutcome::Copied { inserted, .. } => assert_eq!(inserted, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(target_counts(&env).await, (3, 3));
}

/// Members an application wrote with times no path reads: -inf, +inf, ten days ahead.
async fn add_out_of_range(env: &TestEnv) {
    let mut redis = env.redis().await;
    let keys = env.keys();
    let ahead = Utc::now().timestamp_millis() + 10 * 86_400_000;
    for (score, m) in [
        ("-inf".to_string(), member("neg-inf", "click", json!({}))),
        ("+inf".into(), member("pos-inf", "click", json!({}))),
        (ahead.to_string(), member("ahead", "click", json!({}))),
    ] {
        let _: () = redis::cmd("ZADD").arg(&keys.events).arg(score).arg(m).query_async(&mut redis).await.unwrap();
    }
}

#[track_caller]
fn assert_out_of_range(out_of_range: &Value) {
    assert_eq!((field(out_of_range, "before").as_u64(), field(out_of_range, "after").as_u64()), (Some(1), Some(2)), "{out_of_range}");
    let scores: Vec<&str> = field(out_of_range, "examples").as_array().unwrap().iter().map(|e| e["score"].as_str().unwrap()).collect();
    assert!(scores.contains(&"-inf") && scores.contains(&"+inf"), "{out_of_range}");
}

async fn backfill_sets_poison_aside(mode: Mode) {
    let env = TestEnv::new().await;
    let mut redis = env.redis().await;
    let keys = env.keys();
    let base = Utc::now().timestamp_millis() - 3 * 3_600_000;
    for i in 0..20 {
        let _: () = redis.zadd(&keys.events, member(&format!("b-{i}"), "click", json!({"i": i})), base + i * 1000).await.unwrap();
    }
    let nul = member("b-nul", "a\u{0}b", json!({}));
    let long = member("b-long", &unindexable_name(), json!({}));
    let first = member("b-dup", "click", json!({"v": 1}));
    let other = member("b-dup", "click", json!({"v": 2}));
    for (m, at) in [(&nul, base + 500), (&long, base + 1500), (&first, base + 2500), (&other, base + 2500)] {
        let _: () = redis.zadd(&keys.events, m, at).await.unwrap();
    }
    add_out_of_range(&env).await;
    // The legacy tables the history import reads.
    schema::ensure(&env.pool, &env.settings.legacy).await.unwrap();
    prepare_and_dual_write(&env, mode);

    let report = env.cli(&["backfill", "--json"]).expect_success().details();
    assert_eq!(target_counts(&env).await, (21, 21), "the 20 events and one version of b-dup");
    let counted = ["read", "inserted", "already_present", "dead_letters"].map(|k| field(&report, k).as_i64().unwrap());
    assert_eq!(counted, [24, 21, 0, 3], "24 members read between -inf and +inf (exclusive): {report}");
    let named: Vec<&str> = field(&report, "dead_letter_examples").as_array().unwrap().iter().map(|d| d["reason_code"].as_str().unwrap()).collect();
    for code in ["unstorable", "rejected_by_target", "conflicting_content"] {
        assert!(named.contains(&code), "{code} named in {named:?}");
    }
    assert_out_of_range(field(&report, "out_of_range"));
    let all = letters(&env).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(letter(&all, "unstorable").1, nul.as_bytes());
    assert_eq!(letter(&all, "rejected_by_target").1, long.as_bytes());
    // Which of two members with one score COPY met first is Redis' byte order: either may be the stored one.
    let conflict = letter(&all, "conflicting_content");
    assert!(conflict.1 == other.as_bytes() || conflict.1 == first.as_bytes());

    // A re-run is a no-op that still names what was set aside.
    let again = env.cli(&["backfill"]).expect_success().stdout.clone();
    assert!(again.contains("dead letter at score") && again.contains("holds a NUL character"), "{again}");
    assert!(again.contains("warning: 3 member(s) scored outside the valid event-time range"), "{again}");
    assert_eq!(target_counts(&env).await, (21, 21));
    assert_eq!(letters(&env).await.len(), 3);

    // The window repair (`backfill --from --to`) sets poison aside the same way.
    let late = Utc::now().timestamp_millis() - 60_000;
    let repair_nul = member("r-nul", "click", json!({"k\u{0}": 1}));
    for (m, at) in [(member("r-1", "click", json!({})), late), (repair_nul.clone(), late + 1), (member("r-2", "click", json!({})), late + 2)] {
        let _: () = redis.zadd(&keys.events, m, at).await.unwrap();
    }
    let repaired = env.cli(&["backfill", "--from", "-5m", "--to", "-0s", "--json"]).expect_success().details();
    assert_eq!(["inserted", "dead_letters"].map(|k| field(&repaired, k).as_i64().unwrap()), [2, 1], "{repaired}");
    let all = letters(&env).await;
    let repaired_letter = all.iter().find(|l| l.0 == "repair").expect("a dead letter from the repair");
    assert_eq!((repaired_letter.1.as_slice(), repaired_letter.3.as_str()), (repair_nul.as_bytes(), "unstorable"));
}

#[tokio::test]
async fn backfill_sets_poison_aside_names_it_and_reruns_as_a_no_op_plain() {
    backfill_sets_poison_aside(Mode::Postgres).await;
}

#[tokio::test]
async fn backfill_sets_poison_aside_names_it_and_reruns_as_a_no_op_timescaledb() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    backfill_sets_poison_aside(Mode::Timescaledb).await;
}

async fn validate_reports_out_of_range(mode: Mode) -> Value {
    let env = TestEnv::new().await;
    let end = tsmigrate::calendar::hour_floor(Utc::now(), chrono_tz::Tz::UTC) - chrono::Duration::hours(1);
    env.cli(&["seed", "--events", "1500", "--days", "1", "--users", "40", "--messy", "--end", &end.to_rfc3339()]).expect_success();
    add_out_of_range(&env).await;
    prepare_and_dual_write(&env, mode);
    env.cli(&["backfill"]).expect_success();
    let mut counts = None;
    for depth in ["counts", "events"] {
        let report = env.cli(&["validate", "--depth", depth, "--json"]).expect_success().details();
        assert_eq!(field(&report, "result"), "clean", "out-of-range members are reported, not differences: {report}");
        let out_of_range = field(field(&report, "events"), "out_of_range");
        assert_out_of_range(out_of_range);
        counts.get_or_insert_with(|| out_of_range.clone());
    }
    let text = env.cli(&["validate"]).expect_success().stdout.clone();
    assert!(text.contains("warning: 3 member(s) scored outside the valid event-time range"), "{text}");
    let figures: Value = sqlx::query_scalar("SELECT figures FROM tsmigrate.validation_runs ORDER BY id DESC LIMIT 1").fetch_one(&env.pool).await.unwrap();
    assert_eq!(figures["out_of_range"], json!(3));
    let mut shape = counts.unwrap();
    shape["examples"] = json!(shape["examples"].as_array().unwrap().len());
    shape
}

#[tokio::test]
async fn validate_reports_members_no_path_reads_in_both_modes() {
    let plain = validate_reports_out_of_range(Mode::Postgres).await;
    let probe = TestEnv::new().await;
    if crate::support::ts_tier_half(&probe, "the TimescaleDB half").await {
        assert_eq!(plain, validate_reports_out_of_range(Mode::Timescaledb).await, "both modes report the same");
    }
}

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, h, m, 0).unwrap()
}

#[tokio::test]
async fn legacy_flush_skips_poison_and_counts_the_rest_of_the_hour() {
    let env = TestEnv::new().await;
    let keys = env.keys();
    let mut redis = env.redis().await;
    schema::ensure(&env.pool, &env.settings.legacy).await.unwrap();
    let good: Vec<_> = (0..3)
        .map(|i| {
            let incoming = IncomingEvent {
                id: Some(format!("f-{i}")),
                event_name: Some("page_view".into()),
                category: Some("navigation".into()),
                user_id: Some(json!(format!("u{i}"))),
                timestamp: Some(json!(at(10, 10 + i).to_rfc3339())),
                ..Default::default()
            };
            incoming.validate(Utc::now(), IngestLimits::default()).unwrap()
        })
        .collect();
    writer::write_batch(&mut redis, &keys, env.settings.redis.event_cap, &good, false).await.unwrap();
    let _: () = redis.zadd(&keys.events, member("f-nul", "a\u{0}b", json!({})), at(10, 30).timestamp_millis()).await.unwrap();
    let _: () = redis.zadd(&keys.events, member("f-long", &unindexable_name(), json!({})), at(10, 40).timestamp_millis()).await.unwrap();

    let tz = env.settings.target.timezone();
    let outcome = flush::flush_range(&mut redis, &env.pool, &keys, &env.settings.legacy, tz, at(10, 0), at(11, 0)).await.expect("the hour is flushed");
    assert_eq!((outcome.events_read, outcome.skipped_members, outcome.rejected_rows, outcome.hourly_rows), (4, 1, 1, 1), "{outcome:?}");
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT event_name, event_count, unique_users FROM analytics_events").fetch_all(&env.pool).await.unwrap();
    assert_eq!(rows, vec![("page_view".to_string(), 3, 3)]);
}

#[tokio::test]
async fn read_filters_with_a_nul_character_get_400() {
    let env = TestEnv::new().await;
    schema::ensure(&env.pool, &env.settings.legacy).await.unwrap();
    let pool = tsmigrate::db::target_pool(&env.settings).await.unwrap();
    let router = tsmigrate::http::app(tsmigrate::http::AppState::new(
        tsmigrate::context::Context::with_target(std::sync::Arc::new(env.settings.clone()), pool),
        env.redis().await,
    ));
    let get = |uri: String| {
        let router = router.clone();
        async move {
            let response = router.oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap()).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    let base = "/api/v1/analytics/hourly?from=2025-03-10&to=2025-03-11";
    let (status, body) = get(format!("{base}&event_name=click")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (param, name) in [("event_name=a%00b", "event_name"), ("category=%00", "category")] {
        let (status, body) = get(format!("{base}&{param}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{param}: {body}");
        assert!(body.contains(name) && body.contains("NUL"), "{body}");
    }
}
