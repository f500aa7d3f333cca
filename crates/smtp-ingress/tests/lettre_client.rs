//! The real binary with lettre, an independent Rust SMTP client: plain MX, STARTTLS submission
//! and implicit-TLS submissions, with AUTH.

use std::path::Path;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use pochta_store::{DomainRole, MailboxAddress};
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
    let hash = pochta_auth::hash_password("lettre-pw").unwrap();
    db.store()
        .add_account(&MailboxAddress::parse("alice@example.org").unwrap(), &hash)
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
    let mut ingress = ServiceProcess::start(Path::new(BINARY), &config, &[]).unwrap();
    ingress
        .wait_healthy(grpc, Duration::from_secs(20))
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
