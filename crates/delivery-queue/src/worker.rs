//! Delivery workers: claim due recipients with leases, deliver, record the result.
//!
//! Local recipients go into their account's maildrop, exactly once. A local recipient whose
//! account is gone or disabled fails (5.1.1 / 5.2.1), and mail past its lifetime expires
//! (4.4.7); either way with the failure report NOTIFY asks for, enqueued in the same
//! transaction, one report per message and pass. A local delivery with NOTIFY=SUCCESS gets a
//! `delivered` report the same way. Other recipients go over SMTP to their destination (a
//! static route, the smarthost, or the domain's MX hosts); see `deliver_remote`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use pochta_service::Shutdown;
use pochta_store::{
    AttemptOutcome, AttemptReport, BodyType, ClaimedRecipient, DomainRole, LocalDelivery,
    MailboxAddress, MaildropDelivery, NewEnvelope, NewRecipient, Notify, QueueId, RecipientLookup,
    Store, StoreError,
};
use rand::Rng;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::dsn::{self, Action, RecipientReport, Report, Return};
use crate::{mx, remote};
use pochta_smtp::client::{RecipientOutcome, TlsPolicy};

/// Wakes delivery loops when new work may be due (Notify, ETRN). Wake-ups coalesce: one idle
/// loop is woken, and wake-ups until it claims add nothing (its claim will see that work
/// too), so loops do not all query at every new message. A loop that claimed a full batch
/// wakes another, so loops join in as the work grows. A wake-up while no loop waits is kept
/// for the next loop that goes idle, so none is lost.
#[derive(Clone)]
pub struct Wake(Arc<WakeState>);

struct WakeState {
    notify: tokio::sync::Notify,
    /// A loop was woken and has not claimed yet.
    pending: AtomicBool,
}

impl Wake {
    pub fn new() -> Self {
        Wake(Arc::new(WakeState {
            notify: tokio::sync::Notify::new(),
            pending: AtomicBool::new(false),
        }))
    }

    pub fn wake(&self) {
        if !self.0.pending.swap(true, Ordering::AcqRel) {
            self.0.notify.notify_one();
        }
    }

    async fn woken(&self) {
        self.0.notify.notified().await;
    }

    /// Called just before claiming: wake-ups from now on may be for work this claim misses.
    fn claiming(&self) {
        self.0.pending.store(false, Ordering::Release);
    }
}

/// Retry delays: `first` after the first failed attempt, doubling with each further one, capped
/// at `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after `attempts` attempts (1 or more). `jitter` in [0.5, 1] scales it, so that
    /// mail deferred together (say, a burst to one unreachable host) does not retry together.
    pub fn after(&self, attempts: u32, jitter: f64) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        let full = self.first.saturating_mul(1 << doublings).min(self.max);
        full.mul_f64(jitter.clamp(0.5, 1.0))
            .max(Duration::from_secs(1).min(full))
    }
}

/// Where remote mail goes.
pub struct Outbound {
    pub routes: std::collections::BTreeMap<String, String>,
    pub smarthost: Option<String>,
    /// STARTTLS policy by recipient domain (`.example.com` for its subdomains), else `tls`.
    pub tls_by_domain: std::collections::BTreeMap<String, TlsPolicy>,
    pub tls: TlsPolicy,
    /// Idle connections kept for the next message to the same server.
    pub pool: Arc<remote::Pool>,
    pub connector: tokio_rustls::TlsConnector,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub resolver: hickory_resolver::TokioResolver,
    pub mx_port: u16,
    pub per_destination: usize,
    /// One semaphore per destination in use (they are small; never pruned).
    pub slots:
        std::sync::Mutex<std::collections::HashMap<Destination, Arc<tokio::sync::Semaphore>>>,
}

/// Where a domain's mail goes: a configured `host:port`, or its MX hosts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Static(String),
    Mx(String),
}

impl Outbound {
    /// Waits for a free connection slot to `destination`.
    async fn slot(&self, destination: &Destination) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self.slots.lock().expect("slots lock");
            slots
                .entry(destination.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_destination)))
                .clone()
        };
        semaphore.acquire_owned().await.ok()
    }

    /// The STARTTLS policy for mail to `domain`: its own, its nearest parent's (`.parent`
    /// entries), or the default.
    fn tls_policy(&self, domain: &str) -> TlsPolicy {
        if let Some(policy) = self.tls_by_domain.get(domain) {
            return *policy;
        }
        let mut rest = domain;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(policy) = self.tls_by_domain.get(&format!(".{parent}")) {
                return *policy;
            }
            rest = parent;
        }
        self.tls
    }

    fn destination(&self, domain: &str) -> Destination {
        match self.routes.get(domain).or(self.smarthost.as_ref()) {
            Some(target) => Destination::Static(target.clone()),
            None => Destination::Mx(domain.to_owned()),
        }
    }

    /// The servers to try, best first, as (name, `addr:port`); or why there are none.
    async fn candidates(
        &self,
        destination: &Destination,
    ) -> Result<Vec<(String, String)>, mx::Resolution> {
        let domain = match destination {
            Destination::Static(target) => {
                let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
                return Ok(vec![(
                    host.trim_matches(['[', ']']).to_owned(),
                    target.clone(),
                )]);
            }
            Destination::Mx(domain) => domain,
        };
        let hosts = match mx::mail_hosts(&self.resolver, domain).await {
            mx::Resolution::Hosts(hosts) => hosts,
            other => return Err(other),
        };
        let mut candidates = Vec::new();
        let mut problems = Vec::new();
        for host in hosts {
            match mx::addresses(&self.resolver, &host).await {
                Ok(ips) => candidates.extend(ips.into_iter().map(|ip| {
                    (
                        host.clone(),
                        std::net::SocketAddr::new(ip, self.mx_port).to_string(),
                    )
                })),
                Err(why) => problems.push(why),
            }
        }
        if candidates.is_empty() {
            let why = if problems.is_empty() {
                format!("no mail host of {domain} has an address")
            } else {
                problems.join("; ")
            };
            return Err(mx::Resolution::TryLater(why));
        }
        Ok(candidates)
    }
}

pub struct Settings {
    pub owner: String,
    /// NOTIFY=DELAY recipients still waiting this long after arrival get a delay report.
    pub delay_report_after: Duration,
    pub outbound: Outbound,
    /// Reporting-MTA of delivery reports.
    pub hostname: String,
    /// Lifetime of the reports themselves.
    pub lifetime: Duration,
    pub dsn_max_full_bytes: usize,
    pub batch: u32,
    pub claim_delay: Duration,
    pub lease: Duration,
    pub scan_interval: Duration,
    pub retry: Backoff,
}

struct Metrics {
    attempts: Counter<u64>,
    reports: Counter<u64>,
    latency: opentelemetry::metrics::Histogram<f64>,
}

impl Metrics {
    /// One attempt of `r` ended in `result`; a final result also records the time from
    /// acceptance to it.
    fn attempted(&self, r: &ClaimedRecipient, result: &'static str) {
        let attributes = [KeyValue::new("result", result)];
        self.attempts.add(1, &attributes);
        if matches!(result, "delivered" | "relayed" | "failed" | "expired") {
            let seconds = (Utc::now() - r.arrived_at).num_milliseconds().max(0) as f64 / 1000.0;
            self.latency.record(seconds, &attributes);
        }
    }

    fn reported(&self, action: &'static str) {
        self.reports.add(1, &[KeyValue::new("action", action)]);
    }
}

pub async fn run(
    store: Store,
    settings: Arc<Settings>,
    wake: Wake,
    shutdown: Shutdown,
    index: u32,
) {
    let meter = opentelemetry::global::meter("delivery-queue");
    let metrics = Metrics {
        attempts: meter
            .u64_counter("pochta.queue.delivery.attempts")
            .with_description("Delivery attempts, by result")
            .build(),
        reports: meter
            .u64_counter("pochta.queue.reports")
            .with_description("Delivery status reports sent, by action")
            .build(),
        latency: meter
            .f64_histogram("pochta.queue.delivery.latency")
            .with_unit("s")
            .with_description("From acceptance to the final result, by result")
            .with_boundaries(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                1800.0, 3600.0, 14400.0, 86400.0, 432000.0,
            ])
            .build(),
    };
    let owner = format!("{}/{index}", settings.owner);
    // Claim at once at start-up; then after a full batch (more is probably due), otherwise
    // only when woken (after gathering for `claim_delay`) or at the scan interval.
    let mut claim_now = true;
    while !shutdown.is_started() {
        if !claim_now {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = wake.woken() => {
                    // Gather what else arrives into the same batch.
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(settings.claim_delay) => {}
                    }
                }
                _ = tokio::time::sleep(settings.scan_interval) => {}
            }
        }
        wake.claiming();
        let claimed = match store
            .claim_due(&owner, settings.batch, settings.lease)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::error!("claiming due recipients failed: {e}");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(settings.scan_interval) => {}
                }
                claim_now = true;
                continue;
            }
        };
        claim_now = claimed.len() >= settings.batch as usize;
        if claim_now {
            // Probably more is due: another loop can take the next batch meanwhile.
            wake.wake();
        }
        // A claimed batch is finished even during shutdown: each delivery is short, and a
        // recipient left leased would wait for its lease to expire. The whole batch's leases
        // are renewed while it lasts: its envelopes are delivered one after another, and a
        // slow remote server early in the batch must not let the later leases expire.
        let ids = claimed.iter().map(|r| r.recipient_id).collect();
        let batch = async {
            let (claimed, known) = deliver_local_together(&store, &owner, &metrics, claimed).await;
            for group in by_envelope(claimed) {
                let failures =
                    deliver_envelope(&store, &owner, &settings, &metrics, &known, &group).await;
                if !failures.is_empty() {
                    fail_with_report(&store, &owner, &settings, &metrics, failures).await;
                    // The report is new mail: deliver it without waiting for the scan.
                    wake.wake();
                }
            }
        };
        renewing(&store, &owner, settings.lease, ids, batch).await;
    }
}

/// The common case in one lookup and one statement for the whole claimed batch: live local
/// recipients with an enabled account and no report to send. Returns the others (remote, a
/// report owed, a failure to report, or everything if the store failed), for the per-envelope
/// path, with what the lookup found for them (by recipient id) so it is not asked again.
async fn deliver_local_together(
    store: &Store,
    owner: &str,
    metrics: &Metrics,
    claimed: Vec<ClaimedRecipient>,
) -> (Vec<ClaimedRecipient>, Known) {
    let mut known = Known::new();
    let now = Utc::now();
    let (candidates, mut rest): (Vec<_>, Vec<_>) = claimed
        .into_iter()
        .partition(|r| !r.cancelled && r.expires_at > now && !wants(r, |n| n.success, false));
    let mut addresses = Vec::with_capacity(candidates.len());
    let mut parsed = Vec::with_capacity(candidates.len());
    for r in candidates {
        match MailboxAddress::parse(&r.address) {
            Ok(address) => {
                addresses.push(address);
                parsed.push(r);
            }
            Err(_) => rest.push(r),
        }
    }
    if parsed.is_empty() {
        return (rest, known);
    }
    let lookups = match store.lookup_recipients(&addresses).await {
        Ok(lookups) => lookups,
        Err(e) => {
            tracing::warn!("looking up a batch of recipients failed: {e}");
            rest.extend(parsed);
            return (rest, known);
        }
    };
    let mut local = Vec::new();
    let mut deliveries = Vec::new();
    for (r, found) in parsed.into_iter().zip(lookups) {
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
    match store.deliver_many_to_maildrops(owner, &deliveries).await {
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
                metrics.attempted(r, result);
            }
        }
        Err(e) => {
            tracing::warn!("delivering a batch to maildrops failed, one by one instead: {e}");
            rest.extend(local.into_iter().map(|(_, r)| r));
        }
    }
    (rest, known)
}

/// Recipient lookups already made in this pass, by recipient id.
type Known = std::collections::HashMap<i64, RecipientLookup>;

/// RFC 5321 4.4: the final delivery adds Return-Path (<> for the null sender).
fn header_prefix(r: &ClaimedRecipient) -> String {
    format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        r.reverse_path, r.address
    )
}

/// Claimed recipients grouped by envelope, in claim order.
fn by_envelope(claimed: Vec<ClaimedRecipient>) -> Vec<Vec<ClaimedRecipient>> {
    let mut groups: Vec<Vec<ClaimedRecipient>> = Vec::new();
    for r in claimed {
        match groups
            .iter_mut()
            .find(|g| g[0].envelope_id == r.envelope_id)
        {
            Some(group) => group.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
}

/// The span of one attempt, a child of the SMTP transaction that accepted the message.
fn attempt_span(r: &ClaimedRecipient) -> tracing::Span {
    let span = tracing::info_span!(
        "queue.delivery",
        queue_id = %r.queue_id,
        recipient = %r.address,
        attempt = r.attempts + 1,
        result = tracing::field::Empty,
    );
    if let Some(traceparent) = &r.traceparent {
        let _ = span.set_parent(pochta_telemetry::grpc::context_from_traceparent(
            traceparent,
        ));
    }
    span
}

/// Attempts every recipient of one envelope; returns the ones that failed permanently, whose
/// results are recorded together with their report.
async fn deliver_envelope<'a>(
    store: &Store,
    owner: &str,
    settings: &Settings,
    metrics: &Metrics,
    known: &Known,
    group: &'a [ClaimedRecipient],
) -> Vec<(&'a ClaimedRecipient, AttemptOutcome, AttemptReport)> {
    let mut failures = Vec::new();
    let mut remote = Vec::new();
    let mut deferrals = Vec::new();
    for r in group {
        let span = attempt_span(r);
        let failure = if r.cancelled {
            Some((
                AttemptOutcome::Failed,
                "5.0.0",
                "deleted from the queue by the postmaster".to_owned(),
            ))
        } else if r.expires_at <= Utc::now() {
            Some((
                AttemptOutcome::Expired,
                "4.4.7",
                "message expired: not delivered within the queue lifetime".to_owned(),
            ))
        } else {
            let result = deliver(store, owner, settings, known.get(&r.recipient_id), r)
                .instrument(span.clone())
                .await;
            match result {
                Attempted::Done { result, reported } => {
                    span.record("result", result);
                    metrics.attempted(r, result);
                    if reported {
                        metrics.reported("delivered");
                    }
                    None
                }
                Attempted::Failed(status, text) => Some((AttemptOutcome::Failed, status, text)),
                Attempted::Deferred(status, text) => {
                    deferrals.push(Deferral::new(r, span, status, &text, None));
                    continue;
                }
                Attempted::Remote => {
                    remote.push((r, span));
                    continue;
                }
            }
        };
        if let Some((outcome, status, diagnostic)) = failure {
            let name = outcome.state().as_str();
            span.record("result", name);
            metrics.attempted(r, name);
            let report = AttemptReport {
                remote_mta: None,
                reply_code: None,
                status: Some(status.to_owned()),
                diagnostic,
            };
            failures.push((r, outcome, report));
        }
    }
    deliver_remote(
        store,
        owner,
        settings,
        metrics,
        remote,
        &mut failures,
        &mut deferrals,
    )
    .await;
    defer_with_report(store, owner, settings, metrics, deferrals).await;
    failures
}

/// Runs `work` while renewing `owner`'s leases on `ids` every third of the lease time, so a
/// slow remote server cannot make a lease expire and another replica deliver the same mail
/// again. Recipients that finish meanwhile simply drop out of the renewal.
async fn renewing<T>(
    store: &Store,
    owner: &str,
    lease: Duration,
    ids: Vec<i64>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut renew = tokio::time::interval(lease / 3);
    renew.tick().await;
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = renew.tick() => {
                if let Err(e) = store.renew_leases(owner, &ids, lease).await {
                    tracing::warn!("renewing leases failed: {e}");
                }
            }
        }
    }
}

/// A recipient to try again later, and why.
struct Deferral<'a> {
    r: &'a ClaimedRecipient,
    span: tracing::Span,
    attempt: AttemptReport,
}

impl<'a> Deferral<'a> {
    fn new(
        r: &'a ClaimedRecipient,
        span: tracing::Span,
        status: &str,
        diagnostic: &str,
        remote: Option<(&str, u16)>,
    ) -> Self {
        let attempt = AttemptReport {
            remote_mta: remote.map(|(mta, _)| mta.to_owned()),
            reply_code: remote
                .map(|(_, code)| code)
                .filter(|c| (200..600).contains(c)),
            status: Some(status.to_owned()),
            diagnostic: diagnostic.to_owned(),
        };
        Deferral { r, span, attempt }
    }
}

/// Records one envelope's deferrals, each with its backoff. Those whose NOTIFY asks for DELAY
/// and that have waited `delay_report_after` get their one delay report (RFC 3461 4.1): one
/// report for all of them, in the same transaction that records them and marks them reported.
async fn defer_with_report(
    store: &Store,
    owner: &str,
    settings: &Settings,
    metrics: &Metrics,
    deferrals: Vec<Deferral<'_>>,
) {
    let now = Utc::now();
    let due = |d: &Deferral| {
        !d.r.delay_reported
            && !d.r.reverse_path.is_empty()
            && wants(d.r, |n| n.delay, false)
            && (now - d.r.arrived_at)
                .to_std()
                .is_ok_and(|waited| waited >= settings.delay_report_after)
    };
    let (mut reported, plain): (Vec<_>, Vec<_>) = deferrals.into_iter().partition(|d| due(d));
    // One jitter for the whole message, so its recipients stay due together (one report).
    let jitter = rand::rng().random_range(0.5..=1.0);
    let outcome = |d: &Deferral| AttemptOutcome::Deferred {
        retry_after: settings.retry.after(d.r.attempts as u32 + 1, jitter),
    };
    // All in one transaction: one round trip, and one `now()`, so recipients deferred
    // together are due again at the same instant and claimed together.
    let mut plain = plain;
    while !plain.is_empty() {
        let attempts: Vec<_> = plain
            .iter()
            .map(|d| (d.r.recipient_id, outcome(d), d.attempt.clone()))
            .collect();
        let (done, result) = match store
            .record_attempts_with_report(owner, &attempts, None, false)
            .await
        {
            Ok(()) => (std::mem::take(&mut plain), "deferred"),
            // Another worker has that one now: record the others.
            Err(StoreError::LeaseLost(id)) => {
                let (lost, rest) = plain.into_iter().partition(|d| d.r.recipient_id == id);
                plain = rest;
                (lost, "lease_lost")
            }
            Err(e) => {
                tracing::error!(
                    "recording deferrals failed (the leases expire and they are retried): {e}"
                );
                (std::mem::take(&mut plain), "error")
            }
        };
        for d in &done {
            tracing::info!(parent: &d.span, status = ?d.attempt.status, diagnostic = %d.attempt.diagnostic, "deferred");
            d.span.record("result", result);
            metrics.attempted(d.r, result);
        }
    }
    while !reported.is_empty() {
        let reports: Vec<RecipientReport> = reported
            .iter()
            .map(|d| RecipientReport {
                last_attempt: Some(now),
                will_retry_until: Some(d.r.expires_at),
                ..recipient_report(d.r, &d.attempt, Action::Delayed, "4.0.0")
            })
            .collect();
        let report = report_message(store, settings, reported[0].r, &reports).await;
        let attempts: Vec<_> = reported
            .iter()
            .map(|d| (d.r.recipient_id, outcome(d), d.attempt.clone()))
            .collect();
        let with = report.as_ref().map(|(e, c)| (e, c.as_slice()));
        match store
            .record_attempts_with_report(owner, &attempts, with, true)
            .await
        {
            Ok(()) => {
                metrics.reported("delayed");
                for d in &reported {
                    d.span.record("result", "deferred");
                    metrics.attempted(d.r, "deferred");
                }
                tracing::info!(queue_id = %reported[0].r.queue_id, recipients = reported.len(), "deferred, delay report sent");
                return;
            }
            Err(StoreError::LeaseLost(id)) => reported.retain(|d| d.r.recipient_id != id),
            Err(e) => {
                tracing::error!(
                    "recording deferrals failed (the leases expire and they are retried): {e}"
                );
                return;
            }
        }
    }
}

/// A recipient being attempted, with its attempt span.
type Attempting<'a> = (&'a ClaimedRecipient, tracing::Span);

/// Hands remote recipients of one envelope to their route's server, one transaction per route
/// and TLS policy; 5xx answers join `failures` (reported with the envelope's other failures).
async fn deliver_remote<'a>(
    store: &Store,
    owner: &str,
    settings: &Settings,
    metrics: &Metrics,
    remote: Vec<Attempting<'a>>,
    failures: &mut Vec<(&'a ClaimedRecipient, AttemptOutcome, AttemptReport)>,
    deferrals: &mut Vec<Deferral<'a>>,
) {
    let mut by_destination: Vec<((Destination, TlsPolicy), Vec<Attempting>)> = Vec::new();
    for (r, span) in remote {
        let key = (
            settings.outbound.destination(&r.domain),
            settings.outbound.tls_policy(&r.domain),
        );
        match by_destination.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push((r, span)),
            None => by_destination.push((key, vec![(r, span)])),
        }
    }
    for ((destination, tls), recipients) in by_destination {
        let candidates = match settings.outbound.candidates(&destination).await {
            Ok(candidates) => candidates,
            Err(mx::Resolution::NoMail { status, why }) => {
                for (r, span) in recipients {
                    let attempt = AttemptReport {
                        remote_mta: None,
                        reply_code: None,
                        status: Some(status.into()),
                        diagnostic: why.clone(),
                    };
                    span.record("result", "failed");
                    metrics.attempted(r, "failed");
                    failures.push((r, AttemptOutcome::Failed, attempt));
                }
                continue;
            }
            Err(other) => {
                let why = match other {
                    mx::Resolution::TryLater(why) => why,
                    _ => "no mail host could be found".to_owned(),
                };
                for (r, span) in recipients {
                    deferrals.push(Deferral::new(r, span, "4.4.3", &why, None));
                }
                continue;
            }
        };
        let first = recipients[0].0;
        let message = match store.message_content(first.message_id).await {
            Ok(Some(m)) => m,
            other => {
                tracing::error!(queue_id = %first.queue_id, "message content unavailable: {other:?}");
                for (r, span) in recipients {
                    deferrals.push(Deferral::new(
                        r,
                        span,
                        "4.3.0",
                        "message content unavailable",
                        None,
                    ));
                }
                continue;
            }
        };
        let outgoing = pochta_smtp::client::Outgoing {
            helo_name: settings.hostname.clone(),
            reverse_path: first.reverse_path.clone(),
            envid: first.envid.clone(),
            ret: match first.ret.as_deref() {
                Some("FULL") => Some(pochta_smtp::Ret::Full),
                Some("HDRS") => Some(pochta_smtp::Ret::Hdrs),
                _ => None,
            },
            eight_bit: first.body.as_deref() == Some("8BITMIME"),
            smtputf8: first.smtputf8,
            size: message.len(),
            recipients: recipients
                .iter()
                .map(|(r, _)| pochta_smtp::client::OutgoingRecipient {
                    address: r.address.clone(),
                    notify: r
                        .notify
                        .as_deref()
                        .and_then(|n| n.parse::<Notify>().ok())
                        .map(|n| pochta_smtp::Notify {
                            success: n.success,
                            failure: n.failure,
                            delay: n.delay,
                        }),
                    orcpt: r.orcpt.clone(),
                })
                .collect(),
            tls,
        };
        let _slot = settings.outbound.slot(&destination).await;
        // Each candidate in turn until one takes the connection (RFC 5321 5.1).
        let mut result = Err(String::new());
        let mut remote_mta = String::new();
        for (host, address) in &candidates {
            let target = remote::Target {
                host,
                address: address.clone(),
                connect_timeout: settings.outbound.connect_timeout,
                reply_timeout: settings.outbound.reply_timeout,
                tls: &settings.outbound.connector,
            };
            let span =
                tracing::info_span!("queue.remote", %host, %address, recipients = recipients.len());
            remote_mta = format!("{host} ({address})");
            // The leases are renewed meanwhile by the loop that claimed the batch (`run`).
            result = remote::deliver(&settings.outbound.pool, &target, outgoing.clone(), &message)
                .instrument(span)
                .await;
            match &result {
                Ok(_) => break,
                Err(why) => tracing::info!("{why}; trying the next host if any"),
            }
        }
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(why) => {
                for (r, span) in recipients {
                    deferrals.push(Deferral::new(r, span, "4.4.1", &why, None));
                }
                continue;
            }
        };
        let mut relayed_reports = Vec::new();
        for ((r, span), outcome) in recipients.into_iter().zip(outcomes) {
            let (outcome, reply) = match outcome {
                RecipientOutcome::Accepted { reply, dsn: true } => {
                    (AttemptOutcome::Delivered, reply)
                }
                RecipientOutcome::Accepted { reply, dsn: false } => {
                    (AttemptOutcome::Relayed, reply)
                }
                RecipientOutcome::Rejected(reply) => (AttemptOutcome::Failed, reply),
                RecipientOutcome::Deferred(reply) => {
                    let status = reply.status.as_deref().unwrap_or("4.0.0");
                    let remote = Some((remote_mta.as_str(), reply.code));
                    deferrals.push(Deferral::new(
                        r,
                        span,
                        status,
                        &reply.to_diagnostic(),
                        remote,
                    ));
                    continue;
                }
            };
            let name = outcome.state().as_str();
            span.record("result", name);
            metrics.attempted(r, name);
            let attempt = AttemptReport {
                remote_mta: Some(remote_mta.clone()),
                reply_code: Some(reply.code),
                status: Some(reply.status.clone().unwrap_or_else(|| {
                    if reply.code >= 500 {
                        "5.0.0".into()
                    } else {
                        "2.0.0".into()
                    }
                })),
                diagnostic: reply.to_diagnostic(),
            };
            match outcome {
                AttemptOutcome::Failed => failures.push((r, outcome, attempt)),
                // Handed to a server without DSN: we report `relayed` if SUCCESS was asked
                // (RFC 3461 5.2.2); a DSN-capable server reports onward itself.
                AttemptOutcome::Relayed if wants(r, |n| n.success, false) => {
                    relayed_reports.push((r, outcome, attempt))
                }
                _ => {
                    if let Err(e) = store
                        .record_attempt(owner, r.recipient_id, outcome, &attempt)
                        .await
                    {
                        tracing::warn!("recording the attempt failed: {e}");
                    }
                }
            }
        }
        if !relayed_reports.is_empty() {
            let reports: Vec<RecipientReport> = relayed_reports
                .iter()
                .map(|(r, _, a)| recipient_report(r, a, Action::Relayed, "2.0.0"))
                .collect();
            let report = report_message(store, settings, relayed_reports[0].0, &reports).await;
            let attempts: Vec<_> = relayed_reports
                .iter()
                .map(|(r, o, a)| (r.recipient_id, *o, a.clone()))
                .collect();
            let with = report.as_ref().map(|(e, c)| (e, c.as_slice()));
            match store
                .record_attempts_with_report(owner, &attempts, with, false)
                .await
            {
                Ok(()) if report.is_some() => metrics.reported("relayed"),
                Ok(()) => {}
                Err(e) => tracing::warn!(
                    "recording relayed recipients failed (they are retried when their leases expire): {e}"
                ),
            }
        }
    }
}

/// Records permanent failures of one envelope's recipients and, in the same transaction, the
/// report their NOTIFY asks for (none for NOTIFY=NEVER or without FAILURE, none to `<>`).
async fn fail_with_report(
    store: &Store,
    owner: &str,
    settings: &Settings,
    metrics: &Metrics,
    mut failures: Vec<(&ClaimedRecipient, AttemptOutcome, AttemptReport)>,
) {
    while !failures.is_empty() {
        let reportable: Vec<RecipientReport> = failures
            .iter()
            .filter(|(r, _, _)| wants(r, |n| n.failure, true))
            .map(|(r, _, attempt)| recipient_report(r, attempt, Action::Failed, "5.0.0"))
            .collect();
        let report = report_message(store, settings, failures[0].0, &reportable).await;
        let attempts: Vec<_> = failures
            .iter()
            .map(|(r, o, a)| (r.recipient_id, *o, a.clone()))
            .collect();
        let with = report.as_ref().map(|(e, c)| (e, c.as_slice()));
        match store
            .record_attempts_with_report(owner, &attempts, with, false)
            .await
        {
            Ok(()) => {
                if report.is_some() {
                    metrics.reported("failed");
                }
                tracing::info!(queue_id = %failures[0].0.queue_id, recipients = failures.len(), report = report.is_some(), "failed");
                return;
            }
            // Another worker has that recipient now: report on the others.
            Err(StoreError::LeaseLost(id)) => failures.retain(|(r, _, _)| r.recipient_id != id),
            Err(e) => {
                tracing::error!(
                    "recording failures failed (the leases expire and they are retried): {e}"
                );
                return;
            }
        }
    }
}

/// The per-recipient fields of a report on `attempt` (RFC 3464 2.3), attempted just now;
/// `default_status` when the attempt has no enhanced status code.
fn recipient_report(
    r: &ClaimedRecipient,
    attempt: &AttemptReport,
    action: Action,
    default_status: &str,
) -> RecipientReport {
    RecipientReport {
        orcpt: r.orcpt.clone(),
        final_recipient: r.address.clone(),
        action,
        status: attempt
            .status
            .clone()
            .unwrap_or_else(|| default_status.to_owned()),
        remote_mta: attempt.remote_mta.clone(),
        diagnostic: Some(attempt.diagnostic.clone()),
        last_attempt: Some(Utc::now()),
        will_retry_until: None,
    }
}

/// NOTIFY of a recipient: `flag` of it, or `default` when RCPT had no NOTIFY.
fn wants(r: &ClaimedRecipient, flag: impl Fn(&Notify) -> bool, default: bool) -> bool {
    match r.notify.as_deref().map(str::parse::<Notify>) {
        Some(Ok(notify)) => flag(&notify),
        _ => default,
    }
}

/// The report message and its envelope (from `<>` to the original sender), or None when no
/// report is to be sent.
async fn report_message(
    store: &Store,
    settings: &Settings,
    first: &ClaimedRecipient,
    recipients: &[RecipientReport],
) -> Option<(NewEnvelope, Vec<u8>)> {
    // Never a report about a report (RFC 3461 6.2), and none nobody asked for.
    if recipients.is_empty() || first.reverse_path.is_empty() {
        return None;
    }
    let Ok(to) = MailboxAddress::parse(&first.reverse_path) else {
        tracing::warn!(sender = %first.reverse_path, "cannot send a report to this sender address");
        return None;
    };
    let original = match store.message_content(first.message_id).await {
        Ok(Some(content)) => content,
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::error!("reading the message for its report failed: {e}");
            Vec::new()
        }
    };
    let ret = match first.ret.as_deref() {
        Some("HDRS") => Return::Headers,
        _ if original.len() > settings.dsn_max_full_bytes => Return::Headers,
        _ => Return::Full,
    };
    let queue_id = QueueId::generate();
    let content = dsn::build(&Report {
        reporting_mta: &settings.hostname,
        to: &first.reverse_path,
        envid: first.envid.as_deref(),
        arrival: first.arrived_at,
        date: Utc::now(),
        id: queue_id.as_str(),
        recipients,
        original: &original,
        ret,
    });
    let envelope = NewEnvelope {
        queue_id,
        reverse_path: String::new(),
        envid: None,
        ret: None,
        body: Some(BodyType::EightBitMime),
        smtputf8: false,
        client_address: None,
        client_helo: None,
        auth_user: None,
        received_by: Some(settings.hostname.clone()),
        traceparent: pochta_telemetry::grpc::current_traceparent(),
        lifetime: settings.lifetime,
        recipients: vec![NewRecipient {
            address: to,
            orcpt: None,
            notify: None,
            held: false,
        }],
    };
    Some((envelope, content))
}

/// How one attempt ended.
enum Attempted {
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
    /// Not a local domain: goes to a remote server.
    Remote,
}

/// One attempt for one recipient.
async fn deliver(
    store: &Store,
    owner: &str,
    settings: &Settings,
    known: Option<&RecipientLookup>,
    r: &ClaimedRecipient,
) -> Attempted {
    match try_local(store, owner, settings, known, r).await {
        Ok(Some(result)) => result,
        Ok(None) => Attempted::Remote,
        Err(e) => {
            tracing::error!("delivery failed: {e}");
            let text = format!("temporary local error: {e}");
            Attempted::Deferred("4.3.0", text)
        }
    }
}

/// Delivers a local domain's recipient; None when the domain is not local. `known` is the
/// recipient's lookup if this pass already made it.
async fn try_local(
    store: &Store,
    owner: &str,
    settings: &Settings,
    known: Option<&RecipientLookup>,
    r: &ClaimedRecipient,
) -> Result<Option<Attempted>, StoreError> {
    let Ok(address) = MailboxAddress::parse(&r.address) else {
        if store.domain_role(&r.domain).await? != Some(DomainRole::Local) {
            return Ok(None);
        }
        return Ok(Some(Attempted::Failed(
            "5.1.3",
            format!("malformed recipient address {:?}", r.address),
        )));
    };
    let found = match known {
        Some(found) => *found,
        None => store.lookup_recipient(&address).await?,
    };
    if found.role != Some(DomainRole::Local) {
        return Ok(None);
    }
    let account = match found.account {
        Some(account) if account.disabled => {
            return Ok(Some(Attempted::Failed(
                "5.2.1",
                "550 5.2.1 mailbox disabled".into(),
            )));
        }
        Some(account) => account,
        // The account went away after the mail was accepted.
        None => {
            return Ok(Some(Attempted::Failed(
                "5.1.1",
                "550 5.1.1 no such user here".into(),
            )));
        }
    };
    let prefix = header_prefix(r);
    let report = if wants(r, |n| n.success, false) {
        let delivered = RecipientReport {
            orcpt: r.orcpt.clone(),
            final_recipient: r.address.clone(),
            action: Action::Delivered,
            status: "2.0.0".into(),
            remote_mta: None,
            diagnostic: None,
            last_attempt: Some(Utc::now()),
            will_retry_until: None,
        };
        report_message(store, settings, r, &[delivered]).await
    } else {
        None
    };
    let with = report.as_ref().map(|(e, c)| (e, c.as_slice()));
    match store
        .deliver_to_maildrop_with_report(owner, r.recipient_id, account.id, prefix.as_bytes(), with)
        .await?
    {
        LocalDelivery::Delivered { entry_id, .. } => {
            tracing::info!(entry_id, report = report.is_some(), "delivered to maildrop");
            Ok(Some(Attempted::Done {
                result: "delivered",
                reported: report.is_some(),
            }))
        }
        LocalDelivery::AlreadyFinal => {
            tracing::info!("already delivered by another worker");
            Ok(Some(Attempted::Done {
                result: "already_final",
                reported: false,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let b = Backoff {
            first: Duration::from_secs(300),
            max: Duration::from_secs(4 * 3600),
        };
        assert_eq!(b.after(1, 1.0), Duration::from_secs(300));
        assert_eq!(b.after(2, 1.0), Duration::from_secs(600));
        assert_eq!(b.after(4, 1.0), Duration::from_secs(2400));
        assert_eq!(b.after(7, 1.0), Duration::from_secs(4 * 3600), "capped");
        assert_eq!(
            b.after(1000, 1.0),
            Duration::from_secs(4 * 3600),
            "no overflow"
        );
        assert_eq!(b.after(2, 0.5), Duration::from_secs(300));
        assert_eq!(
            b.after(2, 0.1),
            Duration::from_secs(300),
            "jitter never below half"
        );
        assert_eq!(b.after(0, 1.0), Duration::from_secs(300));
    }
}
