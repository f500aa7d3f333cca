//! Addresses beyond accounts, end to end with the real binaries and Python's smtplib: an
//! alias fanning out to local accounts and an address elsewhere (each delivered once, with
//! the `expanded` report), postmaster@, a subaddress and the catch-all.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pochta_mail::{AddressRules, Mailbox};
use pochta_store::{RecipientState, Store};
use pochta_testkit::{
    ServiceProcess, TestDb, free_addr, maildrop, python, until, workspace_binary,
};

const WAIT: Duration = Duration::from_secs(20);

fn addr(s: &str) -> Mailbox {
    Mailbox::parse(s).unwrap()
}

/// An MX-only ingress on `db` that tells the queue at `queue_grpc`; its MX address.
async fn ingress(
    db: &TestDb,
    hostname: &str,
    queue_grpc: SocketAddr,
) -> (ServiceProcess, SocketAddr) {
    let (grpc, mx) = (free_addr(), free_addr());
    let config = format!(
        "[store]\nurl = \"{}\"\n\n[smtp]\ngrpc_listen = \"{grpc}\"\nqueue_endpoint = \"http://{queue_grpc}\"\n\
         hostname = \"{hostname}\"\nmx_listen = [\"{mx}\"]\nsubmission_listen = []\nsubmissions_listen = []\n\
         trusted_networks = []\n\n[mail_auth]\ncheck_inbound = false\n",
        db.url()
    );
    let process =
        ServiceProcess::start_healthy(&workspace_binary("smtp-ingress").unwrap(), &config, grpc)
            .await
            .unwrap();
    (process, mx)
}

/// A delivery-queue on `db` at `grpc` with these `[queue]` lines.
async fn queue(db: &TestDb, grpc: SocketAddr, lines: &str) -> ServiceProcess {
    let config = format!(
        "[store]\nurl = \"{}\"\n\n[queue]\ngrpc_listen = \"{grpc}\"\nscan_interval_secs = 1\n{lines}\n",
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

/// Sends one message with smtplib; returns each RCPT's reply code.
async fn send(mx: SocketAddr, to: &[&str], notify: &str, subject: &str) -> Vec<u16> {
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo()
s.mail("sender@remote.test")
codes = [s.rcpt(to, [sys.argv[2]] if sys.argv[2] else [])[0] for to in sys.argv[4:]]
print(" ".join(str(c) for c in codes))
if 250 in codes:
    s.data(("Subject: " + sys.argv[3] + "\r\n\r\nhello\r\n").encode())
s.quit()
"#;
    let port = mx.port().to_string();
    let mut args = vec![port.as_str(), notify, subject];
    args.extend_from_slice(to);
    let out = python(script, &args).await.unwrap();
    out.split_whitespace().map(|c| c.parse().unwrap()).collect()
}

/// The header lines the delivery put before the message: Return-Path, Delivered-To and
/// X-Original-To when there is one.
fn prefix_of(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    text.lines()
        .take_while(|l| !l.starts_with("Received:"))
        .collect::<Vec<_>>()
        .join("|")
}

async fn subjects(store: &Store, account: i64, n: usize) -> Vec<(String, String)> {
    let mut got: Vec<(String, String)> = maildrop(store, account, n)
        .await
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m).to_string();
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_owned();
            (subject, prefix_of(m))
        })
        .collect();
    got.sort();
    got
}

/// Another mail system: its own store with `accounts`, a queue and an MX ingress (the
/// processes live as long as the returned value). The accounts' ids in order, and the MX.
struct Elsewhere {
    db: TestDb,
    accounts: Vec<i64>,
    mx: SocketAddr,
    _processes: (ServiceProcess, ServiceProcess),
}

async fn elsewhere(accounts: &[&str]) -> Elsewhere {
    let db = TestDb::new().await.unwrap();
    let mut ids = Vec::new();
    for account in accounts {
        ids.push(db.add_account(account, "pw").await.unwrap());
    }
    let grpc = free_addr();
    let queue = queue(&db, grpc, "").await;
    let (ingress, mx) = ingress(&db, "mx.remote.test", grpc).await;
    Elsewhere {
        db,
        accounts: ids,
        mx,
        _processes: (queue, ingress),
    }
}

/// The local system: example.org with postmaster admin@ and `accounts`, and `aliases`.
async fn here(accounts: &[&str], aliases: &[(&str, &[&str])]) -> (TestDb, Vec<i64>) {
    let db = TestDb::new().await.unwrap();
    db.store()
        .add_local_domain("example.org", &addr("admin@example.org"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for account in accounts {
        ids.push(db.add_account(account, "pw").await.unwrap());
    }
    for (alias, targets) in aliases {
        let targets: Vec<Mailbox> = targets.iter().map(|t| addr(t)).collect();
        db.store()
            .add_alias(&addr(alias), &targets, &AddressRules::default())
            .await
            .unwrap();
    }
    (db, ids)
}

#[tokio::test]
async fn aliases_postmaster_subaddresses_and_the_catch_all_deliver_once_each() {
    // Elsewhere: remote.test, with its own store, ingress and queue.
    let other = elsewhere(&["friend@remote.test", "sender@remote.test"]).await;
    let (friend, sender, remote_mx) = (other.accounts[0], other.accounts[1], other.mx);

    // Here: example.org, postmaster admin@, aliases, and mail for remote.test routed there.
    let (db, ids) = here(
        &["alice@example.org", "bob@example.org", "admin@example.org"],
        &[
            (
                "team@example.org",
                &["alice@example.org", "bob@example.org"],
            ),
            (
                "all@example.org",
                &[
                    "team@example.org",
                    "Alice@example.org",
                    "friend@remote.test",
                ],
            ),
        ],
    )
    .await;
    let (alice, bob, admin) = (ids[0], ids[1], ids[2]);
    let store = db.store();
    let rules = AddressRules::default();
    let grpc = free_addr();
    let _queue = queue(
        &db,
        grpc,
        &format!(
            "hostname = \"mx.example.org\"\n\n[queue.routes]\n\"remote.test\" = \"127.0.0.1:{}\"",
            remote_mx.port()
        ),
    )
    .await;
    let (_ingress, mx) = ingress(&db, "mx.example.org", grpc).await;

    // The nested alias with NOTIFY=SUCCESS: alice once (named twice), bob, and friend
    // elsewhere; the sender hears `expanded` once, not `delivered` from each.
    assert_eq!(
        send(mx, &["all@example.org"], "NOTIFY=SUCCESS,FAILURE", "to all").await,
        [250]
    );
    // postmaster@ and abuse@ reach admin; a subaddress reaches alice directly.
    assert_eq!(
        send(
            mx,
            &["postmaster@example.org", "ABUSE@example.org"],
            "",
            "to postmaster"
        )
        .await,
        [250, 250]
    );
    assert_eq!(
        send(mx, &["alice+news@example.org"], "", "tagged").await,
        [250]
    );
    // No catch-all yet: an unknown name (with or without a tag) is refused at RCPT.
    assert_eq!(
        send(
            mx,
            &["carol@example.org", "carol+x@example.org"],
            "",
            "refused"
        )
        .await,
        [550, 550]
    );
    store
        .set_catch_all("example.org", Some(&addr("bob@example.org")), &rules)
        .await
        .unwrap();
    assert_eq!(send(mx, &["carol@example.org"], "", "caught").await, [250]);

    assert_eq!(
        subjects(store, alice, 2).await,
        [
            (
                "tagged".into(),
                "Return-Path: <sender@remote.test>|Delivered-To: alice+news@example.org".into()
            ),
            (
                "to all".into(),
                "Return-Path: <sender@remote.test>|Delivered-To: alice@example.org|X-Original-To: all@example.org".into()
            ),
        ]
    );
    assert_eq!(
        subjects(store, bob, 2).await,
        [
            (
                "caught".into(),
                "Return-Path: <sender@remote.test>|Delivered-To: bob@example.org|X-Original-To: carol@example.org".into()
            ),
            (
                "to all".into(),
                "Return-Path: <sender@remote.test>|Delivered-To: bob@example.org|X-Original-To: all@example.org".into()
            ),
        ]
    );
    // Two recipients of one message that lead to one account: one copy.
    assert_eq!(
        subjects(store, admin, 1).await,
        [(
            "to postmaster".into(),
            "Return-Path: <sender@remote.test>|Delivered-To: admin@example.org|X-Original-To: postmaster@example.org".into()
        )]
    );
    let remote = other.db.store();
    let arrived = maildrop(remote, friend, 1).await;
    assert!(
        String::from_utf8_lossy(&arrived[0]).contains("Subject: to all"),
        "the alias's remote target got the message"
    );
    let report = String::from_utf8_lossy(&maildrop(remote, sender, 1).await[0]).to_string();
    for needle in [
        "Action: expanded",
        "Final-Recipient: rfc822; all@example.org",
        "Status: 2.0.0",
    ] {
        assert!(report.contains(needle), "{needle}:\n{report}");
    }

    // Nothing more arrives: each target was delivered exactly once.
    until("every recipient final", WAIT, async || {
        let c = store.counts().await.unwrap();
        c.recipients_in(RecipientState::Queued) == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (account, n) in [(alice, 2), (bob, 2), (admin, 1)] {
        assert_eq!(store.maildrop_entries(account).await.unwrap().len(), n);
    }
    assert_eq!(remote.maildrop_entries(friend).await.unwrap().len(), 1);
    assert_eq!(remote.maildrop_entries(sender).await.unwrap().len(), 1);
    let counts = store.counts().await.unwrap();
    // all@ (team@ within it is followed, not queued), postmaster@, abuse@ and carol@.
    assert_eq!(counts.recipients_in(RecipientState::Expanded), 4);
}

/// SRS: mail forwarded by an alias leaves with its sender rewritten into the alias's domain;
/// a bounce to that address comes back through this system to the original sender; a forged
/// one is refused at RCPT.
#[tokio::test]
async fn forwarded_mail_is_sent_with_srs_and_its_bounce_finds_the_sender() {
    // Elsewhere: remote.test (the alias's target) and third.test (the original sender).
    let other = elsewhere(&["friend@remote.test", "sender@third.test"]).await;
    let (friend, sender, remote_mx) = (other.accounts[0], other.accounts[1], other.mx);
    let (db, _) = here(&[], &[("fwd@example.org", &["friend@remote.test"])]).await;
    let grpc = free_addr();
    let port = remote_mx.port();
    let _queue = queue(
        &db,
        grpc,
        &format!(
            "hostname = \"mx.example.org\"\n\n[queue.routes]\n\"remote.test\" = \"127.0.0.1:{port}\"\n\"third.test\" = \"127.0.0.1:{port}\""
        ),
    )
    .await;
    let (_ingress, mx) = ingress(&db, "mx.example.org", grpc).await;

    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo()
s.mail(sys.argv[2])
code = s.rcpt(sys.argv[3])[0]
print(code)
if code == 250:
    s.data(("Subject: " + sys.argv[4] + "\r\n\r\nhello\r\n").encode())
s.quit()
"#;
    let send = async |from: &str, to: &str, subject: &str| {
        let port = mx.port().to_string();
        python(script, &[&port, from, to, subject]).await.unwrap()
    };
    assert_eq!(
        send("sender@third.test", "fwd@example.org", "forwarded")
            .await
            .trim(),
        "250"
    );

    // It arrives elsewhere from an SRS address of example.org.
    let remote = other.db.store();
    let arrived = String::from_utf8_lossy(&maildrop(remote, friend, 1).await[0]).to_string();
    assert!(arrived.contains("Subject: forwarded"));
    let srs = arrived
        .strip_prefix("Return-Path: <")
        .and_then(|rest| rest.split_once('>'))
        .map(|(path, _)| path.to_owned())
        .unwrap_or_default();
    assert!(
        srs.starts_with("SRS0=") && srs.ends_with("=third.test=sender@example.org"),
        "{srs}"
    );

    // The bounce, as the next hop would send it: to the SRS address, from <>.
    assert_eq!(send("", &srs, "bounced").await.trim(), "250");
    let back = String::from_utf8_lossy(&maildrop(remote, sender, 1).await[0]).to_string();
    assert!(
        back.starts_with("Return-Path: <>\r\nDelivered-To: sender@third.test\r\n")
            && back.contains("Subject: bounced"),
        "{back}"
    );
    // A forged SRS address (a hash this key did not make) is nobody here.
    let forged = format!("SRS0=AAAAAA={}", &srs[12..]);
    assert_ne!(forged, srs);
    assert_eq!(send("", &forged, "forged").await.trim(), "550");
}
