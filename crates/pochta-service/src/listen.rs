//! Accepting connections on several listeners until shutdown, then draining: what the SMTP
//! and POP3 servers share. Sessions are told about shutdown through `Shutdown` themselves;
//! this waits until every session has ended, for at most the grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Shutdown;

/// Held by a session for as long as it is open (dropping it is what counts).
#[derive(Debug)]
pub struct Open {
    _alive: mpsc::Sender<()>,
}

/// Runs `start` for every accepted connection (it should spawn the session and keep `Open`
/// alive in it) until shutdown; then waits up to `grace` for the sessions to end.
pub async fn serve<K, F>(
    listeners: Vec<(TcpListener, K)>,
    shutdown: Shutdown,
    grace: Duration,
    start: F,
) where
    K: Copy + Send + 'static,
    F: Fn(TcpStream, SocketAddr, K, Open) + Send + Sync + 'static,
{
    let start = Arc::new(start);
    let (open_tx, mut all_closed) = mpsc::channel::<()>(1);
    let mut loops = Vec::new();
    for (listener, kind) in listeners {
        let (start, shutdown, open) = (start.clone(), shutdown.clone(), open_tx.clone());
        loops.push(tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.wait() => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((tcp, peer)) => start(
                        tcp,
                        peer,
                        kind,
                        Open {
                            _alive: open.clone(),
                        },
                    ),
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
