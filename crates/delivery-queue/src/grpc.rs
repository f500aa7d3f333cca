//! The `pochta.queue.v1.Queue` service.
//!
//! Notify and StartDomainDelivery (ETRN) wake the workers. The admin calls list and show queue
//! entries (with every attempt) and retry, hold, release or delete what a filter matches, with
//! a dry-run count. Delete sends failure reports only when asked.

use pochta_proto::queue::v1::queue_server::Queue;
use pochta_proto::queue::v1::start_domain_delivery_response::Outcome;
use pochta_proto::queue::v1::{
    AdminRequest, AdminResponse, Attempt, DeleteRequest, EntryDetail, EntrySummary, Filter,
    ListEntriesRequest, ListEntriesResponse, NotifyRequest, NotifyResponse, RecipientDetail,
    RecipientState as ProtoState, RecipientSummary, ShowEntryRequest, ShowEntryResponse,
    StartDomainDeliveryRequest, StartDomainDeliveryResponse,
};
use pochta_store::{DomainRole, QueueAction, QueueFilter, RecipientState, Store};
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

fn internal(e: impl std::fmt::Display) -> Status {
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
            tracing::info!(%domain, "ETRN refused: not a hold or relay domain");
            return outcome(Outcome::NotAllowed, 0, 0);
        }
        let released = self
            .store
            .release_domain(&domain, request.include_subdomains)
            .await
            .map_err(internal)?;
        tracing::info!(%domain, recipients = released.recipients, messages = released.messages, "ETRN");
        self.wakes.both();
        if released.recipients == 0 {
            outcome(Outcome::NothingQueued, 0, 0)
        } else {
            outcome(Outcome::Started, released.recipients, released.messages)
        }
    }

    async fn list_entries(
        &self,
        request: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let request = request.into_inner();
        let filter = filter(request.filter)?;
        let limit = match request.limit {
            0 => 100,
            n => n.min(1000),
        };
        let (envelopes, truncated) = self
            .store
            .list_envelopes(&filter, limit)
            .await
            .map_err(internal)?;
        let entries = envelopes
            .into_iter()
            .map(|e| EntrySummary {
                queue_id: e.queue_id,
                sender: sender_text(&e.reverse_path),
                size: e.size as u64,
                arrived_at: Some(timestamp(e.arrived_at)),
                recipients: e
                    .recipients
                    .into_iter()
                    .map(|r| RecipientSummary {
                        address: r.address,
                        state: state(r.state) as i32,
                        attempts: r.attempts as u32,
                        next_attempt_at: Some(timestamp(r.next_attempt_at)),
                        last_status: [
                            r.last_status.unwrap_or_default(),
                            r.last_diagnostic.unwrap_or_default(),
                        ]
                        .join(" ")
                        .trim()
                        .to_owned(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListEntriesResponse { entries, truncated }))
    }

    async fn show_entry(
        &self,
        request: Request<ShowEntryRequest>,
    ) -> Result<Response<ShowEntryResponse>, Status> {
        let queue_id = request.into_inner().queue_id;
        let Some(e) = self
            .store
            .envelope_detail(&queue_id)
            .await
            .map_err(internal)?
        else {
            return Err(Status::not_found(format!("no queue entry {queue_id}")));
        };
        let entry = EntryDetail {
            queue_id: e.queue_id,
            sender: sender_text(&e.reverse_path),
            size: e.size as u64,
            arrived_at: Some(timestamp(e.arrived_at)),
            expires_at: Some(timestamp(e.expires_at)),
            envid: e.envid.unwrap_or_default(),
            ret: e.ret.unwrap_or_default(),
            body: e.body.unwrap_or_default(),
            smtputf8: e.smtputf8,
            client_address: e.client_address.unwrap_or_default(),
            client_helo: e.client_helo.unwrap_or_default(),
            authenticated_user: e.auth_user.unwrap_or_default(),
            traceparent: e.traceparent.unwrap_or_default(),
            recipients: e
                .recipients
                .into_iter()
                .map(|r| RecipientDetail {
                    address: r.address,
                    orcpt: r.orcpt.unwrap_or_default(),
                    notify: r.notify.unwrap_or_default(),
                    state: state(r.state) as i32,
                    attempts: r.attempts as u32,
                    next_attempt_at: Some(timestamp(r.next_attempt_at)),
                    history: r
                        .history
                        .into_iter()
                        .map(|a| Attempt {
                            at: Some(timestamp(a.attempted_at)),
                            remote_mta: a.remote_mta.unwrap_or_default(),
                            reply_code: a.reply_code.unwrap_or(0) as u32,
                            status: a.status.unwrap_or_default(),
                            diagnostic: a.diagnostic,
                            result: state(a.result) as i32,
                        })
                        .collect(),
                })
                .collect(),
        };
        Ok(Response::new(ShowEntryResponse { entry: Some(entry) }))
    }

    async fn retry_now(
        &self,
        request: Request<AdminRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        self.admin(request.into_inner(), QueueAction::RetryNow)
            .await
    }

    async fn hold(
        &self,
        request: Request<AdminRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        self.admin(request.into_inner(), QueueAction::Hold).await
    }

    async fn release(
        &self,
        request: Request<AdminRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        self.admin(request.into_inner(), QueueAction::Release).await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let request = request.into_inner();
        let action = if request.send_report {
            QueueAction::DeleteWithReport
        } else {
            QueueAction::Delete
        };
        self.admin(
            AdminRequest {
                filter: request.filter,
                dry_run: request.dry_run,
            },
            action,
        )
        .await
    }
}

impl QueueService {
    async fn admin(
        &self,
        request: AdminRequest,
        action: QueueAction,
    ) -> Result<Response<AdminResponse>, Status> {
        let filter = filter(request.filter)?;
        let done = self
            .store
            .admin_queue(&filter, action, request.dry_run)
            .await
            .map_err(internal)?;
        if !request.dry_run {
            tracing::info!(
                ?action,
                ?filter,
                recipients = done.recipients,
                "queue administration"
            );
            if matches!(
                action,
                QueueAction::RetryNow | QueueAction::Release | QueueAction::DeleteWithReport
            ) {
                self.wakes.both();
            }
        }
        Ok(Response::new(AdminResponse {
            recipients: done.recipients,
            messages: done.messages,
        }))
    }
}

/// The store's filter from the wire's; an empty filter must be said explicitly by the caller.
fn filter(filter: Option<Filter>) -> Result<QueueFilter, Status> {
    let f = filter.unwrap_or_default();
    let text = |s: String| (!s.is_empty()).then_some(s);
    let states = f
        .states
        .iter()
        .map(|s| match ProtoState::try_from(*s) {
            Ok(ProtoState::Queued) => Ok(RecipientState::Queued),
            Ok(ProtoState::Held) => Ok(RecipientState::Held),
            Ok(ProtoState::Delivered) => Ok(RecipientState::Delivered),
            Ok(ProtoState::Relayed) => Ok(RecipientState::Relayed),
            Ok(ProtoState::Failed) => Ok(RecipientState::Failed),
            Ok(ProtoState::Expired) => Ok(RecipientState::Expired),
            _ => Err(Status::invalid_argument(format!(
                "unknown recipient state {s}"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(QueueFilter {
        queue_id: text(f.queue_id),
        states,
        recipient_domain: text(f.recipient_domain),
        sender: text(f.sender),
        older_than: (f.older_than_seconds > 0)
            .then(|| std::time::Duration::from_secs(f.older_than_seconds)),
    })
}

fn state(s: RecipientState) -> ProtoState {
    match s {
        RecipientState::Queued => ProtoState::Queued,
        RecipientState::Held => ProtoState::Held,
        RecipientState::Delivered => ProtoState::Delivered,
        RecipientState::Relayed => ProtoState::Relayed,
        RecipientState::Failed => ProtoState::Failed,
        RecipientState::Expired => ProtoState::Expired,
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn sender_text(reverse_path: &str) -> String {
    if reverse_path.is_empty() {
        "<>".into()
    } else {
        reverse_path.to_owned()
    }
}
