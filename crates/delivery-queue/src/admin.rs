//! The `pochta.queue.v1.QueueAdmin` service, the operator's calls: list and show queue
//! entries (with every attempt) and retry, hold, release or delete what a filter matches, with
//! a dry-run count. Delete sends failure reports only when asked. Served behind `AdminToken`:
//! every call must carry the operator's bearer token.

use pochta_proto::queue::v1::queue_admin_server::QueueAdmin;
use pochta_proto::queue::v1::{
    AdminRequest, AdminResponse, Attempt, DeleteRequest, EntryDetail, EntrySummary, Filter,
    ListEntriesRequest, ListEntriesResponse, RecipientDetail, RecipientState as ProtoState,
    RecipientSummary, ShowEntryRequest, ShowEntryResponse,
};
use pochta_store::{QueueAction, QueueFilter, RecipientState, Store};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::grpc::internal;
use crate::worker::Wakes;

/// Lets through only calls whose `authorization` metadata is `Bearer <token>`; without a
/// configured token, none.
#[derive(Clone)]
pub struct AdminToken(Option<std::sync::Arc<str>>);

impl AdminToken {
    pub fn new(token: Option<String>) -> Self {
        AdminToken(token.map(Into::into))
    }

    fn authorized(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(token) = &self.0 else {
            return Err(Status::unauthenticated(
                "the admin API is disabled: no queue.admin_token_file is configured",
            ));
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(()),
            _ => {
                tracing::warn!("admin call refused: missing or wrong token");
                Err(Status::unauthenticated("a valid admin token is required"))
            }
        }
    }
}

impl tonic::service::Interceptor for AdminToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.authorized(request.metadata())?;
        Ok(request)
    }
}

/// Compares in time independent of where the inputs differ (only the length may show).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub struct AdminService {
    store: Store,
    wakes: Wakes,
}

impl AdminService {
    pub fn new(store: Store, wakes: Wakes) -> Self {
        AdminService { store, wakes }
    }
}

#[tonic::async_trait]
impl QueueAdmin for AdminService {
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

impl AdminService {
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
            Ok(ProtoState::Expanded) => Ok(RecipientState::Expanded),
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
        RecipientState::Expanded => ProtoState::Expanded,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call(token: &AdminToken, header: Option<&str>) -> Result<(), Status> {
        let mut metadata = MetadataMap::new();
        if let Some(header) = header {
            metadata.insert("authorization", header.parse().unwrap());
        }
        token.authorized(&metadata)
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = AdminToken::new(Some("s3cret-s3cret-s3cret-s3cret-s3cret".into()));
        assert!(call(&token, Some("Bearer s3cret-s3cret-s3cret-s3cret-s3cret")).is_ok());
        for wrong in [
            None,
            Some("Bearer s3cret-s3cret-s3cret-s3cret-s3creT"),
            Some("Bearer s3cret"),
            Some("Basic s3cret-s3cret-s3cret-s3cret-s3cret"),
            Some("s3cret-s3cret-s3cret-s3cret-s3cret"),
        ] {
            let refused = call(&token, wrong).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{wrong:?}");
        }
        let disabled = AdminToken::new(None);
        let refused = call(&disabled, Some("Bearer anything")).unwrap_err();
        assert!(refused.message().contains("disabled"));
    }
}
