//! Pochta's mail vocabulary: the values every crate speaks of, defined once so the SMTP state
//! machines, the store, the delivery queue and the configuration agree on what they mean.
//!
//! - `dane`: which TLSA records an SMTP client uses and whether a certificate matches one
//!   (RFC 7672);
//! - `domain`: host name syntax (RFC 1035, RFC 1123);
//! - `headers`: a message's header fields, and removing forged Authentication-Results;
//! - `header_search`: header fields as IMAP SEARCH matches them, and the ones the store keeps
//!   for it;
//! - `mta_sts`: MTA-STS records and policies, and which MX hosts a policy allows;
//! - `address`: `Mailbox`, a mailbox address and its RFC 5321 / RFC 6531 syntax;
//! - `params`: the ESMTP and DSN envelope parameters (BODY, RET, ENVID, NOTIFY, ORCPT) and the
//!   xtext encoding they travel in (RFC 3461, RFC 6152);
//! - `policy`: decisions that a protocol state machine, the store and the configuration share
//!   (bare line endings in message text, where an accepted recipient's mail goes, STARTTLS
//!   towards other servers, how addresses resolve beyond accounts);
//! - `srs`: the Sender Rewriting Scheme for forwarded mail;
//! - `untrusted`: how text from outside is shown to an operator (logs, `pochtactl`).
//!
//! Each type has exactly one parser; the store writes and reads back these types, never their
//! text.

pub mod address;
pub mod dane;
pub mod domain;
pub mod header_search;
pub mod headers;
pub mod mta_sts;
pub mod params;
pub mod policy;
pub mod srs;
pub mod untrusted;

pub use address::Mailbox;
pub use domain::is_domain_name;
pub use params::{Body, Notify, Orcpt, Ret, xtext_decode, xtext_encode};
pub use policy::{AddressRules, BareLineEndings, Disposition, TlsPolicy};
pub use srs::SrsKey;
pub use untrusted::Untrusted;

/// A text that is not a valid value of the type it was parsed as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind}")]
pub struct InvalidValue {
    pub kind: &'static str,
    pub value: String,
}

impl InvalidValue {
    pub fn new(kind: &'static str, value: impl Into<String>) -> Self {
        InvalidValue {
            kind,
            value: value.into(),
        }
    }
}
