//! A tiny run of every pochta-bench workload against the real binaries, so the tool keeps
//! working. It asserts what was counted, never how fast.

use std::net::SocketAddr;
use std::time::Duration;

use pochta_testkit::{ServiceProcess, TestCerts, TestDb, free_addr, until, workspace_binary};

/// Runs `pochta-bench --json` with `args` (words separated by single spaces).
async fn bench(args: &str) -> serde_json::Value {
    let args: Vec<&str> = args.split(' ').collect();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pochta-bench"))
        .arg("--json")
        .args(&args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn start(binary: &str, config: String, grpc: SocketAddr) -> ServiceProcess {
    let mut p = ServiceProcess::start(&workspace_binary(binary).unwrap(), &config, &[]).unwrap();
    p.wait_healthy(grpc, Duration::from_secs(30)).await.unwrap();
    p
}

/// Every service against `db`, with TLS from `certs`; the MX and POP3 addresses.
async fn stack(db: &TestDb, certs: &TestCerts) -> (Vec<ServiceProcess>, String, String) {
    let base = format!(
        "[store]\nurl = \"{}\"\nmax_connections = 4\n\n{}\n",
        db.url(),
        certs.tls_section()
    );
    let queue_grpc = free_addr();
    let queue = start(
        "delivery-queue",
        format!("{base}[queue]\ngrpc_listen = \"{queue_grpc}\"\nscan_interval_secs = 1\n"),
        queue_grpc,
    )
    .await;
    let (smtp_grpc, mx) = (free_addr(), free_addr());
    let ingress = start(
        "smtp-ingress",
        format!(
            "{base}[smtp]\ngrpc_listen = \"{smtp_grpc}\"\nqueue_endpoint = \"http://{queue_grpc}\"\n\
             mx_listen = [\"{mx}\"]\nsubmission_listen = []\nsubmissions_listen = []\n"
        ),
        smtp_grpc,
    )
    .await;
    let (pop3_grpc, pop3) = (free_addr(), free_addr());
    let pop3_access = start(
        "pop3-access",
        format!(
            "{base}[pop3]\ngrpc_listen = \"{pop3_grpc}\"\npop3_listen = [\"{pop3}\"]\npop3s_listen = []\nplaintext_auth = \"loopback\"\n"
        ),
        pop3_grpc,
    )
    .await;
    (
        vec![queue, ingress, pop3_access],
        mx.to_string(),
        pop3.to_string(),
    )
}

#[tokio::test]
async fn every_workload_runs_against_pochta() {
    let db = TestDb::new().await.unwrap();
    let store = db.store();
    for user in ["bench0@example.test", "bench1@example.test"] {
        db.add_account(user, "pw").await.unwrap();
    }
    let certs = TestCerts::generate().unwrap();
    let (_services, mx, pop3) = stack(&db, &certs).await;
    let ca = certs.ca_path.to_str().unwrap();
    let to = "bench{n}@example.test";

    let plain = bench(&format!("smtp --target {mx} -c 2 -m 3 -s 2000 --to {to}")).await;
    assert_eq!(plain["accepted"], 6, "{plain}");
    assert_eq!(plain["end_of_data_latency"]["count"], 6);
    assert!(plain["errors"].as_object().unwrap().is_empty(), "{plain}");

    let tls = format!(
        "smtp --target {mx} -c 1 -m 2 --pipelining --starttls {ca} --tls-name localhost --to {to}"
    );
    let tls = bench(&tls).await;
    assert_eq!(tls["accepted"], 2, "{tls}");

    // e2e counts what becomes retrievable after it starts: let the first eight arrive.
    let until_entries = async |n: i64| {
        until("deliveries", Duration::from_secs(30), async || {
            store.counts().await.unwrap().maildrop_entries >= n
        })
        .await
    };
    until_entries(8).await;
    let e2e = format!(
        "e2e --target {mx} -c 2 -m 2 --pipelining --to {to} --pop3 {pop3} --pop3-password pw \
         --poll-ms 50 --wait-secs 60"
    );
    let e2e = bench(&e2e).await;
    assert_eq!(e2e["accepted"], 4, "{e2e}");
    assert_eq!(e2e["accept_to_retrievable_latency"]["count"], 4, "{e2e}");

    // bench0 holds 3 + 2 + 2 messages, bench1 3 + 2.
    until_entries(12).await;
    for extra in [
        "",
        " --pipelining",
        &format!(" --stls {ca} --tls-name localhost"),
    ] {
        let r = bench(&format!(
            "pop3 --target {pop3} -k 2 --user {to} --password pw{extra}"
        ))
        .await;
        assert_eq!(r["retrieved"], 12, "{extra:?}: {r}");
        assert_eq!(r["login_latency"]["count"], 2);
        assert!(r["octets"].as_u64().unwrap() > 12 * 1000);
    }
    assert_eq!(
        store.counts().await.unwrap().maildrop_entries,
        12,
        "the benchmark deletes nothing"
    );
}
