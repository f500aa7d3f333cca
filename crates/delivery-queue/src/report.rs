//! Recording attempts, and the delivery status reports they owe (RFC 3461 4.1, 5.2.2; RFC 3464).
//!
//! Every report is enqueued in the same transaction as the states it reports, so it is neither
//! lost nor sent twice: failures (and expiry) get the failure report NOTIFY asks for (one per
//! message and pass; by default, none for NOTIFY=NEVER or without FAILURE), recipients handed
//! to a server without DSN get a `relayed` report if they asked for SUCCESS, and deferred ones
//! that asked for DELAY get one `delayed` report after `delay_report_after`. Nothing is ever
//! reported to the null sender `<>` (RFC 3461 6.2).

use std::time::{Duration, Instant};

use chrono::Utc;
use pochta_mail::{Body, Disposition, Mailbox, Untrusted};
use pochta_store::{
    AttemptOutcome, AttemptReport, ClaimedRecipient, DomainRole, NewEnvelope, NewRecipient,
    QueueId, StoreError,
};
use rand::Rng;

use crate::worker::Worker;
use pochta_smtp::dsn::{self, Action, RecipientReport, Report, Return};

/// How an attempt ended for one recipient, before it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted by a DSN-capable remote server.
    Delivered,
    /// Accepted by a remote server without DSN.
    Relayed,
    Failed,
    Expired,
    /// Try again later (after the backoff).
    Deferred,
}

/// One recipient's attempt, to be recorded.
pub struct Attempt<'a> {
    pub r: &'a ClaimedRecipient,
    pub span: tracing::Span,
    pub verdict: Verdict,
    pub report: AttemptReport,
}

impl<'a> Attempt<'a> {
    /// An attempt that reached no remote server.
    pub fn local(
        r: &'a ClaimedRecipient,
        span: tracing::Span,
        verdict: Verdict,
        status: &str,
        diagnostic: &str,
    ) -> Self {
        Attempt {
            r,
            span,
            verdict,
            report: AttemptReport {
                remote_mta: None,
                reply_code: None,
                status: Some(status.to_owned()),
                diagnostic: diagnostic.to_owned(),
            },
        }
    }

    /// The per-recipient fields of a report on this attempt (RFC 3464 2.3), made just now.
    fn recipient_report(&self, action: Action) -> RecipientReport {
        let default_status = match action {
            Action::Failed => "5.0.0",
            Action::Delayed => "4.0.0",
            Action::Delivered | Action::Relayed | Action::Expanded => "2.0.0",
        };
        RecipientReport {
            orcpt: self.r.orcpt.clone(),
            final_recipient: self.r.address.to_string(),
            action,
            status: self
                .report
                .status
                .clone()
                .unwrap_or_else(|| default_status.to_owned()),
            remote_mta: self.report.remote_mta.clone(),
            diagnostic: Some(self.report.diagnostic.clone()),
            last_attempt: Some(Utc::now()),
            will_retry_until: (action == Action::Delayed).then_some(self.r.expires_at),
        }
    }
}

impl Worker {
    /// Records one envelope's attempts with the reports they owe: failures with the failure
    /// report, relayed recipients that asked for SUCCESS with a `relayed` report, deferred ones
    /// due for their delay report with it, the rest without. Deferred recipients of the message
    /// share one jittered backoff, so they stay due together (one report).
    pub async fn record(&self, attempts: Vec<Attempt<'_>>) {
        let now = Utc::now();
        let delay_report_due = |a: &Attempt| self.delay_report_due(a, now);
        let mut failed = Vec::new();
        let mut relayed = Vec::new();
        let mut delayed = Vec::new();
        let mut plain = Vec::new();
        for a in attempts {
            match a.verdict {
                Verdict::Failed | Verdict::Expired => failed.push(a),
                Verdict::Relayed if a.r.notify().success => relayed.push(a),
                Verdict::Deferred if delay_report_due(&a) => delayed.push(a),
                _ => plain.push(a),
            }
        }
        let jitter = rand::rng().random_range(0.5..=1.0);
        for (group, notice) in [
            (failed, Some(Action::Failed)),
            (relayed, Some(Action::Relayed)),
            (delayed, Some(Action::Delayed)),
            (plain, None),
        ] {
            self.record_with_report(group, notice, &|_| jitter).await;
        }
    }

    /// Whether `a` is due for its one delay report (NOTIFY=DELAY, waiting long enough).
    fn delay_report_due(&self, a: &Attempt, now: chrono::DateTime<Utc>) -> bool {
        !a.r.delay_reported
            && a.r.reverse_path.is_some()
            && a.r.notify().delay
            && (now - a.r.arrived_at)
                .to_std()
                .is_ok_and(|waited| waited >= self.settings.delay_report_after)
    }

    /// Whether one envelope's attempts are all deferrals that owe no report now: such
    /// envelopes of a batch are recorded together, by `record_quiet_deferrals`.
    pub fn quietly_deferred(&self, attempts: &[Attempt]) -> bool {
        let now = Utc::now();
        !attempts.is_empty()
            && attempts
                .iter()
                .all(|a| a.verdict == Verdict::Deferred && !self.delay_report_due(a, now))
    }

    /// Records the quiet deferrals of a batch's envelopes in one transaction and statement
    /// (a backlog for an unreachable destination is mostly these). Each envelope keeps a
    /// jittered backoff of its own, so they do not all come due together again.
    pub async fn record_quiet_deferrals(&self, envelopes: Vec<Vec<Attempt<'_>>>) {
        let mut jitters = std::collections::HashMap::new();
        for attempts in &envelopes {
            if let Some(a) = attempts.first() {
                jitters.insert(a.r.envelope_id, rand::rng().random_range(0.5..=1.0));
            }
        }
        let jitter = |a: &Attempt| jitters.get(&a.r.envelope_id).copied().unwrap_or(1.0);
        let all = envelopes.into_iter().flatten().collect();
        self.record_with_report(all, None, &jitter).await;
    }

    /// Records `attempts` in one transaction with the `notice` report about them, if any is
    /// owed. A recipient whose lease was lost (another worker has it now) is left out and the
    /// others recorded again. While the store does not answer, recording is tried again for as
    /// long as a lease lasts: giving up would have the attempts made again, and a remote server
    /// that already took a message would get it twice.
    async fn record_with_report(
        &self,
        mut attempts: Vec<Attempt<'_>>,
        notice: Option<Action>,
        jitter: &(dyn Fn(&Attempt) -> f64 + Sync),
    ) {
        let mut first_failure: Option<Instant> = None;
        let mut pause = Duration::from_millis(200);
        while let Some(first) = attempts.first() {
            let reported: Vec<RecipientReport> = match notice {
                Some(Action::Failed) => attempts
                    .iter()
                    .filter(|a| a.r.notify().failure)
                    .map(|a| a.recipient_report(Action::Failed))
                    .collect(),
                Some(action) => attempts
                    .iter()
                    .map(|a| a.recipient_report(action))
                    .collect(),
                None => Vec::new(),
            };
            let report = self.report_message(first.r, &reported).await;
            let rows: Vec<_> = attempts
                .iter()
                .map(|a| {
                    (
                        a.r.recipient_id,
                        self.outcome(a, jitter(a)),
                        a.report.clone(),
                    )
                })
                .collect();
            let with = report.as_ref().map(|(e, c)| (e, c.as_slice()));
            let delay_report = notice == Some(Action::Delayed);
            let recorded = self
                .store
                .record_attempts_with_report(&self.owner, &rows, with, delay_report)
                .await;
            match recorded {
                Ok(()) => {
                    for a in &attempts {
                        let result = self.outcome(a, jitter(a)).state().as_str();
                        self.finished(a, result);
                    }
                    if let (Some(_), Some(action)) = (&report, notice) {
                        self.metrics.reported(action.as_str());
                        // The report is new mail: deliver it without waiting for the scan.
                        self.wakes.both();
                    }
                    if notice.is_some() {
                        tracing::info!(queue_id = %first.r.queue_id, recipients = attempts.len(),
                            report = report.is_some(), "recorded with report");
                    }
                    return;
                }
                Err(StoreError::LeaseLost(id)) => {
                    let (lost, rest) = attempts.into_iter().partition(|a| a.r.recipient_id == id);
                    for a in &lost {
                        self.finished(a, "lease_lost");
                    }
                    attempts = rest;
                }
                Err(e)
                    if first_failure.get_or_insert_with(Instant::now).elapsed()
                        < self.settings.lease =>
                {
                    tracing::warn!("recording attempts failed: {e}; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(
                        "recording attempts failed (the leases expire and they are retried): {e}"
                    );
                    for a in &attempts {
                        self.finished(a, "error");
                    }
                    return;
                }
            }
        }
    }

    fn outcome(&self, a: &Attempt, jitter: f64) -> AttemptOutcome {
        match a.verdict {
            Verdict::Delivered => AttemptOutcome::Delivered,
            Verdict::Relayed => AttemptOutcome::Relayed,
            Verdict::Failed => AttemptOutcome::Failed,
            Verdict::Expired => AttemptOutcome::Expired,
            Verdict::Deferred => AttemptOutcome::Deferred {
                retry_after: self.settings.retry.after(a.r.attempts as u32 + 1, jitter),
            },
        }
    }

    /// Logs and counts what became of an attempt.
    fn finished(&self, a: &Attempt, result: &'static str) {
        if a.verdict == Verdict::Deferred {
            tracing::info!(parent: &a.span, status = ?a.report.status,
                diagnostic = %Untrusted(&a.report.diagnostic), "deferred");
        }
        a.span.record("result", result);
        self.metrics.attempted(a.r, result);
    }

    /// The report message and its envelope (from `<>` to the original sender), or None when
    /// no report is to be sent.
    pub async fn report_message(
        &self,
        first: &ClaimedRecipient,
        recipients: &[RecipientReport],
    ) -> Option<(NewEnvelope, Vec<u8>)> {
        // Never a report about a report (RFC 3461 6.2), and none nobody asked for.
        let to = first.reverse_path.as_ref()?;
        if recipients.is_empty() {
            return None;
        }
        let settings = &self.settings;
        let original = match self.store.message_content(first.message_id).await {
            Ok(Some(content)) => content,
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::error!("reading the message for its report failed: {e}");
                Vec::new()
            }
        };
        // Only a failure report returns the whole message (RET=FULL or no RET). Success and
        // delay reports return the header alone (RFC 3461 4.3 lets the MTA choose): anyone may
        // ask for them with a forged MAIL FROM, and a report carrying the full message would
        // deliver any content to that victim under this server's name.
        let failure = recipients.iter().all(|r| r.action == Action::Failed);
        // A REQUIRETLS message's text must not leave in a report that may travel less
        // protected than it did (RFC 8689 5): the header only, and the report asks for
        // REQUIRETLS itself.
        let ret = match first.ret {
            _ if !failure || first.requiretls => Return::Headers,
            Some(pochta_mail::Ret::Hdrs) => Return::Headers,
            _ if original.len() > settings.dsn_max_full_bytes => Return::Headers,
            _ => Return::Full,
        };
        // The report goes to the local or the remote loops like any mail to its recipient
        // (if the lookup fails, the remote loops deliver it locally all the same).
        let local = match self.store.lookup_recipient(to).await {
            Ok(found) => found.role == Some(DomainRole::Local),
            Err(e) => {
                tracing::warn!("looking up where a report goes failed: {e}");
                false
            }
        };
        let queue_id = QueueId::generate();
        let content = dsn::build(&Report {
            reporting_mta: &settings.hostname,
            to: &to.to_string(),
            envid: first.envid.as_deref(),
            arrival: first.arrived_at,
            date: Utc::now(),
            id: queue_id.as_str(),
            recipients,
            original: &original,
            ret,
        });
        // Signed like our users' mail, so a receiver enforcing DMARC for our domain takes it.
        let content = match &settings.dkim {
            Some(dkim) => dkim.signed_report(content).await,
            None => content,
        };
        let envelope = NewEnvelope {
            quarantine: None,
            requiretls: first.requiretls,
            queue_id,
            reverse_path: None,
            envid: None,
            ret: None,
            body: Some(Body::EightBitMime),
            smtputf8: false,
            client_address: None,
            client_helo: None,
            auth_user: None,
            received_by: Some(settings.hostname.clone()),
            traceparent: pochta_telemetry::grpc::current_traceparent(),
            lifetime: settings.lifetime,
            recipients: vec![NewRecipient {
                address: Mailbox::clone(to),
                orcpt: None,
                notify: None,
                disposition: if local {
                    Disposition::Local
                } else {
                    Disposition::Remote
                },
            }],
        };
        Some((envelope, content))
    }
}
