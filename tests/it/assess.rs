//! `tsmigrate assess` on seeded systems of known shape: the figures against the truth read
//! from the same servers (tolerances stated per figure), the verdict flipping at each
//! threshold, nothing written anywhere, `--write-config` accepted by `config check`, and the
//! TimescaleDB mode's compressed sample (TimescaleDB tier).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde_json::Value;

use crate::support::{field, scan_keys, ts_tier, TestEnv};

/// The seeded shape: 12,000 events over 3 whole days, 60 users, a cap of 3,000 (Redis holds
/// the newest 3,000, well under a day), no messy members.
const EVENTS: u64 = 12_000;
const DAYS: u64 = 3;
const CAP: u64 = 3_000;
const END: &str = "2026-03-10T00:00:00Z";

fn config(env: &TestEnv, name: &str, mode: &str, assess: &str) -> PathBuf {
    env.write_file(name, &format!("[redis]\nevent_cap = {CAP}\n[target]\nmode = \"{mode}\"\n[assess]\n{assess}"))
}

fn run(env: &TestEnv, config: &std::path::Path, args: &[&str]) -> crate::support::CliOutput {
    env.cli_with_env(args, &[("TSMIGRATE_CONFIG", config.to_str().unwrap())])
}

async fn seeded(mode: &str) -> (TestEnv, PathBuf) {
    let env = TestEnv::new().await;
    let base = seed(&env, mode);
    (env, base)
}

fn seed(env: &TestEnv, mode: &str) -> PathBuf {
    let base = config(env, "seed.toml", mode, "");
    run(env, &base, &["legacy", "setup"]).expect_success();
    let (events, days) = (EVENTS.to_string(), DAYS.to_string());
    run(env, &base, &["seed", "--events", &events, "--days", &days, "--users", "60", "--seed", "5", "--end", END]).expect_success();
    base
}

/// Every key under the prefix with its DUMP, the legacy tables' content, and the relations
/// and schemas of the database: what "read-only" must leave unchanged.
async fn digest(env: &TestEnv) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let mut redis = env.redis().await;
    let mut keys = Vec::new();
    for key in scan_keys(&mut redis, &env.prefix).await.unwrap() {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(&mut redis).await.unwrap();
        keys.push((key, dump));
    }
    let mut db = Vec::new();
    for sql in [
        "SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY hour, event_name, category)), '') FROM analytics_events t",
        "SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY day, asset_type)), '') FROM analytics_asset_popularity t",
        "SELECT string_agg(n.nspname || '.' || c.relname, ',' ORDER BY 1) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'",
        "SELECT string_agg(nspname, ',' ORDER BY 1) FROM pg_namespace",
        "SELECT coalesce(string_agg(extname, ',' ORDER BY 1), '') FROM pg_extension",
    ] {
        db.push(sqlx::query_scalar::<_, String>(sql).fetch_one(&env.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}")));
    }
    (keys, db)
}

/// The sorted set as it is: (score, user_id) of every member.
async fn members(env: &TestEnv) -> Vec<(f64, Option<String>)> {
    let mut redis = env.redis().await;
    let all: Vec<(String, f64)> = redis::cmd("ZRANGE").arg(env.keys().events).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut redis).await.unwrap();
    all.into_iter()
        .map(|(member, score)| {
            let user = serde_json::from_str::<Value>(&member).ok().and_then(|v| v["user_id"].as_str().map(String::from));
            (score, user)
        })
        .collect()
}

fn busiest(scores: impl Iterator<Item = i64>) -> i64 {
    let mut counts: HashMap<i64, i64> = HashMap::new();
    for bucket in scores {
        *counts.entry(bucket).or_default() += 1;
    }
    counts.into_values().max().unwrap_or(0)
}

fn f(v: &Value, key: &str) -> f64 {
    field(v, key).as_f64().unwrap_or_else(|| panic!("{key} is not a number: {}", field(v, key)))
}

#[tokio::test]
async fn assess_measures_a_seeded_system_within_tolerance_and_writes_nothing() {
    let (env, base) = seeded("postgres").await;
    let before = digest(&env).await;
    let out = run(&env, &base, &["assess", "--days", "7", "--json"]);
    out.expect_success();
    let d = out.details();
    let after = digest(&env).await;
    assert!(before.0 == after.0, "assess changed a Redis key under {}", env.prefix);
    assert_eq!(before.1, after.1, "assess changed the legacy tables, or left a relation, schema or extension behind");

    // Events/day: 12,000 events over 3 whole days, all flushed (within 1 %).
    let per_day = f(&d, "measured.volume.events_per_day");
    let truth = EVENTS as f64 / DAYS as f64;
    assert!((per_day - truth).abs() <= truth * 0.01, "events/day {per_day}, truth {truth}");
    assert_eq!(field(&d, "measured.volume.source"), "legacy hourly table");
    assert_eq!(field(&d, "measured.volume.days").as_array().unwrap().len(), DAYS as usize, "three whole days");
    // The uniform seed has no trend worth the name.
    assert!(f(&d, "measured.volume.growth_per_week").abs() < 0.25, "{}", field(&d, "measured.volume.growth_per_week"));

    // Peak hour: the busiest row of the legacy table (exact).
    let peak_hour: i64 =
        sqlx::query_scalar("SELECT max(n) FROM (SELECT sum(event_count)::bigint n FROM analytics_events GROUP BY hour) h").fetch_one(&env.pool).await.unwrap();
    assert_eq!(field(&d, "measured.volume.peak_hour.events").as_i64(), Some(peak_hour));

    // Peak minute and second over what Redis holds (exact: assess reads every member here).
    let held = members(&env).await;
    assert_eq!(held.len() as u64, CAP);
    let ms = |s: f64| s.round() as i64;
    assert_eq!(field(&d, "measured.redis.peak_minute.events").as_i64(), Some(busiest(held.iter().map(|(s, _)| ms(*s).div_euclid(60_000)))));
    assert_eq!(field(&d, "measured.redis.peak_second.events").as_i64(), Some(busiest(held.iter().map(|(s, _)| ms(*s).div_euclid(1_000)))));

    // How long Redis holds events: at the cap, newest minus oldest member (to the millisecond).
    assert_eq!(field(&d, "measured.redis.at_cap"), true);
    assert_eq!(field(&d, "measured.redis.holding_basis"), "measured");
    let (oldest, newest) = (held.first().unwrap().0, held.last().unwrap().0);
    let holding = f(&d, "measured.redis.holding_secs");
    assert!((holding - (newest - oldest) / 1000.0).abs() < 0.01, "holding {holding}s, truth {}s", (newest - oldest) / 1000.0);

    // Only hourly: every event the cap trimmed (exact), per day of the window.
    assert_eq!(field(&d, "measured.volume.hourly_only_events").as_i64(), Some((EVENTS - CAP) as i64));
    assert!((f(&d, "measured.volume.hourly_only_per_day") - (EVENTS - CAP) as f64 / DAYS as f64).abs() < 1.0);

    // Unique users over the last 24 h Redis holds (it holds less: a lower bound, exact).
    let users: HashSet<&str> = held.iter().filter(|(s, _)| *s > newest - 86_400_000.0).filter_map(|(_, u)| u.as_deref()).collect();
    assert_eq!(field(&d, "measured.redis.unique_users.users").as_u64(), Some(users.len() as u64));
    assert_eq!(field(&d, "measured.redis.unique_users.full_day"), holding >= 86_400.0);

    // Member sizes, the queries, the sample, the projection.
    assert!(f(&d, "measured.redis.member_bytes.p50") > 100.0);
    for query in field(&d, "measured.queries").as_array().unwrap() {
        assert!(query["error"].is_null(), "{query}");
        assert!(query["p95_ms"].as_f64().unwrap() > 0.0, "{query}");
    }
    assert_eq!(field(&d, "measured.target.mode"), "postgres");
    assert_eq!(field(&d, "measured.target.sample.rows").as_u64(), Some(CAP), "the sample is the events Redis holds, at most assess.sample_events");
    assert!(field(&d, "measured.target.sample.compressed_bytes").is_null(), "plain PostgreSQL has no columnstore");
    let rows = f(&d, "projected.raw.rows");
    assert!((rows - per_day * 90.0).abs() < 1.0, "raw rows over 90 days: {rows}");
    assert!(f(&d, "projected.raw.stored_bytes") > rows * 100.0, "a row takes more than 100 bytes with its indexes");
    assert!(f(&d, "projected.durations.backfill_secs") > 0.0);
    assert!(f(&d, "projected.outbox.events") > 0.0);

    // Holding ~18 hours is under the default 24: the cap is a reason to migrate now.
    assert_eq!(field(&d, "verdict.decision"), "migrate_now");
    let met: Vec<&str> = field(&d, "verdict.criteria").as_array().unwrap().iter().filter(|c| c["met"] == true).map(|c| c["name"].as_str().unwrap()).collect();
    assert!(met.contains(&"redis_cap"), "{met:?}");
    let text = run(&env, &base, &["assess", "--days", "7"]);
    text.expect_success();
    assert!(text.stdout.contains("assess: migrate now: ") && text.stdout.contains("Redis holds"), "{}", text.stdout);
    env.cleanup().await;
}

#[tokio::test]
async fn the_verdict_flips_at_each_threshold() {
    let (env, _) = seeded("postgres").await;
    // Lenient criteria: nothing is met.
    let lenient = "query_runs = 1\nbaseline_events_per_day = 1000000\nmigrate_above_events_per_day = 1000000\nslow_query_ms = 600000\nmin_redis_hold_hours = 1\nredis_memory_bytes = 1000000000000\n";
    let assess = |name: &str, overrides: &str| {
        // A key given twice is refused by TOML: the overrides replace the lenient lines.
        let keys: Vec<&str> = overrides.lines().filter_map(|l| l.split('=').next()).map(str::trim).collect();
        let kept: String = lenient.lines().filter(|l| !keys.contains(&l.split('=').next().unwrap().trim())).map(|l| format!("{l}\n")).collect();
        let path = config(&env, name, "postgres", &format!("{kept}{overrides}"));
        let out = run(&env, &path, &["assess", "--json"]);
        out.expect_success();
        out.details()
    };
    let met = |d: &Value| -> Vec<String> {
        field(d, "verdict.criteria").as_array().unwrap().iter().filter(|c| c["met"] == true).map(|c| c["name"].as_str().unwrap().to_string()).collect()
    };
    let d = assess("lenient.toml", "");
    assert_eq!((field(&d, "verdict.decision").as_str().unwrap(), met(&d)), ("not_yet", vec![]), "{}", field(&d, "verdict"));
    let per_day = f(&d, "measured.volume.events_per_day");
    let hold_hours = f(&d, "measured.redis.holding_secs") / 3600.0;
    let memory = f(&d, "measured.redis.events_key_bytes");

    // Volume: just above and just below the measured events/day.
    let d = assess("volume-met.toml", &format!("migrate_above_events_per_day = {}\n", (per_day * 0.95) as u64));
    assert_eq!((field(&d, "verdict.decision").as_str().unwrap(), met(&d)), ("migrate_now", vec!["volume".to_string()]));
    assert!(field(&d, "verdict.headline").as_str().unwrap().starts_with("migrate now: "), "{}", field(&d, "verdict.headline"));
    let d = assess("volume-not.toml", &format!("migrate_above_events_per_day = {}\n", (per_day * 1.05) as u64));
    assert!(met(&d).is_empty(), "{:?}", met(&d));
    // Above the baseline without a criterion: plan it.
    let d = assess("baseline.toml", &format!("baseline_events_per_day = {}\n", (per_day * 0.95) as u64));
    assert_eq!((field(&d, "verdict.decision").as_str().unwrap(), met(&d)), ("plan", vec![]));

    // Slow queries: any real query takes more than a millisecond.
    let d = assess("slow.toml", "slow_query_ms = 1\n");
    assert_eq!((field(&d, "verdict.decision").as_str().unwrap(), met(&d)), ("migrate_now", vec!["slow_queries".to_string()]));

    // The cap: holding less than the hours asked.
    let d = assess("hold-met.toml", &format!("min_redis_hold_hours = {}\n", hold_hours.ceil() as u64 + 1));
    assert_eq!(met(&d), vec!["redis_cap".to_string()]);
    let d = assess("hold-not.toml", &format!("min_redis_hold_hours = {}\n", (hold_hours.floor() as u64).saturating_sub(1).max(1)));
    assert!(met(&d).is_empty(), "{:?}", met(&d));

    // Redis memory of the events key.
    let d = assess("memory-met.toml", &format!("redis_memory_bytes = {}\n", (memory / 2.0) as u64));
    assert_eq!(met(&d), vec!["redis_memory".to_string()]);

    // Past 100x the baseline with a reason to move: other engines deserve a look.
    let d = assess(
        "engines.toml",
        &format!(
            "baseline_events_per_day = {}\ntimescaledb_growth = 1\nother_engine_growth = 2\nmigrate_above_events_per_day = {}\n",
            (per_day / 3.0) as u64,
            (per_day * 0.95) as u64
        ),
    );
    assert_eq!(field(&d, "verdict.decision"), "consider_other_engines");
    env.cleanup().await;
}

#[tokio::test]
async fn write_config_is_a_settings_file_config_check_accepts_and_is_never_overwritten_unasked() {
    let (env, base) = seeded("postgres").await;
    let written = env.dir().join("assessed.toml");
    let path = written.to_str().unwrap();
    let out = run(&env, &base, &["assess", "--write-config", path, "--json"]);
    out.expect_success();
    assert_eq!(field(&out.details(), "config_written").as_str(), Some(path));
    let text = std::fs::read_to_string(&written).unwrap();
    assert!(text.contains(&format!("event_cap = {CAP}")) && text.contains("mode = \"postgres\"") && text.contains("backfill_page_size = "), "{text}");
    assert!(text.contains("# Chunk interval: "), "the choices are commented with why:\n{text}");
    assert!(!text.contains("postgres://") && !text.contains("redis://"), "no URLs (passwords) in the file:\n{text}");
    let check = env.cli(&["config", "check", "--config", path, "--json"]);
    check.expect_success();
    assert_eq!(field(&check.details(), "valid"), true);

    // An existing file is kept unless --force.
    std::fs::write(&written, "# mine\n").unwrap();
    let refused = run(&env, &base, &["assess", "--write-config", path]);
    refused.expect_code(2);
    assert!(refused.stderr.contains("exists") && refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "# mine\n");
    run(&env, &base, &["assess", "--write-config", path, "--force"]).expect_success();
    assert!(std::fs::read_to_string(&written).unwrap().contains("[assess]"));
    env.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error_with_exit_2() {
    let env = TestEnv::new().await;
    let out = env.cli_with_env(&["assess", "--json"], &[("REDIS_URL", "redis://127.0.0.1:1")]);
    out.expect_code(2);
    let envelope = out.json();
    let message = envelope["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot connect to Redis"), "{message}");
    assert!(envelope["error"]["hint"].as_str().is_some(), "{envelope}");
    // No legacy tables where the settings say: what to check, exit 2.
    let out = env.cli(&["assess"]);
    out.expect_code(2);
    assert!(out.stderr.contains("cannot read the legacy hourly table analytics_events") && out.stderr.contains("legacy.hourly_table"), "{}", out.stderr);
    env.cleanup().await;
}

/// Traffic that grows: a trend that reaches the volume threshold within the horizon turns
/// "not yet" into "plan", and a shorter horizon turns it back.
#[tokio::test]
async fn a_growing_volume_is_planned_for_when_its_trend_reaches_the_threshold_within_the_horizon() {
    let env = TestEnv::new().await;
    // The default cap (100,000): Redis keeps every event, so the flush counts both seeds.
    let settings = |name: &str, extra: &str| {
        env.write_file(name, &format!("[target]\nmode = \"postgres\"\n[assess]\nquery_runs = 1\nslow_query_ms = 600000\nmin_redis_hold_hours = 1\n{extra}"))
    };
    let base = settings("base.toml", "");
    run(&env, &base, &["legacy", "setup"]).expect_success();
    run(&env, &base, &["seed", "--events", "12000", "--days", "3", "--users", "60", "--seed", "5", "--end", END]).expect_success();
    // More traffic on the last day.
    run(&env, &base, &["seed", "--events", "4000", "--days", "1", "--users", "60", "--seed", "6", "--end", END, "--yes"]).expect_success();
    let assess = |name: &str, extra: &str| run(&env, &settings(name, extra), &["assess", "--json"]).expect_success().details();
    let d = assess("trend.toml", "");
    let days: Vec<f64> = field(&d, "measured.volume.days").as_array().unwrap().iter().map(|d| d["events"].as_f64().unwrap()).collect();
    assert_eq!(days.len(), 3, "{days:?}");
    assert!(days[2] > days[1] * 1.5, "the last day holds the second seed too: {days:?}");
    // The least-squares slope of three equally spaced days is (last - first) / 2 a day.
    let slope = (days[2] - days[0]) / 2.0;
    let mean = days.iter().sum::<f64>() / 3.0;
    let growth = f(&d, "measured.volume.growth_per_week");
    assert!((growth - slope * 7.0 / mean).abs() < 1e-6, "{growth} against {}", slope * 7.0 / mean);
    let volume = f(&d, "measured.volume.events_per_day");
    assert!((volume - mean).abs() < mean * 0.01, "the window is the three days: {volume} against {mean}");
    // A threshold the trend reaches in about 5 days.
    let threshold = (volume + 5.0 * slope) as u64;
    let d = assess("near.toml", &format!("migrate_above_events_per_day = {threshold}\nhorizon_days = 90\n"));
    assert_eq!(field(&d, "verdict.decision"), "plan", "{}", field(&d, "verdict"));
    assert!(field(&d, "verdict.headline").as_str().unwrap().contains("the trend reaches it in 5 days"), "{}", field(&d, "verdict.headline"));
    let d = assess("far.toml", &format!("migrate_above_events_per_day = {threshold}\nhorizon_days = 1\n"));
    assert_eq!(field(&d, "verdict.decision"), "not_yet", "{}", field(&d, "verdict"));
    assert!(
        field(&d, "verdict.would_change").as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("events/day in 5 days")),
        "{}",
        field(&d, "verdict.would_change")
    );
    env.cleanup().await;
}

/// TimescaleDB tier: the sample is a hypertable of the target's shape, compressed, and gone
/// afterwards (rolled back: not even the extension stays if it was not there).
#[tokio::test]
async fn in_timescaledb_mode_the_sample_is_compressed_and_nothing_is_left() {
    let env = TestEnv::new().await;
    if !ts_tier(&env).await {
        return;
    }
    seed(&env, "auto");
    let ts = config(&env, "ts.toml", "timescaledb", "query_runs = 1\n");
    let before = digest(&env).await;
    let out = run(&env, &ts, &["assess", "--json"]);
    out.expect_success();
    let d = out.details();
    assert_eq!(digest(&env).await.1, before.1, "the sample hypertable (or the extension) was left behind");
    assert_eq!(field(&d, "measured.target.mode"), "timescaledb");
    assert!(field(&d, "measured.target.sample_error").is_null(), "{}", field(&d, "measured.target.sample_error"));
    let ratio = f(&d, "projected.raw.compression_ratio");
    assert!(ratio > 1.0, "compressing real events saves space: ratio {ratio}");
    assert!(field(&d, "verdict.blockers").as_array().unwrap().iter().all(|b| b["kind"] != "no_timescaledb"));
    env.cleanup().await;
}

/// The blockers it sees on a Redis of the test's own: no persistence and an evicting policy,
/// then (persistence on, no eviction) a `maxmemory` too close to what is used for the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_persistence_that_evicts_or_has_no_room_for_the_outbox_is_a_blocker() {
    use crate::servers::{RedisOptions, RedisServer};
    let env = TestEnv::new().await;
    let redis = tokio::task::block_in_place(|| RedisServer::start(RedisOptions::default()));
    let url = redis.url();
    let config = config(&env, "private.toml", "postgres", "query_runs = 1\n");
    let with_private = |args: &[&str]| env.cli_with_env(args, &[("TSMIGRATE_CONFIG", config.to_str().unwrap()), ("REDIS_URL", url.as_str())]);
    with_private(&["legacy", "setup"]).expect_success();
    with_private(&["seed", "--events", "2000", "--days", "2", "--users", "30", "--seed", "3", "--end", END]).expect_success();
    let kinds =
        |d: &Value| -> Vec<String> { field(d, "verdict.blockers").as_array().unwrap().iter().map(|b| b["kind"].as_str().unwrap().to_string()).collect() };

    // Started with `--save ""` and no AOF; an allkeys policy with a limit far above what is used.
    let used = tokio::task::block_in_place(|| redis.info_number("used_memory"));
    tokio::task::block_in_place(|| redis.set_evicting(used + (256 << 20)));
    let out = with_private(&["assess", "--json"]);
    let d = out.expect_success().details();
    let found = kinds(&d);
    assert!(found.contains(&"no_persistence".to_string()) && found.contains(&"evicting_policy".to_string()), "{found:?}");
    assert!(!found.contains(&"outbox_headroom".to_string()), "256 MiB is room enough: {}", field(&d, "projected.outbox"));
    assert_eq!(field(&d, "projected.outbox.fits"), true);

    // Persistence on, no eviction, and 20 kB below maxmemory: an hour's outbox does not fit.
    tokio::task::block_in_place(|| redis.config_set(&[("appendonly", "yes"), ("maxmemory-policy", "noeviction")]));
    let used = tokio::task::block_in_place(|| redis.info_number("used_memory"));
    tokio::task::block_in_place(|| redis.config_set(&[("maxmemory", &(used + 20_000).to_string())]));
    let d = with_private(&["assess", "--json"]).expect_success().details();
    assert_eq!(kinds(&d), vec!["outbox_headroom".to_string()], "{}", field(&d, "verdict.blockers"));
    assert!(f(&d, "projected.outbox.bytes") > 20_000.0);
    tokio::task::block_in_place(|| redis.clear_memory_limit());
    env.cleanup().await;
}
