//! delivery-queue: local and remote delivery, retries, DSN reports and ETRN.
//!
//! Today: the shared service frame and the gRPC `Queue` service's Notify and ETRN
//! (StartDomainDelivery). Delivery workers arrive with their issue.

mod grpc;

use std::process::ExitCode;
use std::time::Duration;

use pochta_proto::queue::v1::queue_server::QueueServer;

fn main() -> ExitCode {
    pochta_service::run(
        "delivery-queue",
        env!("CARGO_PKG_VERSION"),
        |ctx| async move {
            let addr = ctx.config.queue.grpc_listen;
            let grace = Duration::from_secs(ctx.config.queue.shutdown_grace_secs);
            let routes = tonic::service::Routes::new(QueueServer::new(grpc::QueueService::new(
                ctx.store.clone(),
            )));
            ctx.serve_grpc(addr, routes, grace).await
        },
    )
}
