//! A fault proxy: a TCP forwarder in front of any server whose behaviour a test switches at
//! run time, to produce the network faults production brings without touching the server.
//!
//! * [`Fault::Pass`] forwards everything (and heals a blackhole: held data flows on, late).
//! * [`Fault::Refuse`]: new connections are refused (nothing listens); open ones go on.
//! * [`Fault::Reset`]: every open connection is reset (`SO_LINGER 0`, then close: an RST on
//!   both sides) and new ones are accepted and reset at once.
//! * [`Fault::BlackholeExisting`]: the connections open now stop forwarding in both
//!   directions, their sockets stay open (a NAT or load balancer that dropped its state
//!   without an RST); new connections pass.
//! * [`Fault::BlackholeNew`]: new connections are accepted but never connected upstream and
//!   nothing is forwarded; open ones pass.
//! * [`Fault::Blackhole`]: both of the above.
//! * [`FaultProxy::abandon_held`]: the held connections are never healed (a NAT that forgot them).
//! * [`Fault::Latency`]: every chunk, in each direction, is delayed.
//! * [`Fault::Bandwidth`]: each direction is limited to so many bytes per second.
//!
//! The proxy runs on a thread of its own with its own runtime, so it keeps forwarding while
//! the test's thread blocks (a CLI run, a `std::thread::sleep`, a current-thread runtime).
//! Dropping it closes everything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// What the proxy does from the moment it is [`FaultProxy::set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Refuse,
    Reset,
    BlackholeExisting,
    BlackholeNew,
    Blackhole,
    /// Added before each chunk is written on, in each direction.
    Latency(Duration),
    /// Bytes per second in each direction.
    Bandwidth(u64),
}

impl Fault {
    /// A short name for tables and logs.
    pub fn name(&self) -> String {
        match self {
            Fault::Pass => "pass".into(),
            Fault::Refuse => "refuse".into(),
            Fault::Reset => "reset".into(),
            Fault::BlackholeExisting => "blackhole-existing".into(),
            Fault::BlackholeNew => "blackhole-new".into(),
            Fault::Blackhole => "blackhole".into(),
            Fault::Latency(d) => format!("latency-{}ms", d.as_millis()),
            Fault::Bandwidth(b) => format!("bandwidth-{b}Bps"),
        }
    }
}

/// Per-connection controls the proxy flips from outside.
struct Conn {
    /// true = hold: forward nothing (blackhole).
    held: watch::Sender<bool>,
    /// Set once: reset the connection (RST both sides).
    reset: watch::Sender<bool>,
    /// Held for good: no later fault heals it (see [`FaultProxy::abandon_held`]).
    abandoned: AtomicBool,
}

struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    conns: Mutex<Vec<Arc<Conn>>>,
    accepted: AtomicU64,
    connected_upstream: AtomicU64,
    /// Whether the port has a listener now (false while refusing).
    listening: AtomicBool,
}

/// See the module documentation.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `upstream`, in [`Fault::Pass`].
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the fault proxy");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (fault, _) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            upstream,
            fault,
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            connected_upstream: AtomicU64::new(0),
            listening: AtomicBool::new(true),
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("register the proxy listener");
                    tokio::select! {
                        _ = serve(task_shared, listener, addr) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every connection task and with it its sockets.
            })
            .expect("start the fault proxy thread");
        FaultProxy { addr, shared, shutdown: Some(shutdown), thread: Some(thread) }
    }

    /// Switches the fault; it applies to open connections at once where the fault says so.
    pub fn set(&self, fault: Fault) {
        self.switch(fault);
        // Refusing starts, or ends, when the listener is closed or open again: wait for it, so
        // a connection the test opens next sees the new fault.
        let listening = fault != Fault::Refuse;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.shared.listening.load(Ordering::SeqCst) != listening {
            assert!(std::time::Instant::now() < deadline, "the fault proxy did not switch to {fault:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn switch(&self, fault: Fault) {
        // Held while the fault changes, so a connection being accepted sees either the old
        // fault and this change, or the new fault (see `handle`).
        let conns = self.shared.conns.lock().unwrap();
        match fault {
            Fault::Reset => conns.iter().for_each(|c| {
                c.reset.send_replace(true);
            }),
            Fault::BlackholeExisting | Fault::Blackhole => conns.iter().for_each(|c| {
                c.held.send_replace(true);
            }),
            // Every other fault heals a blackhole: the held bytes flow on, late, as after a
            // partition heals (which is how a timed-out write still lands).
            _ => conns.iter().filter(|c| !c.abandoned.load(Ordering::SeqCst)).for_each(|c| {
                c.held.send_replace(false);
            }),
        }
        self.shared.fault.send_replace(fault);
    }

    /// The connections held now stay held for good, open and silent, whatever the fault
    /// becomes: a NAT or load balancer that forgot them never brings them back. Only the
    /// client closing them (or a reset) ends them.
    pub fn abandon_held(&self) {
        for conn in self.shared.conns.lock().unwrap().iter() {
            if *conn.held.borrow() {
                conn.abandoned.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The fault now in force.
    pub fn fault(&self) -> Fault {
        *self.shared.fault.borrow()
    }

    /// Connections accepted since the start (refused ones are not accepted).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections opened to the upstream server since the start.
    pub fn connected_upstream(&self) -> u64 {
        self.shared.connected_upstream.load(Ordering::SeqCst)
    }

    /// Connections open now (accepted and not yet closed).
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// `url` with its host and port replaced by the proxy's (userinfo, path and query kept).
    pub fn url_through(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).expect("a URL");
        parsed.set_host(Some("127.0.0.1")).unwrap();
        parsed.set_port(Some(self.addr.port())).unwrap();
        parsed.to_string()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts while the fault allows it; while refusing, nothing listens on the port.
async fn serve(shared: Arc<Shared>, listener: TcpListener, addr: SocketAddr) {
    let mut fault = shared.fault.subscribe();
    let mut listener = Some(listener);
    loop {
        let refusing = *fault.borrow_and_update() == Fault::Refuse;
        if refusing {
            // Closing the listener is what makes a connect fail with ECONNREFUSED.
            listener = None;
            shared.listening.store(false, Ordering::SeqCst);
            let _ = fault.wait_for(|f| *f != Fault::Refuse).await;
            continue;
        }
        let active = match listener.take() {
            Some(l) => l,
            None => rebind(addr).await,
        };
        shared.listening.store(true, Ordering::SeqCst);
        tokio::select! {
            accepted = active.accept() => {
                listener = Some(active);
                if let Ok((client, _)) = accepted {
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(handle(shared.clone(), client));
                }
            }
            _ = fault.changed() => listener = Some(active),
        }
    }
}

/// Binds the proxy's port again after a refusal (SO_REUSEADDR: the old socket may linger).
async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).unwrap();
        if socket.bind(addr).is_ok() {
            if let Ok(listener) = socket.listen(128) {
                return listener;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the fault proxy cannot bind {addr} again");
}

async fn handle(shared: Arc<Shared>, client: TcpStream) {
    let conn = {
        let mut conns = shared.conns.lock().unwrap();
        let initial = *shared.fault.borrow();
        if initial == Fault::Reset {
            drop(conns);
            let _ = client.set_zero_linger();
            return;
        }
        let conn = Arc::new(Conn {
            held: watch::channel(matches!(initial, Fault::BlackholeNew | Fault::Blackhole)).0,
            reset: watch::channel(false).0,
            abandoned: AtomicBool::new(false),
        });
        conns.push(conn.clone());
        conn
    };
    forward(&shared, &conn, client).await;
    shared.conns.lock().unwrap().retain(|c| !Arc::ptr_eq(c, &conn));
}

async fn forward(shared: &Shared, conn: &Conn, mut client: TcpStream) {
    let mut reset = conn.reset.subscribe();
    let mut held = conn.held.subscribe();
    // A connection accepted into a blackhole is not connected upstream until it heals.
    tokio::select! {
        _ = held.wait_for(|h| !*h) => {}
        _ = reset.wait_for(|r| *r) => {
            let _ = client.set_zero_linger();
            return;
        }
    }
    let mut server = match TcpStream::connect(shared.upstream).await {
        Ok(s) => s,
        Err(_) => {
            // The upstream is down: the client sees a reset, as from a load balancer.
            let _ = client.set_zero_linger();
            return;
        }
    };
    shared.connected_upstream.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let reset_now = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let up = pump(&mut client_read, &mut server_write, conn, &shared.fault);
        let down = pump(&mut server_read, &mut client_write, conn, &shared.fault);
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            _ = reset.wait_for(|r| *r) => true,
        }
    };
    if reset_now {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// Copies one direction chunk by chunk, applying the fault in force to each chunk.
async fn pump(from: &mut (impl AsyncReadExt + Unpin), to: &mut (impl AsyncWriteExt + Unpin), conn: &Conn, fault: &watch::Sender<Fault>) {
    let mut held = conn.held.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Nothing is read while held: the bytes wait in the kernel's buffers, as on a wire
        // that went silent.
        if held.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let limit = match *fault.borrow() {
            // Small chunks, so a slow link delivers steadily rather than in one late burst.
            Fault::Bandwidth(rate) => (rate as usize / 10).clamp(1, buf.len()),
            _ => buf.len(),
        };
        let n = match from.read(&mut buf[..limit]).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // A chunk read just before the blackhole started is held too.
        if held.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let current = *fault.borrow();
        match current {
            Fault::Latency(delay) => tokio::time::sleep(delay).await,
            Fault::Bandwidth(rate) => tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate.max(1) as f64)).await,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP echo server on threads of its own, for the proxy's own tests.
pub struct EchoServer {
    pub addr: SocketAddr,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
        let addr = listener.local_addr().unwrap();
        // The thread ends with the test binary; each connection ends when its peer closes.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                // A connection reset before it was accepted is no reason to stop serving.
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut read = stream.try_clone().expect("clone the echo stream");
                    let _ = std::io::copy(&mut read, &mut stream);
                });
            }
        });
        EchoServer { addr }
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::time::Instant;

    use super::*;

    /// Long enough to be sure nothing was forwarded (a blackhole asserts an absence: a slow
    /// machine can only make such a check pass, never fail it wrongly).
    const SILENCE: Duration = Duration::from_millis(300);
    /// A generous bound on what must happen.
    const WITHIN: Duration = Duration::from_secs(10);

    async fn echo(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut got = vec![0u8; message.len()];
        stream.read_exact(&mut got).await?;
        Ok(got)
    }

    async fn silent(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(SILENCE, stream.read(&mut byte)).await.is_err()
    }

    async fn read_exact_within(stream: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        tokio::time::timeout(WITHIN, stream.read_exact(&mut got)).await.expect("the data arrives").expect("read");
        got
    }

    #[tokio::test]
    async fn proxy_passes_refuses_and_resets() {
        let server = EchoServer::start();
        let proxy = FaultProxy::start(server.addr);
        let mut open = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(echo(&mut open, b"ping").await.unwrap(), b"ping");

        proxy.set(Fault::Refuse);
        let refused = TcpStream::connect(proxy.addr).await.expect_err("a refusing proxy accepts no connection");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(echo(&mut open, b"still").await.unwrap(), b"still", "refusing new connections leaves open ones alone");

        proxy.set(Fault::Pass);
        let mut again = TcpStream::connect(proxy.addr).await.expect("the proxy listens again");
        assert_eq!(echo(&mut again, b"back").await.unwrap(), b"back");

        proxy.set(Fault::Reset);
        let mut byte = [0u8; 1];
        let cut = tokio::time::timeout(WITHIN, open.read(&mut byte)).await.expect("the reset reaches the client");
        assert_eq!(cut.expect_err("an open connection is reset").kind(), ErrorKind::ConnectionReset);
        let mut fresh = TcpStream::connect(proxy.addr).await.expect("a resetting proxy accepts");
        let answer = tokio::time::timeout(WITHIN, echo(&mut fresh, b"x")).await.expect("the reset reaches the client");
        assert!(answer.is_err(), "a new connection is reset at once, not answered: {answer:?}");

        proxy.set(Fault::Pass);
        let mut healed = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(echo(&mut healed, b"ok").await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn proxy_blackholes_existing_connections_and_delivers_late_when_healed() {
        let server = EchoServer::start();
        let proxy = FaultProxy::start(server.addr);
        let mut old = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(echo(&mut old, b"a").await.unwrap(), b"a");

        proxy.set(Fault::BlackholeExisting);
        old.write_all(b"lost?").await.expect("the socket stays open: writes are taken");
        assert!(silent(&mut old).await, "nothing comes back through a blackholed connection");
        let mut new = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(echo(&mut new, b"new").await.unwrap(), b"new", "new connections pass");
        assert_eq!(proxy.connected_upstream(), 2);

        // Healed: what was written into the blackhole arrives, late.
        proxy.set(Fault::Pass);
        assert_eq!(read_exact_within(&mut old, 5).await, b"lost?");

        // Abandoned: held for good, though the proxy passes again.
        proxy.set(Fault::BlackholeExisting);
        proxy.abandon_held();
        proxy.set(Fault::Pass);
        old.write_all(b"gone").await.unwrap();
        new.write_all(b"gone").await.unwrap();
        assert!(silent(&mut old).await && silent(&mut new).await, "abandoned connections never come back");
        let mut newer = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(echo(&mut newer, b"fresh").await.unwrap(), b"fresh", "new connections pass");
    }

    #[tokio::test]
    async fn proxy_blackholes_new_connections_without_connecting_upstream() {
        let server = EchoServer::start();
        let proxy = FaultProxy::start(server.addr);
        let mut old = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(echo(&mut old, b"a").await.unwrap(), b"a");

        proxy.set(Fault::BlackholeNew);
        let mut new = TcpStream::connect(proxy.addr).await.expect("the connection is accepted");
        new.write_all(b"hello").await.unwrap();
        assert!(silent(&mut new).await, "a new connection gets nothing back");
        assert_eq!(echo(&mut old, b"old").await.unwrap(), b"old", "open connections pass");
        assert_eq!((proxy.accepted(), proxy.connected_upstream()), (2, 1), "the new connection never reached the server");

        proxy.set(Fault::Blackhole);
        old.write_all(b"b").await.unwrap();
        assert!(silent(&mut old).await, "Blackhole holds the open connections too");

        proxy.set(Fault::Pass);
        assert_eq!(read_exact_within(&mut new, 5).await, b"hello");
        assert_eq!(read_exact_within(&mut old, 1).await, b"b");
    }

    #[tokio::test]
    async fn proxy_adds_latency_and_limits_bandwidth() {
        let server = EchoServer::start();
        let proxy = FaultProxy::start(server.addr);
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();

        let delay = Duration::from_millis(200);
        proxy.set(Fault::Latency(delay));
        let started = Instant::now();
        assert_eq!(echo(&mut stream, b"slow").await.unwrap(), b"slow");
        let took = started.elapsed();
        println!("round trip with {delay:?} latency each way: {took:?}");
        // A lower bound only: the proxy sleeps at least the delay in each direction.
        assert!(took >= 2 * delay, "the delay applies in both directions: {took:?}");

        proxy.set(Fault::Bandwidth(2_000));
        let payload = vec![7u8; 2_000];
        let started = Instant::now();
        assert_eq!(echo(&mut stream, &payload).await.unwrap(), payload);
        let took = started.elapsed();
        println!("2000 bytes echoed at 2000 B/s: {took:?}");
        assert!(took >= Duration::from_secs(1), "2000 bytes at 2000 B/s take at least a second one way: {took:?}");

        proxy.set(Fault::Pass);
        assert_eq!(echo(&mut stream, b"fast").await.unwrap(), b"fast");
    }
}
