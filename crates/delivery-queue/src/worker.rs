//! Delivery workers: claim due recipients with leases, deliver, record the result.
//!
//! Local recipients go into their account's maildrop, exactly once (`deliver_to_maildrop`).
//! Remote delivery (SMTP client, MX lookup) and delivery status notifications are not in this
//! version: such recipients are deferred with a diagnostic that says so, and nothing is made
//! final without the report it would owe, so no accepted mail is lost or silently dropped.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use pochta_service::Shutdown;
use pochta_store::{
    AttemptOutcome, AttemptReport, ClaimedRecipient, DomainRole, LocalDelivery, MailboxAddress,
    Store, StoreError,
};
use tokio::sync::watch;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Wakes workers when new work may be due (Notify, ETRN). A counter in a watch channel: a
/// wake-up that arrives while a worker is busy is not lost, it sees the change next time.
#[derive(Clone)]
pub struct Wake(Arc<watch::Sender<u64>>);

impl Wake {
    pub fn new() -> Self {
        Wake(Arc::new(watch::channel(0).0))
    }

    pub fn wake(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

pub struct Settings {
    pub owner: String,
    pub batch: u32,
    pub lease: Duration,
    pub scan_interval: Duration,
    pub retry_delay: Duration,
}

struct Metrics {
    attempts: Counter<u64>,
}

pub async fn run(
    store: Store,
    settings: Arc<Settings>,
    wake: Wake,
    shutdown: Shutdown,
    index: u32,
) {
    let mut woken = wake.0.subscribe();
    let metrics = Metrics {
        attempts: opentelemetry::global::meter("delivery-queue")
            .u64_counter("pochta.queue.delivery.attempts")
            .with_description("Delivery attempts, by result")
            .build(),
    };
    let owner = format!("{}/{index}", settings.owner);
    while !shutdown.is_started() {
        woken.borrow_and_update();
        let claimed = match store
            .claim_due(&owner, settings.batch, settings.lease)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::error!("claiming due recipients failed: {e}");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(settings.scan_interval) => continue,
                }
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = woken.changed() => {}
                _ = tokio::time::sleep(settings.scan_interval) => {}
            }
            continue;
        }
        // A claimed batch is finished even during shutdown: each delivery is short, and a
        // recipient left leased would wait for its lease to expire.
        for recipient in claimed {
            let span = tracing::info_span!(
                "queue.delivery",
                queue_id = %recipient.queue_id,
                recipient = %recipient.address,
                attempt = recipient.attempts + 1,
                result = tracing::field::Empty,
            );
            if let Some(traceparent) = &recipient.traceparent {
                // The attempt joins the trace of the SMTP transaction that accepted the message.
                let _ = span.set_parent(pochta_telemetry::grpc::context_from_traceparent(
                    traceparent,
                ));
            }
            let result = deliver(&store, &owner, &settings, &recipient)
                .instrument(span.clone())
                .await;
            span.record("result", result);
            metrics.attempts.add(1, &[KeyValue::new("result", result)]);
        }
    }
}

/// One attempt for one recipient; returns the result's name for spans and metrics.
async fn deliver(
    store: &Store,
    owner: &str,
    settings: &Settings,
    r: &ClaimedRecipient,
) -> &'static str {
    match try_local(store, owner, r).await {
        Ok(Some(result)) => result,
        Ok(None) => {
            defer(
                store,
                owner,
                settings,
                r,
                "4.4.0",
                "remote delivery is not available in this version; the message stays queued",
            )
            .await
        }
        Err(e) => {
            tracing::error!("delivery failed: {e}");
            defer(
                store,
                owner,
                settings,
                r,
                "4.3.0",
                &format!("temporary local error: {e}"),
            )
            .await
        }
    }
}

/// Delivers a local domain's recipient; None when the domain is not local.
async fn try_local(
    store: &Store,
    owner: &str,
    r: &ClaimedRecipient,
) -> Result<Option<&'static str>, StoreError> {
    if store.domain_role(&r.domain).await? != Some(DomainRole::Local) {
        return Ok(None);
    }
    let Ok(address) = MailboxAddress::parse(&r.address) else {
        tracing::warn!(address = %r.address, "malformed recipient address in the store");
        return Ok(None);
    };
    let account = match store.account_credentials(&address).await? {
        Some(account) if !account.disabled => account,
        // The account went away (or was disabled) after the mail was accepted. Until failure
        // reports exist this waits, so that nothing becomes final without one.
        _ => return Ok(None),
    };
    // RFC 5321 4.4: the final delivery adds Return-Path (<> for the null sender).
    let prefix = format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        r.reverse_path, r.address
    );
    match store
        .deliver_to_maildrop(owner, r.recipient_id, account.id, prefix.as_bytes())
        .await?
    {
        LocalDelivery::Delivered { entry_id, .. } => {
            tracing::info!(entry_id, "delivered to maildrop");
            Ok(Some("delivered"))
        }
        LocalDelivery::AlreadyFinal => {
            tracing::info!("already delivered by another worker");
            Ok(Some("already_final"))
        }
    }
}

async fn defer(
    store: &Store,
    owner: &str,
    settings: &Settings,
    r: &ClaimedRecipient,
    status: &str,
    diagnostic: &str,
) -> &'static str {
    let report = AttemptReport {
        remote_mta: None,
        reply_code: None,
        status: Some(status.to_owned()),
        diagnostic: diagnostic.to_owned(),
    };
    let outcome = AttemptOutcome::Deferred {
        retry_after: settings.retry_delay,
    };
    match store
        .record_attempt(owner, r.recipient_id, outcome, &report)
        .await
    {
        Ok(()) => {
            tracing::info!(%status, diagnostic, "deferred");
            "deferred"
        }
        Err(StoreError::LeaseLost(_)) => "lease_lost",
        Err(e) => {
            tracing::error!(
                "recording the attempt failed (the lease will expire and it is retried): {e}"
            );
            "error"
        }
    }
}
