//! The fuzz targets' harnesses and their oracles, in one place for three users: the
//! cargo-fuzz targets in `fuzz/` (libFuzzer feeds them), the replay of the committed corpora
//! in this crate's tests (so an input that once failed fails the build again), and the
//! property tests (proptest feeds them in the normal test suite).
//!
//! Each harness takes arbitrary bytes, turns them into a run of one parser or state machine
//! (the bytes also decide how input is cut into pieces and how actions are answered), and
//! panics when an invariant breaks: a panic inside the code under test is a finding as much
//! as a failed oracle.

mod dane;
mod imap;
mod input;
mod pop3;
mod smtp;
mod text;

pub use dane::dane_certificate;
pub use imap::imap_session;
pub use pop3::pop3_session;
pub use smtp::{data_receiver, smtp_client, smtp_server};
pub use text::{
    auth_results, content_rows, dsn_report, mta_sts, proxy_header, search_fields, srs, xtext,
};

/// A harness: arbitrary bytes in, a panic when an invariant breaks.
pub type Harness = fn(&[u8]);

/// Every harness by name, as the fuzz targets and the corpus folders are named.
pub const TARGETS: &[(&str, Harness)] = &[
    ("smtp_server", smtp_server),
    ("smtp_client", smtp_client),
    ("data_receiver", data_receiver),
    ("pop3_session", pop3_session),
    ("imap_session", imap_session),
    ("proxy_header", proxy_header),
    ("xtext", xtext),
    ("srs", srs),
    ("auth_results", auth_results),
    ("mta_sts", mta_sts),
    ("dsn_report", dsn_report),
    ("dane_certificate", dane_certificate),
    ("search_fields", search_fields),
    ("content_rows", content_rows),
];
