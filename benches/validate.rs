//! Validation at events depth over 1 000 000 events (target: under 2 s on 2 cores), clean
//! and then with 10 injected differences (3 missing, 3 extra, 2 altered, 2 moved an hour),
//! and at counts depth (target: under 0.3 s), per storage mode; next to `reladiff`
//! (hashdiff, 2 threads) comparing two PostgreSQL tables holding the same rows, in the same
//! run: with all ten columns, and with key and time only. Prints the timings, the ratios and
//! whether exactly the 10 were found.
//!
//! `cargo bench --bench validate` (TSMIGRATE_BENCH_EVENTS=100000 for a quick run;
//! TSMIGRATE_BENCH_FLUSH=1 also runs the legacy flush, so the aggregate checks — with
//! their refresh — are part of the timing). `scripts/bench.sh validate` installs reladiff
//! into target/reladiff-venv first; TSMIGRATE_RELADIFF names another reladiff.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A validate run: wall time, exit code, peak memory, the JSON report.
struct Run {
    wall: Duration,
    code: i32,
    peak_rss_kib: u64,
    report: Value,
}

fn validate(env: &BenchEnv) -> Run {
    let (measured, status) = measure_any(env.command(&["validate", "--json"]));
    let envelope: serde_json::Value =
        serde_json::from_str(&measured.stdout).unwrap_or_else(|e| panic!("validate printed no JSON report ({e}): {}", measured.stdout));
    let report = envelope["details"].clone();
    Run { wall: measured.wall, code: status.code().unwrap_or(-1), peak_rss_kib: measured.peak_rss_kib, report }
}

fn ids(env: &BenchEnv, sql: &str) -> Vec<String> {
    env.psql(sql).lines().map(str::to_string).collect()
}

/// The 10 differences, and their ids by kind (missing, extra, different).
fn inject(env: &BenchEnv) -> [BTreeSet<String>; 3] {
    // Rows well inside the window, picked in a fixed order (and, to be moved an hour, before
    // 22:00 UTC: a hypertable row cannot be moved into another day's chunk).
    let pick_where = |offset: u32, n: u32, also: &str| {
        ids(
            env,
            &format!(
                "SELECT event_id FROM analytics_events_ts
                 WHERE time > (SELECT min(time) FROM analytics_events_ts) + interval '3 hours'
                   AND time < (SELECT max(time) FROM analytics_events_ts) - interval '3 hours' {also}
                 ORDER BY event_id OFFSET {offset} LIMIT {n}"
            ),
        )
    };
    let pick = |offset: u32, n: u32| pick_where(offset, n, "");
    let missing = pick(0, 3);
    env.psql(&format!("DELETE FROM analytics_events_ts WHERE event_id IN ('{}')", missing.join("','")));
    let sources = pick(10, 3);
    let mut extra = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-00000000000{i}");
        env.psql(&format!(
            "INSERT INTO analytics_events_ts SELECT time + interval '1 second', '{id}', event_name, category, user_id, session_id,
                    properties, device_info, page_url, referrer FROM analytics_events_ts WHERE event_id = '{source}'"
        ));
        extra.push(id);
    }
    let altered = pick(20, 2);
    env.psql(&format!("UPDATE analytics_events_ts SET properties = properties || '{{\"bench\": 1}}' WHERE event_id = '{}'", altered[0]));
    env.psql(&format!("UPDATE analytics_events_ts SET referrer = 'https://elsewhere.example/' WHERE event_id = '{}'", altered[1]));
    let shifted = pick_where(30, 2, "AND extract(hour FROM time AT TIME ZONE 'UTC') < 22");
    env.psql(&format!("UPDATE analytics_events_ts SET time = time + interval '1 hour' WHERE event_id IN ('{}')", shifted.join("','")));
    [missing.into_iter().collect(), extra.into_iter().collect(), altered.into_iter().chain(shifted).collect()]
}

fn found(report: &Value) -> [BTreeSet<String>; 3] {
    ["missing", "extra", "different"].map(|kind| {
        report["events"][kind]["items"]
            .as_array()
            .map(|items| items.iter().filter_map(|e| e["event_id"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    })
}

fn timing(report: &Value, stage: &str) -> String {
    report["timings_ms"][stage].as_u64().map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0))
}

/// The reladiff the bench script installed (or TSMIGRATE_RELADIFF).
fn reladiff() -> Option<std::path::PathBuf> {
    let path = std::env::var("TSMIGRATE_RELADIFF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reladiff-venv/bin/reladiff"));
    path.exists().then_some(path)
}

/// `postgresql://` URL of database `name` on the benchmark server.
fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&base_pg()).expect("pg url");
    url.set_path(name);
    url.to_string().replacen("postgres://", "postgresql://", 1)
}

/// reladiff (hashdiff, 2 threads) over two tables of `db` holding the same rows, comparing
/// `columns` besides the key; its wall time and whether it found no difference.
fn run_reladiff(reladiff: &std::path::Path, db: &str, columns: &[&str]) -> (Duration, bool) {
    let url = database_url(db);
    let mut cmd = std::process::Command::new(reladiff);
    cmd.args([&url, "events_a", &url, "events_b", "-k", "event_id", "-a", "hashdiff", "-j", "2"]);
    for c in columns {
        cmd.args(["-c", c]);
    }
    let started = Instant::now();
    let out = cmd.output().expect("run reladiff");
    let wall = started.elapsed();
    assert!(out.status.success(), "reladiff failed: {}", String::from_utf8_lossy(&out.stderr));
    (wall, String::from_utf8_lossy(&out.stdout).trim().is_empty())
}

fn main() {
    let events = bench_events(1_000_000);
    let reladiff = reladiff();
    if reladiff.is_none() {
        println!("reladiff is not installed (scripts/bench.sh validate installs it into target/reladiff-venv): its columns stay empty");
    }
    drop_leftovers("rd");
    let flush = std::env::var("TSMIGRATE_BENCH_FLUSH").is_ok_and(|v| v == "1");
    drop_leftovers("val");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = Vec::new();
    let mut all_exact = true;
    for mode in storage_modes() {
        // Dropped (database and keys) at the end of the iteration, also when a step panics.
        let env = BenchEnv::new("val");
        println!("[{mode}] seeding {events} events{}...", if flush { " with the legacy flush" } else { "" });
        let seeded = Instant::now();
        runtime.block_on(async {
            let mut redis = tsmigrate::db::redis(&env.settings).await.expect("redis");
            let pool = tsmigrate::db::legacy_pool(&env.settings).await.expect("pg");
            if flush {
                tsmigrate::legacy::schema::ensure(&pool, &env.settings.legacy).await.expect("legacy tables");
            }
            let options = tsmigrate::legacy::seed::SeedOptions {
                events,
                days: 7,
                users: 5_000,
                seed: 7,
                messy: true,
                end: chrono::Utc::now() - chrono::Duration::hours(1),
                flush,
            };
            tsmigrate::legacy::seed::run(&mut redis, &pool, &env.settings, options, |_| {}).await.expect("seed");
        });
        println!("[{mode}] seeded in {:.1}s; prepare, dual-write start, backfill...", seeded.elapsed().as_secs_f64());
        env.run(&["prepare", "--mode", mode]);
        env.run(&["dual-write", "start"]);
        env.run(&["backfill", "--no-history"]);

        let clean = validate(&env);
        println!("[{mode}] clean run: exit {} in {:.2}s ({})", clean.code, clean.wall.as_secs_f64(), clean.report["timings_ms"]);
        let (counts, _) = measure_any(env.command(&["validate", "--depth", "counts", "--json"]));
        let counts_timings = serde_json::from_str::<Value>(&counts.stdout).map(|e| e["details"]["timings_ms"].clone()).unwrap_or_default();
        println!("[{mode}] counts depth: {:.2}s ({counts_timings})", counts.wall.as_secs_f64());

        // The same rows in two plain tables with their key indexed, for reladiff.
        let mut anchor = vec!["-".to_string(), "-".to_string(), "-".to_string(), "-".to_string()];
        if let Some(reladiff) = &reladiff {
            let twin = BenchEnv::new("rd");
            let dump = std::env::temp_dir().join(format!("{}.copy", env.name));
            let columns = "time, event_id, event_name, category, user_id, session_id, properties, device_info, page_url, referrer";
            env.psql(&format!("\\copy (SELECT {columns} FROM analytics_events_ts) TO '{}'", dump.display()));
            for table in ["events_a", "events_b"] {
                twin.psql(&format!(
                    "CREATE TABLE {table} (time timestamptz NOT NULL, event_id uuid PRIMARY KEY, event_name text NOT NULL, category text NOT NULL,
                     user_id text, session_id text, properties jsonb NOT NULL, device_info jsonb NOT NULL, page_url text, referrer text)"
                ));
                let mut copy = psql_command(&twin.name);
                copy.args(["-c", &format!("\\copy {table} ({columns}) FROM '{}'", dump.display())]);
                measure(copy);
                twin.psql(&format!("VACUUM ANALYZE {table}"));
            }
            let _ = std::fs::remove_file(&dump);
            let all = ["time", "event_name", "category", "user_id", "session_id", "properties", "device_info", "page_url", "referrer"];
            let (all_wall, all_same) = run_reladiff(reladiff, &twin.name, &all);
            let (key_wall, key_same) = run_reladiff(reladiff, &twin.name, &["time"]);
            println!(
                "[{mode}] reladiff: all columns {:.2}s ({}), key and time {:.2}s ({})",
                all_wall.as_secs_f64(),
                if all_same { "no difference" } else { "DIFFERENCES" },
                key_wall.as_secs_f64(),
                if key_same { "no difference" } else { "DIFFERENCES" }
            );
            let ratio = |anchor: Duration| format!("{:.1}x", anchor.as_secs_f64() / clean.wall.as_secs_f64());
            anchor = vec![format!("{:.2}s", all_wall.as_secs_f64()), ratio(all_wall), format!("{:.2}s", key_wall.as_secs_f64()), ratio(key_wall)];
        }
        let injected = inject(&env);
        let differing = validate(&env);
        let got = found(&differing.report);
        let totals: Vec<u64> = ["missing", "extra", "different"].iter().map(|k| differing.report["events"][k]["total"].as_u64().unwrap_or(0)).collect();
        // Without the legacy flush (TSMIGRATE_BENCH_FLUSH) the legacy checks cannot run: both
        // runs then exit 2 (incomplete) and only the events check is judged.
        let events_clean = ["missing", "extra", "different"].iter().all(|k| clean.report["events"][k]["total"].as_u64().unwrap_or(0) == 0);
        let codes_expected = if flush { (0, 1) } else { (2, 2) };
        let exact = events_clean && (clean.code, differing.code) == codes_expected && got == injected && totals == [3, 3, 4];
        all_exact &= exact;
        // The same systems with every target row hashed from its content, as before rows
        // carried their fingerprint and raw digest (an UPDATE clears both): what they buy,
        // in the same run.
        env.psql("UPDATE analytics_events_ts SET stored_fingerprint = NULL");
        let hashed = validate(&env);
        let compared = clean.report["events"]["redis_events"].as_u64().unwrap_or(0);
        for (name, run) in [("clean", &clean), ("10 injected", &differing), ("10 injected, every row hashed", &hashed)] {
            let (anchor, counts_wall) =
                if name == "clean" { (anchor.clone(), format!("{:.2}s", counts.wall.as_secs_f64())) } else { (vec!["-".to_string(); 4], "-".to_string()) };
            rows.push(
                vec![
                    mode.to_string(),
                    name.to_string(),
                    compared.to_string(),
                    format!("{:.2}s", run.wall.as_secs_f64()),
                    timing(&run.report, "redis"),
                    timing(&run.report, "redis_read"),
                    timing(&run.report, "redis_hash"),
                    timing(&run.report, "reparse"),
                    timing(&run.report, "redis_parse"),
                    timing(&run.report, "target"),
                    timing(&run.report, "aggregates"),
                    timing(&run.report, "narrow"),
                    format!("{} ({})", run.code, run.report["result"].as_str().unwrap_or("?")),
                    match name {
                        "clean" => "-".into(),
                        "10 injected" => format!("{}/{}/{} {}", totals[0], totals[1], totals[2], if exact { "exact" } else { "NOT EXACT" }),
                        _ => (if found(&run.report) == got { "same findings" } else { "OTHER FINDINGS" }).into(),
                    },
                    mib(run.peak_rss_kib),
                    counts_wall,
                ]
                .into_iter()
                .chain(anchor)
                .collect(),
            );
        }
        if !exact {
            println!("[{mode}] expected {injected:?}\n[{mode}] found    {got:?} (totals {totals:?}; exit codes {} and {})", clean.code, differing.code);
        }
    }
    print_table(
        &format!("validate --depth events ({events} events seeded; target < 2 s for 1 000 000, >= 4x reladiff; counts depth < 0.3 s)"),
        &[
            "mode",
            "run",
            "events compared",
            "wall",
            "redis",
            "redis: reading (summed)",
            "redis: raw digests (summed)",
            "redis: parse pass",
            "redis: parsing (summed)",
            "target",
            "aggregates",
            "narrow",
            "exit",
            "missing/extra/different",
            "peak RSS",
            "counts depth",
            "reladiff all columns",
            "speed ratio",
            "reladiff key+time",
            "speed ratio",
        ],
        &rows,
    );
    println!("wall is the whole `tsmigrate validate` process (connect, window, both collectors concurrently, narrowing, report, run record, phase move).");
    println!("redis is its first pass (every member read and its raw digest computed, without parsing); the parse pass then reads and parses only the minutes the raw digests did not settle.");
    println!("reladiff compares two plain tables of one database holding the target's rows (event_id primary key), forced to hashdiff with 2 threads; a speed ratio is reladiff's wall over validate's.");
    println!(
        "{}",
        if all_exact { "found exactly the 10 injected differences in every mode" } else { "DID NOT find exactly the 10 injected differences (see above)" }
    );
}
