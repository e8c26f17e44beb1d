//! A TCP forwarder in front of the real PostgreSQL server that a test can take down and
//! bring back: "the target is unreachable" without touching the shared server.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Outage {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    /// true = up. Flipping to false closes the listener and every forwarded connection.
    up: Arc<watch::Sender<bool>>,
}

impl Outage {
    /// Starts forwarding `127.0.0.1:<random>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Outage {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let outage = Outage { addr, upstream, up: Arc::new(up) };
        outage.serve(listener);
        outage
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, up) = (self.upstream, self.up.clone());
        let mut down = up.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { return };
                        let mut stop = up.subscribe();
                        tokio::spawn(async move {
                            let Ok(server) = TcpStream::connect(upstream).await else { return };
                            let (mut client, mut server) = (client, server);
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {},
                                _ = stop.wait_for(|up| !*up) => {},
                            }
                        });
                    }
                    _ = down.wait_for(|up| !*up) => return,
                }
            }
        });
    }

    /// The target becomes unreachable: connections are cut and new ones refused.
    pub fn take_down(&self) {
        self.up.send_replace(false);
    }

    /// The target is reachable again, on the same address.
    pub async fn bring_back(&self) {
        // send_replace: the value must change even when no task is listening.
        self.up.send_replace(true);
        let mut retries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if retries < 50 => {
                    retries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot re-bind the proxy: {e}"),
            }
        };
        self.serve(listener);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_through(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).unwrap();
        parsed.set_host(Some("127.0.0.1")).unwrap();
        parsed.set_port(Some(self.addr.port())).unwrap();
        parsed.to_string()
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.up.send_replace(false);
    }
}

/// The socket address of a PostgreSQL URL.
pub fn pg_addr(url: &str) -> SocketAddr {
    let parsed = url::Url::parse(url).unwrap();
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let port = parsed.port().unwrap_or(5432);
    let host = if host == "localhost" { "127.0.0.1" } else { host };
    format!("{host}:{port}").parse().expect("numeric PostgreSQL host in the test URL")
}
