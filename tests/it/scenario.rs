//! Building blocks shared by the migration-flow tests: a seeded legacy system, a target
//! in a given storage mode, and exact counts of both sides.

use serde_json::Value;

use crate::support::TestEnv;

/// The storage modes a flow test runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Postgres,
    Timescaledb,
}

impl Mode {
    pub fn arg(self) -> &'static str {
        match self {
            Mode::Postgres => "postgres",
            Mode::Timescaledb => "timescaledb",
        }
    }
}

/// `tsmigrate seed` through the CLI; returns its JSON summary.
pub fn seed(env: &TestEnv, events: u64, messy: bool) -> Value {
    let events = events.to_string();
    let mut args = vec!["seed", "--events", &events, "--days", "2", "--users", "50", "--seed", "11", "--end", "-2h", "--json"];
    if messy {
        args.push("--messy");
    }
    env.cli(&args).expect_success().details()
}

/// prepare (in `mode`) and dual-write start.
pub fn prepare_and_dual_write(env: &TestEnv, mode: Mode) {
    env.cli(&["prepare", "--mode", mode.arg()]).expect_success();
    env.cli(&["dual-write", "start"]).expect_success();
}

/// (rows, distinct (event_id, time)) in the target's raw table.
pub async fn target_counts(env: &TestEnv) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT (event_id, time)) FROM analytics_events_ts").fetch_one(&env.pool).await.unwrap()
}

pub async fn dead_letters(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tsmigrate.dead_letter").fetch_one(&env.pool).await.unwrap()
}

/// Every Redis key under the env's prefix with its serialized value (`DUMP`): equal
/// snapshots mean nothing under the prefix was written.
pub async fn redis_snapshot(env: &TestEnv) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut redis = env.redis().await;
    let mut snapshot = std::collections::BTreeMap::new();
    for key in crate::support::scan_keys(&mut redis, &env.prefix).await.unwrap() {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(&mut redis).await.unwrap();
        snapshot.insert(key, dump);
    }
    snapshot
}
