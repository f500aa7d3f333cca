//! The real delivery-queue binary against the real database: local delivery (exactly once,
//! across replicas and crashes), wake-ups by Notify, the periodic scan, and what it does with
//! mail it cannot deliver yet.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pochta_mail::Disposition;
use pochta_store::{NewEnvelope, NewRecipient, QueueId, RecipientState, Store};
use pochta_testkit::{
    SIGKILL, ServiceProcess, TestDb, envelope, free_addr, python, recipient, until,
    workspace_binary,
};

const BINARY: &str = env!("CARGO_BIN_EXE_delivery-queue");
const ALICE: &str = "alice@example.org";

async fn setup() -> (TestDb, i64) {
    let db = TestDb::new().await.unwrap();
    let id = db.add_account(ALICE, "pw").await.unwrap();
    (db, id)
}

async fn start_queue(db: &TestDb, grpc: SocketAddr, extra: &str) -> ServiceProcess {
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 8\n\n[queue]\ngrpc_listen = \"{grpc}\"\nsmarthost = \"{}\"\n{extra}\n",
        db.url(),
        free_addr()
    );
    ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap()
}

/// An envelope from bob@remote.test to `recipients`, local, remote or held (waiting for a
/// release).
fn envelope_to(recipients: &[&str], disposition: Disposition) -> NewEnvelope {
    let recipients = recipients
        .iter()
        .map(|r| NewRecipient {
            disposition,
            ..recipient(r)
        })
        .collect();
    envelope("bob@remote.test", recipients)
}

/// Enqueues one message for local recipients straight into the store, as an ingress would.
async fn enqueue(store: &Store, recipients: &[&str], body: &str) -> QueueId {
    enqueue_as(store, recipients, Disposition::Local, body).await
}

async fn enqueue_as(
    store: &Store,
    recipients: &[&str],
    disposition: Disposition,
    body: &str,
) -> QueueId {
    let envelope = envelope_to(recipients, disposition);
    store.enqueue(&envelope, body.as_bytes()).await.unwrap();
    envelope.queue_id
}

/// An ingress (MX only) that notifies the queue at `queue_grpc`; its MX address.
async fn start_ingress(db: &TestDb, queue_grpc: SocketAddr) -> (ServiceProcess, SocketAddr) {
    let (ingress_grpc, mx) = (free_addr(), free_addr());
    let ingress_config = format!(
        "[store]\nurl = \"{}\"\n\n[smtp]\ngrpc_listen = \"{ingress_grpc}\"\nqueue_endpoint = \"http://{queue_grpc}\"\n\
         hostname = \"mx.test\"\nmx_listen = [\"{mx}\"]\nsubmission_listen = []\nsubmissions_listen = []\n",
        db.url()
    );
    let ingress = ServiceProcess::start_healthy(
        &workspace_binary("smtp-ingress").unwrap(),
        &ingress_config,
        ingress_grpc,
    )
    .await
    .unwrap();
    (ingress, mx)
}

/// Sends one message from bob@remote.test to `to` with Python's smtplib.
async fn send(mx: SocketAddr, to: &str, header: &str) {
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.sendmail("bob@remote.test", [sys.argv[2]], sys.argv[3].encode() + b"\r\n\r\nhello\r\n")
s.quit()
"#;
    python(script, &[&mx.port().to_string(), to, header])
        .await
        .unwrap();
}

/// Waits for the account's maildrop to hold one entry: its POP3 size, prefix and content.
async fn only_entry(store: &Store, account: i64) -> (i64, Vec<u8>, Vec<u8>) {
    until("delivery", Duration::from_secs(10), async || {
        store.maildrop_entries(account).await.unwrap().len() == 1
    })
    .await;
    let entry = &store.maildrop_entries(account).await.unwrap()[0];
    let (prefix, content) = store
        .maildrop_entry_content(account, entry.id)
        .await
        .unwrap()
        .unwrap();
    (entry.pop3_size, prefix, content)
}

#[tokio::test]
async fn mail_accepted_by_ingress_is_delivered_to_the_maildrop_on_notify() {
    let (db, account) = setup().await;
    let queue_grpc = free_addr();
    // A long scan interval: delivery within the test's patience proves the Notify wake-up.
    let _queue = start_queue(&db, queue_grpc, "scan_interval_secs = 3600").await;
    let (_ingress, mx) = start_ingress(&db, queue_grpc).await;
    send(mx, "alice@example.org", "Subject: to the maildrop").await;
    let store = db.store();
    let (size, prefix, content) = only_entry(store, account).await;
    assert_eq!(
        prefix,
        b"Return-Path: <bob@remote.test>\r\nDelivered-To: alice@example.org\r\n"
    );
    let text = String::from_utf8(content.clone()).unwrap();
    assert!(
        text.starts_with("Received: from ")
            && text.ends_with("Subject: to the maildrop\r\n\r\nhello\r\n"),
        "{text}"
    );
    assert_eq!(size as usize, prefix.len() + content.len());
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.recipients_in(RecipientState::Delivered), 1);
}

/// RFC 5233: mail for alice+news is accepted and delivered into Alice's maildrop, its
/// Delivered-To the address as sent; a tag on an unknown user is still refused.
#[tokio::test]
async fn a_subaddress_is_delivered_to_its_account() {
    let (db, account) = setup().await;
    let queue_grpc = free_addr();
    let _queue = start_queue(&db, queue_grpc, "").await;
    let (_ingress, mx) = start_ingress(&db, queue_grpc).await;
    send(mx, "alice+news@example.org", "Subject: tagged").await;
    let (_, prefix, _) = only_entry(db.store(), account).await;
    assert_eq!(
        prefix,
        b"Return-Path: <bob@remote.test>\r\nDelivered-To: alice+news@example.org\r\n"
    );
    let refused = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo()
s.mail("bob@remote.test")
print(s.rcpt("nobody+news@example.org")[0])
s.quit()
"#;
    let out = python(refused, &[&mx.port().to_string()]).await.unwrap();
    assert_eq!(out.trim(), "550");
}

#[tokio::test]
async fn mail_committed_while_the_queue_was_down_is_found_by_the_scan() {
    let (db, account) = setup().await;
    for i in 0..5 {
        enqueue(db.store(), &[ALICE], &format!("Subject: {i}\r\n\r\nx\r\n")).await;
    }
    let _queue = start_queue(&db, free_addr(), "scan_interval_secs = 1").await;
    let store = db.store();
    until("five deliveries", Duration::from_secs(10), async || {
        store.maildrop_entries(account).await.unwrap().len() == 5
    })
    .await;
    let id = enqueue(store, &[ALICE], "Subject: later\r\n\r\nx\r\n").await;
    until("the later one", Duration::from_secs(10), async || {
        store.maildrop_entries(account).await.unwrap().len() == 6
    })
    .await;
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    let r = &detail.recipients[0];
    assert_eq!(
        (r.state, r.attempts, r.history.len()),
        (RecipientState::Delivered, 1, 1)
    );
    assert_eq!(r.history[0].status.as_deref(), Some("2.0.0"));
}

#[tokio::test]
async fn remote_recipients_wait_with_a_diagnostic() {
    let (db, _) = setup().await;
    let id = enqueue_as(
        db.store(),
        &["friend@elsewhere.test", "pal@elsewhere.test"],
        Disposition::Remote,
        "Subject: x\r\n\r\nx\r\n",
    )
    .await;
    let _queue = start_queue(&db, free_addr(), "scan_interval_secs = 1").await;
    let store = db.store();
    until("two attempts", Duration::from_secs(10), async || {
        let d = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
        d.recipients.iter().all(|r| r.attempts == 1)
    })
    .await;
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    for r in &detail.recipients {
        // The smarthost does not answer: both wait, with the reason recorded.
        assert_eq!(r.state, RecipientState::Queued, "{r:?}");
        // The first retry waits retry_delay_secs (300) scaled by a jitter of 0.5 to 1.
        let wait = r.next_attempt_at - chrono::Utc::now();
        assert!(
            wait > chrono::Duration::seconds(140) && wait <= chrono::Duration::seconds(300),
            "{wait:?}"
        );
        assert!(r.lease_owner.is_none());
    }
    let remote = detail
        .recipients
        .iter()
        .find(|r| r.address == "friend@elsewhere.test")
        .unwrap();
    assert_eq!(remote.last_status.as_deref(), Some("4.4.1"));
    assert!(
        remote
            .last_diagnostic
            .as_deref()
            .unwrap()
            .contains("connecting to 127.0.0.1"),
        "{remote:?}"
    );
}

/// Two replicas deliver a burst; one is SIGKILLed in the middle. Its leases expire, the other
/// takes over, and every message lands in the maildrop exactly once.
#[tokio::test]
async fn a_replica_killed_mid_burst_loses_nothing_and_duplicates_nothing() {
    const MESSAGES: usize = 2000;
    let (db, account) = setup().await;
    let store = db.store();
    // Held until both replicas run, so the burst cannot be over before the second one starts.
    let envelopes: Vec<NewEnvelope> = (0..MESSAGES)
        .map(|_| envelope_to(&[ALICE], Disposition::Hold))
        .collect();
    let bodies: Vec<String> = (0..MESSAGES)
        .map(|i| format!("Subject: burst {i}\r\n\r\nx\r\n"))
        .collect();
    let batch: Vec<(&NewEnvelope, &[u8])> = envelopes
        .iter()
        .zip(&bodies)
        .map(|(e, b)| (e, b.as_bytes()))
        .collect();
    for part in batch.chunks(250) {
        store.enqueue_many(part).await.unwrap();
    }
    let tuning =
        "lease_secs = 3\nscan_interval_secs = 1\nbatch_size = 8\nworkers = 2\nremote_workers = 2";
    let doomed = start_queue(&db, free_addr(), tuning).await;
    let _survivor = start_queue(&db, free_addr(), tuning).await;
    let released = store.release_domain("example.org", false).await.unwrap();
    assert_eq!(released.recipients, MESSAGES as u64);
    until("some deliveries", Duration::from_secs(30), async || {
        store.maildrop_entries(account).await.unwrap().len() >= 40
    })
    .await;
    doomed.signal(SIGKILL).unwrap();
    let killed_at = store.maildrop_entries(account).await.unwrap().len();
    assert!(
        killed_at < MESSAGES,
        "the burst was over before the kill ({killed_at})"
    );

    until(
        "every message delivered",
        Duration::from_secs(60),
        async || {
            store
                .counts()
                .await
                .unwrap()
                .recipients_in(RecipientState::Delivered)
                == MESSAGES as i64
        },
    )
    .await;
    let entries = store.maildrop_entries(account).await.unwrap();
    assert_eq!(entries.len(), MESSAGES, "exactly once");
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.recipients_in(RecipientState::Queued), 0);
    assert_eq!(counts.maildrop_entries, MESSAGES as i64);
}

/// Finished envelopes past their retention are collected, and content goes once no maildrop
/// holds it (here after a POP3-style QUIT deletion).
#[tokio::test]
async fn garbage_collection_runs_periodically() {
    let (db, account) = setup().await;
    enqueue(db.store(), &[ALICE], "Subject: gc\r\n\r\nx\r\n").await;
    let _queue = start_queue(
        &db,
        free_addr(),
        "scan_interval_secs = 1\ngc_interval_secs = 1\nretention_secs = 0",
    )
    .await;
    let store = db.store();
    until(
        "delivery and the envelope's collection",
        Duration::from_secs(10),
        async || {
            let c = store.counts().await.unwrap();
            c.maildrop_entries == 1 && c.envelopes == 0
        },
    )
    .await;
    assert_eq!(
        store.counts().await.unwrap().messages,
        1,
        "the maildrop still holds the content"
    );
    let entry = store.maildrop_entries(account).await.unwrap()[0].id;
    assert!(
        store
            .lock_maildrop(account, "pop3", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .delete_maildrop_entries_and_unlock(account, "pop3", &[entry])
            .await
            .unwrap(),
        1
    );
    until(
        "the content's collection",
        Duration::from_secs(10),
        async || store.counts().await.unwrap().messages == 0,
    )
    .await;
}

/// RFC 3030 through the whole system: a message sent in BDAT chunks (the last of size 0) and
/// one sent with DATA in the same session reach the maildrop byte for byte.
#[tokio::test]
async fn bdat_and_data_messages_reach_the_maildrop_byte_for_byte() {
    let (db, account) = setup().await;
    let queue_grpc = free_addr();
    let _queue = start_queue(&db, queue_grpc, "").await;
    let (_ingress, mx) = start_ingress(&db, queue_grpc).await;
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo()
assert s.has_extn("chunking")
s.mail("bob@remote.test")
s.rcpt("alice@example.org")
for chunk, last in [(b"Subject: one\r\n\r\n.first", b""), (b" line\r\n", b""), (b"", b" LAST")]:
    s.send(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
    assert s.getreply()[0] == 250
s.sendmail("bob@remote.test", ["alice@example.org"], b"Subject: two\r\n\r\nsecond\r\n")
s.quit()
"#;
    python(script, &[&mx.port().to_string()]).await.unwrap();
    let store = db.store();
    let mut bodies: Vec<Vec<u8>> = pochta_testkit::maildrop(store, account, 2)
        .await
        .into_iter()
        .map(|m| {
            // After the delivery's prefix and the ingress's Received header (its lines
            // continue with a tab): the text as sent.
            let text = String::from_utf8(m).unwrap();
            let at = text.find("\r\nSubject: ").expect("the text") + 2;
            assert!(text[..at].contains("Received: from"), "{text}");
            text.as_bytes()[at..].to_vec()
        })
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            b"Subject: one\r\n\r\n.first line\r\n".to_vec(),
            b"Subject: two\r\n\r\nsecond\r\n".to_vec()
        ]
    );
}
