//! The contract between a sans-IO server session and what drives it.
//!
//! A protocol crate (`pochta-smtp`, `pochta-pop3`) implements `Session`: bytes from the client
//! go in with `feed`, and `poll` hands out what to do next, an `Output`. Three outputs are the
//! same for every protocol and are carried out by the connection driver
//! (`pochta_service::drive`): bytes to send, the TLS handshake, closing. The fourth, `Action`,
//! is the protocol's own request to the world (verify a recipient, store a message, log in),
//! which the service performs and answers through the session's own methods. While an action
//! is outstanding the session consumes no input, so pipelined commands are answered in order.
//!
//! The same contract lets tests drive a session with no socket at all
//! (`pochta_testkit::Script`).

pub mod proxy;

/// What a session wants done next.
#[derive(Debug)]
pub enum Output<A> {
    /// Bytes to write to the client.
    Send(Vec<u8>),
    /// Write what was sent so far, do the server side of the TLS handshake, then call
    /// `Session::tls_established`.
    StartTls,
    /// Write what was sent so far, then close the connection.
    Close,
    /// A protocol action to perform and answer.
    Action(A),
}

/// A sans-IO server session: no socket, no clock, no store.
pub trait Session {
    /// The protocol's requests to the world.
    type Action;

    /// Bytes read from the client.
    fn feed(&mut self, bytes: &[u8]);

    /// The next output, or None when the session needs more input or an action's answer.
    fn poll(&mut self) -> Option<Output<Self::Action>>;

    /// The TLS handshake that `Output::StartTls` asked for succeeded.
    fn tls_established(&mut self);

    /// The client sent nothing within the timeout: the session says so and closes.
    fn timed_out(&mut self);

    /// The server is shutting down: the session says so and closes.
    fn shutting_down(&mut self);

    /// Nothing would be lost by `shutting_down` now (no transaction half done).
    fn interruptible(&self) -> bool;

    /// Message content is being received (a longer read timeout may apply).
    fn in_data(&self) -> bool {
        false
    }

    /// Octets of client input the session holds in memory (unprocessed input, a message
    /// being received), for a process-wide memory budget.
    fn buffered_bytes(&self) -> usize {
        0
    }
}
