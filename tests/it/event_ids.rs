//! Event identity, pinned. Every expected id below was computed once, outside this code
//! (Python's `uuid.uuid5` with the namespace below), and is written here as a literal: if
//! the id scheme changed, events already in a target would be written again under new ids
//! by the next relay, backfill or tail run — duplicates across versions. These tests must
//! fail first.

use redis::AsyncCommands;
use serde_json::Value;
use tsmigrate::event::{derived_id, id_from_string, TargetEvent, EVENT_ID_NAMESPACE};

use crate::scenario::{prepare_and_dual_write, Mode};
use crate::support::{field, TestEnv};

const NAMESPACE: &str = "5c1f2a8e-93d4-4b7a-a0e6-0d3f8c217b94";
const NOW_MS: i64 = 1_763_800_000_000;
const SCORE: f64 = 1_763_700_000_000.0;

/// (member exactly as stored in Redis, its event id).
const MEMBERS: &[(&str, &str)] = &[
    // A string id that is not a UUID: uuid5(namespace, "id:" + id).
    (r#"{"id":"evt-42","event_name":"x","category":"y"}"#, "658da464-134c-5506-895b-16742224de2b"),
    (r#"{"id":"evt-1","event_name":"click","category":"ui","timestamp":1763700000000}"#, "94b88dfb-ba45-5d8e-96c1-0bf7585dbf46"),
    // A numeric id: the same as the string of its digits.
    (r#"{"id":12345,"event_name":"x","category":"y"}"#, "ed80ca48-77b1-5674-b494-ea570ce83d6e"),
    // A UUID id is the event id itself.
    (r#"{"id":"0b7e8f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","event_name":"x","category":"y"}"#, "0b7e8f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"),
    // No id (or an empty or null one): uuid5(namespace, "member:" + the exact member bytes).
    (r#"{"event_name":"search","category":"discovery","user_id":"u1","timestamp":1763700000500}"#, "b5a1d015-95ec-515d-b725-c0b2db3df455"),
    (r#"{"event_name":"click","category":"ui"}"#, "20186e55-993e-542a-b6f3-21d700ede2c5"),
    // The same fields in another order are another member (Redis stores both), so another id.
    (r#"{"category":"ui","event_name":"click"}"#, "af25a79c-7052-553d-9db2-de1a07004a5e"),
];

#[test]
fn the_namespace_and_string_ids_are_pinned() {
    assert_eq!(EVENT_ID_NAMESPACE.to_string(), NAMESPACE);
    assert_eq!(id_from_string("evt-42").to_string(), "658da464-134c-5506-895b-16742224de2b");
    assert_eq!(id_from_string("evt-1").to_string(), "94b88dfb-ba45-5d8e-96c1-0bf7585dbf46");
    assert_eq!(id_from_string("12345").to_string(), "ed80ca48-77b1-5674-b494-ea570ce83d6e");
    assert_eq!(id_from_string("0B7E8F6A-1C2D-4E5F-8A9B-0C1D2E3F4A5B").to_string(), "0b7e8f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
    assert_eq!(derived_id(br#"{"event_name":"click","category":"ui"}"#).to_string(), "20186e55-993e-542a-b6f3-21d700ede2c5");
}

#[test]
fn member_ids_are_pinned() {
    for (member, expected) in MEMBERS {
        let event = TargetEvent::from_member(member.as_bytes(), SCORE, NOW_MS).unwrap_or_else(|e| panic!("{member}: {e}"));
        assert_eq!(event.event_id.to_string(), *expected, "{member}");
    }
    for member in [r#"{"id":"","event_name":"click","category":"ui"}"#, r#"{"id":null,"event_name":"click","category":"ui"}"#] {
        let event = TargetEvent::from_member(member.as_bytes(), SCORE, NOW_MS).unwrap();
        assert_eq!(event.event_id, derived_id(member.as_bytes()), "{member}: an empty id counts as none");
        assert_ne!(event.event_id.to_string(), "20186e55-993e-542a-b6f3-21d700ede2c5", "the member's exact bytes, id field included");
    }
}

/// The ids the backfill writes into the target are the pinned ones.
#[tokio::test]
async fn the_target_rows_carry_the_pinned_ids() {
    let env = TestEnv::new().await;
    let mut redis = env.redis().await;
    for (i, (member, _)) in MEMBERS.iter().enumerate() {
        let _: () = redis.zadd(env.keys().events, *member, SCORE + i as f64).await.unwrap();
    }
    env.cli(&["legacy", "setup"]).expect_success(); // the backfill imports the legacy history too
    prepare_and_dual_write(&env, Mode::Postgres);
    let report = env.cli(&["backfill", "--json"]).expect_success().details();
    assert_eq!(field(&report, "inserted"), &Value::from(MEMBERS.len()));
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id::text FROM analytics_events_ts ORDER BY time").fetch_all(&env.pool).await.unwrap();
    assert_eq!(stored, MEMBERS.iter().map(|(_, id)| id.to_string()).collect::<Vec<_>>());
}
