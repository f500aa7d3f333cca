//! Delivery status notifications from the real binary: what lands in the sender's maildrop
//! is parsed with mail-parser, an independent MIME parser.

use std::path::Path;
use std::time::{Duration, Instant};

use mail_parser::{MessageParser, MimeHeaders};
use pochta_mail::Ret;
use pochta_store::{NewEnvelope, NewRecipient, QueueId, RecipientState, Store};
use pochta_testkit::{
    ServiceProcess, TestDb, envelope, free_addr, local_recipient, maildrop, recipient, until,
};

const BINARY: &str = env!("CARGO_BIN_EXE_delivery-queue");

struct Setup {
    db: TestDb,
    alice: i64,
    grpc: std::net::SocketAddr,
    _queue: ServiceProcess,
}

async fn setup(extra: &str) -> Setup {
    let db = TestDb::new().await.unwrap();
    let alice = db.add_account("alice@example.org", "pw").await.unwrap();
    db.add_account("carol@example.org", "pw").await.unwrap();
    let grpc = free_addr();
    let config = format!(
        "[store]\nurl = \"{}\"\n\n[queue]\ngrpc_listen = \"{grpc}\"\nscan_interval_secs = 1\nhostname = \"mx.example.org\"\nsmarthost = \"{}\"\nadmin_token_file = \"{}\"\n{extra}\n",
        db.url(),
        free_addr(),
        pochta_testkit::admin_token_file().display()
    );
    let queue = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();
    Setup {
        db,
        alice,
        grpc,
        _queue: queue,
    }
}

/// A recipient with ORCPT and `notify`; local if it is in example.org, this file's local
/// domain.
fn rcpt(address: &str, notify: Option<&str>) -> NewRecipient {
    let base = if address.ends_with("@example.org") {
        local_recipient(address)
    } else {
        recipient(address)
    };
    NewRecipient {
        orcpt: Some(format!("rfc822;{address}").parse().unwrap()),
        notify: notify.map(|n| n.parse().unwrap()),
        ..base
    }
}

async fn enqueue(
    store: &Store,
    sender: &str,
    recipients: Vec<NewRecipient>,
    ret: Option<Ret>,
    lifetime: Duration,
) -> QueueId {
    let envelope = NewEnvelope {
        quarantine: None,
        requiretls: false,
        envid: Some("ENV-42".into()),
        ret,
        lifetime,
        ..envelope(sender, recipients)
    };
    store
        .enqueue(
            &envelope,
            b"Received: from x\r\nSubject: the original\r\n\r\nthe original body\r\n",
        )
        .await
        .unwrap();
    envelope.queue_id
}

fn status_part(report: &[u8]) -> (String, String, String) {
    let message = MessageParser::default()
        .parse(report)
        .expect("a parseable report");
    let ct = message.content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype(), ct.attribute("report-type")),
        ("multipart", Some("report"), Some("delivery-status"))
    );
    assert_eq!(message.parts.len(), 4);
    let status = String::from_utf8_lossy(message.parts[2].contents()).into_owned();
    let returned_type = message.parts[3]
        .content_type()
        .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
        .unwrap_or_default();
    (
        message.subject().unwrap_or("").to_owned(),
        status,
        returned_type,
    )
}

#[tokio::test]
async fn failures_of_one_message_get_one_report_with_the_original() {
    let s = setup("").await;
    let store = s.db.store();
    let id = enqueue(
        store,
        "alice@example.org",
        vec![
            rcpt("gone@example.org", None),
            rcpt("lost@example.org", Some("FAILURE")),
            rcpt("carol@example.org", None),
        ],
        None,
        Duration::from_secs(3600),
    )
    .await;
    let reports = maildrop(store, s.alice, 1).await;
    assert_eq!(reports.len(), 1, "one report for both failures");
    let report = &reports[0];
    assert!(report.starts_with(b"Return-Path: <>\r\nDelivered-To: alice@example.org\r\n"));
    let (subject, status, returned) = status_part(report);
    assert_eq!(subject, "Undelivered Mail Returned to Sender");
    for needle in [
        "Reporting-MTA: dns; mx.example.org",
        "Original-Envelope-Id: ENV-42",
        "Final-Recipient: rfc822; gone@example.org",
        "Final-Recipient: rfc822; lost@example.org",
        "Original-Recipient: rfc822;gone@example.org",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user here",
        "Arrival-Date: ",
        "Last-Attempt-Date: ",
    ] {
        assert!(status.contains(needle), "{needle} missing:\n{status}");
    }
    assert!(
        !status.contains("carol@example.org"),
        "delivered recipients are not in a failure report"
    );
    assert_eq!(returned, "message/rfc822");
    assert!(
        String::from_utf8_lossy(report).contains("the original body"),
        "RET defaults to the full message"
    );

    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    let states: Vec<_> = detail.recipients.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            RecipientState::Failed,
            RecipientState::Failed,
            RecipientState::Delivered
        ]
    );
    // The report itself came from <> and was delivered like any mail.
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (
            counts.envelopes,
            counts.recipients_in(RecipientState::Delivered)
        ),
        (2, 2)
    );
}

#[tokio::test]
async fn notify_success_never_and_ret_hdrs() {
    let s = setup("").await;
    let store = s.db.store();
    enqueue(
        store,
        "alice@example.org",
        vec![
            rcpt("carol@example.org", Some("SUCCESS")),
            rcpt("gone@example.org", Some("NEVER")),
        ],
        Some(Ret::Hdrs),
        Duration::from_secs(3600),
    )
    .await;
    let reports = maildrop(store, s.alice, 1).await;
    let (subject, status, returned) = status_part(&reports[0]);
    assert_eq!(subject, "Successful Mail Delivery Report");
    assert!(
        status.contains("Final-Recipient: rfc822; carol@example.org")
            && status.contains("Action: delivered")
            && status.contains("Status: 2.0.0"),
        "{status}"
    );
    assert_eq!(returned, "text/rfc822-headers");
    assert!(
        !String::from_utf8_lossy(&reports[0]).contains("the original body"),
        "RET=HDRS: headers only"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        store.maildrop_entries(s.alice).await.unwrap().len(),
        1,
        "NOTIFY=NEVER: no failure report"
    );
    assert_eq!(
        store
            .counts()
            .await
            .unwrap()
            .recipients_in(RecipientState::Failed),
        1
    );
}

#[tokio::test]
async fn expired_mail_is_reported_and_reports_are_never_reported() {
    let s = setup("retry_delay_secs = 1").await;
    let store = s.db.store();
    let expiring = enqueue(
        store,
        "alice@example.org",
        vec![rcpt("friend@elsewhere.test", None)],
        None,
        Duration::from_secs(2),
    )
    .await;
    // A failing message from the null sender gets no report.
    enqueue(
        store,
        "",
        vec![rcpt("gone@example.org", None)],
        None,
        Duration::from_secs(3600),
    )
    .await;
    let reports = maildrop(store, s.alice, 1).await;
    let (_, status, _) = status_part(&reports[0]);
    assert!(
        status.contains("Final-Recipient: rfc822; friend@elsewhere.test")
            && status.contains("Status: 4.4.7"),
        "{status}"
    );
    let detail = store
        .envelope_detail(expiring.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.recipients[0].state, RecipientState::Expired);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = store.counts().await.unwrap();
    assert_eq!(
        counts.recipients_in(RecipientState::Failed),
        1,
        "the <> message failed"
    );
    assert_eq!(counts.envelopes, 3, "two messages and exactly one report");
}

/// A maildrop at its quota defers local delivery (4.2.2) for as long as the message may wait;
/// then the recipient fails as 5.2.2 (RFC 3463: mailbox full), and the sender's report says so.
/// A message larger than the whole quota fails at once (5.2.3).
#[tokio::test]
async fn a_full_maildrop_defers_then_fails_as_mailbox_full() {
    let s = setup("retry_delay_secs = 1").await;
    let store = s.db.store();
    let carol = "carol@example.org".parse().unwrap();
    let carol_id = store
        .lookup_recipient(&carol)
        .await
        .unwrap()
        .account
        .unwrap()
        .id;
    // One message in Carol's maildrop, then a quota of exactly what it holds: full.
    let day = Duration::from_secs(86_400);
    enqueue(
        store,
        "alice@example.org",
        vec![rcpt("carol@example.org", None)],
        None,
        day,
    )
    .await;
    let held = maildrop(store, carol_id, 1).await[0].len() as i64;
    store.set_quota(&carol, Some(held)).await.unwrap();

    let id = enqueue(
        store,
        "alice@example.org",
        vec![rcpt("carol@example.org", None)],
        None,
        Duration::from_secs(3),
    )
    .await;
    let detail = async || {
        let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
        detail.recipients[0].clone()
    };
    until(
        "a deferral for the quota",
        Duration::from_secs(10),
        async || detail().await.last_status.as_deref() == Some("4.2.2"),
    )
    .await;
    assert_eq!(detail().await.state, RecipientState::Queued);
    let reports = maildrop(store, s.alice, 1).await;
    let (_, status, _) = status_part(&reports[0]);
    assert!(
        status.contains("Final-Recipient: rfc822; carol@example.org")
            && status.contains("Action: failed")
            && status.contains("Status: 5.2.2"),
        "{status}"
    );
    assert_eq!(detail().await.state, RecipientState::Expired);
    assert_eq!(store.maildrop_entries(carol_id).await.unwrap().len(), 1);

    // Larger than the quota itself: no waiting, 5.2.3 at once.
    store.set_quota(&carol, Some(10)).await.unwrap();
    enqueue(
        store,
        "alice@example.org",
        vec![rcpt("carol@example.org", None)],
        None,
        day,
    )
    .await;
    let reports = maildrop(store, s.alice, 2).await;
    let texts: Vec<String> = reports.iter().map(|r| status_part(r).1).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Status: 5.2.3") && t.contains("Action: failed")),
        "{texts:?}"
    );
}

#[tokio::test]
async fn one_delay_report_per_message_and_only_once() {
    let s =
        setup("retry_delay_secs = 1\nretry_max_delay_secs = 1\ndelay_report_after_secs = 1").await;
    let store = s.db.store();
    let id = enqueue(
        store,
        "alice@example.org",
        vec![
            rcpt("x@far.test", Some("DELAY,FAILURE")),
            rcpt("y@far.test", Some("DELAY")),
            rcpt("z@far.test", None),
        ],
        None,
        Duration::from_secs(3600),
    )
    .await;
    let reports = maildrop(store, s.alice, 1).await;
    let (subject, status, returned) = status_part(&reports[0]);
    assert_eq!(subject, "Delayed Mail (still being retried)");
    assert_eq!(
        returned, "text/rfc822-headers",
        "a delay report returns the header only, whatever RET says"
    );
    for needle in [
        "Final-Recipient: rfc822; x@far.test",
        "Final-Recipient: rfc822; y@far.test",
        "Action: delayed",
        "Status: 4.4.1",
        "Will-Retry-Until: ",
    ] {
        assert!(status.contains(needle), "{needle}:\n{status}");
    }
    assert!(!status.contains("z@far.test"), "no NOTIFY: no delay report");
    // Several more attempts happen; no second report.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    assert!(
        detail
            .recipients
            .iter()
            .all(|r| r.state == RecipientState::Queued && r.attempts >= 2),
        "{detail:?}"
    );
    assert_eq!(
        store.maildrop_entries(s.alice).await.unwrap().len(),
        1,
        "exactly one delay report"
    );
}

#[tokio::test]
async fn deleting_with_a_report_fails_the_recipients_and_tells_the_sender() {
    use pochta_proto::queue::v1::{DeleteRequest, Filter, queue_admin_client::QueueAdminClient};
    let s = setup("").await;
    let store = s.db.store();
    let id = enqueue(
        store,
        "alice@example.org",
        vec![
            rcpt("one@elsewhere.test", None),
            rcpt("two@elsewhere.test", Some("NEVER")),
        ],
        None,
        Duration::from_secs(3600),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while store
        .envelope_detail(id.as_str())
        .await
        .unwrap()
        .unwrap()
        .recipients
        .iter()
        .any(|r| r.attempts == 0)
    {
        assert!(Instant::now() < deadline, "not attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = QueueAdminClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap();
    let mut request = tonic::Request::new(DeleteRequest {
        filter: Some(Filter {
            queue_id: id.as_str().into(),
            ..Default::default()
        }),
        dry_run: false,
        send_report: true,
    });
    let bearer = format!("Bearer {}", pochta_testkit::ADMIN_TOKEN);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let deleted = client.delete(request).await.unwrap().into_inner();
    assert_eq!((deleted.recipients, deleted.messages), (2, 1));

    let reports = maildrop(store, s.alice, 1).await;
    let (_, status, returned) = status_part(&reports[0]);
    assert!(
        status.contains("Final-Recipient: rfc822; one@elsewhere.test")
            && status.contains("Action: failed")
            && status.contains("Status: 5.0.0")
            && status.contains("deleted from the queue"),
        "{status}"
    );
    assert!(!status.contains("two@"), "NOTIFY=NEVER: {status}");
    assert_eq!(returned, "message/rfc822");
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    assert!(
        detail
            .recipients
            .iter()
            .all(|r| r.state == RecipientState::Failed && r.attempts == 2),
        "{detail:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.maildrop_entries(s.alice).await.unwrap().len(),
        1,
        "one report"
    );
}

/// A success report returns the header only even with RET=FULL: anyone can ask for it with a
/// forged MAIL FROM, and a full copy would let them deliver any content to that victim in a
/// report of this server's (report reflection).
#[tokio::test]
async fn a_success_report_never_returns_the_whole_message() {
    let s = setup("").await;
    let store = s.db.store();
    enqueue(
        store,
        "alice@example.org",
        vec![rcpt("carol@example.org", Some("SUCCESS"))],
        Some(Ret::Full),
        Duration::from_secs(3600),
    )
    .await;
    let reports = maildrop(store, s.alice, 1).await;
    let (subject, _, returned) = status_part(&reports[0]);
    assert_eq!(subject, "Successful Mail Delivery Report");
    assert_eq!(returned, "text/rfc822-headers");
    assert!(!String::from_utf8_lossy(&reports[0]).contains("the original body"));
}

/// Held mail (a hold domain's, waiting for ETRN) expires like queued mail: past its lifetime
/// it fails with 4.4.7 and the sender gets the report.
#[tokio::test]
async fn held_mail_expires() {
    let s = setup("gc_interval_secs = 1").await;
    let store = s.db.store();
    store
        .add_domain("backup.test", pochta_store::DomainRole::Hold)
        .await
        .unwrap();
    let held = NewRecipient {
        disposition: pochta_mail::Disposition::Hold,
        ..rcpt("someone@backup.test", None)
    };
    let id = enqueue(
        store,
        "alice@example.org",
        vec![held],
        None,
        Duration::from_secs(1),
    )
    .await;
    let reports = maildrop(store, s.alice, 1).await;
    let (_, status, _) = status_part(&reports[0]);
    assert!(
        status.contains("Final-Recipient: rfc822; someone@backup.test")
            && status.contains("Status: 4.4.7"),
        "{status}"
    );
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    assert_eq!(detail.recipients[0].state, RecipientState::Expired);
}

/// A report is DKIM-signed like our users' mail: From: MAILER-DAEMON@mx.example.org is signed
/// by example.org, the nearest domain of ours with a key (DMARC's relaxed alignment). dkimpy,
/// an independent verifier, checks it against the published record; one octet changed fails.
#[tokio::test]
async fn reports_are_dkim_signed_by_the_nearest_domain_with_a_key() {
    let s = setup("").await;
    let store = s.db.store();
    let record = pochta_testkit::add_dkim_key(store, "example.org", "reports")
        .await
        .unwrap();
    enqueue(
        store,
        "alice@example.org",
        vec![rcpt("gone@example.org", None)],
        None,
        Duration::from_secs(3600),
    )
    .await;
    let reports = maildrop(store, s.alice, 1).await;
    let report = String::from_utf8(reports[0].clone()).unwrap();
    assert!(
        report.contains("DKIM-Signature: v=1; a=ed25519-sha256; s=reports; d=example.org;"),
        "{report}"
    );
    let verify = |text: String| {
        let record = record.clone();
        async move {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), text).unwrap();
            let script = r#"
import sys, dkim
message = open(sys.argv[1], "rb").read()
def dns(name, timeout=5):
    return sys.argv[2].encode() if name == b"reports._domainkey.example.org." else None
print("pass" if dkim.verify(message, dnsfunc=dns) else "fail")
"#;
            pochta_testkit::python(script, &[file.path().to_str().unwrap(), &record])
                .await
                .unwrap()
                .trim()
                .to_owned()
        }
    };
    // What the receiver gets: without the fields the local delivery put before it.
    let sent = report[report.find("DKIM-Signature:").unwrap()..].to_owned();
    assert_eq!(verify(sent.clone()).await, "pass");
    assert_eq!(verify(sent.replace("gone@", "gone!")).await, "fail");
}
