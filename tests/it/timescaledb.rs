//! The TimescaleDB tier: `prepare --mode timescaledb` and what it builds. Skips loudly on a
//! server without the extension (see `support::ts_tier`); `TSMIGRATE_REQUIRE_TIMESCALEDB=1`
//! makes that a failure.

use serde_json::Value;

use crate::support::{field, TestEnv};

/// The config of the one job `proc_name` runs on `target` (a hypertable or aggregate).
async fn job_config(env: &TestEnv, proc_name: &str, target: &str) -> Value {
    let configs: Vec<Value> = sqlx::query_scalar("SELECT config FROM timescaledb_information.jobs WHERE proc_name = $1 AND hypertable_name = $2")
        .bind(proc_name)
        .bind(target)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(configs.len(), 1, "expected one {proc_name} job on {target}, found {configs:?}");
    configs.into_iter().next().unwrap()
}

#[tokio::test]
async fn prepare_timescaledb_builds_hypertable_aggregates_and_policies() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    let out = env.cli(&["prepare", "--mode", "timescaledb"]);
    out.expect_success();
    assert!(out.stdout.contains("storage mode: timescaledb"), "{}", out.stdout);

    let hypertables: Vec<String> =
        sqlx::query_scalar("SELECT hypertable_name::text FROM timescaledb_information.hypertables WHERE hypertable_schema = 'public'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(hypertables, vec!["analytics_events_ts".to_string()]);
    let chunk_interval: String = sqlx::query_scalar(
        "SELECT time_interval::text FROM timescaledb_information.dimensions WHERE hypertable_name = 'analytics_events_ts' AND column_name = 'time'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(chunk_interval, "1 day");

    // Continuous aggregates, all with real-time aggregation.
    let caggs: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT view_name::text, hypertable_name::text, materialized_only FROM timescaledb_information.continuous_aggregates ORDER BY 1")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let expected: Vec<(String, String, bool)> = ["analytics_asset_popularity_ts", "analytics_daily", "analytics_hourly"]
        .iter()
        .map(|v| (v.to_string(), "analytics_events_ts".to_string(), false))
        .collect();
    assert_eq!(caggs, expected, "each aggregate reads the raw hypertable (distinct counts do not roll up)");

    // Refresh policies with their real offsets: the hourly window must cover two buckets beyond end_offset.
    let hourly = job_config(&env, "policy_refresh_continuous_aggregate", "analytics_hourly").await;
    assert_eq!((hourly["start_offset"].as_str(), hourly["end_offset"].as_str()), (Some("03:00:00"), Some("01:00:00")), "{hourly}");
    for daily in ["analytics_daily", "analytics_asset_popularity_ts"] {
        let config = job_config(&env, "policy_refresh_continuous_aggregate", daily).await;
        assert_eq!((config["start_offset"].as_str(), config["end_offset"].as_str()), (Some("3 days"), Some("01:00:00")), "{daily}: {config}");
    }

    // Columnstore: segment by category, event_name; order by time DESC first.
    let (segmentby, orderby): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT segmentby, orderby FROM timescaledb_information.hypertable_columnstore_settings WHERE hypertable = 'analytics_events_ts'::regclass",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(segmentby.as_deref(), Some("category,event_name"));
    let orderby = orderby.unwrap_or_default();
    assert!(orderby.starts_with("\"time\" DESC") || orderby.starts_with("time DESC"), "orderby {orderby:?}");
    let columnstore = job_config(&env, "policy_compression", "analytics_events_ts").await;
    assert_eq!(columnstore["compress_after"], "7 days", "{columnstore}");

    // Retention: raw 90 days, hourly 1 year, daily (and asset popularity) 5 years.
    for (target, days) in
        [("analytics_events_ts", "90 days"), ("analytics_hourly", "365 days"), ("analytics_daily", "1825 days"), ("analytics_asset_popularity_ts", "1825 days")]
    {
        let config = job_config(&env, "policy_retention", target).await;
        assert_eq!(config["drop_after"], days, "{target}: {config}");
    }

    // status --json shows the mode, every object and the policies with their config.
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(field(&status, "storage_mode"), "timescaledb");
    assert_eq!(field(&status, "phase"), "prepared");
    assert!(field(&status, "target.timescaledb.installed").is_string(), "{status}");
    let jobs = field(&status, "jobs").as_array().unwrap();
    assert!(jobs.iter().filter(|j| j["runs_in"] == "timescaledb").count() >= 8, "the policy jobs are watched: {jobs:?}");
    let objects = field(&status, "objects").as_array().unwrap();
    assert!(objects.iter().all(|o| o["present"] == Value::Bool(true)), "{objects:?}");
    assert!(objects.iter().any(|o| o["name"] == "analytics_events_ts" && o["kind"] == "hypertable"));
    let policies = field(&status, "policies").as_array().unwrap();
    assert_eq!(policies.len(), 8, "3 refresh + 1 columnstore + 4 retention: {policies:#?}");
    let hourly_policy = policies
        .iter()
        .find(|p| p["target"] == "analytics_hourly" && p["name"].as_str().unwrap().starts_with("policy_refresh_continuous_aggregate"))
        .expect("the hourly refresh policy is listed");
    assert_eq!(hourly_policy["config"]["start_offset"], "03:00:00");
    assert_eq!(hourly_policy["scheduled"], Value::Bool(true));
}

#[tokio::test]
async fn prepare_timescaledb_twice_is_a_no_op() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    env.cli(&["prepare", "--mode", "timescaledb"]).expect_success();
    let report = env.cli(&["prepare", "--mode", "timescaledb", "--json"]).expect_success().details();
    assert_eq!(field(&report, "changed"), &Value::Bool(false));
    assert_eq!(field(&report, "applied"), &Value::Array(vec![]));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM timescaledb_information.jobs WHERE job_id >= 1000").fetch_one(&env.pool).await.unwrap();
    assert_eq!(jobs, 8, "policies are not added twice");
}

#[tokio::test]
async fn auto_mode_picks_timescaledb_when_the_server_has_it() {
    let env = TestEnv::new().await;
    require_timescaledb_or_skip!(env);
    let report = env.cli(&["prepare", "--json"]).expect_success().details();
    assert_eq!(field(&report, "mode"), "timescaledb");
    // A target prepared in TimescaleDB mode cannot be switched to plain mode in place.
    let out = env.cli(&["prepare", "--mode", "postgres"]);
    out.expect_code(2);
    assert!(out.stderr.contains("prepared in timescaledb mode"), "{}", out.stderr);
}
