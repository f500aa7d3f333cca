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
    /// Defer rather than send without TLS whose certificate verifies: signed by a trusted
    /// root (`queue.tls_ca_file`) and naming the server (its MX host name, or the host or IP
    /// address of a route or the smarthost).
    Verify,
    /// Never STARTTLS.
    Never,
}

impl TlsPolicy {
    /// Mail is deferred rather than sent without TLS.
    pub fn requires_tls(self) -> bool {
        matches!(self, TlsPolicy::Required | TlsPolicy::Verify)
    }
}

/// How addresses resolve beyond an exact account (`[addresses]` in the configuration).
#[derive(Debug, Clone)]
pub struct AddressRules {
    /// Subaddressing (RFC 5233): each of these characters ends the part of a local part that
    /// names the account or alias (`user+tag` reaches `user`); empty: off.
    pub delimiters: String,
    /// Aliases of aliases are followed this many levels deep at most.
    pub max_depth: usize,
    /// One recipient expands to at most this many final addresses.
    pub max_targets: usize,
    /// The key forwarded mail's senders are rewritten with, and bounces to them checked by
    /// (SRS); None: forwarded mail keeps its sender, and SRS addresses are unknown.
    pub srs: Option<crate::SrsKey>,
    /// An SRS address is taken back this many days after it was made.
    pub srs_max_age_days: u64,
}

impl Default for AddressRules {
    fn default() -> Self {
        AddressRules {
            delimiters: "+".into(),
            max_depth: 8,
            max_targets: 1000,
            srs: None,
            srs_max_age_days: 21,
        }
    }
}

impl AddressRules {
    /// The part of `local_part` that names an account or alias when it is a subaddress: what
    /// comes before its first delimiter, if there is one with something before it.
    pub fn subaddress_base<'a>(&self, local_part: &'a str) -> Option<&'a str> {
        let at = local_part.find(|c| self.delimiters.contains(c))?;
        (at > 0).then(|| &local_part[..at])
    }
}
