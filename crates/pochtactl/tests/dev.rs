//! `pochtactl dev` brings the whole stack up and takes it down on Ctrl-C.
//! Needs the service binaries: run with `cargo test --workspace`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pochta_testkit::{SIGINT, ServiceProcess, TestDb, grpc_health, workspace_binary};

/// Starts `pochtactl dev`, waits for its banner and returns the services' gRPC addresses.
async fn start_dev(
    env: &[(&str, &str)],
    data_dir: &std::path::Path,
) -> (ServiceProcess, Vec<SocketAddr>) {
    // Only to make sure the service binaries were built beside pochtactl.
    workspace_binary("smtp-ingress").unwrap();
    workspace_binary("imap-access").unwrap();
    let data = data_dir.to_str().unwrap();
    let mut dev = ServiceProcess::start_with_args(
        std::path::Path::new(env!("CARGO_BIN_EXE_pochtactl")),
        "",
        env,
        &["dev", "--data-dir", data, "--base-port", "0"],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = dev.output();
        if let Some((_, banner)) = out.split_once("the stack is up")
            && banner.contains("Press Ctrl-C to stop.")
        {
            // Banner lines are indented; service logs interleave but are not.
            let addrs: Vec<SocketAddr> = banner
                .lines()
                .filter(|l| l.starts_with("  "))
                .filter_map(|l| l.split_once(" gRPC "))
                .map(|(_, a)| a.trim().parse().unwrap())
                .collect();
            assert_eq!(addrs.len(), 4, "{out}");
            assert!(out.contains("demo@example.test"), "{out}");
            return (dev, addrs);
        }
        assert!(Instant::now() < deadline, "no banner:\n{out}");
        if let Ok(status) = dev.wait_exit(Duration::from_millis(100)).await {
            panic!("pochtactl dev exited with {status}:\n{out}");
        }
    }
}

async fn stop_and_check(mut dev: ServiceProcess, addrs: &[SocketAddr]) {
    for addr in addrs {
        assert!(grpc_health(*addr).await.unwrap(), "{addr} serving");
    }
    dev.signal(SIGINT).unwrap();
    let status = dev.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "{}", dev.output());
    for addr in addrs {
        assert!(
            grpc_health(*addr).await.is_err(),
            "{addr} still up after Ctrl-C"
        );
    }
}

#[tokio::test]
async fn private_cluster_stack_starts_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    // A folder the postgres user can enter, as initdb needs when we run as root.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (dev, addrs) = start_dev(&[("DATABASE_URL", "")], dir.path()).await;
    let out = dev.output();
    assert!(out.contains("creating a PostgreSQL cluster"), "{out}");
    stop_and_check(dev, &addrs).await;
    // PostgreSQL stopped too: its pid file is gone.
    let pid_file = dir.path().join("postgres/postmaster.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_file.exists() {
        assert!(Instant::now() < deadline, "postgres still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn uses_database_url_and_seeds_the_demo_account() {
    let db = TestDb::empty().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (dev, addrs) = start_dev(&[("DATABASE_URL", db.url())], dir.path()).await;
    db.store().check_schema().await.unwrap();
    let demo = pochta_mail::Mailbox::parse("demo@example.test").unwrap();
    let creds = db
        .store()
        .account_credentials(&demo)
        .await
        .unwrap()
        .unwrap();
    assert!(pochta_auth::verify_password("demo", &creds.password_hash).unwrap());
    // The generated config carries an admin token pochtactl finds by itself.
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_pochtactl"))
        .arg("--config")
        .arg(dir.path().join("pochta.toml"))
        .args(["queue", "list"])
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    stop_and_check(dev, &addrs).await;
    assert!(
        !dir.path().join("postgres").exists(),
        "no private cluster with DATABASE_URL"
    );
}
