//! The policies that protect outbound TLS, with the real queue binary: MTA-STS (RFC 8461),
//! policies published through the test DNS server and served over HTTPS by the test; DANE
//! (RFC 7672), TLSA records in a DNSSEC-signed test zone the queue validates. Mail goes to a
//! real ingress whose certificate names some MX hosts and not others, and the TLS reports
//! (RFC 8460) of those sessions are mailed to the address the domains' `_smtp._tls` records
//! name.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pochta_mail::mta_sts::StsMode;
use pochta_store::{NewEnvelope, NewRecipient, QueueId, RecipientState, Store};
use pochta_testkit::dns::{Record, dns_server, signed_dns_server};
use pochta_testkit::{
    ServiceProcess, TestCerts, TestDb, envelope, free_addr, maildrop, recipient, until,
    workspace_binary,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const WAIT: Duration = Duration::from_secs(20);

/// The domains of the test, each with its MX host on loopback and its policy.
const POLICIES: &[(&str, &str)] = &[
    // The receiver's certificate names mx.good.test: delivered.
    ("good.test", "mode: enforce\nmx: mx.good.test\n"),
    // Listed, but the certificate does not name it: deferred.
    ("wrongcert.test", "mode: enforce\nmx: *.wrongcert.test\n"),
    // The MX host is not one the policy lists: deferred without connecting.
    ("unlisted.test", "mode: enforce\nmx: mx.elsewhere.test\n"),
    // Testing only: delivered as without a policy.
    ("testing.test", "mode: testing\nmx: mx.elsewhere.test\n"),
];

/// What the test's web server saw: policy fetches counted, TLS reports posted to /tlsrpt.
#[derive(Default)]
struct WebLog {
    fetches: AtomicUsize,
    posted: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Serves each domain's policy at https://mta-sts.DOMAIN/.well-known/mta-sts.txt (by the
/// Host header) and takes TLS reports posted to /tlsrpt, until aborted.
async fn policy_server(
    certs: &TestCerts,
) -> (SocketAddr, Arc<WebLog>, tokio::task::JoinHandle<()>) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert_path)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&certs.key_path).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(WebLog::default());
    let counter = log.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let mut body = head.split_off(end);
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if head.starts_with("post /tlsrpt ") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0);
                    while body.len() < length {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => body.extend_from_slice(&buf[..n]),
                        }
                    }
                    if head.contains("content-type: application/tlsrpt+gzip") {
                        counter.posted.lock().unwrap().push(body);
                    }
                    let _ = tls
                        .write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    let _ = tls.shutdown().await;
                    return;
                }
                counter.fetches.fetch_add(1, Ordering::SeqCst);
                let host = head
                    .lines()
                    .find_map(|l| l.strip_prefix("host:"))
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_default();
                let policy = POLICIES.iter().find(|(domain, _)| {
                    head.starts_with("get /.well-known/mta-sts.txt ")
                        && host == format!("mta-sts.{domain}")
                });
                let response = match policy {
                    Some((_, rules)) => {
                        let body = format!("version: STSv1\r\n{rules}max_age: 86400\r\n");
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, log, task)
}

/// The receiving ingress: accounts in every test domain, the certificate of `tls_section`.
async fn receiver(tls_section: &str, domains: &[&str]) -> (TestDb, ServiceProcess, SocketAddr) {
    let db = TestDb::new().await.unwrap();
    for domain in domains {
        db.add_account(&format!("friend@{domain}"), "pw")
            .await
            .unwrap();
    }
    let (grpc, mx) = (free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\n\n{}\n[smtp]\ngrpc_listen = \"{grpc}\"\nqueue_endpoint = \"http://{}\"\n\
         hostname = \"mx.good.test\"\nmx_listen = [\"{mx}\"]\nsubmission_listen = []\n\
         submissions_listen = []\n\n[mail_auth]\ncheck_inbound = false\n",
        db.url(),
        tls_section,
        free_addr()
    );
    let ingress =
        ServiceProcess::start_healthy(&workspace_binary("smtp-ingress").unwrap(), &config, grpc)
            .await
            .unwrap();
    (db, ingress, mx)
}

async fn start_queue(db: &TestDb, settings: &str) -> ServiceProcess {
    let grpc = free_addr();
    let config = format!(
        "[store]\nurl = \"{}\"\n\n[queue]\ngrpc_listen = \"{grpc}\"\nscan_interval_secs = 1\n\
         hostname = \"mx.example.org\"\ndenied_networks = []\n{settings}\n",
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

async fn send(store: &Store, domains: &[&str]) -> QueueId {
    send_requiring_tls(store, domains, false).await
}

async fn send_requiring_tls(store: &Store, domains: &[&str], requiretls: bool) -> QueueId {
    let recipients: Vec<NewRecipient> = domains
        .iter()
        .map(|d| recipient(&format!("friend@{d}")))
        .collect();
    let envelope = NewEnvelope {
        requiretls,
        ..envelope("alice@example.org", recipients)
    };
    store
        .enqueue(&envelope, b"Subject: sts\r\n\r\nhi\r\n")
        .await
        .unwrap();
    envelope.queue_id
}

/// (state, last diagnostic) of each recipient once all have been tried.
async fn outcomes(store: &Store, id: &QueueId, n: usize) -> Vec<(RecipientState, String)> {
    until("every recipient tried", WAIT, async || {
        let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
        detail.recipients.iter().filter(|r| r.attempts > 0).count() == n
    })
    .await;
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    detail
        .recipients
        .iter()
        .map(|r| (r.state, r.last_diagnostic.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn enforced_policies_need_a_listed_mx_and_a_verified_certificate_and_tls_is_reported() {
    let mx_certs = TestCerts::generate_for(&["mx.good.test"]).unwrap();
    let web_names: Vec<String> = POLICIES
        .iter()
        .map(|(d, _)| format!("mta-sts.{d}"))
        .collect();
    let web_names: Vec<&str> = web_names.iter().map(String::as_str).collect();
    let web_certs = TestCerts::generate_for(&web_names).unwrap();
    // One roots file trusting both CAs.
    let roots = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        roots.path(),
        [
            std::fs::read(&mx_certs.ca_path).unwrap(),
            std::fs::read(&web_certs.ca_path).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let domains: Vec<&str> = POLICIES.iter().map(|(d, _)| *d).collect();
    let (remote_db, _ingress, mx) = receiver(&mx_certs.tls_section(), &domains).await;
    let (web, web_log, web_task) = policy_server(&web_certs).await;
    let mut zone = Vec::new();
    for (domain, _) in POLICIES {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let mx_host = leak(format!("mx.{domain}"));
        zone.extend([
            (*domain, Record::Mx(10, mx_host)),
            (mx_host, Record::A([127, 0, 0, 1])),
            (
                leak(format!("_mta-sts.{domain}")),
                Record::Txt("v=STSv1; id=20261206;"),
            ),
            (leak(format!("mta-sts.{domain}")), Record::A([127, 0, 0, 1])),
        ]);
    }
    // Three domains ask for TLS reports, to an address of the sending side.
    for domain in ["good.test", "wrongcert.test", "unlisted.test"] {
        let name: &'static str = Box::leak(format!("_smtp._tls.{domain}").into_boxed_str());
        zone.push((
            name,
            Record::Txt("v=TLSRPTv1; rua=mailto:tlsrpt@example.org"),
        ));
    }
    // One asks for its reports over HTTPS, from the test's web server.
    let posted_to: &'static str = Box::leak(
        format!(
            "v=TLSRPTv1; rua=https://mta-sts.testing.test:{}/tlsrpt",
            web.port()
        )
        .into_boxed_str(),
    );
    zone.push(("_smtp._tls.testing.test", Record::Txt(posted_to)));
    // A domain without a policy is delivered as before (opportunistic TLS).
    zone.extend([
        ("plain.test", Record::Mx(10, "mx.plain.test")),
        ("mx.plain.test", Record::A([127, 0, 0, 1])),
    ]);
    let dns = dns_server(zone).await;
    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let reports_to = db.add_account("tlsrpt@example.org", "pw").await.unwrap();
    // The reports come from postmaster@mx.example.org: example.org's key signs them.
    pochta_testkit::add_dkim_key(db.store(), "example.org", "tls")
        .await
        .unwrap();
    remote_db
        .add_account("friend@plain.test", "pw")
        .await
        .unwrap();
    let settings = format!(
        "dns_servers = [\"{dns}\"]\nmx_port = {}\nmta_sts_port = {}\ntls_ca_file = \"{}\"\n\
         tls_report_period_secs = 2\n",
        mx.port(),
        web.port(),
        roots.path().display()
    );
    let queue = start_queue(&db, &settings).await;
    let store = db.store();
    let domains = [
        "good.test",
        "wrongcert.test",
        "unlisted.test",
        "testing.test",
        "plain.test",
    ];
    let id = send(store, &domains).await;
    let results = outcomes(store, &id, domains.len()).await;
    assert_eq!(results[0].0, RecipientState::Delivered, "good: {results:?}");
    assert_eq!(
        results[1].0,
        RecipientState::Queued,
        "wrongcert: {results:?}"
    );
    assert!(
        results[1].1.contains("TLS handshake") && results[1].1.contains("certificate"),
        "wrongcert: {results:?}"
    );
    assert_eq!(
        results[2].0,
        RecipientState::Queued,
        "unlisted: {results:?}"
    );
    assert!(
        results[2].1.contains(
            "of unlisted.test: none is one the domain's MTA-STS policy lists (mx.elsewhere.test)"
        ),
        "unlisted: {results:?}"
    );
    assert_eq!(
        results[3].0,
        RecipientState::Delivered,
        "testing: {results:?}"
    );
    assert_eq!(
        results[4].0,
        RecipientState::Delivered,
        "plain: {results:?}"
    );
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    let unlisted = &detail.recipients[2];
    assert_eq!(unlisted.last_status.as_deref(), Some("4.7.5"));

    // Each policy was fetched once and is kept in the store for its max_age.
    assert_eq!(web_log.fetches.load(Ordering::SeqCst), POLICIES.len());
    let cached = store.mta_sts_policy("good.test").await.unwrap().unwrap();
    assert_eq!(cached.policy_id, "20261206");
    assert_eq!(cached.policy.mode, StsMode::Enforce);
    assert_eq!(cached.policy.mx, ["mx.good.test"]);
    assert!(cached.expires_in_secs > 86_000, "{cached:?}");

    // The TLS reports: one per domain that asked, with its sessions by result, each
    // DKIM-signed (RFC 8460 5.3).
    let mails = maildrop(store, reports_to, 3).await;
    for mail in &mails {
        let text = String::from_utf8_lossy(mail);
        assert!(
            text.contains("DKIM-Signature: v=1; a=ed25519-sha256; s=tls; d=example.org;"),
            "{text}"
        );
    }
    let reports: Vec<serde_json::Value> = mails.iter().map(|m| tls_report(m)).collect();
    let of = |domain: &str| {
        reports
            .iter()
            .find(|r| r["policies"][0]["policy"]["policy-domain"] == domain)
            .unwrap_or_else(|| panic!("no report for {domain}: {reports:?}"))
    };
    let good = &of("good.test")["policies"][0];
    assert_eq!(good["policy"]["policy-type"], "sts");
    assert_eq!(good["policy"]["mx-host"][0], "mx.good.test");
    assert_eq!(good["summary"]["total-successful-session-count"], 1);
    assert_eq!(good["summary"]["total-failure-session-count"], 0);
    let wrong = &of("wrongcert.test")["policies"][0];
    assert_eq!(wrong["summary"]["total-successful-session-count"], 0);
    let failure = &wrong["failure-details"][0];
    assert_eq!(
        failure["result-type"], "certificate-host-mismatch",
        "{wrong}"
    );
    assert_eq!(failure["receiving-mx-hostname"], "mx.wrongcert.test");
    // An MX host outside the policy is a session that could not be made.
    let unlisted = &of("unlisted.test")["policies"][0];
    assert_eq!(
        unlisted["failure-details"][0]["result-type"],
        "validation-failure"
    );
    assert_eq!(
        unlisted["failure-details"][0]["receiving-mx-hostname"],
        "mx.unlisted.test"
    );

    // The domain that asked for HTTPS got its report posted (a success, under its policy).
    until("a report posted", WAIT, async || {
        !web_log.posted.lock().unwrap().is_empty()
    })
    .await;
    let posted = web_log.posted.lock().unwrap()[0].clone();
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&posted[..]), &mut json).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let testing = &report["policies"][0];
    assert_eq!(
        testing["policy"]["policy-domain"], "testing.test",
        "{report}"
    );
    assert_eq!(testing["policy"]["policy-string"][1], "mode: testing");
    assert_eq!(testing["summary"]["total-successful-session-count"], 1);

    // With the web server gone, a restarted queue still enforces the cached policies.
    web_task.abort();
    drop(queue);
    let _queue = start_queue(&db, &settings).await;
    let id = send(store, &["wrongcert.test", "good.test"]).await;
    let results = outcomes(store, &id, 2).await;
    assert_eq!(results[0].0, RecipientState::Queued, "{results:?}");
    assert!(results[0].1.contains("certificate"), "{results:?}");
    assert_eq!(results[1].0, RecipientState::Delivered, "{results:?}");
    assert_eq!(
        web_log.fetches.load(Ordering::SeqCst),
        POLICIES.len(),
        "nothing fetched again"
    );
}

/// The JSON of a TLS report mail: its `application/tlsrpt+gzip` part, unzipped.
fn tls_report(message: &[u8]) -> serde_json::Value {
    let parsed = mail_parser::MessageParser::default()
        .parse(message)
        .unwrap();
    assert!(
        parsed
            .header_raw("TLS-Report-Submitter")
            .is_some_and(|h| h.trim() == "mx.example.org")
    );
    let part = parsed
        .attachments()
        .find(|a| mail_parser::MimeHeaders::is_content_type(*a, "application", "tlsrpt+gzip"))
        .expect("the report attachment");
    let mut json = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(part.contents()),
        &mut json,
    )
    .unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// The DER of the first certificate in a PEM file.
fn first_certificate(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// A plain SMTP server on 127.0.0.2 at `port` that offers no STARTTLS; counts messages.
async fn plaintext_server(port: u16) -> Arc<AtomicUsize> {
    use tokio::io::AsyncBufReadExt;
    let listener = tokio::net::TcpListener::bind(("127.0.0.2", port))
        .await
        .unwrap();
    let messages = Arc::new(AtomicUsize::new(0));
    let counted = messages.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut lines = tokio::io::BufReader::new(read).lines();
                let _ = write.write_all(b"220 plain\r\n").await;
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = match (in_data, line.as_str()) {
                        (true, ".") => {
                            in_data = false;
                            counted.fetch_add(1, Ordering::SeqCst);
                            b"250 ok\r\n"
                        }
                        (true, _) => continue,
                        (false, "DATA") => {
                            in_data = true;
                            b"354 go\r\n"
                        }
                        (false, "QUIT") => break,
                        _ => b"250 ok\r\n",
                    };
                    if write.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    messages
}

/// DANE: MX hosts whose TLSA records DNSSEC proves get mail only over TLS matching them
/// (DANE-EE by the key, DANE-TA by the CA that must also name the host); a mismatch, a server
/// without STARTTLS, or a bogus TLSA answer defers. Hosts without TLSA records, or in a zone
/// proven unsigned, get opportunistic TLS as before; REQUIRETLS goes to DANE hosts and fails
/// without them. TLS reports name the TLSA records as the policy. A message whose sender
/// wrote `TLS-Required: No` goes despite a mismatch.
#[tokio::test]
async fn dane_hosts_get_mail_only_over_tls_matching_their_tlsa_records() {
    let certs = TestCerts::generate_for(&["mx.ta.test"]).unwrap();
    let leaf = first_certificate(&certs.cert_path);
    let ca = first_certificate(&certs.ca_path);
    let leaf_key = sha256(pochta_mail::dane::subject_public_key_info(&leaf).unwrap());
    // The chain the receiver sends includes its CA, as DANE-TA needs (RFC 7671 5.2.2).
    let chain = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        chain.path(),
        [
            std::fs::read(&certs.cert_path).unwrap(),
            std::fs::read(&certs.ca_path).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let tls_section = format!(
        "[tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
        chain.path().display(),
        certs.key_path.display()
    );
    let domains = [
        "ee.test",
        "ta.test",
        "wrongkey.test",
        "taname.test",
        "notls.test",
        "nodane.test",
        "insecure.test",
        "bogus.test",
    ];
    let (remote_db, _ingress, mx) = receiver(&tls_section, &domains).await;
    let plaintext = plaintext_server(mx.port()).await;
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut zone = Vec::new();
    for domain in domains {
        let host = leak(format!("mx.{domain}"));
        let ip = if domain == "notls.test" {
            [127, 0, 0, 2]
        } else {
            [127, 0, 0, 1]
        };
        zone.extend([(domain, Record::Mx(10, host)), (host, Record::A(ip))]);
    }
    let tlsa = |domain: &str, usage, data: &Vec<u8>| {
        (
            leak(format!("_25._tcp.mx.{domain}")),
            Record::Tlsa(usage, 1, 1, data.clone()),
        )
    };
    let ca_digest = sha256(&ca);
    zone.extend([
        tlsa("ee.test", 3, &leaf_key),
        (
            "_25._tcp.mx.ta.test",
            Record::Tlsa(2, 0, 1, ca_digest.clone()),
        ),
        tlsa("wrongkey.test", 3, &vec![0xAA; 32]),
        ("_25._tcp.mx.taname.test", Record::Tlsa(2, 0, 1, ca_digest)),
        tlsa("notls.test", 3, &leaf_key),
        // Unproven (an unsigned zone): not DANE, whatever it says.
        tlsa("insecure.test", 3, &vec![0xAA; 32]),
        tlsa("bogus.test", 3, &leaf_key),
        (
            "_smtp._tls.ee.test",
            Record::Txt("v=TLSRPTv1; rua=mailto:tlsrpt@example.org"),
        ),
        (
            "_smtp._tls.wrongkey.test",
            Record::Txt("v=TLSRPTv1; rua=mailto:tlsrpt@example.org"),
        ),
    ]);
    let dns = signed_dns_server(zone, &["_25._tcp.mx.bogus.test"], &["insecure.test"]).await;
    let anchor = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(anchor.path(), &dns.trust_anchor).unwrap();

    let db = TestDb::new().await.unwrap();
    db.add_account("alice@example.org", "pw").await.unwrap();
    let reports_to = db.add_account("tlsrpt@example.org", "pw").await.unwrap();
    let settings = format!(
        "dns_servers = [\"{}\"]\nmx_port = {}\ndane = true\ndnssec_trust_anchor = \"{}\"\n\
         mta_sts = false\ntls_report_period_secs = 2\n",
        dns.addr,
        mx.port(),
        anchor.path().display()
    );
    let _queue = start_queue(&db, &settings).await;
    let store = db.store();
    let id = send(store, &domains).await;
    let results = outcomes(store, &id, domains.len()).await;
    let of = |domain: &str| {
        let at = domains.iter().position(|d| *d == domain).unwrap();
        results[at].clone()
    };
    for delivered in ["ee.test", "ta.test", "nodane.test", "insecure.test"] {
        assert_eq!(
            of(delivered).0,
            RecipientState::Delivered,
            "{delivered}: {results:?}"
        );
    }
    for deferred in ["wrongkey.test", "taname.test", "notls.test", "bogus.test"] {
        assert_eq!(
            of(deferred).0,
            RecipientState::Queued,
            "{deferred}: {results:?}"
        );
    }
    assert!(
        of("wrongkey.test").1.contains("TLSA records"),
        "{results:?}"
    );
    assert!(
        of("taname.test").1.contains("not valid for name"),
        "{results:?}"
    );
    assert!(
        of("notls.test").1.contains("does not offer STARTTLS"),
        "{results:?}"
    );
    assert!(of("bogus.test").1.contains("TLSA lookup"), "{results:?}");
    assert_eq!(
        plaintext.load(Ordering::SeqCst),
        0,
        "nothing went in plaintext"
    );

    // REQUIRETLS is satisfied by DANE (RFC 8689 4.2.1), and fails where it is missing.
    let id = send_requiring_tls(store, &["ee.test", "nodane.test"], true).await;
    let results = outcomes(store, &id, 2).await;
    assert_eq!(results[0].0, RecipientState::Delivered, "{results:?}");
    assert_eq!(results[1].0, RecipientState::Failed, "{results:?}");
    assert!(results[1].1.contains("DANE"), "{results:?}");

    // Every delivery went over TLS: four domains, and the REQUIRETLS message.
    let remote = remote_db.store();
    until("arrivals", WAIT, async || {
        remote.counts().await.unwrap().envelopes == 5
    })
    .await;
    let (arrived, _) = remote
        .list_envelopes(&Default::default(), 10)
        .await
        .unwrap();
    for envelope in arrived {
        let detail = remote
            .envelope_detail(&envelope.queue_id)
            .await
            .unwrap()
            .unwrap();
        let message = remote
            .message_content(detail.message_id)
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&message);
        assert!(text.contains(" with ESMTPS"), "{text}");
    }

    // The TLS reports name the TLSA records as the policy.
    let reports: Vec<serde_json::Value> = maildrop(store, reports_to, 2)
        .await
        .iter()
        .map(|m| tls_report(m))
        .collect();
    let policy_of = |domain: &str| {
        reports
            .iter()
            .find(|r| r["policies"][0]["policy"]["policy-domain"] == domain)
            .unwrap_or_else(|| panic!("no report for {domain}: {reports:?}"))["policies"][0]
            .clone()
    };
    let ee = policy_of("ee.test");
    assert_eq!(ee["policy"]["policy-type"], "tlsa", "{ee}");
    let record = format!(
        "3 1 1 {}",
        leaf_key
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(ee["policy"]["policy-string"][0], record.as_str(), "{ee}");
    assert!(
        ee["summary"]["total-successful-session-count"].as_u64() >= Some(1),
        "{ee}"
    );
    let wrong = policy_of("wrongkey.test");
    assert_eq!(
        wrong["failure-details"][0]["result-type"], "tlsa-invalid",
        "{wrong}"
    );

    // `TLS-Required: No` (RFC 8689 5): the sender waives the domain's DANE records, and the
    // message goes with opportunistic TLS although the key does not match.
    let waived = envelope("alice@example.org", vec![recipient("friend@wrongkey.test")]);
    store
        .enqueue(
            &waived,
            b"TLS-Required: No\r\nSubject: waived\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    let results = outcomes(store, &waived.queue_id, 1).await;
    assert_eq!(results[0].0, RecipientState::Delivered, "{results:?}");
}
