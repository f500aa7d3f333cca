//! Local delivery: into the maildrop of an account, exactly once (the store refuses a second
//! entry for one recipient). A local recipient whose account is gone or disabled fails
//! (5.1.1 / 5.2.1). With NOTIFY=SUCCESS the `delivered` report is enqueued in the same
//! transaction as the delivery. An account with a quota is delivered to on its own, under
//! its row lock: an entry that does not fit defers (4.2.2) and fails as 5.2.2 when the queue
//! lifetime ends; a message larger than the whole quota fails at once (5.2.3).
//!
//! An address that is not an account's own name is resolved (`Store::resolve_recipient`):
//! `user+tag` and a domain alias's addresses go straight into the account's maildrop; an
//! alias, postmaster@ or the catch-all is expanded into a recipient of its own for each
//! final address, once (`Store::expand_recipient`).

use chrono::Utc;
use pochta_mail::Mailbox;
use pochta_store::{
    AttemptReport, ClaimedRecipient, DomainRole, LocalAccount, LocalDelivery, MaildropDelivery,
    RecipientLookup, Resolved, StoreError,
};

use crate::worker::{Known, Worker, attempt_span};
use pochta_smtp::dsn::{Action, RecipientReport};

/// The status of a deferral for a full maildrop: a recipient whose last attempt ended so
/// fails with 5.2.2 when the queue lifetime ends (RFC 3463 X.2.2).
pub const QUOTA_STATUS: &str = "4.2.2";

/// How one local attempt ended.
pub enum Delivered {
    /// Delivered, expanded, or left to another worker: the result for spans and metrics,
    /// and the action of the report sent with it, if any.
    Done {
        result: &'static str,
        reported: Option<Action>,
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
                Some(account)
                    if found.role == Some(DomainRole::Local)
                        && !account.disabled
                        && !account.has_quota =>
                {
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
                        // Not from this statement (only accounts without a quota come here).
                        LocalDelivery::OverQuota { .. } => "over_quota",
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
            Some(account) => account,
            None => {
                let rules = &self.settings.addresses;
                match self
                    .store
                    .resolve_recipient(&r.address, rules)
                    .await?
                    .resolved
                {
                    Resolved::Account {
                        id,
                        disabled,
                        has_quota,
                        ..
                    } => LocalAccount {
                        id,
                        disabled,
                        has_quota,
                    },
                    Resolved::Forward { targets, .. } => return self.expand(r, targets).await,
                    // The account went away after the mail was accepted.
                    Resolved::Unknown => {
                        return Ok(Delivered::Failed(
                            "5.1.1",
                            "550 5.1.1 no such user here".into(),
                        ));
                    }
                }
            }
        };
        if account.disabled {
            return Ok(Delivered::Failed(
                "5.2.1",
                "550 5.2.1 mailbox disabled".into(),
            ));
        }
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
                account.has_quota,
                with,
            )
            .await?;
        Ok(match delivery {
            LocalDelivery::Delivered { entry_id, .. } => {
                tracing::info!(entry_id, report = report.is_some(), "delivered to maildrop");
                Delivered::Done {
                    result: "delivered",
                    reported: report.is_some().then_some(Action::Delivered),
                }
            }
            LocalDelivery::AlreadyFinal => {
                tracing::info!("already delivered by another worker");
                Delivered::Done {
                    result: "already_final",
                    reported: None,
                }
            }
            // RFC 3463 X.2.3: no amount of waiting makes it fit.
            LocalDelivery::OverQuota { quota, size, .. } if size > quota => Delivered::Failed(
                "5.2.3",
                format!(
                    "552 5.2.3 the message ({size} octets) is larger than the mailbox quota ({quota})"
                ),
            ),
            // RFC 3463 X.2.2: retried until the queue lifetime ends, then failed as 5.2.2.
            LocalDelivery::OverQuota { used, quota, size } => Delivered::Deferred(
                QUOTA_STATUS,
                format!(
                    "452 4.2.2 mailbox full: {used} of {quota} octets used, {size} more needed"
                ),
            ),
        })
    }
}

impl Worker {
    /// An alias recipient becomes a recipient for each final address of `targets`. One
    /// final address inherits NOTIFY and ORCPT as they are; with several, a sender who asked
    /// for SUCCESS gets an `expanded` report now and none from the targets (RFC 3461 6.2.7.3,
    /// as Postfix does).
    async fn expand(
        &self,
        r: &ClaimedRecipient,
        targets: Vec<Mailbox>,
    ) -> Result<Delivered, StoreError> {
        let rules = &self.settings.addresses;
        let expansion = match self.store.expand(&r.address, targets, rules).await {
            Ok(expansion) => expansion,
            Err(e @ (StoreError::AliasTooDeep { .. } | StoreError::AliasTooWide { .. })) => {
                return Ok(Delivered::Failed("5.4.6", format!("550 5.4.6 {e}")));
            }
            Err(e) => return Err(e),
        };
        if expansion.targets.is_empty() {
            let (status, why) = if expansion.looped {
                (
                    "5.4.6",
                    "550 5.4.6 alias loop: every address it stands for leads back to it",
                )
            } else {
                ("5.1.1", "550 5.1.1 the alias has no addresses")
            };
            return Ok(Delivered::Failed(status, why.into()));
        }
        let several = expansion.targets.len() > 1;
        let mut notify = r.notify;
        let report = if several && r.notify().success {
            let mut rest = r.notify();
            rest.success = false;
            notify = Some(rest);
            let expanded = RecipientReport {
                orcpt: r.orcpt.clone(),
                final_recipient: r.address.to_string(),
                action: Action::Expanded,
                status: "2.0.0".into(),
                remote_mta: None,
                diagnostic: None,
                last_attempt: Some(Utc::now()),
                will_retry_until: None,
            };
            self.report_message(r, &[expanded]).await
        } else {
            None
        };
        let attempt = AttemptReport {
            remote_mta: None,
            reply_code: None,
            status: Some("2.0.0".into()),
            diagnostic: format!(
                "expanded to {}",
                expansion
                    .targets
                    .iter()
                    .map(|(t, _)| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let with = report.as_ref().map(|(e, c)| (e, c.as_slice()));
        match self
            .store
            .expand_recipient(
                &self.owner,
                r.recipient_id,
                &expansion.targets,
                notify,
                &attempt,
                with,
            )
            .await
        {
            Ok(()) => {}
            Err(StoreError::LeaseLost(_)) => {
                return Ok(Delivered::Done {
                    result: "already_final",
                    reported: None,
                });
            }
            Err(e) => return Err(e),
        }
        tracing::info!(targets = expansion.targets.len(), "expanded");
        // The new recipients are due now, in either kind of loop.
        self.wakes.both();
        Ok(Delivered::Done {
            result: "expanded",
            reported: report.is_some().then_some(Action::Expanded),
        })
    }
}

/// RFC 5321 4.4: the final delivery adds Return-Path (<> for the null sender). A target of an
/// alias also gets X-Original-To: the address the sender gave (as Postfix writes it).
fn header_prefix(r: &ClaimedRecipient) -> String {
    let sender = r.reverse_path.as_ref().map(|m| m.to_string());
    let mut prefix = format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        sender.unwrap_or_default(),
        r.address
    );
    if let Some(original) = &r.original_address {
        prefix.push_str(&format!("X-Original-To: {original}\r\n"));
    }
    prefix
}
