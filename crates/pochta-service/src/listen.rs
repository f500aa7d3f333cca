//! Accepting connections on several listeners until shutdown, within the connection limits,
//! then draining: what the SMTP and POP3 servers share. Sessions are told about shutdown through `Shutdown` themselves;
//! this waits until every session has ended, for at most the grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Shutdown;
use crate::conn::Conn;
use crate::limits::{ConnectionGuard, ConnectionLimiter, Refusal};

/// Held by a session for as long as it is open: its connection slot, and what tells the
/// drain that it has ended (dropping it is what counts).
#[derive(Debug)]
pub struct Open {
    _alive: mpsc::Sender<()>,
    _slot: ConnectionGuard,
}

/// Runs `start` for every accepted connection within `limiter`'s limits (it should spawn the
/// session and keep `Open` alive in it) until shutdown; then waits up to `grace` for the
/// sessions to end. A refused connection gets the line `refusal` gives for its listener kind
/// (None: closed without a word, e.g. on an implicit-TLS port), then is closed.
pub async fn serve<K, R, F>(
    listeners: Vec<(TcpListener, K)>,
    shutdown: Shutdown,
    grace: Duration,
    limiter: ConnectionLimiter,
    refusal: R,
    start: F,
) where
    K: Copy + Send + 'static,
    R: Fn(Refusal, K) -> Option<&'static str> + Send + Sync + 'static,
    F: Fn(TcpStream, SocketAddr, K, Open) + Send + Sync + 'static,
{
    let refusal = Arc::new(refusal);
    let start = Arc::new(start);
    let (open_tx, mut all_closed) = mpsc::channel::<()>(1);
    let mut loops = Vec::new();
    for (listener, kind) in listeners {
        let (start, shutdown, open) = (start.clone(), shutdown.clone(), open_tx.clone());
        let (limiter, refusal) = (limiter.clone(), refusal.clone());
        loops.push(tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.wait() => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((tcp, peer)) => match limiter.try_acquire(peer.ip()) {
                        Ok(slot) => start(
                            tcp,
                            peer,
                            kind,
                            Open {
                                _alive: open.clone(),
                                _slot: slot,
                            },
                        ),
                        Err(refused) => {
                            tracing::warn!(client = %peer.ip(), ?refused, "connection refused");
                            let line = refusal(refused, kind);
                            tokio::spawn(async move {
                                let mut conn = Conn::Plain(tcp);
                                if let Some(line) = line {
                                    let _ = conn.write_all(line.as_bytes()).await;
                                }
                                conn.shutdown().await;
                            });
                        }
                    },
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
