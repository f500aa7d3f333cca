//! The store against the real PostgreSQL: one fresh database per test.

mod accounts;
mod addresses;
mod admin;
mod dkim;
mod failover;
mod mailboxes;
mod maildrop;
mod queue;
mod roles;
mod schema;
mod tls_reports;

use std::time::Duration;

use pochta_mail::{Mailbox, Notify, Ret};
use pochta_store::{AttemptReport, NewEnvelope, NewRecipient, Store};

pub fn addr(s: &str) -> Mailbox {
    Mailbox::parse(s).unwrap()
}

/// A recipient with every DSN parameter.
pub fn recipient(address: &str) -> NewRecipient {
    NewRecipient {
        orcpt: Some(format!("rfc822;{address}").parse().unwrap()),
        notify: Some(Notify {
            success: true,
            failure: true,
            delay: false,
        }),
        ..pochta_testkit::recipient(address)
    }
}

/// An envelope with every parameter and client detail set.
pub fn envelope(recipients: Vec<NewRecipient>) -> NewEnvelope {
    NewEnvelope {
        quarantine: None,
        requiretls: false,
        envid: Some("env-1".into()),
        ret: Some(Ret::Hdrs),
        client_address: Some("192.0.2.7".parse().unwrap()),
        client_helo: Some("client.example.net".into()),
        received_by: Some("mx.example.org".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        lifetime: Duration::from_secs(5 * 24 * 3600),
        ..pochta_testkit::envelope("sender@example.net", recipients)
    }
}

pub const CONTENT: &[u8] = b"Received: from client.example.net\r\nSubject: hi\r\n\r\nHello.\r\n";

/// Enqueues one message with `n` recipients at example.org.
pub async fn enqueue_n(store: &Store, n: usize) -> NewEnvelope {
    let env = envelope(
        (0..n)
            .map(|i| recipient(&format!("user{i}@example.org")))
            .collect(),
    );
    store.enqueue(&env, CONTENT).await.unwrap();
    env
}

/// What a remote server answered to one attempt.
pub fn report(code: u16, status: &str, text: &str) -> AttemptReport {
    AttemptReport {
        remote_mta: Some("mx.example.org [192.0.2.1]:25".into()),
        reply_code: Some(code),
        status: Some(status.into()),
        diagnostic: text.into(),
    }
}

/// The shared buffers (hit, read, dirtied, written) of an EXPLAIN (ANALYZE, BUFFERS) plan's
/// top node: what the whole statement touched.
pub fn top_buffers(plan: &str) -> u64 {
    plan.lines()
        .filter_map(|l| l.trim().strip_prefix("Buffers: shared "))
        .take(1)
        .flat_map(|b| b.split(' '))
        .filter_map(|kv| kv.split_once('=').and_then(|(_, n)| n.parse::<u64>().ok()))
        .sum()
}
