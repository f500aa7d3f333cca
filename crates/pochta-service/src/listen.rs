//! Accepting connections on several listeners until shutdown, within the connection limits,
//! then draining: what the SMTP and POP3 servers share. Sessions are told about shutdown
//! through `Shutdown` themselves; this waits until every session has ended, for at most the
//! grace period. Connections from a trusted load balancer start with a PROXY protocol v2
//! header naming the real client, which then counts for the limits and the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Shutdown;
use crate::conn::Conn;
use crate::limits::{ConnectionGuard, ConnectionLimiter, Refusal};
use crate::proxy;

/// Peers whose connections must start with a PROXY protocol v2 header, and how long it may
/// take to arrive. From any other peer no header is expected (or honoured).
#[derive(Debug, Clone, Default)]
pub struct ProxyPeers {
    pub trusted: Vec<pochta_config::Cidr>,
    pub header_timeout: Duration,
}

impl ProxyPeers {
    fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(peer))
    }
}

/// Held by a session's task for as long as it runs: its connection slot, and what tells the
/// drain that it has ended (dropping it is what counts).
#[derive(Debug)]
struct Open {
    _alive: mpsc::Sender<()>,
    _slot: ConnectionGuard,
}

/// Spawns the session `start` makes of every accepted connection within `limiter`'s limits
/// until shutdown; then waits up to `grace` for the sessions to end. A refused connection gets
/// the line `refusal` gives for its listener kind (None: closed without a word, e.g. on an
/// implicit-TLS port), then is closed.
pub async fn serve<K, R, F, S>(
    listeners: Vec<(TcpListener, K)>,
    shutdown: Shutdown,
    grace: Duration,
    limiter: ConnectionLimiter,
    proxy_peers: ProxyPeers,
    refusal: R,
    start: F,
) where
    K: Copy + Send + 'static,
    R: Fn(Refusal, K) -> Option<&'static str> + Send + Sync + 'static,
    F: Fn(TcpStream, SocketAddr, K) -> S + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let admission = Arc::new(Admission {
        limiter,
        refusal,
        start,
    });
    let proxy_peers = Arc::new(proxy_peers);
    let (open_tx, mut all_closed) = mpsc::channel::<()>(1);
    let mut loops = Vec::new();
    for (listener, kind) in listeners {
        let (admission, shutdown, open) = (admission.clone(), shutdown.clone(), open_tx.clone());
        let proxy_peers = proxy_peers.clone();
        loops.push(tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.wait() => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((mut tcp, peer)) if proxy_peers.trusts(peer.ip()) => {
                        // Read the header apart, so a slow balancer connection cannot hold up
                        // the accept loop.
                        let (admission, open) = (admission.clone(), open.clone());
                        let timeout = proxy_peers.header_timeout;
                        tokio::spawn(async move {
                            match proxy::read_header(&mut tcp, peer, timeout).await {
                                Ok(client) => admission.admit(tcp, client, kind, &open),
                                Err(e) => {
                                    tracing::warn!(%peer, "{e}; connection closed");
                                }
                            }
                        });
                    }
                    Ok((tcp, peer)) => admission.admit(tcp, peer, kind, &open),
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    drop(open_tx);
    for accept_loop in loops {
        let _ = accept_loop.await;
    }
    // recv() returns None once every Open is dropped.
    if tokio::time::timeout(grace, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after {grace:?}; closing them");
    }
}

/// What decides whether a connection may start a session, and starts it.
struct Admission<R, F> {
    limiter: ConnectionLimiter,
    refusal: R,
    start: F,
}

impl<R, F> Admission<R, F> {
    fn admit<K, S>(&self, tcp: TcpStream, client: SocketAddr, kind: K, open: &mpsc::Sender<()>)
    where
        K: Copy + Send + 'static,
        R: Fn(Refusal, K) -> Option<&'static str>,
        F: Fn(TcpStream, SocketAddr, K) -> S,
        S: Future<Output = ()> + Send + 'static,
    {
        match self.limiter.try_acquire(client.ip()) {
            Ok(slot) => {
                let open = Open {
                    _alive: open.clone(),
                    _slot: slot,
                };
                let _ = tcp.set_nodelay(true);
                let session = (self.start)(tcp, client, kind);
                tokio::spawn(async move {
                    let _open = open;
                    session.await;
                });
            }
            Err(refused) => {
                tracing::warn!(client = %client.ip(), ?refused, "connection refused");
                let line = (self.refusal)(refused, kind);
                tokio::spawn(async move {
                    let mut conn = Conn::Plain(tcp);
                    if let Some(line) = line {
                        let _ = conn.write_all(line.as_bytes()).await;
                    }
                    conn.shutdown().await;
                });
            }
        }
    }
}
