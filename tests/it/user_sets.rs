//! User sets: unique users from them equal `count(DISTINCT user_id)` over raw rows for random
//! windows (edges inside minutes and hours, across days and a DST night in a non-UTC bucket
//! zone, null user ids, users written after the last build), and every answer equals the
//! raw-row route's field for field, in both storage modes; a late event counts at once and
//! after the rebuild; the sets survive a restart of the service; retention drops raw rows
//! and the answer stays exact from the sets.

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::sync::Arc;
use tsmigrate::context::Context;
use tsmigrate::reads::{sets, Answer, EventFilter, ReadContext, ReadSource, Request, Route, TimeRange};
use tsmigrate::store::user_sets::build::{self, BuildOptions};
use tsmigrate::store::user_sets::{report, Parts};
use tsmigrate::store::writer::{Method, ParsedPage, TargetWriter};
use tsmigrate::store::{aggregates, StorageMode};

use crate::daemon_process::{eventually, Service};
use crate::support::TestEnv;

/// Three days around the night Berlin falls back from summer time (2025-10-26).
const START: &str = "2025-10-25T00:00:00Z";
const DAYS: i64 = 3;
const SETTINGS: &str = "[target]\nbucket_timezone = \"Europe/Berlin\"\nraw_retention_days = 3650\nhourly_retention_days = 3650\ndaily_retention_days = 3650\n";

/// "unknown" as a type of its own too: the legacy function folds it with events that have none.
const ASSET_TYPES: [&str; 3] = ["image", "logo", "unknown"];

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// An env whose CLI and library agree on the settings above, prepared in `mode`.
async fn prepared(mode: &str) -> TestEnv {
    let env = TestEnv::with_settings(|s| *s = tsmigrate::config::Settings::from_toml(SETTINGS).unwrap()).await;
    env.write_file("tsmigrate.toml", SETTINGS);
    env.cli(&["prepare", "--mode", mode]).expect_success();
    env
}

fn event(id: String, at: DateTime<Utc>, user: Option<String>, rng: &mut ChaCha8Rng) -> (String, DateTime<Utc>) {
    let (name, category) =
        [("page_view", "navigation"), ("click", "interaction"), ("asset_generated", "creation"), ("login", "account")][rng.random_range(0..4)];
    let properties = match rng.random_range(0..4) {
        0 => json!({}),
        n => json!({"asset_type": ASSET_TYPES[n - 1]}),
    };
    (json!({"id": id, "event_name": name, "category": category, "user_id": user, "properties": properties}).to_string(), at)
}

/// `n` events at random times of the three days; one in ten without a user id.
fn events(rng: &mut ChaCha8Rng, n: usize, users: u32, tag: &str) -> Vec<(String, DateTime<Utc>)> {
    (0..n)
        .map(|i| {
            let at = t(START) + Duration::milliseconds(rng.random_range(0..DAYS * 86_400_000));
            let user = (rng.random_range(0..10) > 0).then(|| format!("{tag}{}", rng.random_range(0..users)));
            event(format!("{tag}-{i}"), at, user, rng)
        })
        .collect()
}

/// Writes through the one write sequence every path shares (`commit_page`), so the minutes
/// written are marked as the relay, tail, backfill and repair mark them.
async fn write(env: &TestEnv, mode: StorageMode, events: &[(String, DateTime<Utc>)]) {
    let writer = TargetWriter::new(env.pool.clone(), mode);
    for chunk in events.chunks(700) {
        let mut page = ParsedPage::with_capacity(chunk.len());
        for (member, at) in chunk {
            page.push(member.clone().into_bytes(), Some(at.timestamp_millis() as f64), Utc::now().timestamp_millis());
        }
        writer.commit_page(&page, "test", Method::Copy, |_, _| Box::pin(async { Ok(()) })).await.expect("write a page");
    }
}

async fn build_sets(env: &TestEnv) -> build::BuildOutcome {
    build::build(&env.pool, BuildOptions::from_settings(&env.settings.target, true), Utc::now()).await.expect("build").expect("waited for the lock")
}

async fn refresh_aggregates(env: &TestEnv, mode: StorageMode) {
    let store = tsmigrate::store::open(mode, env.pool.clone());
    let target = &env.settings.target;
    let (from, to) = (t(START) - Duration::days(1), t(START) + Duration::days(DAYS + 1));
    aggregates::refresh(&*store, from, to, target.timezone(), target.raw_retention_days).await.expect("refresh");
}

async fn context(env: &TestEnv, now: DateTime<Utc>, route: Route) -> ReadContext {
    ReadContext::new(Context::with_target(Arc::new(env.settings.clone()), env.pool.clone()), env.redis().await, now, route)
}

async fn answer(ctx: &ReadContext, request: &Request) -> Answer {
    ReadSource::Target.answer(ctx, request).await.unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

/// What SQL says about `range`: (events, distinct users).
async fn counted(env: &TestEnv, range: TimeRange) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT user_id) FROM analytics_events_ts WHERE time >= $1 AND time < $2")
        .bind(range.from)
        .bind(range.to)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Random windows: edges anywhere (inside minutes and hours), some whole hours and days.
fn windows(rng: &mut ChaCha8Rng) -> Vec<TimeRange> {
    let span = DAYS * 86_400;
    let mut out: Vec<TimeRange> = (0..40)
        .map(|_| {
            let from = t(START) + Duration::seconds(rng.random_range(-3_600..span));
            TimeRange { from, to: from + Duration::seconds(rng.random_range(1..span)) }
        })
        .collect();
    // The whole data, the 25-hour local day of the DST night, and a window of whole hours across it.
    out.push(TimeRange { from: t(START) - Duration::hours(1), to: t(START) + Duration::days(DAYS) });
    out.push(TimeRange { from: t("2025-10-25T22:00:00Z"), to: t("2025-10-26T23:00:00Z") });
    out.push(TimeRange { from: t("2025-10-25T23:00:00Z"), to: t("2025-10-26T05:00:00Z") });
    out
}

/// Every window's summary from the sets: SQL's counts, exact, and the raw-row route's answer.
async fn summaries_match(env: &TestEnv, windows: &[TimeRange], seed: u64) {
    let now = tsmigrate::reads::minute_floor(Utc::now());
    let (by_sets, by_rows) = (context(env, now, Route::Sets).await, context(env, now, Route::RawRows).await);
    for range in windows {
        let request = Request::Summary(*range);
        let Answer::Summary(summary) = answer(&by_sets, &request).await else { panic!("a summary") };
        let (events, users) = counted(env, *range).await;
        assert_eq!((summary.total_events, summary.unique_users, summary.unique_users_exact), (events, users, true), "seed {seed}: {range:?}");
        assert_eq!(Answer::Summary(summary), answer(&by_rows, &request).await, "seed {seed}: the routes disagree on {range:?}");
    }
}

/// Popular asset types, comparisons, intervals (buckets of whole minutes are counted from
/// the minute sets, of whole hours from the aggregate, others raw) and hourly rows (recent
/// and partial hours from the sets' users per group, settled whole hours from the
/// aggregate) seen from several moments of the three days.
async fn other_endpoints_match(env: &TestEnv, seed: u64) {
    for now in ["2025-10-25T13:20:00Z", "2025-10-26T01:40:00Z", "2025-10-27T23:05:00Z", "2025-10-28T02:00:00Z"].map(t) {
        let (by_sets, by_rows) = (context(env, now, Route::Sets).await, context(env, now, Route::RawRows).await);
        let now_inside_a_minute = now + Duration::seconds(37);
        let hourly = |since: Duration, event_name: Option<&str>| Request::Hourly {
            range: TimeRange { from: now_inside_a_minute - since, to: now_inside_a_minute },
            filter: EventFilter { event_name: event_name.map(str::to_string), category: None },
        };
        for request in [
            hourly(Duration::hours(30) + Duration::seconds(13), None),
            hourly(Duration::minutes(200), Some("click")),
            hourly(Duration::minutes(50), None),
            Request::popular(3, now).unwrap(),
            Request::popular(1, now).unwrap(),
            Request::comparison(Duration::hours(20), now).unwrap(),
            Request::intervals(Duration::minutes(10), Duration::hours(24), now_inside_a_minute).unwrap(),
            Request::intervals(Duration::minutes(7), Duration::hours(30), now).unwrap(),
            Request::intervals(Duration::hours(1), Duration::hours(40), now_inside_a_minute).unwrap(),
            Request::intervals(Duration::seconds(90), Duration::hours(6), now_inside_a_minute).unwrap(),
        ] {
            assert_eq!(answer(&by_sets, &request).await, answer(&by_rows, &request).await, "seed {seed}: {request:?}");
        }
    }
}

async fn unique_users_equal_count_distinct(mode: &str) {
    let env = prepared(mode).await;
    let mode = StorageMode::parse(mode).unwrap();
    let seed: u64 = std::env::var("TSMIGRATE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    write(&env, mode, &events(&mut rng, 4_000, 80, "u")).await;
    refresh_aggregates(&env, mode).await;
    let built = build_sets(&env).await;
    assert_eq!(
        (built.hours, built.days),
        (DAYS as u64 * 24, 2),
        "seed {seed}: every hour of the data, and the two whole local days (the 25-hour one included)"
    );
    // Answered from the sets alone: nothing raw in a window of whole minutes.
    let ctx = context(&env, Utc::now(), Route::Sets).await;
    let whole = TimeRange { from: t("2025-10-25T10:07:00Z"), to: t("2025-10-27T16:51:00Z") };
    assert_eq!(sets::tally(&ctx, whole, Parts { users: true, ..Parts::default() }).await.unwrap().raw, vec![], "seed {seed}");
    let windows = windows(&mut rng);
    summaries_match(&env, &windows, seed).await;
    other_endpoints_match(&env, seed).await;

    // Sets built before their groups' users were kept (an hour and a stretch of minutes)
    // answer per-group reads one level down, or from raw rows.
    sqlx::query("UPDATE tsmigrate.user_sets SET group_users = NULL WHERE span <> 'day' AND bucket >= $1 AND bucket < $2")
        .bind(t("2025-10-27T21:20:00Z"))
        .bind(t("2025-10-27T23:00:00Z"))
        .execute(&env.pool)
        .await
        .unwrap();
    other_endpoints_match(&env, seed).await;

    // New users and old ones written after the build: their minutes are marked, read raw
    // (users without an ordinal yet among them), then rebuilt.
    let mut late = events(&mut rng, 300, 40, "late");
    late.extend(events(&mut rng, 300, 80, "u").into_iter().map(|(m, at)| (m.replace("\"id\":\"u-", "\"id\":\"again-"), at)));
    write(&env, mode, &late).await;
    refresh_aggregates(&env, mode).await;
    summaries_match(&env, &windows, seed).await;
    other_endpoints_match(&env, seed).await;
    assert!(build_sets(&env).await.minutes > 0);
    summaries_match(&env, &windows, seed).await;
    other_endpoints_match(&env, seed).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_users_from_sets_equal_count_distinct_in_plain_mode() {
    unique_users_equal_count_distinct("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_users_from_sets_equal_count_distinct_in_timescaledb_mode() {
    let probe = TestEnv::new().await;
    require_timescaledb_or_skip!(probe);
    drop(probe);
    unique_users_equal_count_distinct("timescaledb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_event_in_a_closed_hour_counts_at_once_and_after_the_rebuild() {
    let env = prepared("postgres").await;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    write(&env, StorageMode::Postgres, &events(&mut rng, 1_000, 50, "u")).await;
    refresh_aggregates(&env, StorageMode::Postgres).await;
    build_sets(&env).await;
    let ctx = context(&env, Utc::now(), Route::Sets).await;
    let window = TimeRange { from: t(START), to: t(START) + Duration::days(DAYS) };
    let users = |ctx: ReadContext| async move {
        let Answer::Summary(s) = answer(&ctx, &Request::Summary(window)).await else { panic!("a summary") };
        s.unique_users
    };
    let before = users(ctx.clone()).await;
    assert_eq!(before, counted(&env, window).await.1);

    let late = event("late-1".into(), t("2025-10-26T01:30:10Z"), Some("someone-new".into()), &mut rng);
    write(&env, StorageMode::Postgres, &[late]).await;
    assert_eq!(users(ctx.clone()).await, before + 1, "counted at once, from raw rows");
    let status = report::status(&env.pool, Utc::now()).await.unwrap();
    assert_eq!(status.marked_minutes, 1, "{status:?}");

    let rebuilt = build_sets(&env).await;
    assert_eq!((rebuilt.minutes, rebuilt.hours, rebuilt.days), (1, 1, 1), "the minute, its hour and its day");
    assert_eq!(users(ctx.clone()).await, before + 1, "and after the rebuild");
    // Until the aggregates show the event too, its hour differs from them: read raw.
    let tally = sets::tally(&ctx, window, Parts { users: true, ..Parts::default() }).await.unwrap();
    assert_eq!(tally.raw, vec![TimeRange { from: t("2025-10-26T01:00:00Z"), to: t("2025-10-26T02:00:00Z") }]);
    refresh_aggregates(&env, StorageMode::Postgres).await;
    assert_eq!(users(ctx.clone()).await, before + 1);
    assert_eq!(sets::tally(&ctx, window, Parts { users: true, ..Parts::default() }).await.unwrap().raw, vec![], "from the sets again");
    assert_eq!(report::status(&env.pool, Utc::now()).await.unwrap().marked_minutes, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sets_survive_a_restart_of_the_service() {
    let env = prepared("postgres").await;
    env.write_file("tsmigrate.toml", &format!("{SETTINGS}[jobs.schedules]\nuser_sets = \"* * * * * *\"\n[http]\ncache_ttl_secs = 0\n"));
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    write(&env, StorageMode::Postgres, &events(&mut rng, 1_000, 50, "u")).await;
    // The rollup job refreshes only recent hours; these are days old.
    refresh_aggregates(&env, StorageMode::Postgres).await;
    sqlx::query("UPDATE tsmigrate.migration_state SET read_source = 'target'").execute(&env.pool).await.unwrap();
    let days_built =
        || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tsmigrate.user_sets WHERE span = 'day'").fetch_one(&env.pool).await.unwrap() };

    let mut service = Service::start(&env, &[], &[]).await;
    eventually(&service, "built the two whole days' sets", || async { days_built().await == 2 }).await;
    assert_eq!(service.terminate().await, 0);
    let built_at: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT built_at FROM tsmigrate.user_sets ORDER BY span, bucket").fetch_all(&env.pool).await.unwrap();

    let mut service = Service::start(&env, &["--no-jobs"], &[]).await;
    let window = TimeRange { from: t(START), to: t(START) + Duration::days(DAYS) };
    let path = format!("/api/v1/analytics/summary?from={}&to={}", tsmigrate::reads::wire_time(window.from), tsmigrate::reads::wire_time(window.to));
    let (status, body) = service.get(&path, None).await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((body["unique_users"].as_i64(), body["source"].as_str()), (Some(counted(&env, window).await.1), Some("target")), "{body}");
    let ctx = context(&env, Utc::now(), Route::Sets).await;
    assert_eq!(sets::tally(&ctx, window, Parts { users: true, ..Parts::default() }).await.unwrap().raw, vec![], "answered from the sets");
    let after: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT built_at FROM tsmigrate.user_sets ORDER BY span, bucket").fetch_all(&env.pool).await.unwrap();
    assert_eq!(after, built_at, "nothing was rebuilt");
    service.terminate().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_raw_rows_and_the_answer_stays_exact_from_the_sets() {
    let env = prepared("postgres").await;
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    write(&env, StorageMode::Postgres, &events(&mut rng, 2_000, 200, "u")).await;
    refresh_aggregates(&env, StorageMode::Postgres).await;
    build_sets(&env).await;
    let window = TimeRange { from: t(START), to: t(START) + Duration::days(DAYS) };
    let (events, users) = counted(&env, window).await;

    // Retention passes the first day: its partitions are dropped (the hourly aggregate keeps it).
    let dropped: i32 = sqlx::query_scalar("SELECT tsmigrate.drop_partitions_before($1)").bind(t(START) + Duration::days(1)).fetch_one(&env.pool).await.unwrap();
    assert_eq!(dropped, 1);
    assert!(counted(&env, window).await.0 < events);
    let now = Utc::now();
    let Answer::Summary(exact) = answer(&context(&env, now, Route::Sets).await, &Request::Summary(window)).await else { panic!("a summary") };
    assert_eq!((exact.total_events, exact.unique_users, exact.unique_users_exact), (events, users, true));
    // Without the sets, the dropped day is only hourly aggregates: unique users are a sum.
    let Answer::Summary(rows) = answer(&context(&env, now, Route::RawRows).await, &Request::Summary(window)).await else { panic!("a summary") };
    assert_eq!((rows.total_events, rows.unique_users_exact), (events, false));
    env.cleanup().await;
}

/// Each run expires what retention no longer keeps, and only that: minute sets older than
/// the raw rows (or the sets) are kept, hour and day sets older than the sets' retention;
/// the run reports how many it deleted.
#[tokio::test]
async fn a_build_expires_exactly_the_sets_older_than_their_retention() {
    let env = prepared("postgres").await;
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    write(&env, StorageMode::Postgres, &events(&mut rng, 600, 50, "u")).await;
    build_sets(&env).await;
    let now = Utc::now();
    // Retentions in whole days from now, chosen to cut through the data: raw rows (and so
    // minute sets) kept from START + 2 days, hour and day sets from START + 1 day.
    let days_back = |to: DateTime<Utc>| (now - to).num_days();
    let (raw_cut, set_cut) = (t(START) + Duration::days(2), t(START) + Duration::days(1));
    let options = BuildOptions {
        raw_retention_days: (days_back(raw_cut) + 1) as u32,
        set_retention_days: days_back(set_cut) as u32,
        ..BuildOptions::from_settings(&env.settings.target, true)
    };
    let raw_from = now - Duration::days(i64::from(options.raw_retention_days)) + Duration::days(1);
    let sets_from = now - Duration::days(i64::from(options.set_retention_days));
    assert!(t(START) < sets_from && sets_from < raw_from && raw_from < t(START) + Duration::days(DAYS), "{sets_from} {raw_from}");
    let count = |span: &'static str, before: DateTime<Utc>| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tsmigrate.user_sets WHERE span = $1 AND bucket < $2")
                .bind(span)
                .bind(before)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let doomed = count("minute", raw_from).await + count("hour", sets_from).await + count("day", sets_from).await;
    let kept = (count("minute", now).await - count("minute", raw_from).await, count("hour", now).await - count("hour", sets_from).await);
    assert!(count("minute", raw_from).await > 0 && count("hour", sets_from).await > 0 && kept.0 > 0 && kept.1 > 0, "the cuts go through the sets");
    let marks_doomed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tsmigrate.user_set_marks WHERE minute < $1").bind(raw_from).fetch_one(&env.pool).await.unwrap();

    let outcome = build::build(&env.pool, options, now).await.expect("build").expect("waited for the lock");
    assert_eq!(outcome.expired, (doomed + marks_doomed) as u64, "{outcome:?}");
    assert_eq!((count("minute", raw_from).await, count("hour", sets_from).await, count("day", sets_from).await), (0, 0, 0));
    assert_eq!((count("minute", now).await, count("hour", now).await), kept, "nothing younger was deleted");
    env.cleanup().await;
}
