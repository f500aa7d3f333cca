//! The real smtp-ingress binary against the real database, driven by Python's smtplib (a
//! third-party client) over plain TCP, STARTTLS and implicit TLS. What landed in the store is
//! checked byte for byte.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pochta_proto::queue::v1::queue_server::{Queue, QueueServer};
use pochta_proto::queue::v1::{
    NotifyRequest, NotifyResponse, StartDomainDeliveryRequest, StartDomainDeliveryResponse,
};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use pochta_store::{DomainRole, RecipientState};
use pochta_testkit::{ServiceProcess, TestCerts, TestDb, free_addr, python};

const BINARY: &str = env!("CARGO_BIN_EXE_smtp-ingress");
const ALICE: &str = "alice@example.org";
const ALICE_PW: &str = "correct horse battery";

/// One ingress with all three listeners, a local domain with Alice, and a hold domain.
struct Stack {
    db: TestDb,
    certs: TestCerts,
    ingress: ServiceProcess,
    mx: SocketAddr,
    submission: SocketAddr,
    submissions: SocketAddr,
    queue: SocketAddr,
}

async fn stack(extra_smtp: &str) -> Stack {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    store
        .add_domain("example.org", DomainRole::Local)
        .await
        .unwrap();
    store
        .add_domain("backup.example", DomainRole::Hold)
        .await
        .unwrap();
    db.add_account(ALICE, ALICE_PW).await.unwrap();
    let certs = TestCerts::generate().unwrap();
    let queue = free_addr();
    let (mx, submission, submissions) = (free_addr(), free_addr(), free_addr());
    let (ingress, _) = start_ingress(
        &db,
        &certs,
        queue,
        extra_smtp,
        (mx, submission, submissions),
    )
    .await;
    Stack {
        db,
        certs,
        ingress,
        mx,
        submission,
        submissions,
        queue,
    }
}

async fn start_ingress(
    db: &TestDb,
    certs: &TestCerts,
    queue: SocketAddr,
    extra_smtp: &str,
    (mx, submission, submissions): (SocketAddr, SocketAddr, SocketAddr),
) -> (ServiceProcess, SocketAddr) {
    let grpc = free_addr();
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 4\n\n{}\n[smtp]\ngrpc_listen = \"{grpc}\"\n\
         queue_endpoint = \"http://{queue}\"\nhostname = \"mx.test\"\nmx_listen = [\"{mx}\"]\n\
         submission_listen = [\"{submission}\"]\nsubmissions_listen = [\"{submissions}\"]\n\
         trusted_networks = []\nauth_failure_delay_ms = 50\n{extra_smtp}\n\n\
         # Transport only: the authentication checks (tests/mail_auth.rs) would add a header.\n\
         [mail_auth]\ncheck_inbound = false\n",
        db.url(),
        certs.tls_section()
    );
    let ingress = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();
    (ingress, grpc)
}

impl Stack {
    fn port(addr: SocketAddr) -> String {
        addr.port().to_string()
    }

    /// The stored content of the message with this queue id.
    async fn content(&self, queue_id: &str) -> Vec<u8> {
        let detail = self
            .db
            .store()
            .envelope_detail(queue_id)
            .await
            .unwrap()
            .expect("stored");
        self.db
            .store()
            .message_content(detail.message_id)
            .await
            .unwrap()
            .unwrap()
    }
}

/// Sends one message over a plain MX connection; prints the DATA reply or the error.
const SEND_PLAIN: &str = r#"
import smtplib, sys
port, sender, rcpts, body = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4]
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20)
s.ehlo()
assert s.has_extn("pipelining") and s.has_extn("dsn") and s.has_extn("smtputf8"), s.esmtp_features
code, resp = s.mail(sender, ["RET=HDRS", "ENVID=abc+2Bd", "BODY=8BITMIME"])
print("MAIL", code)
for r in rcpts:
    code, resp = s.rcpt(r, ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;" + r])
    print("RCPT", code, resp.decode())
code, resp = s.data(body.encode("utf-8"))
print("DATA", code, resp.decode())
s.quit()
"#;

/// The queue ids of every accepted message in a script's output, in order.
fn queue_ids(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("DATA 250"))
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect()
}

/// The queue id of the first accepted message.
fn queue_id(out: &str) -> String {
    queue_ids(out)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("not accepted:\n{out}"))
}

#[tokio::test]
async fn mx_accepts_mail_for_local_and_hold_domains_byte_for_byte() {
    let s = stack("").await;
    let body = "From: Bob <bob@remote.test>\r\nTo: alice@example.org\r\nSubject: caf\u{e9}\r\n\r\n.leading dot\r\nline two\r\n";
    let out = python(
        SEND_PLAIN,
        &[
            &Stack::port(s.mx),
            "bob@remote.test",
            "alice@example.org,carol@backup.example",
            body,
        ],
    )
    .await
    .unwrap();
    let id = queue_id(&out);

    let content = s.content(&id).await;
    let text = String::from_utf8(content.clone()).unwrap();
    let (received, rest) = text.split_once("\r\n\t").unwrap();
    assert_eq!(received, "Received: from client.test ([127.0.0.1])");
    assert!(
        rest.starts_with(&format!("by mx.test (Pochta) with ESMTP id {id}; ")),
        "{text}"
    );
    let header_end = text.find("\r\nFrom: Bob").unwrap() + 2;
    assert_eq!(
        &content[header_end..],
        body.as_bytes(),
        "the message is stored as sent"
    );

    let detail = s.db.store().envelope_detail(&id).await.unwrap().unwrap();
    assert_eq!(detail.reverse_path, "bob@remote.test");
    assert_eq!(detail.envid.as_deref(), Some("abc+d"));
    assert_eq!(detail.ret.as_deref(), Some("HDRS"));
    assert_eq!(detail.body.as_deref(), Some("8BITMIME"));
    assert_eq!(detail.client_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(detail.client_helo.as_deref(), Some("client.test"));
    assert_eq!(detail.received_by.as_deref(), Some("mx.test"));
    let traceparent = detail.traceparent.expect("trace context stored");
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "{traceparent}"
    );
    let rcpts: Vec<_> = detail
        .recipients
        .iter()
        .map(|r| {
            (
                r.address.as_str(),
                r.state,
                r.notify.as_deref(),
                r.orcpt.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        rcpts,
        [
            (
                "alice@example.org",
                RecipientState::Queued,
                Some("SUCCESS,DELAY"),
                Some("rfc822;alice@example.org")
            ),
            (
                "carol@backup.example",
                RecipientState::Held,
                Some("SUCCESS,DELAY"),
                Some("rfc822;carol@backup.example")
            ),
        ]
    );
}

#[tokio::test]
async fn mx_refuses_unknown_users_and_relaying() {
    let s = stack("").await;
    let out = python(
        SEND_PLAIN,
        &[
            &Stack::port(s.mx),
            "bob@remote.test",
            "nobody@example.org,victim@elsewhere.test,alice@example.org",
            "Subject: x\r\n\r\nx\r\n",
        ],
    )
    .await
    .unwrap();
    assert!(out.contains("RCPT 550 5.1.1"), "{out}");
    assert!(out.contains("RCPT 554 5.7.1 Relay access denied"), "{out}");
    let id = queue_id(&out);
    let detail = s.db.store().envelope_detail(&id).await.unwrap().unwrap();
    assert_eq!(
        detail.recipients.len(),
        1,
        "only the valid recipient was kept"
    );
}

/// One RCPT per address given, in one MX transaction that is then reset; prints each reply.
const RCPT_ONLY: &str = r#"
import smtplib, sys
port, rcpts = int(sys.argv[1]), sys.argv[2].split(",")
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20)
s.ehlo()
s.mail("bob@remote.test")
for r in rcpts:
    code, resp = s.rcpt(r)
    print("RCPT", r, code, resp.decode())
s.rset()
s.quit()
"#;

async fn rcpt_replies(s: &Stack, rcpts: &str) -> String {
    python(RCPT_ONLY, &[&Stack::port(s.mx), rcpts])
        .await
        .unwrap()
}

async fn disable_alice(s: &Stack) {
    let alice = pochta_mail::Mailbox::parse(ALICE).unwrap();
    s.db.store()
        .set_account_disabled(&alice, true)
        .await
        .unwrap();
}

#[tokio::test]
async fn accepted_recipients_are_remembered_refusals_never() {
    let s = stack("recipient_cache_secs = 3600").await;
    let out = rcpt_replies(&s, "alice@example.org,newbie@example.org").await;
    assert!(out.contains("RCPT alice@example.org 250"), "{out}");
    assert!(out.contains("RCPT newbie@example.org 550 5.1.1"), "{out}");

    disable_alice(&s).await;
    s.db.add_account("newbie@example.org", "pw").await.unwrap();
    let out = rcpt_replies(&s, "alice@example.org,newbie@example.org").await;
    // Alice's acceptance is remembered (her mail would fail at delivery, with a report); the
    // refusal of a new account was not, so it is accepted at once.
    assert!(out.contains("RCPT alice@example.org 250"), "{out}");
    assert!(out.contains("RCPT newbie@example.org 250"), "{out}");
}

#[tokio::test]
async fn without_the_recipient_cache_a_disabled_account_is_refused_at_once() {
    let s = stack("recipient_cache_secs = 0").await;
    let out = rcpt_replies(&s, "alice@example.org,carol@backup.example").await;
    assert!(out.contains("RCPT alice@example.org 250"), "{out}");
    disable_alice(&s).await;
    s.db.store().remove_domain("backup.example").await.unwrap();
    let out = rcpt_replies(&s, "alice@example.org,carol@backup.example").await;
    assert!(out.contains("RCPT alice@example.org 550 5.2.1"), "{out}");
    assert!(out.contains("RCPT carol@backup.example 554 5.7.1"), "{out}");
}

/// A maildrop at its quota refuses new mail at RCPT with 452 4.2.2 (temporary: the owner may
/// make room), and a POP3 deletion makes room at once.
#[tokio::test]
async fn a_full_maildrop_is_refused_at_rcpt_until_deletions_make_room() {
    let s = stack("recipient_cache_secs = 0").await;
    let out = python(
        SEND_PLAIN,
        &[
            &Stack::port(s.mx),
            "bob@remote.test",
            ALICE,
            "Subject: fills it\r\n\r\nx\r\n",
        ],
    )
    .await
    .unwrap();
    queue_id(&out);
    // Delivered as the queue would, then the quota set to exactly what the maildrop holds.
    let store = s.db.store();
    let claimed = store
        .claim_due(
            "test",
            pochta_store::Claim::Local,
            10,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let alice = pochta_mail::Mailbox::parse(ALICE).unwrap();
    let account = store
        .lookup_recipient(&alice)
        .await
        .unwrap()
        .account
        .unwrap()
        .id;
    store
        .deliver_to_maildrop("test", claimed[0].recipient_id, account, b"")
        .await
        .unwrap();
    let held: i64 = store
        .maildrop_entries(account)
        .await
        .unwrap()
        .iter()
        .map(|e| e.pop3_size)
        .sum();
    store.set_quota(&alice, Some(held)).await.unwrap();
    let out = rcpt_replies(&s, ALICE).await;
    assert!(
        out.contains("RCPT alice@example.org 452 4.2.2 Recipient mailbox is full"),
        "{out}"
    );

    let entries = store.maildrop_entries(account).await.unwrap();
    assert!(
        store
            .lock_maildrop(account, "pop3", Duration::from_secs(60))
            .await
            .unwrap()
    );
    store
        .delete_maildrop_entries_and_unlock(account, "pop3", &[entries[0].id])
        .await
        .unwrap();
    let out = rcpt_replies(&s, ALICE).await;
    assert!(out.contains("RCPT alice@example.org 250"), "{out}");
}

/// STARTTLS on submission, then AUTH PLAIN; relaying to a foreign domain is allowed then.
const SUBMIT_STARTTLS: &str = r#"
import smtplib, ssl, sys
port, ca, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP("localhost", port, local_hostname="laptop.test", timeout=20)
s.ehlo()
assert not s.has_extn("auth"), "AUTH must not be offered before TLS"
code, resp = s.mail(user)
print("PLAIN-MAIL", code, resp.decode())
s.rset()
s.starttls(context=ctx)
s.ehlo()
assert s.has_extn("auth") and not s.has_extn("starttls"), s.esmtp_features
s.login(user, pw)
code, resp = s.mail(user)
print("MAIL", code)
code, resp = s.rcpt("friend@elsewhere.test")
print("RCPT", code)
code, resp = s.data(b"Subject: via submission\r\n\r\nhi\r\n")
print("DATA", code, resp.decode())
s.quit()
"#;

#[tokio::test]
async fn submission_with_starttls_and_auth_plain() {
    let s = stack("").await;
    let out = python(
        SUBMIT_STARTTLS,
        &[
            &Stack::port(s.submission),
            s.certs.ca_path.to_str().unwrap(),
            ALICE,
            ALICE_PW,
        ],
    )
    .await
    .unwrap();
    assert!(
        out.contains("PLAIN-MAIL 530 5.7.0 Must issue a STARTTLS command first"),
        "{out}"
    );
    let id = queue_id(&out);
    let detail = s.db.store().envelope_detail(&id).await.unwrap().unwrap();
    assert_eq!(detail.auth_user.as_deref(), Some(ALICE));
    assert_eq!(detail.recipients[0].address, "friend@elsewhere.test");
    let content = String::from_utf8(s.content(&id).await).unwrap();
    assert!(content.contains(" with ESMTPSA id "), "{content}");
}

/// Implicit TLS (port 465) with AUTH LOGIN, and the refusals an authenticated session meets.
const SUBMITS_LOGIN: &str = r#"
import smtplib, ssl, sys
port, ca, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP_SSL("localhost", port, context=ctx, local_hostname="laptop.test", timeout=20)
s.ehlo()
code, resp = s.mail(user)
print("NOAUTH-MAIL", code, resp.decode())
s.rset()
try:
    s.user, s.password = user, "wrong password"
    s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    print("BAD-LOGIN accepted")
except smtplib.SMTPAuthenticationError as e:
    print("BAD-LOGIN", e.smtp_code, e.smtp_error.decode())
s.user, s.password = user, pw
code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
print("LOGIN", code, resp.decode())
code, resp = s.mail("someone.else@example.org")
print("FORGED-MAIL", code, resp.decode())
code, resp = s.mail(user)
code, resp = s.rcpt(user)
code, resp = s.data(b"Subject: to myself\r\n\r\nhi\r\n")
print("DATA", code, resp.decode())
s.quit()
"#;

#[tokio::test]
async fn submissions_with_implicit_tls_and_auth_login() {
    let s = stack("").await;
    let out = python(
        SUBMITS_LOGIN,
        &[
            &Stack::port(s.submissions),
            s.certs.ca_path.to_str().unwrap(),
            ALICE,
            ALICE_PW,
        ],
    )
    .await
    .unwrap();
    assert!(
        out.contains("NOAUTH-MAIL 530 5.7.0 Authentication required"),
        "{out}"
    );
    assert!(out.contains("BAD-LOGIN 535 5.7.8"), "{out}");
    assert!(out.contains("LOGIN 235 2.7.0"), "{out}");
    assert!(out.contains("FORGED-MAIL 553 5.7.1"), "{out}");
    let id = queue_id(&out);
    assert_eq!(
        s.db.store()
            .envelope_detail(&id)
            .await
            .unwrap()
            .unwrap()
            .recipients[0]
            .address,
        ALICE
    );
}

/// Repeated failures from one address end in 421, even with the right password afterwards.
const BRUTE_FORCE: &str = r#"
import smtplib, ssl, sys
port, ca, user = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
for attempt in range(4):
    try:
        s = smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=20)
        s.ehlo()
        s.user, s.password = user, "guess %d" % attempt
        s.auth("PLAIN", s.auth_plain)
        print("ACCEPTED")
    except smtplib.SMTPAuthenticationError as e:
        print("FAIL", e.smtp_code)
    except smtplib.SMTPServerDisconnected:
        print("DISCONNECTED")
    except smtplib.SMTPException as e:
        print("OTHER", e)
"#;

#[tokio::test]
async fn repeated_auth_failures_are_rate_limited() {
    let s = stack("auth_max_failures = 2\nauth_failure_window_secs = 60\n").await;
    let out = python(
        BRUTE_FORCE,
        &[
            &Stack::port(s.submissions),
            s.certs.ca_path.to_str().unwrap(),
            ALICE,
        ],
    )
    .await
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "FAIL 535", "{out}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| *l == "FAIL 421" || *l == "DISCONNECTED"),
        "{out}"
    );
    assert!(!out.contains("ACCEPTED"));
}

/// Commands pipelined after STARTTLS in plaintext must not run inside TLS.
const STARTTLS_INJECTION: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
sock = socket.create_connection(("127.0.0.1", port), timeout=20)
f = sock.makefile("rb")
def reply():
    lines = []
    while True:
        line = f.readline().decode()
        lines.append(line.strip())
        if line[3:4] == " ":
            return lines
reply()
sock.sendall(b"EHLO x\r\n"); reply()
sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
print("STARTTLS", reply()[-1])
tls = ssl.create_default_context(cafile=ca).wrap_socket(sock, server_hostname="localhost")
f = tls.makefile("rb")
tls.sendall(b"NOOP\r\n")
print("FIRST", reply()[-1])
tls.sendall(b"MAIL FROM:<a@b.test>\r\n")
print("MAIL", reply()[-1])
"#;

#[tokio::test]
async fn starttls_command_injection_is_discarded() {
    let s = stack("").await;
    let out = python(
        STARTTLS_INJECTION,
        &[&Stack::port(s.mx), s.certs.ca_path.to_str().unwrap()],
    )
    .await
    .unwrap();
    assert!(
        out.contains("STARTTLS 220 2.0.0 Ready to start TLS"),
        "{out}"
    );
    assert!(
        out.contains("FIRST 250 2.0.0 Ok"),
        "the injected MAIL got no reply: {out}"
    );
    assert!(
        out.contains("MAIL 503 5.5.1 Send EHLO/HELO first"),
        "the session restarted: {out}"
    );
}

#[tokio::test]
async fn two_ingress_processes_share_one_store() {
    let s = stack("").await;
    let mx2 = free_addr();
    let (_second, _) = start_ingress(
        &s.db,
        &s.certs,
        s.queue,
        "",
        (mx2, free_addr(), free_addr()),
    )
    .await;
    let body = "Subject: x\r\n\r\nx\r\n";
    let a = python(
        SEND_PLAIN,
        &[&Stack::port(s.mx), "b@remote.test", ALICE, body],
    )
    .await
    .unwrap();
    let b = python(
        SEND_PLAIN,
        &[&Stack::port(mx2), "b@remote.test", ALICE, body],
    )
    .await
    .unwrap();
    assert_ne!(queue_id(&a), queue_id(&b));
    assert_eq!(s.db.store().counts().await.unwrap().envelopes, 2);
}

const ETRN: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo()
for domain in sys.argv[2:]:
    code, resp = s.docmd("ETRN", domain)
    print(code, resp.decode())
s.quit()
"#;

#[tokio::test]
async fn etrn_is_answered_by_the_queue() {
    let s = stack("").await;
    s.db.store()
        .add_domain("empty.example", DomainRole::Hold)
        .await
        .unwrap();
    let sent = python(
        SEND_PLAIN,
        &[
            &Stack::port(s.mx),
            "b@remote.test",
            "x@backup.example,y@backup.example",
            "Subject: x\r\n\r\nx\r\n",
        ],
    )
    .await
    .unwrap();
    let id = queue_id(&sent);
    // The queue is down: 458.
    let out = python(ETRN, &[&Stack::port(s.mx), "backup.example"])
        .await
        .unwrap();
    assert!(
        out.starts_with("458 4.3.0 Unable to queue messages for node backup.example"),
        "{out}"
    );

    let queue_binary = pochta_testkit::workspace_binary("delivery-queue").unwrap();
    let _queue = ServiceProcess::start_healthy(
        &queue_binary,
        &pochta_testkit::service_config(s.db.url(), "queue", s.queue),
        s.queue,
    )
    .await
    .unwrap();
    let out = python(
        ETRN,
        &[
            &Stack::port(s.mx),
            "@backup.example",
            "empty.example",
            "example.org",
            "unknown.test",
        ],
    )
    .await
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "253 2.0.0 OK, 1 pending messages for node backup.example started",
        "{out}"
    );
    assert_eq!(
        lines[1], "251 2.0.0 OK, no messages waiting for node empty.example",
        "{out}"
    );
    assert!(
        lines[2].starts_with("459 4.7.1 Node example.org not allowed"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("459 4.7.1 Node unknown.test not allowed"),
        "{out}"
    );
    assert_eq!(
        s.db.store()
            .counts()
            .await
            .unwrap()
            .recipients_in(RecipientState::Held),
        0
    );

    // The released mail was attempted at once (ETRN wakes the queue) and, with no remote
    // delivery yet, deferred. ETRN makes deferred mail due again too (RFC 1985).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let detail = s.db.store().envelope_detail(&id).await.unwrap().unwrap();
        if detail
            .recipients
            .iter()
            .all(|r| r.attempts >= 1 && r.lease_owner.is_none())
        {
            assert!(
                detail
                    .recipients
                    .iter()
                    .all(|r| r.state == RecipientState::Queued)
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not attempted: {detail:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = python(ETRN, &[&Stack::port(s.mx), "backup.example"])
        .await
        .unwrap();
    assert_eq!(
        out.trim(),
        "253 2.0.0 OK, 1 pending messages for node backup.example started"
    );
}

#[tokio::test]
async fn sigterm_tells_idle_clients_421_and_exits_zero() {
    let mut s = stack("").await;
    let port = Stack::port(s.mx);
    let client = tokio::spawn(async move {
        python(
            r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo()
print("READY", flush=True)
code, text = s.getreply()
print("UNSOLICITED", code, text.decode())
"#,
            &[&port],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.ingress.signal(pochta_testkit::SIGTERM).unwrap();
    let status = s.ingress.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{}", s.ingress.output());
    let out = client.await.unwrap().unwrap();
    assert!(
        out.contains("UNSOLICITED 421 4.3.2 mx.test Service shutting down"),
        "{out}"
    );
}

/// A stand-in for the queue's gRPC service that records each Notify and when it came; the
/// other calls are not needed here.
type QueueResult<T> = Result<Response<T>, Status>;

#[derive(Clone, Default)]
struct NotifyRecorder(Arc<Mutex<Vec<Notified>>>);

/// When a Notify came and the queue ids it carried.
type Notified = (Instant, Vec<String>);

impl NotifyRecorder {
    fn seen(&self) -> Vec<Notified> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `n` Notify requests have come (or fails after 20 s).
    async fn wait_for(&self, n: usize) -> Vec<Notified> {
        for _ in 0..200 {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("only {:?} Notify requests came", self.seen());
    }
}

#[tonic::async_trait]
impl Queue for NotifyRecorder {
    async fn notify(&self, request: Request<NotifyRequest>) -> QueueResult<NotifyResponse> {
        let ids = request.into_inner().queue_ids;
        self.0.lock().unwrap().push((Instant::now(), ids));
        Ok(Response::new(NotifyResponse {}))
    }
    async fn start_domain_delivery(
        &self,
        _: Request<StartDomainDeliveryRequest>,
    ) -> QueueResult<StartDomainDeliveryResponse> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Sends `count` messages to Alice in one MX session; prints each DATA reply.
const SEND_MANY: &str = r#"
import smtplib, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20)
s.ehlo()
for i in range(count):
    code, resp = s.mail("bob@remote.test")
    assert code == 250, (code, resp)
    code, resp = s.rcpt("alice@example.org")
    assert code == 250, (code, resp)
    code, resp = s.data(b"Subject: %d\r\n\r\nx\r\n" % i)
    print("DATA", code, resp.decode())
s.quit()
"#;

#[tokio::test]
async fn the_queue_is_told_of_new_mail_at_once_then_at_most_once_per_interval() {
    let s = stack("notify_interval_ms = 3000").await;
    let recorder = NotifyRecorder::default();
    // Listening before any mail comes: a Notify that finds no queue is not retried.
    let listener = tokio::net::TcpListener::bind(s.queue).await.unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(QueueServer::new(recorder.clone()))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);

    // A first message after a quiet spell: told at once, alone.
    let first = queue_ids(&python(SEND_MANY, &[&Stack::port(s.mx), "1"]).await.unwrap());
    let seen = recorder.wait_for(1).await;
    assert_eq!(seen[0].1, first);
    // Three more straight after: they wait for the interval and go together.
    let more = queue_ids(&python(SEND_MANY, &[&Stack::port(s.mx), "3"]).await.unwrap());
    assert_eq!(more.len(), 3, "all accepted");
    let seen = recorder.wait_for(2).await;
    assert_eq!(seen[1].1, more, "one Notify for the three");
    assert!(
        seen[1].0 - seen[0].0 >= Duration::from_millis(2900),
        "not before the interval: {:?}",
        seen[1].0 - seen[0].0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.seen().len(), 2, "nothing else was sent");
}

/// BDAT by hand over smtplib's connection (no Python client speaks CHUNKING itself): three
/// chunks (a CRLF split between two, a leading dot, 8-bit text), a LAST of size 0, then DATA in
/// the same session. Each message is stored byte for byte after the Received header.
const BDAT_THEN_DATA: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=20)
s.ehlo()
assert s.has_extn("chunking"), s.esmtp_features
def bdat(chunk, last=False):
    s.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
    return s.getreply()
assert s.mail("bob@remote.test", ["BODY=8BITMIME"])[0] == 250
assert s.rcpt(sys.argv[2])[0] == 250
assert bdat(b"Subject: chunked\r\n\r\n.dot line\r") == (250, b"2.0.0 Chunk received")
assert bdat("\n\u00e9t\u00e9\r\n".encode()) == (250, b"2.0.0 Chunk received")
code, resp = bdat(b"", True)
print("BDAT", code, resp.decode())
assert s.mail("bob@remote.test")[0] == 250
assert s.rcpt(sys.argv[2])[0] == 250
code, resp = s.data(b"Subject: plain\r\n\r\n.stuffed\r\n")
print("DATA", code, resp.decode())
s.quit()
"#;

#[tokio::test]
async fn bdat_and_data_in_one_session_are_stored_byte_for_byte() {
    let s = stack("").await;
    let out = python(BDAT_THEN_DATA, &[&Stack::port(s.mx), ALICE])
        .await
        .unwrap();
    let ids: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("BDAT 250") || l.starts_with("DATA 250"))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    let expected: [&[u8]; 2] = [
        "Subject: chunked\r\n\r\n.dot line\r\n\u{e9}t\u{e9}\r\n".as_bytes(),
        b"Subject: plain\r\n\r\n.stuffed\r\n",
    ];
    for (id, body) in ids.iter().zip(expected) {
        let content = s.content(id).await;
        let (received, rest) = content.split_at(content.len() - body.len());
        assert_eq!(rest, body, "{}", String::from_utf8_lossy(&content));
        assert!(
            received.starts_with(b"Received: ") && !rest.starts_with(b"Received: "),
            "one Received header, then the text as sent"
        );
    }
}

/// Sends three large messages in one session (argv: port, recipient, seed, a directory to
/// write what was sent to): prose, a base64 file of random octets, and random octets
/// (8BITMIME) without a line longer than 998.
const SEND_LARGE: &str = r#"
import base64, os, random, smtplib, sys
port, rcpt, seed, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
words = ["mail", "store", "row", "queue", "page", "chunk", "commit", "reader"]
prose = "\r\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(4000))
attachment = base64.encodebytes(rng.randbytes(300_000)).decode().replace("\n", "\r\n")
binary = b"\r\n".join(bytes(rng.choice(range(1, 256)) for _ in range(900)).replace(b"\r", b"r").replace(b"\n", b"n") for _ in range(200))
bodies = [
    ("Subject: prose\r\n\r\n" + prose + "\r\n").encode(),
    ("Subject: file\r\nContent-Transfer-Encoding: base64\r\n\r\n" + attachment).encode(),
    b"Subject: octets\r\n\r\n" + binary + b"\r\n",
]
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60)
s.ehlo()
for i, body in enumerate(bodies):
    print("MAIL", s.mail("bob@remote.test", ["BODY=8BITMIME"]))
    print("RCPT", s.rcpt(rcpt))
    code, resp = s.data(body)
    print("DATA", code, resp.decode())
    with open(os.path.join(out, str(i)), "wb") as f:
        f.write(body)
s.quit()
"#;

/// Large messages are stored compressed by default (prose and base64 shrink; random octets
/// are stored as they are) and read back byte for byte.
#[tokio::test]
async fn large_messages_are_stored_compressed_and_read_back_byte_for_byte() {
    let s = stack("").await;
    let sent = tempfile::tempdir().unwrap();
    let dir = sent.path().to_str().unwrap();
    let out = python(SEND_LARGE, &[&Stack::port(s.mx), ALICE, "7", dir])
        .await
        .unwrap();
    let ids = queue_ids(&out);
    assert_eq!(ids.len(), 3, "{out}");
    let bodies: Vec<Vec<u8>> = (0..3)
        .map(|i| std::fs::read(sent.path().join(i.to_string())).unwrap())
        .collect();
    let raw = sqlx::PgPool::connect(s.db.url()).await.unwrap();
    let mut stored_ratio = Vec::new();
    for (id, body) in ids.iter().zip(&bodies) {
        let content = s.content(id).await;
        assert!(content.ends_with(body), "{id} read back as sent");
        let detail = s.db.store().envelope_detail(id).await.unwrap().unwrap();
        let stored: i64 = sqlx::query_scalar(
            "SELECT sum(octet_length(data))::int8 FROM message_chunks WHERE message_id = $1",
        )
        .bind(detail.message_id)
        .fetch_one(&raw)
        .await
        .unwrap();
        stored_ratio.push(stored as f64 / content.len() as f64);
    }
    assert!(stored_ratio[0] < 0.3, "prose: {stored_ratio:?}");
    assert!(stored_ratio[1] < 0.85, "base64: {stored_ratio:?}");
    assert!(stored_ratio[2] > 0.99, "random octets: {stored_ratio:?}");
}
