//! The `pochta.queue.v1.Queue` service.
//!
//! Notify and StartDomainDelivery (ETRN) are served and wake the workers. The admin calls
//! (list, show, retry, hold, release, delete) answer UNIMPLEMENTED in this version.

use pochta_proto::queue::v1::queue_server::Queue;
use pochta_proto::queue::v1::start_domain_delivery_response::Outcome;
use pochta_proto::queue::v1::{
    AdminRequest, AdminResponse, DeleteRequest, ListEntriesRequest, ListEntriesResponse,
    NotifyRequest, NotifyResponse, ShowEntryRequest, ShowEntryResponse, StartDomainDeliveryRequest,
    StartDomainDeliveryResponse,
};
use pochta_store::{DomainRole, Store};
use tonic::{Request, Response, Status};

use crate::worker::Wake;

pub struct QueueService {
    store: Store,
    wake: Wake,
}

impl QueueService {
    pub fn new(store: Store, wake: Wake) -> Self {
        QueueService { store, wake }
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!("store error: {e}");
    Status::unavailable("the message store is unavailable")
}

fn not_yet() -> Status {
    Status::unimplemented("queue administration is not available in this version")
}

#[tonic::async_trait]
impl Queue for QueueService {
    async fn notify(
        &self,
        request: Request<NotifyRequest>,
    ) -> Result<Response<NotifyResponse>, Status> {
        let ids = request.into_inner().queue_ids;
        tracing::debug!(count = ids.len(), "notified of new envelopes");
        self.wake.wake();
        Ok(Response::new(NotifyResponse {}))
    }

    /// ETRN (RFC 1985): only domains whose mail we hold or relay may be dequeued.
    async fn start_domain_delivery(
        &self,
        request: Request<StartDomainDeliveryRequest>,
    ) -> Result<Response<StartDomainDeliveryResponse>, Status> {
        let request = request.into_inner();
        let domain = request.domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() {
            return Err(Status::invalid_argument("domain is empty"));
        }
        let role = self.store.domain_role(&domain).await.map_err(internal)?;
        let outcome = |outcome: Outcome, recipients: u64, messages: u64| {
            Ok(Response::new(StartDomainDeliveryResponse {
                outcome: outcome as i32,
                recipients,
                messages,
            }))
        };
        if !matches!(role, Some(DomainRole::Hold | DomainRole::Relay)) {
            tracing::info!(%domain, "ETRN refused: not a hold or relay domain");
            return outcome(Outcome::NotAllowed, 0, 0);
        }
        let released = self
            .store
            .release_domain(&domain, request.include_subdomains)
            .await
            .map_err(internal)?;
        tracing::info!(%domain, recipients = released.recipients, messages = released.messages, "ETRN");
        self.wake.wake();
        if released.recipients == 0 {
            outcome(Outcome::NothingQueued, 0, 0)
        } else {
            outcome(Outcome::Started, released.recipients, released.messages)
        }
    }

    async fn list_entries(
        &self,
        _: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        Err(not_yet())
    }

    async fn show_entry(
        &self,
        _: Request<ShowEntryRequest>,
    ) -> Result<Response<ShowEntryResponse>, Status> {
        Err(not_yet())
    }

    async fn retry_now(&self, _: Request<AdminRequest>) -> Result<Response<AdminResponse>, Status> {
        Err(not_yet())
    }

    async fn hold(&self, _: Request<AdminRequest>) -> Result<Response<AdminResponse>, Status> {
        Err(not_yet())
    }

    async fn release(&self, _: Request<AdminRequest>) -> Result<Response<AdminResponse>, Status> {
        Err(not_yet())
    }

    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<AdminResponse>, Status> {
        Err(not_yet())
    }
}
