//! Backfill throughput next to `psql \copy` of the same rows into the same table, in the
//! same run, per storage mode; and the peak memory of each.
//!
//! `cargo bench --bench backfill` (TSMIGRATE_BENCH_EVENTS=100000 for a quick run).

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use support::*;

fn main() {
    let events = bench_events(1_000_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = Vec::new();
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
        let backfill = measure(source.command(&["backfill", "--no-history", "--json"]));
        let envelope: serde_json::Value = serde_json::from_str(&backfill.stdout).expect("backfill json");
        let report = &envelope["details"];
        let copied = report["read"].as_u64().unwrap_or(0);
        let copy_phase_rate = report["events_per_second"].as_f64().unwrap_or(0.0);
        let wall_rate = copied as f64 / backfill.wall.as_secs_f64();

        // The same rows, as a COPY text file, into the same table of a freshly prepared database.
        let dump = std::env::temp_dir().join(format!("{}.copy", source.name));
        let columns = "time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer";
        source.psql(&format!("\\copy (SELECT {columns} FROM analytics_events_ts ORDER BY time) TO '{}'", dump.display()));
        let sink = BenchEnv::new("copy");
        sink.run(&["prepare", "--mode", mode]);
        if mode == "postgres" {
            sink.psql("SELECT tsmigrate.ensure_partitions(now() - interval '40 days', now() + interval '2 days')");
        }
        let mut psql = psql_command(&sink.name);
        psql.args(["-c", &format!("\\copy analytics_events_ts ({columns}) FROM '{}'", dump.display())]);
        let copy = measure(psql);
        let _ = std::fs::remove_file(&dump);
        let copy_rate = copied as f64 / copy.wall.as_secs_f64();
        rows.push(vec![
            mode.to_string(),
            copied.to_string(),
            format!("{:.1}s", backfill.wall.as_secs_f64()),
            format!("{wall_rate:.0}"),
            format!("{copy_phase_rate:.0}"),
            format!("{:.1}s", copy.wall.as_secs_f64()),
            format!("{copy_rate:.0}"),
            format!("{:.2}x", copy_phase_rate / copy_rate),
            format!("{:.2}x", wall_rate / copy_rate),
            mib(backfill.peak_rss_kib),
            mib(copy.peak_rss_kib),
        ]);
    }
    print_table(
        &format!("Backfill vs psql \\copy ({events} events; target >= 0.90x)"),
        &[
            "mode",
            "events",
            "backfill wall",
            "backfill ev/s (wall)",
            "backfill ev/s (copy phase)",
            "\\copy wall",
            "\\copy rows/s",
            "ratio (copy phase)",
            "ratio (wall)",
            "backfill peak RSS",
            "psql peak RSS",
        ],
        &rows,
    );
    println!("wall includes connecting, the aggregate refresh over the backfilled range and the phase change; the copy phase is Redis read + parse + COPY + checkpoint commits.");
}
