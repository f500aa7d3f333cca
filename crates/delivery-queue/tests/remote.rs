//! Remote delivery over a static route to another real Pochta (its own database), with
//! STARTTLS, DSN parameters passed on, per-recipient outcomes and the failure report.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mail_parser::MessageParser;
use pochta_mail::Ret;
use pochta_store::{NewEnvelope, NewRecipient, QueueId, RecipientDetail, RecipientState, Store};
use pochta_testkit::dns::{Record, dns_server};
use pochta_testkit::{
    ServiceProcess, TestCerts, TestDb, envelope, free_addr, maildrop, recipient, until,
    until_attempted, workspace_binary,
};

const BODY: &[u8] = b"Received: from x\r\nSubject: far away\r\n\r\n.dot line\r\nbody\r\n";

/// The `message/delivery-status` part of a report, as mail-parser finds it.
fn delivery_status(report: &[u8]) -> String {
    let parsed = MessageParser::default().parse(report).unwrap();
    String::from_utf8_lossy(parsed.parts[2].contents()).into_owned()
}

/// How long the tests wait for something to happen.
const WAIT: Duration = Duration::from_secs(15);

/// The receiving side: an ingress with its own database, offering STARTTLS and DSN.
async fn receiver() -> (TestDb, TestCerts, ServiceProcess, SocketAddr) {
    let db = TestDb::new().await.unwrap();
    db.add_account("friend@remote.test", "pw").await.unwrap();
    let certs = TestCerts::generate().unwrap();
    let (grpc, mx) = (free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\n\n{}\n[smtp]\ngrpc_listen = \"{grpc}\"\nqueue_endpoint = \"http://{}\"\nhostname = \"mx.remote.test\"\n\
         mx_listen = [\"{mx}\"]\nsubmission_listen = []\nsubmissions_listen = []\ntrusted_networks = []\n",
        db.url(),
        certs.tls_section(),
        free_addr()
    );
    let ingress =
        ServiceProcess::start_healthy(&workspace_binary("smtp-ingress").unwrap(), &config, grpc)
            .await
            .unwrap();
    (db, certs, ingress, mx)
}

/// A delivery-queue on `db` with `queue` lines added to its `[queue]` section (and any
/// sections after them).
async fn start_queue(db: &TestDb, queue: &str) -> ServiceProcess {
    let grpc = free_addr();
    let config = format!(
        "[store]\nurl = \"{}\"\n\n[queue]\ngrpc_listen = \"{grpc}\"\n{queue}\n",
        db.url()
    );
    ServiceProcess::start_healthy(
        Path::new(env!("CARGO_BIN_EXE_delivery-queue")),
        &config,
        grpc,
    )
    .await
    .unwrap()
}

async fn sender_queue(db: &TestDb, routes: &str) -> ServiceProcess {
    start_queue(
        db,
        &format!(
            "scan_interval_secs = 1\nhostname = \"mx.example.org\"\n\n[queue.routes]\n{routes}"
        ),
    )
    .await
}

fn rcpt(address: &str, notify: &str) -> NewRecipient {
    NewRecipient {
        orcpt: Some(format!("rfc822;{address}").parse().unwrap()),
        notify: Some(notify.parse().unwrap()),
        ..recipient(address)
    }
}

async fn enqueue(store: &Store, recipients: Vec<NewRecipient>) -> QueueId {
    let envelope = NewEnvelope {
        quarantine: None,
        requiretls: false,
        envid: Some("ENV 7".into()),
        ret: Some(Ret::Hdrs),
        ..envelope("alice@example.org", recipients)
    };
    store.enqueue(&envelope, BODY).await.unwrap();
    envelope.queue_id
}

/// The first recipient of the message `id`, as the store has it now.
async fn first_recipient(store: &Store, id: &QueueId) -> RecipientDetail {
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    detail.recipients.into_iter().next().unwrap()
}

/// Waits until the first recipient of every message in `ids` has been attempted; returns
/// them, in order.
async fn each_attempted(store: &Store, ids: &[QueueId]) -> Vec<RecipientDetail> {
    until("every message attempted", WAIT, async || {
        for id in ids {
            if first_recipient(store, id).await.attempts == 0 {
                return false;
            }
        }
        true
    })
    .await;
    let mut recipients = Vec::new();
    for id in ids {
        recipients.push(first_recipient(store, id).await);
    }
    recipients
}

#[tokio::test]
async fn delivers_over_a_static_route_with_dsn_parameters_and_reports_rejections() {
    let (remote_db, _certs, _ingress, mx) = receiver().await;
    let db = TestDb::new().await.unwrap();
    let alice = db.add_account("alice@example.org", "pw").await.unwrap();
    let _queue = sender_queue(
        &db,
        &format!("\"remote.test\" = \"127.0.0.1:{}\"", mx.port()),
    )
    .await;
    let id = enqueue(
        db.store(),
        vec![
            rcpt("friend@remote.test", "SUCCESS,FAILURE"),
            rcpt("nobody@remote.test", "FAILURE"),
        ],
    )
    .await;

    let store = db.store();
    let detail = until_attempted(store, &id).await;
    let friend = &detail.recipients[0];
    assert_eq!(
        friend.state,
        RecipientState::Delivered,
        "the remote offers DSN: it reports onward"
    );
    assert_eq!(friend.last_reply_code, Some(250));
    assert_eq!(
        friend.last_remote_mta.as_deref(),
        Some(&*format!("127.0.0.1 (127.0.0.1:{})", mx.port()))
    );
    let nobody = &detail.recipients[1];
    assert_eq!(nobody.state, RecipientState::Failed);
    assert_eq!(
        (nobody.last_reply_code, nobody.last_status.as_deref()),
        (Some(550), Some("5.1.1"))
    );

    // What arrived on the other side: the same text, DSN parameters passed on, over TLS.
    let remote = remote_db.store();
    until("arrival", WAIT, async || {
        remote.counts().await.unwrap().envelopes == 1
    })
    .await;
    let (arrived, _) = remote
        .list_envelopes(&Default::default(), 10)
        .await
        .unwrap();
    let arrived = remote
        .envelope_detail(&arrived[0].queue_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(arrived.reverse_path, "alice@example.org");
    assert_eq!(arrived.envid.as_deref(), Some("ENV 7"));
    assert_eq!(arrived.ret.as_deref(), Some("HDRS"));
    assert_eq!(arrived.client_helo.as_deref(), Some("mx.example.org"));
    assert_eq!(arrived.recipients.len(), 1);
    assert_eq!(
        arrived.recipients[0].notify.as_deref(),
        Some("SUCCESS,FAILURE")
    );
    assert_eq!(
        arrived.recipients[0].orcpt.as_deref(),
        Some("rfc822;friend@remote.test")
    );
    let content = remote
        .message_content(arrived.message_id)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(content).unwrap();
    assert!(text.contains(" with ESMTPS "), "STARTTLS was used: {text}");
    assert!(
        text.ends_with(std::str::from_utf8(BODY).unwrap()),
        "byte for byte: {text}"
    );

    // The rejection comes back to Alice with the remote's words.
    let status = delivery_status(&maildrop(store, alice, 1).await[0]);
    for needle in [
        "Final-Recipient: rfc822; nobody@remote.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; 127.0.0.1 (127.0.0.1:",
        "Diagnostic-Code: smtp; 550 5.1.1",
    ] {
        assert!(status.contains(needle), "{needle}:\n{status}");
    }
    assert!(!status.contains("friend@remote.test"));
}

#[tokio::test]
async fn an_unreachable_route_defers_with_the_reason() {
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let dead = free_addr();
    let _queue = sender_queue(
        &db,
        &format!("\"remote.test\" = \"127.0.0.1:{}\"", dead.port()),
    )
    .await;
    let id = enqueue(db.store(), vec![rcpt("friend@remote.test", "FAILURE")]).await;
    let store = db.store();
    until("an attempt", WAIT, async || {
        store
            .envelope_detail(id.as_str())
            .await
            .unwrap()
            .unwrap()
            .recipients[0]
            .attempts
            == 1
    })
    .await;
    let r = &store
        .envelope_detail(id.as_str())
        .await
        .unwrap()
        .unwrap()
        .recipients[0];
    assert_eq!(r.state, RecipientState::Queued);
    assert!(
        r.last_diagnostic
            .as_deref()
            .unwrap()
            .contains("connecting to 127.0.0.1 (127.0.0.1:"),
        "{r:?}"
    );
    assert!(
        r.next_attempt_at > chrono::Utc::now() + chrono::Duration::seconds(100),
        "backed off"
    );
}

/// A server that refused a connection is not dialled again for each message: a dozen
/// messages for it, queued before the queue starts so one batch claims them all, make at most
/// `max_connections_per_destination` connection attempts (those that start together); the
/// others are deferred at once with that refusal and the hold named.
#[tokio::test]
async fn an_unreachable_server_is_tried_once_not_once_per_message() {
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let dead = free_addr();
    let mut ids = Vec::new();
    for i in 0..12 {
        let to = format!("friend{i}@remote.test");
        ids.push(enqueue(db.store(), vec![rcpt(&to, "NEVER")]).await);
    }
    let _queue = sender_queue(
        &db,
        &format!("\"remote.test\" = \"127.0.0.1:{}\"", dead.port()),
    )
    .await;
    let attempted = each_attempted(db.store(), &ids).await;
    let mut diagnostics = Vec::new();
    let mut due = Vec::new();
    for r in attempted {
        assert_eq!(r.state, RecipientState::Queued);
        assert_eq!(r.attempts, 1);
        assert_eq!(r.last_status.as_deref(), Some("4.4.1"));
        diagnostics.push(r.last_diagnostic.unwrap());
        due.push(r.next_attempt_at);
    }
    // Recorded together at the batch's end, each message with a backoff of its own: they do
    // not all come due at once again.
    let spread = *due.iter().max().unwrap() - *due.iter().min().unwrap();
    assert!(spread > chrono::Duration::seconds(5), "{due:?}");
    let refused = format!("connecting to 127.0.0.1 (127.0.0.1:{}): ", dead.port());
    assert!(
        diagnostics.iter().all(|d| d.starts_with(&refused)),
        "{diagnostics:#?}"
    );
    let held = diagnostics
        .iter()
        .filter(|d| d.ends_with("; not tried again for 60 s after that"))
        .count();
    assert!(held >= 12 - 2, "{diagnostics:#?}");
}

/// Mail for a domain whose every mail host refuses connections is deferred together once
/// its hosts are held: with one remote loop claiming two recipients per batch, the first
/// batch tries the host and defers what it claimed, the next finds the host held, and the
/// rest of the thirty messages are deferred in one statement, never claimed; each message is
/// attempted once.
#[tokio::test]
async fn a_dead_destinations_waiting_mail_is_deferred_without_claiming_each() {
    let dead = free_addr();
    let dns = dns_server(vec![
        ("dead.test", Record::Mx(10, "mx.dead.test")),
        ("mx.dead.test", Record::A([127, 0, 0, 1])),
    ])
    .await;
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..30 {
        let to = format!("friend{i}@dead.test");
        ids.push(enqueue(db.store(), vec![rcpt(&to, "NEVER")]).await);
    }
    let _queue = start_queue(
        &db,
        &format!(
            "scan_interval_secs = 1\nhostname = \"mx.example.org\"\nbatch_size = 2\nremote_workers = 1\n\
             dns_servers = [\"{dns}\"]\nmx_port = {}\ndenied_networks = []\n",
            dead.port()
        ),
    )
    .await;
    each_attempted(db.store(), &ids).await;
    // A moment for any claim that would attempt one again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut together = 0;
    for id in &ids {
        let r = first_recipient(db.store(), id).await;
        assert_eq!(r.state, RecipientState::Queued);
        assert_eq!(r.attempts, 1, "{r:?}");
        assert_eq!(r.history.len(), 1, "{r:?}");
        assert!(r.lease_owner.is_none(), "{r:?}");
        let diagnostic = r.last_diagnostic.unwrap();
        assert!(
            diagnostic.starts_with("connecting to mx.dead.test (127.0.0.1:"),
            "{diagnostic}"
        );
        assert!(
            r.next_attempt_at > chrono::Utc::now() + chrono::Duration::seconds(100),
            "backed off"
        );
        if diagnostic.ends_with("; deferred with the other mail waiting for dead.test") {
            together += 1;
        }
    }
    // Two batches were claimed (the first met the refusal, the second the hold); the rest
    // went together.
    assert!(together >= 24, "{together} of 30 deferred together");
}

/// A third-party server without DSN (Python's smtpd): the recipient is `relayed`, and the
/// sender who asked for SUCCESS gets a `relayed` report (RFC 3461 5.2.2). The server writes
/// what it received to a file, which must be the message byte for byte.
#[tokio::test]
async fn a_server_without_dsn_makes_the_recipient_relayed() {
    let db = TestDb::new().await.unwrap();
    let alice = db.add_account("alice@example.org", "pw").await.unwrap();
    let port = free_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received");
    let server = r#"
import asyncore, smtpd, sys, warnings
warnings.simplefilter("ignore")
class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        with open(sys.argv[2], "wb") as f:
            f.write(mailfrom.encode() + b"\n" + ",".join(rcpttos).encode() + b"\n" + data)
Sink(("127.0.0.1", int(sys.argv[1])), None, decode_data=False)
asyncore.loop()
"#;
    let mut peer = python_server(server, port, &out).await;
    let _queue = sender_queue(&db, &format!("\"remote.test\" = \"127.0.0.1:{port}\"")).await;
    let id = enqueue(db.store(), vec![rcpt("friend@remote.test", "SUCCESS")]).await;
    let store = db.store();
    until("relayed", WAIT, async || {
        store
            .envelope_detail(id.as_str())
            .await
            .unwrap()
            .unwrap()
            .recipients[0]
            .state
            == RecipientState::Relayed
    })
    .await;
    let received = std::fs::read(&out).unwrap();
    // smtpd hands over the envelope and the dot-unstuffed text with LF line ends, the last
    // one dropped.
    let expected = "alice@example.org\nfriend@remote.test\nReceived: from x\nSubject: far away\n\n.dot line\nbody";
    assert_eq!(String::from_utf8_lossy(&received), expected);
    let status = delivery_status(&maildrop(store, alice, 1).await[0]);
    assert!(
        status.contains("Action: relayed")
            && status.contains("Final-Recipient: rfc822; friend@remote.test"),
        "{status}"
    );
    let _ = peer.kill().await;
}

#[tokio::test]
async fn mx_lookup_order_fallback_implicit_nxdomain_and_null_mx() {
    let (remote_db, _certs, _ingress, mx) = receiver().await;
    remote_db
        .add_account("someone@implicit.test", "pw")
        .await
        .unwrap();
    let dns = dns_server(vec![
        // The preferred host has no server on our port (127.0.0.2): the second one takes it.
        ("remote.test", Record::Mx(10, "mx1.remote.test")),
        ("remote.test", Record::Mx(20, "mx2.remote.test")),
        ("mx1.remote.test", Record::A([127, 0, 0, 2])),
        ("mx2.remote.test", Record::A([127, 0, 0, 1])),
        // No MX: the domain's own address (RFC 5321 5.1).
        ("implicit.test", Record::A([127, 0, 0, 1])),
        // Null MX (RFC 7505).
        ("nullmx.test", Record::Mx(0, ".")),
    ])
    .await;
    let db = TestDb::new().await.unwrap();
    let alice = db.add_account("alice@example.org", "pw").await.unwrap();
    let grpc = free_addr();
    let config = format!(
        "[store]\nurl = \"{}\"\n\n[queue]\ngrpc_listen = \"{grpc}\"\nscan_interval_secs = 1\nhostname = \"mx.example.org\"\n\
         dns_servers = [\"{dns}\"]\nmx_port = {}\ndenied_networks = []\n",
        db.url(),
        mx.port()
    );
    let _queue = ServiceProcess::start_healthy(
        Path::new(env!("CARGO_BIN_EXE_delivery-queue")),
        &config,
        grpc,
    )
    .await
    .unwrap();
    let id = enqueue(
        db.store(),
        vec![
            rcpt("friend@remote.test", "FAILURE"),
            rcpt("someone@implicit.test", "FAILURE"),
            rcpt("x@nxdomain.test", "FAILURE"),
            rcpt("y@nullmx.test", "FAILURE"),
        ],
    )
    .await;
    let store = db.store();
    let detail = until_attempted(store, &id).await;
    let by = |a: &str| {
        detail
            .recipients
            .iter()
            .find(|r| r.address == a)
            .unwrap()
            .clone()
    };
    let friend = by("friend@remote.test");
    assert_eq!(friend.state, RecipientState::Delivered, "{friend:?}");
    assert!(
        friend
            .last_remote_mta
            .as_deref()
            .unwrap()
            .starts_with("mx2.remote.test (127.0.0.1:"),
        "{friend:?}"
    );
    assert_eq!(by("someone@implicit.test").state, RecipientState::Delivered);
    let nx = by("x@nxdomain.test");
    assert_eq!(
        (nx.state, nx.last_status.as_deref()),
        (RecipientState::Failed, Some("5.1.2"))
    );
    let null = by("y@nullmx.test");
    assert_eq!(
        (null.state, null.last_status.as_deref()),
        (RecipientState::Failed, Some("5.1.10"))
    );
    assert_eq!(
        remote_db.store().counts().await.unwrap().envelopes,
        2,
        "two deliveries to the remote"
    );
    until("the failure report", WAIT, async || {
        store.maildrop_entries(alice).await.unwrap().len() == 1
    })
    .await;
}

/// A server that first answers 451, then accepts only after longer than the lease lasts.
/// Two queue replicas: the retry succeeds, and because the worker renews its lease while the
/// slow server takes its time, the other replica never delivers a second copy.
#[tokio::test]
async fn a_4xx_is_retried_and_a_slow_delivery_keeps_its_lease() {
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let port = free_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received");
    let server = r#"
import asyncore, os, smtpd, sys, time, warnings
warnings.simplefilter("ignore")
state = {"sessions": 0}
class Slow(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        state["sessions"] += 1
        if state["sessions"] == 1:
            return "451 4.3.0 Try again later"
        time.sleep(5)
        with open(sys.argv[2], "ab") as f:
            f.write(b"COPY\n")
Slow(("127.0.0.1", int(sys.argv[1])), None, decode_data=False)
asyncore.loop()
"#;
    let mut peer = python_server(server, port, &out).await;
    let routes = format!("\"remote.test\" = \"127.0.0.1:{port}\"");
    let tuning = "lease_secs = 3\nretry_delay_secs = 1\nretry_max_delay_secs = 1\n";
    let queue = format!("scan_interval_secs = 1\n{tuning}\n[queue.routes]\n{routes}\n");
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(start_queue(&db, &queue).await);
    }
    let id = enqueue(db.store(), vec![rcpt("friend@remote.test", "FAILURE")]).await;
    let store = db.store();
    until_relayed_recipient(store, &id).await;
    // Give a wrongly reclaiming replica the time it would need to deliver a second copy.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "COPY\n",
        "exactly one copy arrived"
    );
    let r = &store
        .envelope_detail(id.as_str())
        .await
        .unwrap()
        .unwrap()
        .recipients[0];
    let results: Vec<_> = r.history.iter().map(|a| (a.result, a.reply_code)).collect();
    assert_eq!(
        results,
        [
            (RecipientState::Queued, Some(451)),
            (RecipientState::Relayed, Some(250))
        ],
        "{r:?}"
    );
    let _ = peer.kill().await;
}

/// What a `sink` saw.
#[derive(Default)]
struct SinkStats {
    open: AtomicUsize,
    /// The most connections open at once.
    max_open: AtomicUsize,
    connections: AtomicUsize,
    messages: AtomicUsize,
}

/// A minimal SMTP sink without extensions: answers each message after `delay`, and with
/// `close_after_message` drops the connection after each one (as a server with a very short
/// idle timeout would).
async fn sink(delay: Duration, close_after_message: bool) -> (SocketAddr, Arc<SinkStats>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(SinkStats::default());
    let seen = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let stats = seen.clone();
            tokio::spawn(async move {
                stats.connections.fetch_add(1, Ordering::SeqCst);
                let now = stats.open.fetch_add(1, Ordering::SeqCst) + 1;
                stats.max_open.fetch_max(now, Ordering::SeqCst);
                let (read, mut write) = tcp.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink\r\n").await;
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if in_data {
                        if line != "." {
                            continue;
                        }
                        in_data = false;
                        tokio::time::sleep(delay).await;
                        stats.messages.fetch_add(1, Ordering::SeqCst);
                        if close_after_message {
                            let _ = write.write_all(b"250 ok\r\n").await;
                            break;
                        }
                        b"250 ok\r\n"
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        b"354 go\r\n"
                    } else if line.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        break;
                    }
                }
                stats.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, stats)
}

/// One worker claims two envelopes in one batch and delivers them one after the other to a
/// server slower than the lease. The second envelope's lease is renewed while the first is
/// delivered, so a second replica never takes it over: exactly one copy of each arrives.
#[tokio::test]
async fn a_slow_delivery_does_not_let_the_rest_of_its_batch_expire() {
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let port = free_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received");
    let server = r#"
import asyncore, smtpd, sys, time, warnings
warnings.simplefilter("ignore")
class Slow(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        time.sleep(4)
        with open(sys.argv[2], "ab") as f:
            f.write(("COPY %s\n" % rcpttos[0]).encode())
Slow(("127.0.0.1", int(sys.argv[1])), None, decode_data=False)
asyncore.loop()
"#;
    let _peer = python_server(server, port, &out).await;
    let store = db.store();
    let first = enqueue(store, vec![rcpt("one@remote.test", "NEVER")]).await;
    let second = enqueue(store, vec![rcpt("two@remote.test", "NEVER")]).await;
    let queue = format!(
        "remote_workers = 1\nbatch_size = 8\nlease_secs = 3\nscan_interval_secs = 1\n\
         [queue.routes]\n\"remote.test\" = \"127.0.0.1:{port}\"\n"
    );
    let _claimer = start_queue(&db, &queue).await;
    // The first replica claims both at start-up; only then does the second one start.
    until("both envelopes claimed", WAIT, async || {
        let mut leased = 0;
        for id in [&first, &second] {
            let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
            leased += usize::from(detail.recipients[0].lease_owner.is_some());
        }
        leased == 2
    })
    .await;
    let _other = start_queue(&db, &queue).await;
    for id in [&first, &second] {
        until_relayed_recipient(store, id).await;
    }
    // Give a wrongly reclaiming replica the time it would need to deliver a second copy.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut copies: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    copies.sort();
    assert_eq!(
        copies,
        ["COPY one@remote.test", "COPY two@remote.test"],
        "exactly one copy of each"
    );
}

/// Starts a Python smtpd server from `script` (arguments: the port and `out`) and waits until
/// it listens; it is killed when the returned process is dropped.
async fn python_server(script: &str, port: u16, out: &Path) -> tokio::process::Child {
    let server = tokio::process::Command::new("python3")
        .args(["-c", script, &port.to_string(), out.to_str().unwrap()])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    until("the python server", WAIT, async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    server
}

/// Waits until the first recipient of envelope `id` is relayed.
async fn until_relayed_recipient(store: &Store, id: &QueueId) {
    until("the delivery", WAIT, async || {
        store
            .envelope_detail(id.as_str())
            .await
            .unwrap()
            .unwrap()
            .recipients[0]
            .state
            == RecipientState::Relayed
    })
    .await;
}

/// A queue with one remote loop taking one envelope at a time, and `extra` configuration.
async fn serial_queue(db: &TestDb, extra: &str) -> ServiceProcess {
    start_queue(db, &format!("remote_workers = 1\nbatch_size = 1\n{extra}")).await
}

async fn until_relayed(store: &Store, n: i64) {
    until("every message relayed", WAIT, async || {
        store
            .counts()
            .await
            .unwrap()
            .recipients_in(RecipientState::Relayed)
            == n
    })
    .await;
}

#[tokio::test]
async fn connections_per_destination_are_limited() {
    let (sink, stats) = sink(Duration::from_millis(400), false).await;
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let _queue = start_queue(
        &db,
        &format!(
            "remote_workers = 4\nbatch_size = 1\nmax_connections_per_destination = 1\n\n\
             [queue.routes]\n\"remote.test\" = \"{sink}\""
        ),
    )
    .await;
    for _ in 0..4 {
        enqueue(db.store(), vec![rcpt("friend@remote.test", "FAILURE")]).await;
    }
    until_relayed(db.store(), 4).await;
    assert_eq!(
        stats.max_open.load(Ordering::SeqCst),
        1,
        "one connection at a time"
    );
}

#[tokio::test]
async fn messages_to_one_server_share_a_connection() {
    let (sink, stats) = sink(Duration::ZERO, false).await;
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    for _ in 0..5 {
        enqueue(db.store(), vec![rcpt("friend@remote.test", "FAILURE")]).await;
    }
    let _queue = serial_queue(
        &db,
        &format!("connection_reuse_secs = 30\n\n[queue.routes]\n\"remote.test\" = \"{sink}\""),
    )
    .await;
    until_relayed(db.store(), 5).await;
    assert_eq!(stats.messages.load(Ordering::SeqCst), 5);
    assert_eq!(
        stats.connections.load(Ordering::SeqCst),
        1,
        "five messages, one after the other, over one connection"
    );
}

#[tokio::test]
async fn a_dropped_idle_connection_is_replaced_without_deferring() {
    let (sink, stats) = sink(Duration::ZERO, true).await;
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let ids = [
        enqueue(db.store(), vec![rcpt("friend@remote.test", "FAILURE")]).await,
        enqueue(db.store(), vec![rcpt("friend@remote.test", "FAILURE")]).await,
        enqueue(db.store(), vec![rcpt("friend@remote.test", "FAILURE")]).await,
    ];
    let _queue = serial_queue(
        &db,
        &format!("connection_reuse_secs = 30\n\n[queue.routes]\n\"remote.test\" = \"{sink}\""),
    )
    .await;
    until_relayed(db.store(), 3).await;
    assert_eq!(stats.connections.load(Ordering::SeqCst), 3);
    for id in ids {
        let detail = db
            .store()
            .envelope_detail(id.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            detail.recipients[0].attempts, 1,
            "relayed at the first attempt"
        );
    }
}

#[tokio::test]
async fn tls_can_be_required_for_one_domain() {
    let (sink, _stats) = sink(Duration::ZERO, false).await;
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let id = enqueue(
        db.store(),
        vec![
            rcpt("friend@plain.test", "FAILURE"),
            rcpt("friend@mail.secure.test", "FAILURE"),
        ],
    )
    .await;
    let _queue = serial_queue(
        &db,
        &format!(
            "[queue.routes]\n\"plain.test\" = \"{sink}\"\n\"mail.secure.test\" = \"{sink}\"\n\n\
             [queue.outbound_tls_domains]\n\".secure.test\" = \"required\"\n"
        ),
    )
    .await;
    let store = db.store();
    until("both attempted", WAIT, async || {
        store
            .envelope_detail(id.as_str())
            .await
            .unwrap()
            .unwrap()
            .recipients
            .iter()
            .all(|r| r.attempts == 1)
    })
    .await;
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    let plain = &detail.recipients[0];
    let secure = &detail.recipients[1];
    assert_eq!(plain.state, RecipientState::Relayed, "{plain:?}");
    assert_eq!(secure.state, RecipientState::Queued, "{secure:?}");
    assert_eq!(secure.last_status.as_deref(), Some("4.7.10"), "{secure:?}");
    assert!(
        secure
            .last_diagnostic
            .as_deref()
            .unwrap()
            .contains("does not offer STARTTLS"),
        "{secure:?}"
    );
}

/// An MX (or the domain's own address) in an internal network is never connected to: the
/// recipient fails with 5.4.4 and the failure report, and the internal server sees nothing.
/// A static route to the same address is the operator's choice and is used.
#[tokio::test]
async fn mx_hosts_in_internal_networks_are_refused() {
    let (sink, stats) = sink(Duration::ZERO, false).await;
    let dns = dns_server(vec![
        ("internal.test", Record::Mx(10, "mx.internal.test")),
        ("mx.internal.test", Record::A([127, 0, 0, 1])),
        ("private.test", Record::A([10, 1, 2, 3])),
    ])
    .await;
    let db = TestDb::new().await.unwrap();
    let alice = db.add_account("alice@example.org", "pw").await.unwrap();
    let _queue = start_queue(
        &db,
        &format!(
            "scan_interval_secs = 1\ndns_servers = [\"{dns}\"]\nmx_port = {}\n\n\
             [queue.routes]\n\"routed.test\" = \"{sink}\"\n",
            sink.port()
        ),
    )
    .await;
    let id = enqueue(
        db.store(),
        vec![
            rcpt("a@internal.test", "FAILURE"),
            rcpt("b@private.test", "FAILURE"),
            rcpt("c@routed.test", "NEVER"),
        ],
    )
    .await;
    let detail = until_attempted(db.store(), &id).await;
    for r in &detail.recipients[..2] {
        assert_eq!(r.state, RecipientState::Failed, "{r:?}");
        assert_eq!(r.last_status.as_deref(), Some("5.4.4"), "{r:?}");
        assert!(
            r.last_diagnostic.as_deref().unwrap().contains("refused"),
            "{r:?}"
        );
    }
    assert_eq!(detail.recipients[2].state, RecipientState::Relayed);
    assert_eq!(
        stats.messages.load(Ordering::SeqCst),
        1,
        "only the routed one"
    );
    let status = delivery_status(&maildrop(db.store(), alice, 1).await[0]);
    assert!(status.contains("Status: 5.4.4"), "{status}");
}

/// `verify`: delivered over TLS whose certificate the configured roots trust (the test CA
/// signed the receiver's certificate for 127.0.0.1); deferred when they do not (another CA),
/// with the reason.
#[tokio::test]
async fn verified_tls_needs_a_certificate_the_roots_trust() {
    let (_remote_db, certs, _ingress, mx) = receiver().await;
    let stranger = TestCerts::generate().unwrap();
    for (trusted, ca) in [(true, &certs.ca_path), (false, &stranger.ca_path)] {
        let db = TestDb::new().await.unwrap();
        db.add_account("alice@example.org", "pw").await.unwrap();
        let id = enqueue(db.store(), vec![rcpt("friend@remote.test", "FAILURE")]).await;
        let _queue = start_queue(
            &db,
            &format!(
                "scan_interval_secs = 1\nhostname = \"mx.example.org\"\ntls_ca_file = \"{}\"\n\n\
                 [queue.routes]\n\"remote.test\" = \"127.0.0.1:{}\"\n\n\
                 [queue.outbound_tls_domains]\n\"remote.test\" = \"verify\"\n",
                ca.display(),
                mx.port()
            ),
        )
        .await;
        let store = db.store();
        until("an attempt", WAIT, async || {
            let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
            detail.recipients[0].attempts == 1
        })
        .await;
        let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
        let friend = &detail.recipients[0];
        if trusted {
            assert_eq!(friend.state, RecipientState::Delivered, "{friend:?}");
        } else {
            assert_eq!(friend.state, RecipientState::Queued, "{friend:?}");
            let why = friend.last_diagnostic.as_deref().unwrap_or_default();
            assert!(
                why.contains("TLS handshake") && why.contains("certificate"),
                "{friend:?}"
            );
        }
    }
}

/// REQUIRETLS (RFC 8689): the message goes only over verified TLS to a server that offers
/// REQUIRETLS, which receives the parameter; a server without STARTTLS, or MX hosts that no
/// enforced MTA-STS policy protects, fail it with 5.7.10, and the report returns the header
/// only.
#[tokio::test]
async fn requiretls_goes_only_over_verified_tls_or_fails_with_a_report() {
    let (remote_db, certs, _ingress, mx) = receiver().await;
    // A second receiver without TLS: no STARTTLS offered.
    let plain_db = TestDb::new().await.unwrap();
    plain_db
        .add_account("friend@plain.test", "pw")
        .await
        .unwrap();
    let (grpc, plain_mx) = (free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\n\n[smtp]\ngrpc_listen = \"{grpc}\"\nqueue_endpoint = \"http://{}\"\n\
         mx_listen = [\"{plain_mx}\"]\nsubmission_listen = []\nsubmissions_listen = []\n",
        plain_db.url(),
        free_addr()
    );
    let _plain =
        ServiceProcess::start_healthy(&workspace_binary("smtp-ingress").unwrap(), &config, grpc)
            .await
            .unwrap();
    let db = TestDb::new().await.unwrap();
    let alice = db.add_account("alice@example.org", "pw").await.unwrap();
    let _queue = start_queue(
        &db,
        &format!(
            "scan_interval_secs = 1\nhostname = \"mx.example.org\"\ntls_ca_file = \"{}\"\n\n\
             [queue.routes]\n\"remote.test\" = \"127.0.0.1:{}\"\n\"plain.test\" = \"127.0.0.1:{}\"\n",
            certs.ca_path.display(),
            mx.port(),
            plain_mx.port()
        ),
    )
    .await;
    let envelope = NewEnvelope {
        requiretls: true,
        ..envelope(
            "alice@example.org",
            vec![
                rcpt("friend@remote.test", "FAILURE"),
                rcpt("friend@plain.test", "FAILURE"),
                rcpt("someone@unprotected.test", "FAILURE"),
            ],
        )
    };
    db.store().enqueue(&envelope, BODY).await.unwrap();
    let detail = until_attempted(db.store(), &envelope.queue_id).await;
    let states: Vec<_> = detail
        .recipients
        .iter()
        .map(|r| (r.state, r.last_status.clone().unwrap_or_default()))
        .collect();
    assert_eq!(states[0].0, RecipientState::Delivered, "{detail:?}");
    for failed in &detail.recipients[1..] {
        assert_eq!(failed.state, RecipientState::Failed, "{failed:?}");
        assert_eq!(failed.last_status.as_deref(), Some("5.7.10"), "{failed:?}");
    }
    let why = |i: usize| {
        detail.recipients[i]
            .last_diagnostic
            .clone()
            .unwrap_or_default()
    };
    assert!(why(1).contains("does not offer STARTTLS"), "{}", why(1));
    assert!(
        why(2).contains("not protected by an enforced MTA-STS policy"),
        "{}",
        why(2)
    );

    // The receiver took it with REQUIRETLS, over TLS.
    let remote = remote_db.store();
    until("arrival", WAIT, async || {
        remote.counts().await.unwrap().envelopes == 1
    })
    .await;
    let (arrived, _) = remote.list_envelopes(&Default::default(), 1).await.unwrap();
    let arrived = remote
        .envelope_detail(&arrived[0].queue_id)
        .await
        .unwrap()
        .unwrap();
    assert!(arrived.requiretls, "{arrived:?}");

    // One report for the two failures, with the header of the message and not its body.
    let report = &maildrop(db.store(), alice, 1).await[0];
    let status = delivery_status(report);
    assert!(status.contains("Status: 5.7.10"), "{status}");
    let text = String::from_utf8_lossy(report);
    assert!(text.contains("Subject: far away"), "{text}");
    assert!(!text.contains(".dot line"), "the body stays out: {text}");
}
