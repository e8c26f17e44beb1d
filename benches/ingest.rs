//! Ingest throughput and batch latency through `POST /api/v1/analytics`, legacy
//! (Redis only) next to dual-write (Redis + outbox in one MULTI), in the same run against
//! the same server process; peak memory of the server; relay drain rate.
//!
//! `cargo bench --bench ingest` (TSMIGRATE_BENCH_EVENTS=100000 for a quick run).

#[path = "support/mod.rs"]
mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const BATCH: usize = 50;
const CLIENTS: usize = 4;

fn body(batch_index: usize) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    let events: Vec<serde_json::Value> = (0..BATCH)
        .map(|i| {
            let n = batch_index * BATCH + i;
            let (name, category) = [("page_view", "navigation"), ("click", "interaction"), ("search", "discovery"), ("asset_generated", "creation")][n % 4];
            serde_json::json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "event_name": name,
                "category": category,
                "user_id": format!("user_{}", n % 5000),
                "session_id": format!("s_{}", n % 900),
                "properties": {"path": "/create", "asset_type": "image"},
                "device_info": {"browser": "chrome", "os": "macos"},
                "page_url": "https://app.example.com/create",
                "timestamp": now - (n % 60_000) as i64,
            })
        })
        .collect();
    serde_json::json!({ "events": events }).to_string()
}

struct Run {
    events: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

async fn drive(port: u16, batches: usize) -> Run {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/v1/analytics");
    let bodies: Arc<Vec<String>> = Arc::new((0..batches).map(body).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url, bodies, next) = (client.clone(), url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= bodies.len() {
                    return latencies;
                }
                let sent = Instant::now();
                let response = client.post(&url).header("content-type", "application/json").body(bodies[i].clone()).send().await.expect("request");
                assert_eq!(response.status().as_u16(), 202, "ingest answered {}", response.status());
                let _ = response.bytes().await;
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let wall = started.elapsed();
    latencies.sort();
    Run { events: batches * BATCH, wall, latencies }
}

fn main() {
    let events = bench_events(400_000) as usize;
    let batches = (events / BATCH).max(1);
    let env = BenchEnv::new("ingest");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut server = env.command(&["run", "--no-relay", "--bind", &format!("127.0.0.1:{port}")]).stderr(Stdio::null()).spawn().expect("server");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let flag = format!("{}analytics:outbox:dual_write", env.settings.redis.key_prefix);
    let mut redis = redis::Client::open(base_redis()).expect("redis").get_connection().expect("redis conn");
    let mut rows = Vec::new();
    let mut costs = Vec::new();
    runtime.block_on(async {
        for _ in 0..100 {
            if reqwest::get(format!("http://127.0.0.1:{port}/health")).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Warm-up, then each mode in turn (twice, alternating, to even out noise).
        drive(port, 200).await;
        for (round, mode) in ["legacy", "dual-write", "legacy", "dual-write"].iter().enumerate() {
            if *mode == "dual-write" {
                let _: () = redis::cmd("SET").arg(&flag).arg("1").query(&mut redis).expect("set flag");
            } else {
                let _: () = redis::cmd("DEL").arg(&flag).query(&mut redis).expect("del flag");
            }
            // The server re-reads the flag at most once a second.
            tokio::time::sleep(Duration::from_millis(1300)).await;
            let run = drive(port, batches / 2).await;
            let rate = run.events as f64 / run.wall.as_secs_f64();
            costs.push((mode.to_string(), run.wall.as_secs_f64() / run.events as f64));
            rows.push(vec![
                format!("{mode} (round {})", round / 2 + 1),
                run.events.to_string(),
                format!("{rate:.0}"),
                format!("{:.2} ms", percentile(&run.latencies, 0.50).as_secs_f64() * 1000.0),
                format!("{:.2} ms", percentile(&run.latencies, 0.99).as_secs_f64() * 1000.0),
            ]);
        }
    });
    let peak = peak_rss_kib(server.id()).unwrap_or(0);
    let _ = std::process::Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let per_event = |mode: &str| {
        let v: Vec<f64> = costs.iter().filter(|(m, _)| m == mode).map(|(_, c)| *c).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let ratio = per_event("dual-write") / per_event("legacy");
    print_table(
        &format!("Ingest through POST /api/v1/analytics ({CLIENTS} concurrent clients, {BATCH} events per batch; targets >= 50000 ev/s, p99 < 5 ms, cost <= 1.3x legacy)"),
        &["mode", "events", "events/s", "batch p50", "batch p99"],
        &rows,
    );
    println!("dual-write cost per event / legacy cost per event: {ratio:.2}x; server peak RSS {}", mib(peak));

    // How fast the relay drains what dual-write appended to the outbox.
    env.run(&["prepare", "--mode", "postgres"]);
    let outbox_len: u64 = redis::cmd("XLEN").arg(format!("{}analytics:outbox", env.settings.redis.key_prefix)).query(&mut redis).unwrap_or(0);
    let drained = measure(env.command(&["relay", "--once", "--json"]));
    println!(
        "relay drain: {outbox_len} outbox entries in {:.1}s = {:.0} events/s into plain PostgreSQL; relay peak RSS {}",
        drained.wall.as_secs_f64(),
        outbox_len as f64 / drained.wall.as_secs_f64(),
        mib(drained.peak_rss_kib)
    );
}
