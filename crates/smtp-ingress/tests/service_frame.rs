//! Behaviour every service shares through `pochta-service`, checked once on this binary:
//! configuration errors, precedence, redaction, schema check, unreachable dependencies.

use std::time::Duration;

use pochta_testkit::{SIGTERM, ServiceProcess, TestDb, free_addr, service_config};

const BINARY: &str = env!("CARGO_BIN_EXE_smtp-ingress");

fn binary() -> &'static std::path::Path {
    std::path::Path::new(BINARY)
}

/// Runs the binary to its exit and returns (exit code, output).
async fn run_to_exit(config: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut p = ServiceProcess::start_with_args(binary(), config, env, args).unwrap();
    let status = p.wait_exit(Duration::from_secs(20)).await.unwrap();
    (status.code().unwrap_or(-1), p.output())
}

#[tokio::test]
async fn unknown_key_is_rejected_by_name() {
    let (code, out) = run_to_exit("[smtp]\nbogus_limit = 3\n", &[], &[]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("bogus_limit"), "{out}");
}

#[tokio::test]
async fn bad_value_is_rejected_by_key() {
    let (code, out) = run_to_exit("[store]\nmax_connections = \"many\"\n", &[], &[]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("max_connections"), "{out}");

    let (code, out) = run_to_exit("[store]\nmax_connections = 0\n", &[], &[]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("store.max_connections"), "{out}");

    let (code, out) = run_to_exit("", &[("POCHTA_TELEMETRY__LOG_FORMAT", "xml")], &[]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.to_lowercase().contains("telemetry.log_format"), "{out}");
}

/// `POCHTA_CONFIG` names the file, as `--config` does (the README's way for compose and
/// systemd units), and is not read as a configuration key.
#[tokio::test]
async fn pochta_config_names_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pochta.toml");
    std::fs::write(&path, "[smtp]\nhostname = \"from-the-file.example\"\n").unwrap();
    let out = tokio::process::Command::new(binary())
        .arg("--print-config")
        .env("POCHTA_CONFIG", &path)
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("hostname = \"from-the-file.example\""),
        "{text}"
    );

    let missing = tokio::process::Command::new(binary())
        .arg("--print-config")
        .env("POCHTA_CONFIG", dir.path().join("nonexistent.toml"))
        .output()
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "a named file must exist");
}

#[tokio::test]
async fn print_config_shows_precedence_and_redacts_secrets() {
    let file = "[store]\nurl = \"postgres://pochta:file-secret@db/pochta\"\nmax_connections = 5\n\
                acquire_timeout_secs = 7\n";
    let env = [
        ("POCHTA_STORE__MAX_CONNECTIONS", "3"),
        ("DATABASE_URL", "postgres://x:lower-than-file@elsewhere/x"),
    ];
    let (code, out) = run_to_exit(file, &env, &["--print-config"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("url = \"postgres://pochta:********@db/pochta\""),
        "{out}"
    );
    assert!(
        !out.contains("file-secret") && !out.contains("lower-than-file"),
        "{out}"
    );
    assert!(out.contains("max_connections = 3"), "env beats file: {out}");
    assert!(
        out.contains("acquire_timeout_secs = 7"),
        "file beats default: {out}"
    );
    assert!(out.contains("[smtp]") && out.contains("[pop3]"), "{out}");
}

#[tokio::test]
async fn refuses_an_unmigrated_database() {
    let db = TestDb::empty().await.unwrap();
    let (code, out) = run_to_exit(&service_config(db.url(), "smtp", free_addr()), &[], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("pochtactl migrate"), "{out}");
}

#[tokio::test]
async fn unreachable_store_fails_with_a_redacted_url() {
    let grpc = free_addr();
    let url = format!(
        "postgres://pochta:hunter2@127.0.0.1:{}/pochta",
        pochta_testkit::free_port()
    );
    let (code, out) = run_to_exit(&service_config(&url, "smtp", grpc), &[], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("connecting to the store"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}

#[tokio::test]
async fn unreachable_otlp_collector_neither_blocks_startup_nor_shutdown() {
    let db = TestDb::new().await.unwrap();
    let grpc = free_addr();
    let collector = format!("http://127.0.0.1:{}", pochta_testkit::free_port());
    let mut p = ServiceProcess::start(
        binary(),
        &service_config(db.url(), "smtp", grpc),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)],
    )
    .unwrap();
    p.wait_healthy(grpc, Duration::from_secs(20)).await.unwrap();
    assert!(
        p.output().contains(&collector),
        "the endpoint is in use: {}",
        p.output()
    );
    p.signal(SIGTERM).unwrap();
    let status = p.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{}", p.output());
}
