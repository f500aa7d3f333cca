//! The real smtp-ingress binary against the real database: healthy, then a clean exit on signals.

use std::path::Path;

use pochta_testkit::{SIGINT, SIGTERM, check_service_lifecycle};

const BINARY: &str = env!("CARGO_BIN_EXE_smtp-ingress");

#[tokio::test]
async fn serves_health_and_exits_zero_on_sigterm() {
    check_service_lifecycle(Path::new(BINARY), "smtp", SIGTERM)
        .await
        .unwrap();
}

#[tokio::test]
async fn exits_zero_on_sigint() {
    check_service_lifecycle(Path::new(BINARY), "smtp", SIGINT)
        .await
        .unwrap();
}
