//! How much mail the real ingress takes, driven by Python's smtplib: an authenticated user's
//! messages an hour and a day (counted in the store, so across replicas), its recipients per
//! message and the null sender, and the backlog a hold or relay domain may pile up.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pochta_store::DomainRole;
use pochta_testkit::{ServiceProcess, TestDb, free_addr, python, until};

const BINARY: &str = env!("CARGO_BIN_EXE_smtp-ingress");
const ALICE: &str = "alice@example.org";
const ALICE_PW: &str = "alice's password";

/// One conversation over plain TCP from loopback (where this config allows AUTH). Arguments:
/// port, then steps: `auth:user:password`, `mail:address`, `rcpt:address`, `data:size` (about that many octets),
/// `rset`. Prints each step's reply code and text.
const CONVERSATION: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=20)
s.ehlo()
for step in sys.argv[2:]:
    kind, _, arg = step.partition(":")
    if kind == "auth":
        user, pw = arg.split(":")
        s.user, s.password = user, pw
        code, resp = s.auth("PLAIN", s.auth_plain)
    elif kind == "mail":
        code, resp = s.docmd("MAIL", "FROM:<%s>" % arg)
    elif kind == "rcpt":
        code, resp = s.docmd("RCPT", "TO:<%s>" % arg)
    elif kind == "data":
        body = (b"y" * 78 + b"\r\n") * (int(arg) // 80 + 1)
        try:
            code, resp = s.data(b"Subject: x\r\n\r\n" + body)
        except smtplib.SMTPResponseException as e:
            code, resp = e.smtp_code, e.smtp_error
    else:
        code, resp = s.rset()
    label = arg.split(":")[0] if kind in ("auth", "mail", "rcpt") else ""
    print(kind, label, code, resp.decode())
s.quit()
"#;

struct Stack {
    db: TestDb,
    _ingresses: Vec<ServiceProcess>,
    mx: Vec<SocketAddr>,
}

/// `replicas` ingress processes over one store, with a local domain (Alice), a hold and a
/// relay domain, and `extra_smtp` in their `[smtp]` section.
async fn stack(replicas: usize, extra_smtp: &str) -> Stack {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    for (domain, role) in [
        ("example.org", DomainRole::Local),
        ("backup.example", DomainRole::Hold),
        ("other-backup.example", DomainRole::Hold),
        ("gateway.example", DomainRole::Relay),
    ] {
        store.add_domain(domain, role).await.unwrap();
    }
    db.add_account(ALICE, ALICE_PW).await.unwrap();
    let mut ingresses = Vec::new();
    let mut mx = Vec::new();
    for _ in 0..replicas {
        let (listen, grpc) = (free_addr(), free_addr());
        let config = format!(
            "[store]\nurl = \"{}\"\nmax_connections = 4\n\n[smtp]\ngrpc_listen = \"{grpc}\"\n\
             queue_endpoint = \"http://{}\"\nhostname = \"mx.test\"\nmx_listen = [\"{listen}\"]\n\
             submission_listen = []\nsubmissions_listen = []\nplaintext_auth = \"loopback\"\n\
             trusted_networks = []\n{extra_smtp}\n",
            db.url(),
            free_addr()
        );
        let process = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
            .await
            .unwrap();
        ingresses.push(process);
        mx.push(listen);
    }
    Stack {
        db,
        _ingresses: ingresses,
        mx,
    }
}

/// Runs one conversation against `mx` and returns its printed replies.
async fn converse(mx: SocketAddr, steps: &[&str]) -> String {
    let port = mx.port().to_string();
    let mut args = vec![port.as_str()];
    args.extend_from_slice(steps);
    python(CONVERSATION, &args).await.unwrap()
}

/// Alice, logged in, sends one message to `to` via `mx`; returns the replies.
async fn alice_sends(mx: SocketAddr, to: &str) -> String {
    let auth = format!("auth:{ALICE}:{ALICE_PW}");
    let (mail, rcpt) = (format!("mail:{ALICE}"), format!("rcpt:{to}"));
    converse(mx, &[&auth, &mail, &rcpt, "data:10"]).await
}

#[tokio::test]
async fn an_authenticated_sender_is_limited_per_hour_across_replicas() {
    let s = stack(2, "sender_messages_per_hour = 3\n").await;
    for mx in [s.mx[0], s.mx[1], s.mx[0]] {
        let out = alice_sends(mx, "friend@elsewhere.test").await;
        assert!(out.contains("data  250 2.0.0 Ok: queued as"), "{out}");
    }
    // The fourth, through either replica.
    for mx in &s.mx {
        let out = alice_sends(*mx, "friend@elsewhere.test").await;
        assert!(
            out.contains("mail alice@example.org 450 4.7.1 Sending rate limit exceeded: 3 messages in the last hour"),
            "{out}"
        );
    }
    assert_eq!(s.db.store().counts().await.unwrap().envelopes, 3);
    // Mail from outside (no AUTH) is not counted against anyone.
    let out = converse(
        s.mx[0],
        &["mail:bob@remote.test", &format!("rcpt:{ALICE}"), "data:10"],
    )
    .await;
    assert!(out.contains("data  250"), "{out}");
}

#[tokio::test]
async fn an_authenticated_sender_is_limited_per_day_and_per_message() {
    let s = stack(
        1,
        "sender_messages_per_hour = 0\nsender_messages_per_day = 1\nsubmission_max_recipients = 2\n",
    )
    .await;
    let auth = format!("auth:{ALICE}:{ALICE_PW}");
    let mail = format!("mail:{ALICE}");
    let out = converse(
        s.mx[0],
        &[
            &auth,
            &mail,
            "rcpt:a@elsewhere.test",
            "rcpt:b@elsewhere.test",
            "rcpt:c@elsewhere.test",
            "data:10",
            &mail,
            // The null sender: no bounce would come back (smtp.submission_null_sender).
            "rset",
            "mail:",
        ],
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[4].starts_with("rcpt c@elsewhere.test 452 4.5.3"),
        "{out}"
    );
    assert!(lines[5].starts_with("data  250"), "{out}");
    assert!(
        lines[6].starts_with("mail alice@example.org 450 4.7.1 Sending rate limit exceeded: 1 messages in the last day"),
        "{out}"
    );
    assert!(lines[8].starts_with("mail  553 5.7.1"), "{out}");
    let counts = s.db.store().counts().await.unwrap();
    assert_eq!(counts.envelopes, 1);
    assert_eq!(
        counts.recipients_in(pochta_store::RecipientState::Queued),
        2
    );
}

/// Mail for a hold (or relay) domain piles up until its backlog is full; then its recipients
/// get 452 4.3.1 while other domains are served as before.
#[tokio::test]
async fn a_hold_or_relay_domains_backlog_is_capped() {
    let s = stack(
        1,
        "domain_backlog_messages = 2\ndomain_backlog_bytes = 20000\n",
    )
    .await;
    let mx = s.mx[0];
    let from = "mail:bob@remote.test";
    for _ in 0..2 {
        let out = converse(mx, &[from, "rcpt:x@backup.example", "data:10"]).await;
        assert!(out.contains("data  250"), "{out}");
    }
    // The count is reused for a second: a new RCPT is refused once it is read again.
    until(
        "the hold domain to be full",
        Duration::from_secs(10),
        async || {
            let out = converse(mx, &[from, "rcpt:y@backup.example"]).await;
            out.contains("rcpt y@backup.example 452 4.3.1 Too much mail is waiting for this domain")
        },
    )
    .await;
    // By octets: one big message fills the relay domain.
    let out = converse(mx, &[from, "rcpt:x@gateway.example", "data:25000"]).await;
    assert!(out.contains("data  250"), "{out}");
    until(
        "the relay domain to be full",
        Duration::from_secs(10),
        async || {
            let out = converse(mx, &[from, "rcpt:y@gateway.example"]).await;
            out.contains("rcpt y@gateway.example 452 4.3.1")
        },
    )
    .await;
    // Other domains are untouched.
    let out = converse(
        mx,
        &[
            from,
            "rcpt:z@other-backup.example",
            &format!("rcpt:{ALICE}"),
            "data:10",
        ],
    )
    .await;
    assert!(out.contains("rcpt z@other-backup.example 250"), "{out}");
    assert!(out.contains("data  250"), "{out}");
    assert_eq!(s.db.store().counts().await.unwrap().envelopes, 4);
}
