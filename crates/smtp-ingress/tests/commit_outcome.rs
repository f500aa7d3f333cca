//! A commit whose outcome the ingress cannot see: PostgreSQL committed the message, then the
//! connection was lost before its answer arrived (here a proxy cuts it). The ingress asks the
//! store before it answers: the client gets 250 for a message that is stored once, rather
//! than 451 and a duplicate when it sends again.

use std::path::Path;

use pochta_testkit::pg_proxy::CuttingProxy;
use pochta_testkit::{ServiceProcess, TestDb, free_addr, python};

const BINARY: &str = env!("CARGO_BIN_EXE_smtp-ingress");

/// Sends `count` messages to alice through one session; prints each DATA reply.
const SEND: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=60)
s.ehlo()
for i in range(int(sys.argv[2])):
    s.mail("bob@remote.test")
    s.rcpt("alice@example.org")
    try:
        code, resp = s.data(b"Subject: message %d\r\n\r\nhello\r\n" % i)
    except smtplib.SMTPResponseException as e:
        code, resp = e.smtp_code, e.smtp_error
    print(code, resp.decode())
s.quit()
"#;

#[tokio::test]
async fn a_commit_whose_answer_was_lost_is_acknowledged_once() {
    let db = TestDb::new().await.unwrap();
    // add_account adds example.org as a local domain.
    db.add_account("alice@example.org", "pw").await.unwrap();
    let proxy = CuttingProxy::start(db.server_addr().unwrap())
        .await
        .unwrap();
    let (mx, grpc) = (free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 2\n\n[smtp]\ngrpc_listen = \"{grpc}\"\n\
         queue_endpoint = \"http://{}\"\nhostname = \"mx.test\"\nmx_listen = [\"{mx}\"]\n\
         submission_listen = []\nsubmissions_listen = []\n",
        db.url_via(proxy.addr),
        free_addr()
    );
    let ingress = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();

    proxy.cut_next_commit();
    let out = python(SEND, &[&mx.port().to_string(), "3"]).await.unwrap();
    assert_eq!(proxy.cuts(), 1, "the proxy cut a commit's answer: {out}");
    let replies: Vec<&str> = out.lines().collect();
    assert_eq!(replies.len(), 3, "{out}");
    for reply in &replies {
        assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{out}");
    }
    let counts = db.store().counts().await.unwrap();
    assert_eq!(counts.envelopes, 3, "each message stored once");
    assert!(
        ingress
            .output()
            .contains("stored although the commit failed"),
        "{}",
        ingress.output()
    );
}
