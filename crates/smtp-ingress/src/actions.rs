//! What the SMTP session asks of the world: recipient policy, credentials, committing a
//! message, and the queue (Notify, ETRN). All store access goes through `pochta-store`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::commit::{GroupCommit, Limits};
use crate::mail_auth::{MailAuth, Verdict};
use crate::sending_limits::SendingLimits;
use pochta_config::{Cidr, Config};
use pochta_mail::{Disposition, Mailbox};
use pochta_proto::queue::v1::queue_client::QueueClient;
use pochta_proto::queue::v1::start_domain_delivery_response::Outcome;
use pochta_proto::queue::v1::{NotifyRequest, StartDomainDeliveryRequest};
use pochta_service::cache::TtlCache;
use pochta_service::limits::WindowLimiter;
use pochta_service::login::{Authenticator, LoginOutcome, LoginRules};
use pochta_smtp::received::{ReceivedBy, received_header};
use pochta_smtp::{
    AuthResult, Credentials, EtrnResult, Message, RecipientVerdict, SenderVerdict, StoreResult,
};
use pochta_store::{
    AddressRules, DomainRole, NewEnvelope, NewRecipient, QueueId, Resolution, Resolved, Store,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Queue = QueueClient<
    InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

/// Shared by every session of this process.
pub struct Actions {
    pub store: Store,
    pub hostname: String,
    queue: Queue,
    commits: GroupCommit,
    /// Queue ids for the next Notify; see `notify_queue`.
    new_envelopes: tokio::sync::mpsc::UnboundedSender<String>,
    trusted: Vec<Cidr>,
    lifetime: Duration,
    logins: Authenticator,
    /// ETRN requests per client network in the last minute.
    etrn_requests: WindowLimiter,
    /// Recent acceptances by recipient address (`recipient_cache_secs`): a RCPT already
    /// accepted costs no store query.
    accepted_recipients: TtlCache<Mailbox, RecipientVerdict>,
    sending_limits: SendingLimits,
    /// How addresses that are not an account's own name resolve.
    addresses: AddressRules,
    /// DKIM signing of our users' mail, and the checks of mail from elsewhere.
    mail_auth: MailAuth,
}

/// The RCPT verdict for what the store knows of the address; `may_relay`: the client is
/// authenticated or trusted. An alias is accepted as it is; the queue expands it.
fn recipient_policy(found: &Resolution, may_relay: bool) -> RecipientVerdict {
    match found.role {
        Some(DomainRole::Local) => match found.resolved {
            Resolved::Account { disabled: true, .. } => RecipientVerdict::Disabled,
            Resolved::Account { full: true, .. } => RecipientVerdict::MailboxFull,
            Resolved::Account { .. } | Resolved::Forward { .. } => {
                RecipientVerdict::Accept(Disposition::Local)
            }
            Resolved::Unknown => RecipientVerdict::NoSuchUser,
        },
        Some(DomainRole::Hold) => RecipientVerdict::Accept(Disposition::Hold),
        Some(DomainRole::Relay) => RecipientVerdict::Accept(Disposition::Remote),
        None if may_relay => RecipientVerdict::Accept(Disposition::Remote),
        None => RecipientVerdict::RelayDenied,
    }
}

/// At most this many remembered recipients per process (a few MB).
const RECIPIENT_CACHE_ENTRIES: usize = 50_000;

impl Actions {
    pub fn new(
        config: &Config,
        store: Store,
        hostname: String,
        srs: pochta_mail::SrsKey,
    ) -> anyhow::Result<Arc<Self>> {
        let channel = tonic::transport::Endpoint::from_shared(config.smtp.queue_endpoint.clone())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        let inject: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> =
            pochta_telemetry::grpc::inject_trace_context;
        let queue = QueueClient::with_interceptor(channel, inject);
        let (new_envelopes, arrivals) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(notify_queue(
            queue.clone(),
            arrivals,
            Duration::from_millis(config.smtp.notify_interval_ms),
        ));
        Ok(Arc::new(Actions {
            mail_auth: MailAuth::new(
                &config.mail_auth,
                Duration::from_secs(config.smtp.command_timeout_secs),
                &hostname,
                store.clone(),
            )?,
            hostname,
            queue,
            new_envelopes,
            commits: GroupCommit::start(
                store.clone(),
                Limits {
                    writers: config.smtp.commit_writers,
                    max_messages: config.smtp.commit_batch_messages as usize,
                    max_bytes: config.smtp.commit_batch_bytes,
                    parallel_bytes: config.smtp.commit_parallel_bytes,
                },
            ),
            trusted: config.smtp.trusted_networks.clone(),
            lifetime: Duration::from_secs(config.queue.message_lifetime_secs),
            logins: Authenticator::new(
                store.clone(),
                LoginRules {
                    max_failures: config.smtp.auth_max_failures,
                    failure_window: Duration::from_secs(config.smtp.auth_failure_window_secs),
                    failure_delay: Duration::from_millis(config.smtp.auth_failure_delay_ms),
                    cache_ttl: Duration::from_secs(config.smtp.auth_cache_secs),
                    ipv6_prefix: config.smtp.ipv6_limit_prefix,
                    max_checks: config.smtp.max_password_checks as usize,
                    check_wait: Duration::from_secs(10),
                },
            )?,
            etrn_requests: WindowLimiter::new(
                config.smtp.etrn_per_minute as usize,
                Duration::from_secs(60),
                config.smtp.ipv6_limit_prefix,
            ),
            accepted_recipients: TtlCache::new(
                Duration::from_secs(config.smtp.recipient_cache_secs),
                RECIPIENT_CACHE_ENTRIES,
            ),
            sending_limits: SendingLimits::new(&config.smtp),
            addresses: AddressRules {
                srs: Some(srs),
                ..config.addresses.rules()
            },
            store,
        }))
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// RCPT policy: local accounts must exist; hold and relay domains accept anything while
    /// their backlog has room; any other domain only from authenticated users or trusted
    /// networks (no open relay). Acceptances for our own domains are remembered a while;
    /// refusals never are, and neither is relaying, which depends on the client.
    pub async fn verify_recipient(
        &self,
        recipient: &Mailbox,
        authenticated: bool,
        client: IpAddr,
    ) -> RecipientVerdict {
        let verdict = match self.accepted_recipients.get(recipient, Instant::now()) {
            Some(verdict) => verdict,
            None => {
                let found = match self
                    .store
                    .resolve_recipient(recipient, &self.addresses)
                    .await
                {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::error!("recipient lookup failed: {e}");
                        return RecipientVerdict::TemporaryFailure;
                    }
                };
                let verdict = recipient_policy(&found, authenticated || self.is_trusted(client));
                if found.role.is_none() {
                    return verdict;
                }
                // An account with a quota is asked again each time: it may fill up.
                let has_quota = matches!(
                    found.resolved,
                    Resolved::Account {
                        has_quota: true,
                        ..
                    }
                );
                if matches!(verdict, RecipientVerdict::Accept(_)) && !has_quota {
                    self.accepted_recipients
                        .insert(recipient.clone(), verdict, Instant::now());
                }
                verdict
            }
        };
        // Remembered or not, an acceptance for a hold or relay domain (the only ones held
        // or sent on from a domain of ours) needs room in that domain's backlog.
        if let RecipientVerdict::Accept(Disposition::Hold | Disposition::Remote) = verdict {
            return match self
                .sending_limits
                .domain_has_room(&self.store, &recipient.domain)
                .await
            {
                Some(true) => verdict,
                Some(false) => RecipientVerdict::DomainBacklogFull,
                None => RecipientVerdict::TemporaryFailure,
            };
        }
        verdict
    }

    /// May the authenticated `user` start another message (its sending limits)?
    pub async fn verify_sender(&self, user: &str) -> SenderVerdict {
        self.sending_limits.check_sender(&self.store, user).await
    }

    /// AUTH, through the login rules SMTP and POP3 share.
    pub async fn authenticate(&self, credentials: Credentials, client: IpAddr) -> AuthResult {
        match self
            .logins
            .login(&credentials.username, credentials.password, client)
            .await
        {
            LoginOutcome::Success(account) => AuthResult::Success {
                user: format!("{}@{}", account.local_part, account.domain),
            },
            LoginOutcome::Failure => AuthResult::Failure,
            LoginOutcome::RateLimited => AuthResult::RateLimited,
            LoginOutcome::TemporaryFailure => AuthResult::TemporaryFailure,
        }
    }

    /// Prepends the Received header and commits the whole transaction; only then may the
    /// session answer 250. Then tells the queue, without letting a failure there matter.
    /// Mail from elsewhere is checked first (and may be refused by its domain's DMARC
    /// policy); mail from our users and trusted networks is signed. Either way, header
    /// fields claiming to be our own authentication results are removed (RFC 8601 5).
    pub async fn store_message(&self, mut message: Box<Message>, client: IpAddr) -> StoreResult {
        let from_elsewhere = message.authenticated.is_none() && !self.is_trusted(client);
        let stripped = pochta_mail::headers::remove_authentication_results(
            &message.body,
            self.mail_auth.authserv_id(),
        );
        let text = stripped.as_deref().unwrap_or(&message.body);
        let mut quarantine = None;
        let top = if from_elsewhere && self.mail_auth.checks() {
            let domains = message
                .recipients
                .iter()
                .map(|r| r.rcpt.recipient.domain.as_str());
            match self
                .mail_auth
                .check(&message, client, &message.body, domains)
                .await
            {
                Verdict::Reject { reason } => {
                    tracing::info!("refused: {reason}");
                    return StoreResult::PolicyRejected { reason };
                }
                Verdict::Accept {
                    header,
                    quarantine: why,
                } => {
                    quarantine = why;
                    header
                }
            }
        } else if !from_elsewhere && self.mail_auth.signs() {
            self.mail_auth.signatures(text).await
        } else {
            String::new()
        };
        let queue_id = QueueId::generate();
        tracing::Span::current().record("queue_id", queue_id.as_str());
        let received = received_header(
            &message,
            ReceivedBy {
                hostname: &self.hostname,
                client_ip: client,
                queue_id: queue_id.as_str(),
                date: chrono::Utc::now(),
            },
        );
        // The new header fields go in front of the text where it lies (the received text
        // usually has room to spare): no second buffer the size of the message.
        let mut content = stripped.unwrap_or_else(|| std::mem::take(&mut message.body));
        let fields = [top.as_bytes(), received.as_bytes()].concat();
        content.splice(0..0, fields);
        let envelope = NewEnvelope {
            quarantine,
            requiretls: message.mail.requiretls,
            queue_id: queue_id.clone(),
            reverse_path: message.mail.sender.clone(),
            envid: message.mail.envid.clone(),
            ret: message.mail.ret,
            body: message.mail.body,
            smtputf8: message.mail.smtputf8,
            client_address: Some(client),
            client_helo: Some(message.helo.clone()),
            auth_user: message.authenticated.clone(),
            received_by: Some(self.hostname.clone()),
            traceparent: pochta_telemetry::grpc::current_traceparent(),
            lifetime: self.lifetime,
            recipients: message
                .recipients
                .iter()
                .map(|r| NewRecipient {
                    address: r.rcpt.recipient.clone(),
                    orcpt: r.rcpt.orcpt.clone(),
                    notify: r.rcpt.notify,
                    disposition: r.disposition,
                })
                .collect(),
        };
        let (size, recipients) = (content.len(), envelope.recipients.len());
        match self.commits.commit(envelope, content).await {
            Ok(()) => {
                tracing::info!(queue_id = %queue_id, size, recipients, "accepted");
                self.notify_queue(queue_id.to_string());
                StoreResult::Stored {
                    queue_id: queue_id.to_string(),
                }
            }
            Err(e) => {
                tracing::error!(queue_id = %queue_id, "storing the message failed: {e}");
                StoreResult::TemporaryFailure
            }
        }
    }

    /// Fire and forget: the queue also scans the store, so a lost Notify only delays delivery.
    fn notify_queue(&self, queue_id: String) {
        // Fails only when the notifying task is gone (shutdown): the scan finds the message.
        let _ = self.new_envelopes.send(queue_id);
    }

    /// ETRN, answered by the queue.
    pub async fn etrn(&self, domain: &str, subdomains: bool, client: IpAddr) -> EtrnResult {
        // Each ETRN costs the queue a store query: a client gets a few a minute.
        let now = Instant::now();
        if self.etrn_requests.is_blocked(client, now) {
            return EtrnResult::RateLimited;
        }
        self.etrn_requests.record(client, now);
        let request = StartDomainDeliveryRequest {
            domain: domain.to_owned(),
            include_subdomains: subdomains,
        };
        match self.queue.clone().start_domain_delivery(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                match Outcome::try_from(reply.outcome) {
                    Ok(Outcome::Started) => EtrnResult::Started {
                        messages: reply.messages,
                    },
                    Ok(Outcome::NothingQueued) => EtrnResult::NothingQueued,
                    Ok(Outcome::NotAllowed) => EtrnResult::NotAllowed,
                    _ => EtrnResult::Unavailable,
                }
            }
            Err(e) => {
                tracing::warn!("ETRN: the queue is unavailable: {}", e.message());
                EtrnResult::Unavailable
            }
        }
    }
}

/// Tells the queue about new envelopes, one Notify at a time and at most one per `interval`:
/// the first envelope after a quiet spell is told at once, and those accepted meanwhile go
/// together in the next Notify, so under load the queue gets a few requests a second from
/// this process instead of one per message (it gathers a batch for `claim_delay_ms` after a
/// wake-up anyway). The ids only inform the queue's log (it claims from the store), so beyond
/// `MAX_IDS` they are dropped: a queue that is down cannot make them pile up here.
async fn notify_queue(
    mut queue: Queue,
    mut arrivals: tokio::sync::mpsc::UnboundedReceiver<String>,
    interval: Duration,
) {
    const MAX_IDS: usize = 1000;
    let mut next_notify = tokio::time::Instant::now();
    while let Some(first) = arrivals.recv().await {
        tokio::time::sleep_until(next_notify).await;
        next_notify = tokio::time::Instant::now() + interval;
        let mut queue_ids = vec![first];
        while let Ok(id) = arrivals.try_recv() {
            if queue_ids.len() < MAX_IDS {
                queue_ids.push(id);
            }
        }
        if let Err(e) = queue.notify(NotifyRequest { queue_ids }).await {
            tracing::debug!(
                "queue notify failed (the queue's scan will find the messages): {}",
                e.message()
            );
        }
    }
}
