//! `pochtactl queue` against the real delivery-queue (run with `cargo test --workspace`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use pochta_store::{NewEnvelope, QueueId, RecipientState};
use pochta_testkit::{
    ServiceProcess, TestDb, admin_token_file, envelope, free_addr, recipient, service_config,
    until, workspace_binary,
};

/// `pochtactl [--json] queue --queue URL --token-file F args...`
fn run(queue: &str, json: bool, args: &[&str]) -> Output {
    run_with_token(queue, json, admin_token_file(), args)
}

fn run_with_token(queue: &str, json: bool, token_file: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pochtactl"));
    if json {
        command.arg("--json");
    }
    command
        .args(["queue", "--queue", queue, "--token-file"])
        .arg(token_file)
        .args(args)
        .output()
        .unwrap()
}

fn ctl(queue: &str, args: &[&str]) -> Output {
    run(queue, false, args)
}

fn ok_json(queue: &str, args: &[&str]) -> serde_json::Value {
    let out = run(queue, true, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A queue holding one envelope from bob@remote.test, its three remote recipients attempted
/// once and deferred (the smarthost does not answer).
struct Deferred {
    db: TestDb,
    _queue: ServiceProcess,
    url: String,
    id: QueueId,
}

async fn deferred() -> Deferred {
    let db = TestDb::new().await.unwrap();
    let recipients = ["a@far.example", "b@far.example", "c@other.example"];
    let envelope = NewEnvelope {
        quarantine: None,
        requiretls: false,
        envid: Some("E1".into()),
        client_address: Some("192.0.2.9".parse().unwrap()),
        // A client's HELO may say anything: it must not forge output or drive the terminal.
        client_helo: Some("client.test\x1b[2J\r\nqueue id     FORGED\u{202e}".into()),
        ..envelope("bob@remote.test", recipients.map(recipient).into())
    };
    let store = db.store();
    store
        .enqueue(&envelope, b"Subject: x\r\n\r\nx\r\n")
        .await
        .unwrap();
    let grpc = free_addr();
    let queue = ServiceProcess::start_healthy(
        &workspace_binary("delivery-queue").unwrap(),
        &service_config(db.url(), "queue", grpc),
        grpc,
    )
    .await
    .unwrap();
    let id = envelope.queue_id;
    until(
        "every recipient attempted",
        Duration::from_secs(10),
        async || {
            let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
            detail.recipients.iter().all(|r| r.attempts > 0)
        },
    )
    .await;
    Deferred {
        db,
        _queue: queue,
        url: format!("http://{grpc}"),
        id,
    }
}

#[tokio::test]
async fn list_and_show() {
    let Deferred { url, id, .. } = &deferred().await;
    let list = ok_json(url, &["list", "--domain", "far.example"]);
    assert_eq!(list["entries"][0]["queue_id"], id.as_str());
    assert_eq!(
        list["entries"][0]["recipients"].as_array().unwrap().len(),
        3
    );
    assert_eq!(list["truncated"], false);
    let shown = ok_json(url, &["show", id.as_str()]);
    assert_eq!(shown["envid"], "E1");
    assert_eq!(shown["client_address"], "192.0.2.9");
    let history = &shown["recipients"][0]["history"][0];
    assert_eq!(history["result"], "queued");
    assert!(
        history["diagnostic"]
            .as_str()
            .unwrap()
            .contains("connecting to 127.0.0.1"),
        "{shown}"
    );
    let human = String::from_utf8(ctl(url, &["show", id.as_str()]).stdout).unwrap();
    assert!(
        human.contains("a@far.example") && human.contains("4.4.1"),
        "{human}"
    );
    assert!(
        human.contains("(HELO client.test\\u{1b}[2J\\u{d}\\u{a}queue id     FORGED\\u{202e})"),
        "{human}"
    );
    assert!(!human.contains('\x1b') && !human.contains('\r') && !human.contains('\u{202e}'));
    assert_eq!(
        human.lines().filter(|l| l.starts_with("queue id")).count(),
        1
    );
}

#[tokio::test]
async fn hold_release_retry_delete_and_refusals() {
    let Deferred { db, url, id, .. } = &deferred().await;
    let store = db.store();
    let held = async || {
        let counts = store.counts().await.unwrap();
        counts.recipients_in(RecipientState::Held)
    };
    let dry = ok_json(url, &["hold", "--domain", "far.example", "--dry-run"]);
    assert_eq!(
        (dry["recipients"].as_u64(), dry["messages"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(held().await, 0);
    assert_eq!(
        ok_json(url, &["hold", "--domain", "far.example"])["recipients"],
        2
    );
    assert_eq!(held().await, 2);
    assert_eq!(ok_json(url, &["release", id.as_str()])["recipients"], 2);
    let report_dry_run = ["delete", "--report", "--dry-run", "--domain", "far.example"];
    assert_eq!(ok_json(url, &report_dry_run)["recipients"], 2);
    assert_eq!(
        ok_json(url, &["delete", "--domain", "other.example"])["recipients"],
        1
    );
    let detail = store.envelope_detail(id.as_str()).await.unwrap().unwrap();
    assert_eq!(detail.recipients.len(), 2);
    let retried = ok_json(url, &["retry", "--all", "--dry-run"]);
    assert!(retried["recipients"].as_u64().unwrap() <= 2);

    // Refusals: no target named, unknown entry, bad state.
    let out = ctl(url, &["hold"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name a queue id or a filter"));
    let out = ctl(url, &["show", "NOSUCHQUEUEID"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no queue entry NOSUCHQUEUEID"));
    assert_eq!(
        ctl(url, &["list", "--state", "lost"]).status.code(),
        Some(2)
    );
    let down = ctl(&format!("http://{}", free_addr()), &["list"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("connecting to delivery-queue"));
}

/// The admin calls need the token: without it, or with another, nothing is read or changed;
/// a queue without a token file configured answers no admin call at all.
#[tokio::test]
async fn admin_calls_need_the_token() {
    let Deferred { db, url, id, .. } = &deferred().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "x".repeat(40)).unwrap();
    for args in [&["list"][..], &["show", id.as_str()], &["delete", "--all"]] {
        let out = run_with_token(url, false, &wrong, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("a valid admin token is required"),
            "{stderr}"
        );
    }
    let short = dir.path().join("short");
    std::fs::write(&short, "too-short").unwrap();
    let out = run_with_token(url, false, &short, &["list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32 visible ASCII characters"));
    let detail = db
        .store()
        .envelope_detail(id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert!(
        detail
            .recipients
            .iter()
            .all(|r| r.state == RecipientState::Queued)
    );

    // Without a token file the admin API is off, while the ingress's calls still work.
    let grpc = free_addr();
    let config =
        service_config(db.url(), "queue", grpc).replace("admin_token_file", "# admin_token_file");
    let _queue =
        ServiceProcess::start_healthy(&workspace_binary("delivery-queue").unwrap(), &config, grpc)
            .await
            .unwrap();
    let out = run(&format!("http://{grpc}"), false, &["list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the admin API is disabled"));
    let mut queue =
        pochta_proto::queue::v1::queue_client::QueueClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
    queue
        .notify(pochta_proto::queue::v1::NotifyRequest { queue_ids: vec![] })
        .await
        .unwrap();
}
