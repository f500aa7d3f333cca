//! POP3 as a sans-IO state machine (RFC 1939, with CAPA and response codes from RFC 2449,
//! STLS from RFC 2595 and SASL PLAIN from RFC 5034). The `Session` turns bytes into replies
//! and into actions the I/O layer performs (log in and lock, send a message, commit deletions,
//! start TLS); `dot_stuffing` writes messages as multi-line responses.

pub mod dot_stuffing;
pub mod session;

pub use dot_stuffing::DotStuffer;
pub use session::{Action, Credentials, Entry, LoginResult, Output, Policy, Session};
