//! Local delivery: into the maildrop of an account, exactly once (the store refuses a second
//! entry for one recipient). A local recipient whose account is gone or disabled fails
//! (5.1.1 / 5.2.1). With NOTIFY=SUCCESS the `delivered` report is enqueued in the same
//! transaction as the delivery.

use chrono::Utc;
use pochta_store::{
    ClaimedRecipient, DomainRole, LocalDelivery, MaildropDelivery, RecipientLookup, StoreError,
};

use crate::worker::{Known, Worker, attempt_span};
use pochta_smtp::dsn::{Action, RecipientReport};

/// How one local attempt ended.
pub enum Delivered {
    /// Delivered, or left to another worker: the result for spans and metrics, and whether
    /// a `delivered` report was sent.
    Done {
        result: &'static str,
        reported: bool,
    },
    /// A permanent failure: status and diagnostic.
    Failed(&'static str, String),
    /// A temporary failure: status and diagnostic.
    Deferred(&'static str, String),
    /// Not a local domain: it goes to a remote server.
    NotLocal,
}

impl Worker {
    /// The common case in one lookup and one statement for the whole claimed batch: live local
    /// recipients with an enabled account and no report to send. Returns the others (remote, a
    /// report owed, a failure to report, or everything if the store failed), for the
    /// per-envelope path, with what the lookup found for them (by recipient id) so it is not
    /// asked again.
    pub async fn deliver_local_together(
        &self,
        claimed: Vec<ClaimedRecipient>,
    ) -> (Vec<ClaimedRecipient>, Known) {
        let mut known = Known::new();
        let now = Utc::now();
        let (candidates, mut rest): (Vec<_>, Vec<_>) = claimed
            .into_iter()
            .partition(|r| !r.cancelled && r.expires_at > now && !r.notify().success);
        if candidates.is_empty() {
            return (rest, known);
        }
        let addresses: Vec<_> = candidates.iter().map(|r| r.address.clone()).collect();
        let lookups = match self.store.lookup_recipients(&addresses).await {
            Ok(lookups) => lookups,
            Err(e) => {
                tracing::warn!("looking up a batch of recipients failed: {e}");
                rest.extend(candidates);
                return (rest, known);
            }
        };
        let mut local = Vec::new();
        let mut deliveries = Vec::new();
        for (r, found) in candidates.into_iter().zip(lookups) {
            match found.account {
                Some(account) if found.role == Some(DomainRole::Local) && !account.disabled => {
                    deliveries.push(MaildropDelivery {
                        recipient_id: r.recipient_id,
                        account_id: account.id,
                        header_prefix: header_prefix(&r).into_bytes(),
                    });
                    local.push((attempt_span(&r), r));
                }
                _ => {
                    known.insert(r.recipient_id, found);
                    rest.push(r);
                }
            }
        }
        if local.is_empty() {
            return (rest, known);
        }
        match self
            .store
            .deliver_many_to_maildrops(&self.owner, &deliveries)
            .await
        {
            Ok(results) => {
                for ((span, r), result) in local.iter().zip(results) {
                    let result = match result {
                        LocalDelivery::Delivered { entry_id, .. } => {
                            span.in_scope(|| tracing::info!(entry_id, "delivered to maildrop"));
                            "delivered"
                        }
                        LocalDelivery::AlreadyFinal => {
                            span.in_scope(|| tracing::info!("already delivered by another worker"));
                            "already_final"
                        }
                    };
                    span.record("result", result);
                    self.metrics.attempted(r, result);
                }
            }
            Err(e) => {
                tracing::warn!("delivering a batch to maildrops failed, one by one instead: {e}");
                rest.extend(local.into_iter().map(|(_, r)| r));
            }
        }
        (rest, known)
    }

    /// One attempt for one recipient, if its domain is local. `known` is the recipient's
    /// lookup if this pass already made it.
    pub async fn deliver_local(
        &self,
        known: Option<&RecipientLookup>,
        r: &ClaimedRecipient,
    ) -> Delivered {
        match self.try_local(known, r).await {
            Ok(delivered) => delivered,
            Err(e) => {
                tracing::error!("delivery failed: {e}");
                Delivered::Deferred("4.3.0", format!("temporary local error: {e}"))
            }
        }
    }

    async fn try_local(
        &self,
        known: Option<&RecipientLookup>,
        r: &ClaimedRecipient,
    ) -> Result<Delivered, StoreError> {
        let found = match known {
            Some(found) => *found,
            None => self.store.lookup_recipient(&r.address).await?,
        };
        if found.role != Some(DomainRole::Local) {
            return Ok(Delivered::NotLocal);
        }
        let account = match found.account {
            Some(account) if account.disabled => {
                return Ok(Delivered::Failed(
                    "5.2.1",
                    "550 5.2.1 mailbox disabled".into(),
                ));
            }
            Some(account) => account,
            // The account went away after the mail was accepted.
            None => {
                return Ok(Delivered::Failed(
                    "5.1.1",
                    "550 5.1.1 no such user here".into(),
                ));
            }
        };
        let report = if r.notify().success {
            let delivered = RecipientReport {
                orcpt: r.orcpt.clone(),
                final_recipient: r.address.to_string(),
                action: Action::Delivered,
                status: "2.0.0".into(),
                remote_mta: None,
                diagnostic: None,
                last_attempt: Some(Utc::now()),
                will_retry_until: None,
            };
            self.report_message(r, &[delivered]).await
        } else {
            None
        };
        let with = report.as_ref().map(|(e, c)| (e, c.as_slice()));
        let prefix = header_prefix(r);
        let delivery = self
            .store
            .deliver_to_maildrop_with_report(
                &self.owner,
                r.recipient_id,
                account.id,
                prefix.as_bytes(),
                with,
            )
            .await?;
        Ok(match delivery {
            LocalDelivery::Delivered { entry_id, .. } => {
                tracing::info!(entry_id, report = report.is_some(), "delivered to maildrop");
                Delivered::Done {
                    result: "delivered",
                    reported: report.is_some(),
                }
            }
            LocalDelivery::AlreadyFinal => {
                tracing::info!("already delivered by another worker");
                Delivered::Done {
                    result: "already_final",
                    reported: false,
                }
            }
        })
    }
}

/// RFC 5321 4.4: the final delivery adds Return-Path (<> for the null sender).
fn header_prefix(r: &ClaimedRecipient) -> String {
    let sender = r.reverse_path.as_ref().map(|m| m.to_string());
    format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        sender.unwrap_or_default(),
        r.address
    )
}
