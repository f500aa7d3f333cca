//! Transport policies that a protocol state machine applies and the configuration names, one
//! type each so no mapping stands between them.

use serde::{Deserialize, Serialize};

/// What a bare LF or CR in message text gets (SMTP smuggling defence, RFC 5321 2.3.8). Either
/// way it never ends DATA: only CRLF.CRLF does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// The message is refused with 550 5.6.0.
    Reject,
    /// Bare LF and CR become CRLF in the stored message.
    Normalize,
}

/// Where an accepted recipient's mail goes, as decided when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// Into a maildrop here (a local domain): the local delivery loops take it.
    Local,
    /// To another server (a relay domain, or relaying for a trusted or authenticated client):
    /// the remote delivery loops take it.
    Remote,
    /// Kept until the domain asks for it with ETRN (a hold domain), then delivered remotely.
    Hold,
}

/// STARTTLS towards another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// STARTTLS when offered, plaintext otherwise (RFC 7435 opportunistic security).
    Opportunistic,
    /// Defer rather than send without TLS.
    Required,
    /// Never STARTTLS.
    Never,
}
