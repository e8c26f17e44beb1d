//! README's deadlines that no other test holds: a request that is not answered within
//! `http.request_timeout_secs` gets 503, `database.statement_timeout_secs` cancels a long
//! statement (through the pool tsmigrate builds, and a command's query waiting on a lock),
//! and an idle keep-alive connection is closed after `http.read_timeout_secs`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tsmigrate::http::{self, AppState};

use crate::daemon_process::{metric, Service};

use crate::support::{ChildGuard, TestEnv};

/// A TCP forwarder that can stop passing bytes while keeping every connection open: a
/// server that hangs (not one that is down), without touching the shared one.
struct Freezer {
    addr: SocketAddr,
    frozen: Arc<watch::Sender<bool>>,
}

impl Freezer {
    async fn start(upstream: SocketAddr) -> Freezer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(watch::channel(false).0);
        let gate = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pass(client_read, server_write, gate.subscribe()));
                tokio::spawn(pass(server_read, client_write, gate.subscribe()));
            }
        });
        Freezer { addr, frozen }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// Copies `from` to `to`, holding each chunk while frozen.
async fn pass(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn redis_addr(env: &TestEnv) -> SocketAddr {
    let url = url::Url::parse(env.settings.redis.url.expose()).unwrap();
    let host = match url.host_str() {
        Some("localhost") | None => "127.0.0.1",
        Some(host) => host,
    };
    format!("{host}:{}", url.port().unwrap_or(6379)).parse().expect("a numeric Redis host in the test URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_not_answered_within_the_request_timeout_gets_503() {
    let env = TestEnv::new().await;
    // Redis's own deadline far longer than the request's: the answer below must come from the latter.
    env.write_file("tsmigrate.toml", "[http]\nrequest_timeout_secs = 1\n[redis]\nresponse_timeout_ms = 60000\n");
    let freezer = Freezer::start(redis_addr(&env)).await;
    let through = format!("redis://{}", freezer.addr);
    let service = Service::start(&env, &["--no-relay", "--no-jobs"], &[("REDIS_URL", &through)]).await;
    let (body, _) = crate::daemon_process::batch(3);
    assert_eq!(service.ingest(&body, None).await.0, 202, "answered while Redis answers");
    let counted = |text: &str| metric(text, "tsmigrate_http_read_timeouts_total");
    assert_eq!(counted(&service.metrics().await), Some(0.0));

    freezer.freeze();
    let (status, reply) = tokio::time::timeout(Duration::from_secs(30), service.ingest(&body, None)).await.expect("the request has a deadline");
    assert_eq!(status, 503, "{reply}");
    let message = reply["error"].as_str().unwrap_or_default();
    assert!(message.contains("no answer within 1s"), "the request deadline answered, not Redis's: {reply}");
    assert_eq!(counted(&service.metrics().await), Some(1.0), "counted as an answer given up for time");
}

#[tokio::test]
async fn the_statement_timeout_cancels_a_long_statement() {
    let env = TestEnv::with_settings(|s| s.database.statement_timeout_secs = 1).await;
    let pool = tsmigrate::db::target_pool(&env.settings).await.unwrap();
    let slow = tokio::time::timeout(Duration::from_secs(30), sqlx::query("SELECT pg_sleep(20)").execute(&pool)).await.expect("cancelled by the server");
    let err = slow.expect_err("a 20 s statement under a 1 s statement_timeout");
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("57014"), "cancelled by statement_timeout: {err}");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    pool.close().await;

    // A command whose query waits on a lock the test holds ends instead of waiting with it.
    env.cli(&["prepare", "--mode", "postgres"]).expect_success();
    let config = env.write_file("statement.toml", "[database]\nstatement_timeout_secs = 1\n");
    let mut lock = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tsmigrate.migration_state IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let mut command = env.command(&["--config", config.to_str().unwrap(), "dual-write", "start"], &[]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(command);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.child().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dual-write start still waits on the lock after 60 s with a 1 s statement_timeout");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.child().stderr.as_mut().unwrap(), &mut stderr).unwrap();
    lock.rollback().await.unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("statement timeout"), "{stderr}");
    let phase: String = sqlx::query_scalar("SELECT phase FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
    assert_eq!(phase, "prepared");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_read_timeout() {
    let env = TestEnv::with_settings(|s| s.http.read_timeout_secs = 1).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::ingest_only(env.settings.clone(), env.redis().await).unwrap();
    let server = tokio::spawn(http::serve(listener, state, async {
        let _ = stop_rx.await;
    }));

    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    // One whole answer on a connection kept alive (HTTP/1.1's default).
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\"ok\"") {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200") && !answer.to_ascii_lowercase().contains("connection: close"), "{answer}");

    // Then nothing: the server closes the idle connection (EOF, nothing more sent).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut rest)).await;
    let idle = answered.elapsed();
    println!("idle keep-alive connection closed {} ms after its last answer (read timeout 1000 ms)", idle.as_millis());
    assert!(closed.is_ok(), "an idle keep-alive connection was still open 30 s after its answer (read timeout 1 s)");
    assert!(rest.is_empty(), "nothing is sent on an idle connection: {:?}", String::from_utf8_lossy(&rest));
    assert!(idle >= env.settings.http.read_timeout().mul_f64(0.9), "not closed before the read timeout: {idle:?}");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops promptly").unwrap().unwrap();
}
