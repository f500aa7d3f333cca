//! smtp-ingress: The ESMTP server (RFC 5321): MX on port 25, submission on 587 and 465.
//!
//! For now the shared service frame only: it loads the configuration, connects to the store,
//! checks the schema, serves gRPC health on `[smtp] grpc_listen` and exits 0 on SIGTERM/SIGINT.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    pochta_service::run(
        "smtp-ingress",
        env!("CARGO_PKG_VERSION"),
        |ctx| async move {
            let addr = ctx.config.smtp.grpc_listen;
            let grace = Duration::from_secs(ctx.config.smtp.shutdown_grace_secs);
            ctx.serve_grpc(addr, tonic::service::Routes::default(), grace)
                .await
        },
    )
}
