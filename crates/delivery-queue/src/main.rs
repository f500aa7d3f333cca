//! delivery-queue: The delivery queue: local and remote delivery, retries, DSN reports and ETRN.
//!
//! For now the shared service frame only: it loads the configuration, connects to the store,
//! checks the schema, serves gRPC health on `[queue] grpc_listen` and exits 0 on SIGTERM/SIGINT.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    pochta_service::run(
        "delivery-queue",
        env!("CARGO_PKG_VERSION"),
        |ctx| async move {
            let addr = ctx.config.queue.grpc_listen;
            let grace = Duration::from_secs(ctx.config.queue.shutdown_grace_secs);
            ctx.serve_grpc(addr, tonic::service::Routes::default(), grace)
                .await
        },
    )
}
