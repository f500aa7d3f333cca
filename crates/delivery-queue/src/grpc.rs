//! The `pochta.queue.v1.Queue` service, which the ingress calls: Notify and
//! StartDomainDelivery (ETRN) wake the workers. The operator's calls are in `admin`.

use pochta_mail::Untrusted;
use pochta_proto::queue::v1::queue_server::Queue;
use pochta_proto::queue::v1::start_domain_delivery_response::Outcome;
use pochta_proto::queue::v1::{
    NotifyRequest, NotifyResponse, StartDomainDeliveryRequest, StartDomainDeliveryResponse,
};
use pochta_store::{DomainRole, Store};
use tonic::{Request, Response, Status};

use crate::worker::Wakes;

pub struct QueueService {
    store: Store,
    wakes: Wakes,
}

impl QueueService {
    pub fn new(store: Store, wakes: Wakes) -> Self {
        QueueService { store, wakes }
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!("store error: {e}");
    Status::unavailable("the message store is unavailable")
}

#[tonic::async_trait]
impl Queue for QueueService {
    async fn notify(
        &self,
        request: Request<NotifyRequest>,
    ) -> Result<Response<NotifyResponse>, Status> {
        let ids = request.into_inner().queue_ids;
        tracing::debug!(count = ids.len(), "notified of new envelopes");
        self.wakes.both();
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
            tracing::info!(domain = %Untrusted(&domain), "ETRN refused: not a hold or relay domain");
            return outcome(Outcome::NotAllowed, 0, 0);
        }
        let released = self
            .store
            .release_domain(&domain, request.include_subdomains)
            .await
            .map_err(internal)?;
        tracing::info!(domain = %Untrusted(&domain), recipients = released.recipients, messages = released.messages, "ETRN");
        self.wakes.both();
        if released.recipients == 0 {
            outcome(Outcome::NothingQueued, 0, 0)
        } else {
            outcome(Outcome::Started, released.recipients, released.messages)
        }
    }
}
