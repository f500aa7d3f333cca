//! The connection driver: runs a sans-IO `pochta_session::Session` over a client connection,
//! the way `rustls::Connection::complete_io` drives rustls's state machine. Written once for
//! the SMTP and the POP3 server, so what bounds a session (timeouts, TLS handshakes, the
//! shutdown notice) is decided in one place.
//!
//! The loop: poll the session until it needs input; write what it sent (in one write, so
//! pipelined replies coalesce); perform each action through the service's `Handler`; read
//! with the session's timeout, or do the service's periodic duty, or tell an interruptible
//! session about shutdown.

use std::io;
use std::time::Duration;

use pochta_session::{Output, Session};
use tokio::time::{Instant, Interval};
use tokio_rustls::TlsAcceptor;

use crate::Shutdown;
use crate::conn::Conn;

/// How long the driver waits for the client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a command.
    pub command: Duration,
    /// For more message content (`Session::in_data`).
    pub data: Duration,
    /// For a TLS handshake.
    pub handshake: Duration,
}

/// The connection as actions see it: the stream, and output not yet written.
pub struct Io {
    conn: Conn,
    out: Vec<u8>,
}

impl Io {
    pub fn new(conn: Conn) -> Self {
        Io {
            conn,
            out: Vec::new(),
        }
    }

    /// Output not yet written: it goes out before the next read, or at `flush`. Actions that
    /// answer at length (a POP3 RETR) append to it.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Writes the pending output.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.conn.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Writes the pending output, then closes the connection.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        self.conn.shutdown().await;
    }

    /// The server side of a TLS handshake, within `timeout`.
    async fn accept_tls(
        &mut self,
        tls: Option<&TlsAcceptor>,
        timeout: Duration,
    ) -> Result<(), Ended> {
        let tls = tls.ok_or_else(|| Ended::Failed("TLS is not configured".into()))?;
        match tokio::time::timeout(timeout, self.conn.accept_tls(tls)).await {
            Ok(Ok(())) => {
                tracing::Span::current().record("tls", true);
                Ok(())
            }
            Ok(Err(e)) => Err(Ended::Failed(format!("TLS handshake failed: {e}"))),
            Err(_) => Err(Ended::Failed("TLS handshake timed out".into())),
        }
    }
}

/// Why a session's connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The session closed it.
    Closed,
    /// The client closed it.
    PeerClosed,
    /// A read, a write, a handshake or an action failed.
    Failed(String),
}

/// What a service does for its sessions: performs their actions, and optionally a periodic
/// duty while a session waits for input.
pub trait Handler<S: Session> {
    /// Performs `action` and gives the session its answer. An error ends the session.
    fn perform(
        &mut self,
        action: S::Action,
        session: &mut S,
        io: &mut Io,
    ) -> impl Future<Output = Result<(), Ended>> + Send;

    /// Sees every reply the session sends (for metrics).
    fn sending(&mut self, _bytes: &[u8]) {}

    /// How often `duty` runs while the session waits for input; None: never (for now).
    fn duty_period(&self) -> Option<Duration> {
        None
    }

    /// A periodic duty, e.g. renewing a lock. An error ends the session.
    fn duty(&mut self, _io: &mut Io) -> impl Future<Output = Result<(), Ended>> + Send {
        async { Ok(()) }
    }
}

/// Runs `session` over `conn` until it ends: TLS from the first byte when `implicit_tls`.
pub async fn drive<S, A>(
    conn: Conn,
    mut session: S,
    actions: &mut A,
    tls: Option<&TlsAcceptor>,
    implicit_tls: bool,
    timeouts: Timeouts,
    shutdown: &Shutdown,
) -> Ended
where
    S: Session,
    A: Handler<S>,
{
    let mut io = Io::new(conn);
    if implicit_tls && let Err(ended) = io.accept_tls(tls, timeouts.handshake).await {
        return ended;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut told_shutdown = false;
    let mut duty: Option<Interval> = None;
    loop {
        while let Some(output) = session.poll() {
            match output {
                Output::Send(bytes) => {
                    actions.sending(&bytes);
                    io.out.extend_from_slice(&bytes);
                }
                Output::StartTls => {
                    if let Err(e) = io.flush().await {
                        return Ended::Failed(format!("writing: {e}"));
                    }
                    if let Err(ended) = io.accept_tls(tls, timeouts.handshake).await {
                        return ended;
                    }
                    session.tls_established();
                }
                Output::Close => {
                    io.close().await;
                    return Ended::Closed;
                }
                Output::Action(action) => {
                    if let Err(ended) = actions.perform(action, &mut session, &mut io).await {
                        return ended;
                    }
                }
            }
        }
        // The session wants input: send what is pending in one write (RFC 2920).
        if let Err(e) = io.flush().await {
            return Ended::Failed(format!("writing: {e}"));
        }
        match (actions.duty_period(), &duty) {
            (Some(period), None) => {
                duty = Some(tokio::time::interval_at(Instant::now() + period, period))
            }
            (None, Some(_)) => duty = None,
            _ => {}
        }
        let timeout = if session.in_data() {
            timeouts.data
        } else {
            timeouts.command
        };
        tokio::select! {
            read = tokio::time::timeout(timeout, io.conn.read(&mut buf)) => match read {
                Ok(Ok(0)) => return Ended::PeerClosed,
                Ok(Ok(n)) => session.feed(&buf[..n]),
                Ok(Err(e)) => return Ended::Failed(format!("reading: {e}")),
                Err(_) => session.timed_out(),
            },
            _ = tick(&mut duty) => {
                if let Err(ended) = actions.duty(&mut io).await {
                    return ended;
                }
            }
            _ = shutdown.wait(), if session.interruptible() && !told_shutdown => {
                told_shutdown = true;
                session.shutting_down();
            }
        }
    }
}

/// The next tick of `duty`; never without one.
async fn tick(duty: &mut Option<Interval>) {
    match duty {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
