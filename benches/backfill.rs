//! Backfill end to end (copy + aggregate refresh) next to what a database engineer would
//! run instead, in the same run: `psql \copy` of the same rows into a twin table (a freshly
//! prepared database of the same mode: the same hypertable or partitioned table, indexes
//! and aggregates) plus the refresh of the twin's aggregates over the same window. Per
//! storage mode; with the peak memory of each and where the backfill's time went.
//!
//! `cargo bench --bench backfill` (300 000 events; TSMIGRATE_BENCH_EVENTS=3000000 for the
//! large run; TSMIGRATE_BENCH_STREAMS=1 to measure the copy in one stream).

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn main() {
    let events = bench_events(300_000);
    let streams = std::env::var("TSMIGRATE_BENCH_STREAMS").ok();
    drop_leftovers("bf");
    drop_leftovers("copy");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = Vec::new();
    let mut parts = Vec::new();
    for mode in storage_modes() {
        let source = BenchEnv::new("bf");
        println!("[{mode}] seeding {events} events through the legacy write path...");
        let seeded = Instant::now();
        runtime.block_on(async {
            let mut redis = tsmigrate::db::redis(&source.settings).await.expect("redis");
            let pool = tsmigrate::db::legacy_pool(&source.settings).await.expect("pg");
            let options = tsmigrate::legacy::seed::SeedOptions {
                events,
                days: 30,
                users: 5_000,
                seed: 1,
                messy: false,
                end: chrono::Utc::now() - chrono::Duration::hours(1),
                flush: false,
            };
            tsmigrate::legacy::seed::run(&mut redis, &pool, &source.settings, options, |_| {}).await.expect("seed");
        });
        println!("[{mode}] seeded in {:.1}s", seeded.elapsed().as_secs_f64());
        source.run(&["prepare", "--mode", mode]);
        source.run(&["dual-write", "start"]);
        let mut args = vec!["backfill", "--no-history", "--json"];
        if let Some(n) = &streams {
            args.extend(["--streams", n]);
        }
        let backfill = measure(source.command(&args));
        let envelope: serde_json::Value = serde_json::from_str(&backfill.stdout).expect("backfill json");
        let report = &envelope["details"];
        let copied = report["read"].as_u64().unwrap_or(0);
        let timing = |name: &str| report["timings_ms"][name].as_u64().map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let (from, to) = (report["refresh"]["from"].as_str().expect("refreshed from"), report["refresh"]["to"].as_str().expect("refreshed to"));

        // The same rows, as a COPY text file, into the twin; then the twin's aggregates over the same window.
        let dump = std::env::temp_dir().join(format!("{}.copy", source.name));
        let columns = "time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer";
        source.psql(&format!("\\copy (SELECT {columns} FROM analytics_events_ts ORDER BY time) TO '{}'", dump.display()));
        let twin = BenchEnv::new("copy");
        twin.run(&["prepare", "--mode", mode]);
        if mode == "postgres" {
            twin.psql("SELECT tsmigrate.ensure_partitions(now() - interval '40 days', now() + interval '2 days')");
        }
        let mut psql = psql_command(&twin.name);
        psql.args(["-c", &format!("\\copy analytics_events_ts ({columns}) FROM '{}'", dump.display())]);
        let copy = measure(psql);
        let _ = std::fs::remove_file(&dump);
        let mut refresh = psql_command(&twin.name);
        if mode == "timescaledb" {
            for view in ["analytics_hourly", "analytics_daily", "analytics_asset_popularity_ts"] {
                refresh.args(["-c", &format!("CALL refresh_continuous_aggregate('{view}', '{from}', '{to}')")]);
            }
        } else {
            refresh.args(["-c", &format!("SELECT tsmigrate.refresh_rollups('{from}', '{to}')")]);
        }
        let refreshed = measure(refresh);
        let same = |sql: &str| source.psql(sql) == twin.psql(sql);
        let exact = same("SELECT count(*), count(DISTINCT (event_id, time)) FROM analytics_events_ts")
            && same("SELECT sum(event_count), sum(unique_users) FROM analytics_hourly");
        let anchor = copy.wall + refreshed.wall;
        rows.push(vec![
            mode.to_string(),
            copied.to_string(),
            report["pages"].to_string(),
            seconds(backfill.wall),
            format!("{:.0}", copied as f64 / backfill.wall.as_secs_f64()),
            seconds(anchor),
            format!("{:.0}", copied as f64 / anchor.as_secs_f64()),
            format!("{:.2}x", anchor.as_secs_f64() / backfill.wall.as_secs_f64()),
            mib(backfill.peak_rss_kib),
            mib(copy.peak_rss_kib),
            if exact { "same rows and aggregates".into() } else { "DIFFERENT".into() },
        ]);
        parts.push(vec![
            mode.to_string(),
            timing("copy"),
            timing("refresh"),
            timing("redis_read"),
            timing("parse"),
            timing("write"),
            timing("write_waiting"),
            seconds(copy.wall),
            seconds(refreshed.wall),
        ]);
    }
    print_table(
        &format!("Backfill (copy + aggregate refresh) vs psql \\copy + refresh of a twin ({events} events; target >= 1.30x)"),
        &[
            "mode",
            "events",
            "pages",
            "backfill wall",
            "backfill ev/s",
            "\\copy + refresh wall",
            "\\copy + refresh rows/s",
            "speed ratio",
            "backfill peak RSS",
            "psql peak RSS",
            "check",
        ],
        &rows,
    );
    print_table(
        "Where the time went (backfill: copy and refresh are wall; read, parse, write and waiting are summed over its streams)",
        &["mode", "backfill copy", "backfill refresh", "redis read", "parse", "write (COPY..commit)", "writers waiting", "\\copy", "twin refresh"],
        &parts,
    );
    println!(
        "backfill wall is the whole `tsmigrate backfill --no-history` process (connect, scans, copy, refresh, phase change); the anchor is two psql processes."
    );
}
