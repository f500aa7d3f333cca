//! The real delivery-queue binary against the real database: healthy, then a clean exit on signals.

use std::path::Path;

use pochta_testkit::{SIGINT, SIGTERM, check_service_lifecycle};

const BINARY: &str = env!("CARGO_BIN_EXE_delivery-queue");

#[tokio::test]
async fn serves_health_and_exits_zero_on_sigterm() {
    check_service_lifecycle(Path::new(BINARY), "queue", SIGTERM)
        .await
        .unwrap();
}

#[tokio::test]
async fn exits_zero_on_sigint() {
    check_service_lifecycle(Path::new(BINARY), "queue", SIGINT)
        .await
        .unwrap();
}
