//! Generated gRPC contracts. The sources are in `proto/` at the workspace root.

/// `pochta.queue.v1`: the delivery queue's service (notify, ETRN, admin).
pub mod queue {
    pub mod v1 {
        tonic::include_proto!("pochta.queue.v1");
    }
}
