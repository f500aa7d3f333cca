//! The store against the real PostgreSQL: one fresh database per test.

mod accounts;
mod admin;
mod maildrop;
mod queue;
mod schema;

use std::time::Duration;

use pochta_store::{MailboxAddress, NewEnvelope, NewRecipient, Notify, QueueId, Ret, Store};

pub fn addr(s: &str) -> MailboxAddress {
    MailboxAddress::parse(s).unwrap()
}

pub fn recipient(address: &str) -> NewRecipient {
    NewRecipient {
        address: addr(address),
        orcpt: Some(format!("rfc822;{address}")),
        notify: Some(Notify {
            success: true,
            failure: true,
            delay: false,
        }),
        held: false,
    }
}

pub fn envelope(recipients: Vec<NewRecipient>) -> NewEnvelope {
    NewEnvelope {
        queue_id: QueueId::generate(),
        reverse_path: "sender@example.net".into(),
        envid: Some("env-1".into()),
        ret: Some(Ret::Hdrs),
        body: None,
        smtputf8: false,
        client_address: Some("192.0.2.7".parse().unwrap()),
        client_helo: Some("client.example.net".into()),
        auth_user: None,
        received_by: Some("mx.example.org".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        lifetime: Duration::from_secs(5 * 24 * 3600),
        recipients,
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
