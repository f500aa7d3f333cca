//! The connection driver: runs a sans-IO `pochta_session::Session` over a client connection,
//! the way `rustls::Connection::complete_io` drives rustls's state machine. Written once for
//! the SMTP and the POP3 server, so what bounds a session is decided in one place:
//!
//! - a read timeout (longer while message content is received), a write timeout (no progress
//!   for that long: the client does not read), a TLS handshake timeout, and a maximum age;
//! - output is written before the session is given more input, and at most `FLUSH_AT`
//!   octets of it wait at any time (the sessions themselves stop consuming input while
//!   their own output waits);
//! - a process-wide budget of message content held in memory (`MemoryBudget`): past it,
//!   sessions receiving content are read from one at a time, oldest first.
//!
//! The loop: poll the session until it needs input; perform each action through the
//! service's `Handler`; write what is pending in one write (pipelined replies coalesce); then
//! read, or do the service's periodic duty, or tell an interruptible session about shutdown.

use std::collections::BTreeSet;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pochta_session::{Output, Session};
use tokio::time::{Instant, Interval};
use tokio_rustls::TlsAcceptor;

use crate::Shutdown;
use crate::conn::Conn;

/// Pending output beyond this is written before the session is polled again.
pub const FLUSH_AT: usize = 256 * 1024;

/// Writes go out in pieces of this size, each within the write timeout.
const WRITE_PIECE: usize = 64 * 1024;

/// Output buffer a session keeps between answers; a larger one is given back when the session
/// waits for input.
const KEEP_OUT: usize = 16 * 1024;

/// How long the driver waits for the client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a command.
    pub command: Duration,
    /// For more message content (`Session::in_data`).
    pub data: Duration,
    /// For a TLS handshake.
    pub handshake: Duration,
    /// For a write to make progress.
    pub write: Duration,
    /// The longest a session may last: past it, it is told it timed out when it next waits
    /// for input.
    pub session: Duration,
}

/// How a service's sessions are run.
pub struct Driver<'a> {
    pub tls: Option<&'a TlsAcceptor>,
    pub timeouts: Timeouts,
    /// Shared by every session of the process; None: no limit.
    pub memory: Option<&'a MemoryBudget>,
    pub shutdown: &'a Shutdown,
}

/// The connection as actions see it: the stream, and output not yet written.
pub struct Io {
    conn: Conn,
    out: Vec<u8>,
    write_timeout: Duration,
}

impl Io {
    pub fn new(conn: Conn, write_timeout: Duration) -> Self {
        Io {
            conn,
            out: Vec::new(),
            write_timeout,
        }
    }

    /// Output not yet written: it goes out before the next read, or at `flush`. Actions that
    /// answer at length (a POP3 RETR) append to it.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Writes the pending output; fails if a piece of it makes no progress within the write
    /// timeout.
    pub async fn flush(&mut self) -> io::Result<()> {
        write_pieces(&mut self.conn, &self.out, self.write_timeout).await?;
        self.out.clear();
        Ok(())
    }

    /// Writes the pending output, then `more` from where it lies (a large message's piece,
    /// which a copy into the buffer would cost as much again).
    pub async fn flush_then(&mut self, more: &[u8]) -> io::Result<()> {
        self.flush().await?;
        write_pieces(&mut self.conn, more, self.write_timeout).await
    }

    /// Gives back an output buffer grown past `KEEP_OUT` once it is written: otherwise every
    /// session that once sent a large answer (a FETCH, a RETR) would hold its size while it
    /// idles.
    fn release_spare(&mut self) {
        if self.out.is_empty() && self.out.capacity() > KEEP_OUT {
            self.out = Vec::new();
        }
    }

    /// Writes the pending output, then closes the connection.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.write_timeout, self.conn.shutdown()).await;
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

    /// A periodic duty, e.g. renewing a lock, or telling the session of changes made
    /// elsewhere (what it sends goes out before the next read). An error ends the session.
    fn duty(
        &mut self,
        _session: &mut S,
        _io: &mut Io,
    ) -> impl Future<Output = Result<(), Ended>> + Send {
        async { Ok(()) }
    }
}

impl Driver<'_> {
    /// Runs `session` over `conn` until it ends: TLS from the first byte when `implicit_tls`.
    pub async fn drive<S, H>(
        &self,
        conn: Conn,
        mut session: S,
        implicit_tls: bool,
        handler: &mut H,
    ) -> Ended
    where
        S: Session,
        H: Handler<S>,
    {
        let timeouts = self.timeouts;
        let mut io = Io::new(conn, timeouts.write);
        if implicit_tls && let Err(ended) = io.accept_tls(self.tls, timeouts.handshake).await {
            return ended;
        }
        let too_old = Instant::now() + timeouts.session;
        let mut share = self.memory.map(Share::new);
        // Taken when input arrives, given back once a read has drained the connection: a
        // session waiting on a quiet client holds no read buffer.
        let mut buf = Vec::new();
        let mut told_shutdown = false;
        let mut duty: Option<Interval> = None;
        // The read timeout runs from the client's last input or the end of the server's last
        // answer (a long download is not idleness), never from the last duty.
        let mut heard_at = Instant::now();
        loop {
            let mut answered = false;
            while let Some(output) = session.poll() {
                answered = true;
                match output {
                    Output::Send(bytes) => {
                        handler.sending(&bytes);
                        io.out.extend_from_slice(&bytes);
                        if io.out.len() >= FLUSH_AT
                            && let Err(e) = io.flush().await
                        {
                            return Ended::Failed(format!("writing: {e}"));
                        }
                    }
                    Output::StartTls => {
                        if let Err(e) = io.flush().await {
                            return Ended::Failed(format!("writing: {e}"));
                        }
                        if let Err(ended) = io.accept_tls(self.tls, timeouts.handshake).await {
                            return ended;
                        }
                        session.tls_established();
                    }
                    Output::Close => {
                        io.close().await;
                        return Ended::Closed;
                    }
                    Output::Action(action) => {
                        // Boxed while it runs: held inline, the largest action's future (a
                        // service's store calls) sized every session's task, idle or not.
                        let perform = Box::pin(handler.perform(action, &mut session, &mut io));
                        if let Err(ended) = perform.await {
                            return ended;
                        }
                    }
                }
            }
            // The session wants input: send what is pending in one write (RFC 2920).
            if let Err(e) = io.flush().await {
                return Ended::Failed(format!("writing: {e}"));
            }
            io.release_spare();
            if answered {
                heard_at = Instant::now();
            }
            match (handler.duty_period(), &duty) {
                (Some(period), None) => {
                    duty = Some(tokio::time::interval_at(Instant::now() + period, period))
                }
                (None, Some(_)) => duty = None,
                _ => {}
            }
            let now = Instant::now();
            if now >= too_old {
                session.timed_out();
                continue;
            }
            let wait = if session.in_data() {
                timeouts.data
            } else {
                timeouts.command
            };
            if now >= heard_at + wait {
                heard_at = now;
                session.timed_out();
                continue;
            }
            let wait = (heard_at + wait - now).min(too_old - now);
            if let Some(share) = &mut share {
                share.hold(session.buffered_bytes(), session.in_data());
            }
            tokio::select! {
                read = read_within(&mut io.conn, &mut buf, wait, share.as_ref()) => match read {
                    Ok(Some(0)) => return Ended::PeerClosed,
                    Ok(Some(n)) => {
                        heard_at = Instant::now();
                        session.feed(&buf[..n]);
                        if n < buf.len() {
                            buf = Vec::new();
                        }
                    }
                    // Both deadlines are checked above, before the next read.
                    Ok(None) => {}
                    Err(e) => return Ended::Failed(format!("reading: {e}")),
                },
                _ = tick(&mut duty) => {
                    // Boxed, as `perform` is.
                    if let Err(ended) = Box::pin(handler.duty(&mut session, &mut io)).await {
                        return ended;
                    }
                }
                _ = self.shutdown.wait(), if session.interruptible() && !told_shutdown => {
                    told_shutdown = true;
                    session.shutting_down();
                }
            }
        }
    }
}

/// Writes `bytes` in pieces of `WRITE_PIECE`; fails if one makes no progress within `wait`.
async fn write_pieces(conn: &mut Conn, bytes: &[u8], wait: Duration) -> io::Result<()> {
    for piece in bytes.chunks(WRITE_PIECE) {
        tokio::time::timeout(wait, conn.write_all(piece))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client does not read"))??;
    }
    Ok(())
}

/// Octets taken from the connection in one read.
const READ_BUFFER: usize = 16 * 1024;

/// A read within `wait`, once the memory budget lets this session read: Some(octets read),
/// or None if `wait` passed first. `buf` is filled out to `READ_BUFFER` only once there is
/// input.
async fn read_within(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    wait: Duration,
    share: Option<&Share<'_>>,
) -> io::Result<Option<usize>> {
    let read = async {
        if let Some(share) = share {
            share.turn().await;
        }
        conn.readable().await?;
        buf.resize(READ_BUFFER, 0);
        conn.read(buf).await
    };
    match tokio::time::timeout(wait, read).await {
        Ok(read) => read.map(Some),
        Err(_) => Ok(None),
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

/// Octets of client input that all sessions of a process hold in memory, against a limit.
/// Within the limit every session reads freely. Past it, of the sessions receiving message
/// content only the one that began receiving first may read on: it is the next to finish and
/// give its octets back, so someone always makes progress, and the memory held stays within
/// the limit plus what that one session adds (at most a message).
pub struct MemoryBudget {
    limit: usize,
    state: Mutex<BudgetState>,
    next_ticket: AtomicU64,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct BudgetState {
    used: usize,
    /// Sessions receiving message content, by when they began.
    receiving: BTreeSet<u64>,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            limit,
            state: Mutex::default(),
            next_ticket: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Octets held now by every session.
    pub fn used(&self) -> usize {
        self.state.lock().expect("budget lock").used
    }
}

/// One session's part of a `MemoryBudget`, given back when dropped.
struct Share<'a> {
    budget: &'a MemoryBudget,
    held: usize,
    /// While the session receives message content: its place in line.
    ticket: Option<u64>,
}

impl<'a> Share<'a> {
    fn new(budget: &'a MemoryBudget) -> Self {
        Share {
            budget,
            held: 0,
            ticket: None,
        }
    }

    /// The session now holds `octets`, and is or is not receiving message content.
    /// Called before every read, so it costs nothing when nothing changed (a session between
    /// messages, reading commands), and wakes the waiting sessions only when octets were given
    /// back or the line moved.
    fn hold(&mut self, octets: usize, receiving: bool) {
        if octets == self.held && receiving == self.ticket.is_some() {
            return;
        }
        let mut state = self.budget.state.lock().expect("budget lock");
        state.used = state.used - self.held + octets;
        let mut wake = octets < self.held;
        self.held = octets;
        match (receiving, self.ticket) {
            (true, None) => {
                let ticket = self.budget.next_ticket.fetch_add(1, Ordering::Relaxed);
                state.receiving.insert(ticket);
                self.ticket = Some(ticket);
            }
            (false, Some(ticket)) => {
                state.receiving.remove(&ticket);
                self.ticket = None;
                wake = true;
            }
            _ => {}
        }
        drop(state);
        if wake {
            self.budget.changed.notify_waiters();
        }
    }

    /// Waits until this session may read: always when it receives no message content or the
    /// budget has room; otherwise only when it is first in line.
    async fn turn(&self) {
        let Some(ticket) = self.ticket else {
            return;
        };
        loop {
            let changed = self.budget.changed.notified();
            {
                let state = self.budget.state.lock().expect("budget lock");
                if state.used <= self.budget.limit
                    || state.receiving.first().is_none_or(|first| *first == ticket)
                {
                    return;
                }
            }
            changed.await;
        }
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.hold(0, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair of loopback sockets: (client, server).
    async fn loopback() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// A driver whose client may stay silent for 300 ms.
    fn quick_driver(shutdown: &Shutdown) -> Driver<'_> {
        Driver {
            tls: None,
            timeouts: Timeouts {
                command: Duration::from_millis(300),
                data: Duration::from_millis(300),
                handshake: Duration::from_secs(1),
                write: Duration::from_secs(1),
                session: Duration::from_secs(3600),
            },
            memory: None,
            shutdown,
        }
    }

    /// Says nothing; closes once told it timed out.
    struct Quiet {
        timed_out: bool,
    }

    impl Session for Quiet {
        type Action = ();
        fn feed(&mut self, _: &[u8]) {}
        fn poll(&mut self) -> Option<Output<()>> {
            self.timed_out.then_some(Output::Close)
        }
        fn tls_established(&mut self) {}
        fn timed_out(&mut self) {
            self.timed_out = true;
        }
        fn shutting_down(&mut self) {}
        fn interruptible(&self) -> bool {
            false
        }
    }

    /// A duty every 10 ms, as a session holding a lock or watching a mailbox has.
    struct Dutiful {
        duties: u32,
    }

    impl Handler<Quiet> for Dutiful {
        async fn perform(&mut self, _: (), _: &mut Quiet, _: &mut Io) -> Result<(), Ended> {
            Ok(())
        }
        fn duty_period(&self) -> Option<Duration> {
            Some(Duration::from_millis(10))
        }
        async fn duty(&mut self, _: &mut Quiet, _: &mut Io) -> Result<(), Ended> {
            self.duties += 1;
            Ok(())
        }
    }

    /// Answers at length first (an action taking 500 ms, as a RETR of a large message to a
    /// slow reader does), then waits for the client; records whether it timed out.
    struct Slow {
        acted: bool,
        fed: bool,
        timed_out: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Session for Slow {
        type Action = ();
        fn feed(&mut self, _: &[u8]) {
            self.fed = true;
        }
        fn poll(&mut self) -> Option<Output<()>> {
            if !self.acted {
                self.acted = true;
                return Some(Output::Action(()));
            }
            (self.fed || self.timed_out.load(Ordering::Relaxed)).then_some(Output::Close)
        }
        fn tls_established(&mut self) {}
        fn timed_out(&mut self) {
            self.timed_out.store(true, Ordering::Relaxed);
        }
        fn shutting_down(&mut self) {}
        fn interruptible(&self) -> bool {
            false
        }
    }

    struct Answering;

    impl Handler<Slow> for Answering {
        async fn perform(&mut self, _: (), _: &mut Slow, _: &mut Io) -> Result<(), Ended> {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        }
    }

    /// The time the server spends answering is not the client's idleness: a command sent
    /// soon after a long answer is read, not met with a timeout.
    #[tokio::test]
    async fn a_long_answer_does_not_count_as_idleness() {
        let (mut client, server) = loopback().await;
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let shutdown = Shutdown { rx };
        let driver = quick_driver(&shutdown);
        let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let session = Slow {
            acted: false,
            fed: false,
            timed_out: timed_out.clone(),
        };
        let client = async {
            // The answer takes 500 ms; the next command comes 100 ms after it.
            tokio::time::sleep(Duration::from_millis(600)).await;
            tokio::io::AsyncWriteExt::write_all(&mut client, b"next\r\n")
                .await
                .unwrap();
        };
        let mut handler = Answering;
        let drive = driver.drive(Conn::Plain(server), session, false, &mut handler);
        let (ended, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(drive, client)
        })
        .await
        .expect("the session ended");
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert!(
            !timed_out.load(Ordering::Relaxed),
            "timed out after a long answer"
        );
    }

    /// A silent client times out although the session's duty runs many times meanwhile: the
    /// read timeout counts from the client's last input, not from the last duty.
    #[tokio::test]
    async fn duties_do_not_keep_a_silent_client_alive() {
        let (client, server) = loopback().await;
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let shutdown = Shutdown { rx };
        let driver = quick_driver(&shutdown);
        let mut handler = Dutiful { duties: 0 };
        let session = Quiet { timed_out: false };
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            driver.drive(Conn::Plain(server), session, false, &mut handler),
        )
        .await
        .expect("the session timed out");
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert!(handler.duties >= 5, "{} duties", handler.duties);
        drop(client);
    }

    #[tokio::test]
    async fn past_the_budget_only_the_first_receiver_reads() {
        let budget = MemoryBudget::new(100);
        let (mut a, mut b) = (Share::new(&budget), Share::new(&budget));
        a.hold(60, true);
        b.hold(30, true);
        assert_eq!(budget.used(), 90);
        // Within the limit both read.
        tokio::time::timeout(Duration::from_millis(50), b.turn())
            .await
            .expect("room");
        b.hold(50, true);
        assert_eq!(budget.used(), 110);
        tokio::time::timeout(Duration::from_millis(50), a.turn())
            .await
            .expect("a began first: it may read on");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.turn())
                .await
                .is_err(),
            "b waits"
        );
        // a finishes its message and gives its octets back: b may read again.
        let waiter = async { b.turn().await };
        let release = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            a.hold(0, false);
        };
        tokio::time::timeout(Duration::from_secs(1), async {
            tokio::join!(waiter, release)
        })
        .await
        .expect("b's turn comes");
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn sessions_not_receiving_content_always_read() {
        let budget = MemoryBudget::new(10);
        let mut big = Share::new(&budget);
        big.hold(1000, true);
        let mut commands = Share::new(&budget);
        commands.hold(5, false);
        tokio::time::timeout(Duration::from_millis(50), commands.turn())
            .await
            .expect("a session between messages reads its commands");
    }
}
