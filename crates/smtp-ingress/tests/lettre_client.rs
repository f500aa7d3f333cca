//! The real binary with lettre, an independent Rust SMTP client: plain MX, STARTTLS submission
//! and implicit-TLS submissions, with AUTH.

use std::path::Path;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use pochta_store::DomainRole;
use pochta_testkit::{ServiceProcess, TestCerts, TestDb, free_addr};

const BINARY: &str = env!("CARGO_BIN_EXE_smtp-ingress");

fn message(to: &str, subject: &str) -> Message {
    Message::builder()
        .from("Alice <alice@example.org>".parse::<Mailbox>().unwrap())
        .to(to.parse::<Mailbox>().unwrap())
        .subject(subject)
        .body(String::from(
            "Hello from lettre.\r\n.A line starting with a dot.\r\n",
        ))
        .unwrap()
}

#[tokio::test]
async fn lettre_over_plain_starttls_and_implicit_tls() {
    let db = TestDb::new().await.unwrap();
    db.store()
        .add_domain("example.org", DomainRole::Local)
        .await
        .unwrap();
    db.add_account("alice@example.org", "lettre-pw")
        .await
        .unwrap();
    let certs = TestCerts::generate().unwrap();
    let (grpc, mx, submission, submissions) = (free_addr(), free_addr(), free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\n\n{}\n[smtp]\ngrpc_listen = \"{grpc}\"\nhostname = \"mx.test\"\n\
         queue_endpoint = \"http://{}\"\nmx_listen = [\"{mx}\"]\nsubmission_listen = [\"{submission}\"]\n\
         submissions_listen = [\"{submissions}\"]\n",
        db.url(),
        certs.tls_section(),
        free_addr()
    );
    let _ingress = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();

    let ca = Certificate::from_pem(&std::fs::read(&certs.ca_path).unwrap()).unwrap();
    let tls = TlsParameters::builder("localhost".to_owned())
        .add_root_certificate(ca)
        .build_rustls()
        .unwrap();
    let credentials = Credentials::new("alice@example.org".into(), "lettre-pw".into());

    let plain = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(mx.port())
        .build();
    plain
        .send(message("alice@example.org", "plain"))
        .await
        .unwrap();

    let starttls = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(submission.port())
        .tls(Tls::Required(tls.clone()))
        .credentials(credentials.clone())
        .authentication(vec![Mechanism::Plain])
        .build();
    starttls
        .send(message("friend@elsewhere.test", "starttls"))
        .await
        .unwrap();

    let implicit = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(submissions.port())
        .tls(Tls::Wrapper(tls))
        .credentials(credentials)
        .authentication(vec![Mechanism::Login])
        .build();
    implicit
        .send(message("alice@example.org", "implicit"))
        .await
        .unwrap();

    // A wrong password is refused over TLS too.
    let wrong = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(submission.port())
        .tls(Tls::Required(
            TlsParameters::builder("localhost".to_owned())
                .add_root_certificate(
                    Certificate::from_pem(&std::fs::read(&certs.ca_path).unwrap()).unwrap(),
                )
                .build_rustls()
                .unwrap(),
        ))
        .credentials(Credentials::new("alice@example.org".into(), "nope".into()))
        .build();
    let err = wrong
        .send(message("alice@example.org", "wrong"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("535"), "{err}");

    let counts = db.store().counts().await.unwrap();
    assert_eq!(counts.envelopes, 3);
    // A fresh database numbers the three messages 1, 2, 3 in the order they were accepted.
    for (id, subject) in [(1, "plain"), (2, "starttls"), (3, "implicit")] {
        let content = db
            .store()
            .message_content(id)
            .await
            .unwrap()
            .expect("stored");
        let text = String::from_utf8(content).unwrap();
        assert!(text.contains(&format!("Subject: {subject}\r\n")), "{text}");
        assert!(
            text.contains("\r\n.A line starting with a dot.\r\n"),
            "unstuffed: {text}"
        );
    }
}

/// Many sessions finishing DATA at once share group commits (three writers, all of them
/// working whenever anything waits); each must still get its own 250 with its own queue id,
/// and its envelope must hold its own content and recipient.
#[tokio::test]
async fn concurrent_sessions_each_get_their_own_committed_message() {
    const SESSIONS: usize = 24;
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    store
        .add_domain("example.org", DomainRole::Local)
        .await
        .unwrap();
    let hash = pochta_auth::hash_password("unused-pw").unwrap();
    for i in 0..SESSIONS {
        store
            .add_account(
                &pochta_mail::Mailbox::parse(&format!("user{i}@example.org")).unwrap(),
                &hash,
            )
            .await
            .unwrap();
    }
    let (grpc, mx) = (free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\n\n[smtp]\ngrpc_listen = \"{grpc}\"\nhostname = \"mx.test\"\n\
         queue_endpoint = \"http://{}\"\nmx_listen = [\"{mx}\"]\nsubmission_listen = []\n\
         submissions_listen = []\nmax_connections_per_ip = 100\ncommit_batch_messages = 8\n\
         commit_writers = 3\ncommit_parallel_bytes = 1\n",
        db.url(),
        free_addr()
    );
    let _ingress = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();

    let sends = (0..SESSIONS).map(|i| {
        tokio::spawn(async move {
            // One transport per task: its own connection.
            let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(mx.port())
                .build();
            let response = transport
                .send(message(
                    &format!("user{i}@example.org"),
                    &format!("concurrent {i}"),
                ))
                .await
                .unwrap();
            let line = response.message().collect::<Vec<_>>().join(" ");
            (i, line.rsplit(' ').next().unwrap().to_owned())
        })
    });
    let mut queue_ids = std::collections::HashSet::new();
    for send in sends.collect::<Vec<_>>() {
        let (i, queue_id) = send.await.unwrap();
        assert!(queue_ids.insert(queue_id.clone()), "queue ids are unique");
        let detail = store
            .envelope_detail(&queue_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{queue_id} acknowledged but not stored"));
        assert_eq!(detail.recipients.len(), 1);
        assert_eq!(detail.recipients[0].address, format!("user{i}@example.org"));
        let content = store
            .message_content(detail.message_id)
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(content).unwrap();
        assert!(
            text.contains(&format!("Subject: concurrent {i}\r\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!(" id {queue_id}")),
            "Received names its own queue id"
        );
        assert_eq!(text.matches("Subject:").count(), 1);
    }
    assert_eq!(store.counts().await.unwrap().envelopes, SESSIONS as i64);
}
