//! pop3-access: The POP3 server (RFC 1939) over the maildrops.
//!
//! For now the shared service frame only: it loads the configuration, connects to the store,
//! checks the schema, serves gRPC health on `[pop3] grpc_listen` and exits 0 on SIGTERM/SIGINT.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    pochta_service::run("pop3-access", env!("CARGO_PKG_VERSION"), |ctx| async move {
        let addr = ctx.config.pop3.grpc_listen;
        let grace = Duration::from_secs(ctx.config.pop3.shutdown_grace_secs);
        ctx.serve_grpc(addr, tonic::service::Routes::default(), grace)
            .await
    })
}
