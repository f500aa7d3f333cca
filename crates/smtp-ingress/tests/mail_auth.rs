//! Mail authentication with the real ingress binary (as its least-privilege role), keys made
//! by the real `pochtactl`, a test DNS server publishing every record, and Python's smtplib
//! as the client. Signatures on submitted mail are checked by two independent verifiers
//! (mail-auth's, and Python's dkimpy); arriving mail is signed by the test with its own key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use pochta_store::{DomainRole, QueueFilter};
use pochta_testkit::dns::{Record, dns_server};
use pochta_testkit::{ServiceProcess, TestCerts, TestDb, free_addr, python, workspace_binary};

const BINARY: &str = env!("CARGO_BIN_EXE_smtp-ingress");
const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@lists.example.org";
const PASSWORD: &str = "correct horse battery";

/// Sends `message` (its text from the file named by argv[5]) from `sender` to the recipients,
/// over MX, or over submission with STARTTLS and AUTH when a user is given. Prints
/// "250 <queue id>" or the refusal's code and text.
const SEND: &str = r#"
import smtplib, ssl, sys
port, sender, rcpts, user, path = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4], sys.argv[5]
message = open(path, "rb").read()
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.sender.test", timeout=30)
s.ehlo()
if user:
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo()
    s.login(user, "correct horse battery")
try:
    s.sendmail(sender, rcpts, message)
    print("250 accepted")
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
except smtplib.SMTPRecipientsRefused as e:
    print("refused", e.recipients)
s.quit()
"#;

/// Verifies every DKIM-Signature of the message in argv[1] with dkimpy, the keys given as
/// "name=record" arguments; prints one "pass"/"fail" per signature, in order.
const DKIMPY_VERIFY: &str = r#"
import sys, dkim
message = open(sys.argv[1], "rb").read()
records = dict(a.split("=", 1) for a in sys.argv[2:])
def dns(name, timeout=5):
    return records.get(name.decode().rstrip("."), "").encode() or None
d = dkim.DKIM(message)
count = sum(1 for line in message.split(b"\r\n\r\n")[0].split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
def verify(i):
    try:
        return "pass" if d.verify(idx=i, dnsfunc=dns) else "fail"
    except dkim.ValidationError:
        return "fail"
print(" ".join(verify(i) for i in range(count)))
"#;

struct Stack {
    db: TestDb,
    _ingress: ServiceProcess,
    mx: SocketAddr,
    submission: SocketAddr,
    dns: SocketAddr,
    /// The published DKIM records of example.org: (name, text).
    records: Vec<(String, String)>,
    config_file: tempfile::NamedTempFile,
    _certs: TestCerts,
}

/// Runs pochtactl with the test's config; returns its JSON output.
fn pochtactl(config: &Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(workspace_binary("pochtactl").unwrap())
        .arg("-c")
        .arg(config)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pochtactl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The sender side's own key: a signer for sender.test (selector s1) and its record.
fn sender_key() -> (DkimSigner<Ed25519Key, mail_auth::dkim::Done>, String) {
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
    let record = format!(
        "v=DKIM1; k=ed25519; p={}",
        base64::engine::general_purpose::STANDARD.encode(key.public_key())
    );
    let signer = DkimSigner::from_key(key)
        .domain("sender.test")
        .selector("s1")
        .headers(["From", "To", "Subject"]);
    (signer, record)
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

async fn stack(sender_record: &str) -> Stack {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    for domain in ["example.org", "lists.example.org"] {
        store.add_domain(domain, DomainRole::Local).await.unwrap();
    }
    db.add_account(ALICE, PASSWORD).await.unwrap();
    db.add_account(BOB, PASSWORD).await.unwrap();
    let mut config_file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut config_file,
        format!("[store]\nurl = \"{}\"\n", db.url()).as_bytes(),
    )
    .unwrap();
    // An RSA and an Ed25519 key sign at once; a second RSA key waits for the rotation.
    let mut records = Vec::new();
    for args in [
        &["dkim", "generate", "example.org"][..],
        &["dkim", "generate", "example.org", "--algorithm", "ed25519"],
        &["dkim", "generate", "example.org", "--selector", "next"],
    ] {
        let made = pochtactl(config_file.path(), args);
        records.push((
            made["record_name"].as_str().unwrap().to_owned(),
            made["record"].as_str().unwrap().to_owned(),
        ));
    }
    let mut zone: Vec<(&'static str, Record)> = records
        .iter()
        .map(|(name, text)| (leak(name.clone()), Record::Txt(leak(text.clone()))))
        .collect();
    zone.extend([
        // Mail from sender.test and bounces.test comes from loopback.
        ("sender.test", Record::Txt("v=spf1 ip4:127.0.0.1 -all")),
        ("bounces.test", Record::Txt("v=spf1 ip4:127.0.0.1 -all")),
        (
            "client.sender.test",
            Record::Txt("v=spf1 ip4:127.0.0.1 -all"),
        ),
        (
            "s1._domainkey.sender.test",
            Record::Txt(leak(sender_record.to_owned())),
        ),
        ("_dmarc.sender.test", Record::Txt("v=DMARC1; p=reject")),
        (
            "_dmarc.quarantine.test",
            Record::Txt("v=DMARC1; p=quarantine"),
        ),
        ("quarantine.test", Record::A([192, 0, 2, 1])),
        ("_dmarc.none.test", Record::Txt("v=DMARC1; p=none")),
        ("none.test", Record::A([192, 0, 2, 1])),
    ]);
    let dns = dns_server(zone).await;
    let certs = TestCerts::generate().unwrap();
    let (mx, submission, grpc) = (free_addr(), free_addr(), free_addr());
    let urls = db.service_roles().await.unwrap();
    let config = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 4\n\n{}\n[smtp]\ngrpc_listen = \"{grpc}\"\n\
         queue_endpoint = \"http://{}\"\nhostname = \"mx.test\"\nmx_listen = [\"{mx}\"]\n\
         submission_listen = [\"{submission}\"]\nsubmissions_listen = []\n\
         trusted_networks = []\n\n\
         [mail_auth]\ndns_servers = [\"{dns}\"]\nkey_cache_secs = 1\n\
         dmarc_domains = {{ \"lists.example.org\" = \"monitor\" }}\n",
        urls.ingress,
        certs.tls_section(),
        free_addr(),
    );
    let ingress = ServiceProcess::start_healthy(Path::new(BINARY), &config, grpc)
        .await
        .unwrap();
    Stack {
        db,
        _ingress: ingress,
        mx,
        submission,
        dns,
        records,
        config_file,
        _certs: certs,
    }
}

impl Stack {
    /// Sends `message`; returns the reply line ("250 ..." or the refusal).
    async fn send(
        &self,
        port: SocketAddr,
        sender: &str,
        rcpts: &[&str],
        user: &str,
        message: &str,
    ) -> String {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), message).unwrap();
        python(
            SEND,
            &[
                &port.port().to_string(),
                sender,
                &rcpts.join(","),
                user,
                file.path().to_str().unwrap(),
            ],
        )
        .await
        .unwrap()
        .trim()
        .to_owned()
    }

    /// The content and quarantine mark of the newest message in the store.
    async fn newest(&self) -> (String, Option<String>) {
        let store = self.db.store();
        let (envelopes, _) = store
            .list_envelopes(&QueueFilter::default(), 1)
            .await
            .unwrap();
        let envelope = envelopes.first().expect("a message was stored");
        let detail = store
            .envelope_detail(&envelope.queue_id)
            .await
            .unwrap()
            .unwrap();
        let content = store
            .message_content(detail.message_id)
            .await
            .unwrap()
            .unwrap();
        (String::from_utf8(content).unwrap(), detail.quarantine)
    }

    async fn stored_count(&self) -> usize {
        let (envelopes, _) = self
            .db
            .store()
            .list_envelopes(&QueueFilter::default(), 1000)
            .await
            .unwrap();
        envelopes.len()
    }

    fn verifier(&self) -> MessageAuthenticator {
        let mut udp = ConnectionConfig::udp();
        udp.port = self.dns.port();
        let server = NameServerConfig::new(self.dns.ip(), true, vec![udp]);
        MessageAuthenticator::new(
            ResolverConfig::from_name_servers(vec![server]),
            ResolverOpts::default(),
        )
        .unwrap()
    }
}

/// The header fields of `content` up to the first one named `name` (lower case), by name.
fn header_names(content: &str) -> Vec<String> {
    content
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .split("\r\n")
        .filter(|l| !l.starts_with([' ', '\t']))
        .map(|l| l.split(':').next().unwrap().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn submitted_mail_is_signed_with_every_active_key_and_both_verifiers_agree() {
    let (_, sender_record) = sender_key();
    let s = stack(&sender_record).await;
    let message = "From: Alice <alice@example.org>\r\nTo: someone@elsewhere.test\r\n\
                   Subject: signed\r\nDate: Sun, 06 Dec 2026 01:00:00 +0000\r\n\r\n\
                   Hello,\r\n\r\nthis line  has  spaces.\r\n";
    let reply = s
        .send(
            s.submission,
            ALICE,
            &["someone@elsewhere.test"],
            ALICE,
            message,
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    let (content, _) = s.newest().await;
    assert_eq!(
        header_names(&content)[..3],
        ["dkim-signature", "dkim-signature", "received"],
        "{content}"
    );
    assert!(content.ends_with(message.split_once("\r\n\r\n").unwrap().1));

    // mail-auth's verifier: both signatures pass, with their selectors.
    let verifier = s.verifier();
    let parsed = AuthenticatedMessage::parse(content.as_bytes()).unwrap();
    let results = verifier.verify_dkim(&parsed).await;
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| *r.result() == DkimResult::Pass),
        "{results:?}"
    );
    let selectors: Vec<&str> = results
        .iter()
        .map(|r| r.signature().unwrap().s.as_str())
        .collect();
    let today = chrono::Utc::now().format("%Y%m%d").to_string();
    assert!(
        selectors.contains(&format!("rsa{today}").as_str()),
        "{selectors:?}"
    );
    assert!(
        selectors.contains(&format!("ed{today}").as_str()),
        "{selectors:?}"
    );

    // dkimpy, with the records as published: both pass; one altered octet fails both.
    let records: Vec<String> = s.records.iter().map(|(n, t)| format!("{n}={t}")).collect();
    let dkimpy = |text: String| {
        let records = records.clone();
        async move {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), text).unwrap();
            let mut args = vec![file.path().to_str().unwrap().to_owned()];
            args.extend(records);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            python(DKIMPY_VERIFY, &args)
                .await
                .unwrap()
                .trim()
                .to_owned()
        }
    };
    assert_eq!(dkimpy(content.clone()).await, "pass pass");
    assert_eq!(
        dkimpy(content.replace("spaces.", "spaces!")).await,
        "fail fail"
    );
    let altered = content.replace("Subject: signed", "Subject: forged");
    let parsed = AuthenticatedMessage::parse(altered.as_bytes()).unwrap();
    assert!(
        verifier
            .verify_dkim(&parsed)
            .await
            .iter()
            .all(|r| matches!(r.result(), DkimResult::Fail(_))),
    );

    // A domain without keys sends unsigned.
    let reply = s
        .send(
            s.submission,
            BOB,
            &["someone@elsewhere.test"],
            BOB,
            "From: bob@lists.example.org\r\nSubject: plain\r\n\r\nhi\r\n",
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(header_names(&s.newest().await.0)[0], "received");

    // The rotation: the pending key signs (within key_cache_secs), the old RSA key does not.
    let rotated = pochtactl(s.config_file.path(), &["dkim", "rotate", "example.org"]);
    assert_eq!(rotated["active"], "next");
    assert_eq!(rotated["retired"], format!("rsa{today}"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = s
        .send(
            s.submission,
            ALICE,
            &["someone@elsewhere.test"],
            ALICE,
            message,
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    let (content, _) = s.newest().await;
    let parsed = AuthenticatedMessage::parse(content.as_bytes()).unwrap();
    let results = verifier.verify_dkim(&parsed).await;
    let mut selectors: Vec<&str> = results
        .iter()
        .filter(|r| *r.result() == DkimResult::Pass)
        .map(|r| r.signature().unwrap().s.as_str())
        .collect();
    selectors.sort();
    assert_eq!(selectors, [format!("ed{today}").as_str(), "next"]);
    let listed = pochtactl(s.config_file.path(), &["dkim", "list", "example.org"]);
    let states: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["selector"].as_str().unwrap(),
                k["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(states.contains(&("next", "active")), "{states:?}");
    assert!(
        states.contains(&(format!("rsa{today}").as_str(), "retired")),
        "{states:?}"
    );
}

#[tokio::test]
async fn arriving_mail_is_checked_and_the_dmarc_policy_applied() {
    let (signer, sender_record) = sender_key();
    let s = stack(&sender_record).await;
    let text = "From: Sam <sam@sender.test>\r\nTo: alice@example.org\r\nSubject: checked\r\n\r\n\
                The body as signed.\r\n";
    let signed = format!(
        "{}{text}",
        signer.sign(text.as_bytes()).unwrap().to_header()
    );
    // Forged results claiming our name are removed; another server's are kept.
    let forged = format!(
        "Authentication-Results: MX.test; dkim=pass; dmarc=pass\r\n\
         Authentication-Results: relay.other.test; spf=pass\r\n{signed}"
    );

    // Signed and intact, sent with an envelope sender of another domain (SPF passes there,
    // unaligned): DKIM passes and aligns, so DMARC passes.
    let reply = s
        .send(s.mx, "bounce@bounces.test", &[ALICE], "", &forged)
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    let (content, quarantine) = s.newest().await;
    assert_eq!(quarantine, None);
    let names = header_names(&content);
    assert_eq!(
        names[..2],
        ["authentication-results", "received"],
        "{content}"
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "authentication-results")
            .count(),
        2,
        "ours and relay.other.test's: {content}"
    );
    let ours = content.split("\r\nReceived:").next().unwrap();
    assert!(
        ours.starts_with("Authentication-Results: mx.test;"),
        "{ours}"
    );
    for expected in [
        "dkim=pass header.d=sender.test header.s=s1",
        "spf=pass (mx.test: domain of bounce@bounces.test designates 127.0.0.1 as permitted \
         sender) smtp.mailfrom=bounce@bounces.test",
        "arc=none",
        "dmarc=pass header.from=sender.test policy.dmarc=reject",
    ] {
        assert!(ours.contains(expected), "{expected} in {ours}");
    }
    assert!(!content.contains("MX.test; dkim=pass"), "{content}");
    assert!(content.contains("Authentication-Results: relay.other.test; spf=pass"));

    // Altered after signing: DKIM fails and SPF does not align, so p=reject refuses it...
    let altered = signed.replace("as signed", "as altered");
    let before = s.stored_count().await;
    let reply = s
        .send(s.mx, "bounce@bounces.test", &[ALICE], "", &altered)
        .await;
    assert_eq!(
        reply,
        "550 5.7.1 Rejected by the DMARC policy of sender.test"
    );
    // ...for any recipient in an enforcing domain, even beside a monitoring one...
    let reply = s
        .send(s.mx, "bounce@bounces.test", &[BOB, ALICE], "", &altered)
        .await;
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    assert_eq!(s.stored_count().await, before, "nothing stored");
    // ...while a domain set to monitor takes it, with the failure in the header.
    let reply = s
        .send(s.mx, "bounce@bounces.test", &[BOB], "", &altered)
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    let (content, quarantine) = s.newest().await;
    assert_eq!(quarantine, None);
    assert!(
        content.contains("dkim=neutral (body hash did not verify) header.d=sender.test"),
        "{content}"
    );
    assert!(
        content.contains("dmarc=fail (policy not aligned) header.from=sender.test"),
        "{content}"
    );

    // p=quarantine: accepted and marked.
    let reply = s
        .send(
            s.mx,
            "bounce@bounces.test",
            &[ALICE],
            "",
            "From: q@quarantine.test\r\nSubject: q\r\n\r\nunsigned\r\n",
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    let (content, quarantine) = s.newest().await;
    assert_eq!(
        quarantine.as_deref(),
        Some("dmarc policy of quarantine.test")
    );
    assert!(
        content.contains("dmarc=fail") && content.contains("policy.dmarc=quarantine"),
        "{content}"
    );

    // p=none: accepted, only reported.
    let reply = s
        .send(
            s.mx,
            "bounce@bounces.test",
            &[ALICE],
            "",
            "From: n@none.test\r\nSubject: n\r\n\r\nunsigned\r\n",
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    let (content, quarantine) = s.newest().await;
    assert_eq!(quarantine, None);
    assert!(content.contains("policy.dmarc=none"), "{content}");

    // Mail from a user of ours is not checked (it is signed instead).
    let reply = s
        .send(
            s.submission,
            ALICE,
            &["x@sender.test"],
            ALICE,
            "From: sam@sender.test\r\nSubject: s\r\n\r\nhi\r\n",
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(header_names(&s.newest().await.0)[0], "received");
}
