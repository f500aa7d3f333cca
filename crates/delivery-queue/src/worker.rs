//! Delivery loops: claim due recipients with leases, attempt each envelope's recipients, and
//! record the results with the reports they owe.
//!
//! Local loops claim the recipients of local domains, remote loops the others, so a slow
//! remote server never holds up local delivery. A claimed batch goes first through the
//! batched local path (`local.rs`: the plain local recipients of the whole batch in one
//! statement); the rest is attempted envelope by envelope:
//! expired and cancelled recipients fail, local ones are delivered one at a time (`local.rs`),
//! remote ones are handed to their destination's servers (`remote.rs`, routed by `route.rs`),
//! and what came of each is recorded with its report (`report.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use pochta_service::Shutdown;
use pochta_store::{AddressRules, Claim, ClaimedRecipient, RecipientLookup, Store};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::local::{Delivered, QUOTA_STATUS};
use crate::remote::Dialer;
use crate::report::{Attempt, Verdict};
use crate::route::Router;

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

/// The wake-ups of the two kinds of loop.
#[derive(Clone)]
pub struct Wakes {
    pub local: Wake,
    pub remote: Wake,
}

impl Wakes {
    pub fn new() -> Self {
        Wakes {
            local: Wake::new(),
            remote: Wake::new(),
        }
    }

    pub fn both(&self) {
        self.local.wake();
        self.remote.wake();
    }

    fn of(&self, class: Claim) -> &Wake {
        match class {
            Claim::Local => &self.local,
            Claim::Remote => &self.remote,
        }
    }
}

/// What a delivery loop is doing, for the watchdog (`health.rs`).
#[derive(Debug, Default)]
pub struct LoopState {
    /// When the batch in hand was claimed (milliseconds since the Unix epoch); 0 when idle.
    busy_since_ms: AtomicI64,
}

impl LoopState {
    /// How long the loop has been on its current batch; None when idle.
    pub fn busy_for(&self) -> Option<Duration> {
        let since = self.busy_since_ms.load(Ordering::Relaxed);
        (since != 0).then(|| {
            let now = Utc::now().timestamp_millis();
            Duration::from_millis(u64::try_from(now - since).unwrap_or(0))
        })
    }

    pub(crate) fn set_busy(&self, busy: bool) {
        let value = if busy {
            Utc::now().timestamp_millis().max(1)
        } else {
            0
        };
        self.busy_since_ms.store(value, Ordering::Relaxed);
    }
}

/// What every delivery loop of this process works with.
pub struct Settings {
    /// This process's lease owner name; each loop adds its index.
    pub owner: String,
    /// Where remote mail goes.
    pub router: Router,
    /// HTTPS with verified certificates, when roots are loaded (MTA-STS, TLS reports).
    pub https: Option<crate::https::Https>,
    /// The MTA-STS policies of recipient domains (`queue.mta_sts`).
    pub mta_sts: Option<crate::mta_sts::MtaSts>,
    /// TLS reporting's period in seconds (`queue.tls_report_period_secs`), if it is on.
    pub tls_report_period: Option<u64>,
    /// How remote servers are reached.
    pub dialer: Dialer,
    /// Reporting-MTA of delivery reports, and the EHLO name.
    pub hostname: String,
    /// NOTIFY=DELAY recipients still waiting this long after arrival get a delay report.
    pub delay_report_after: Duration,
    /// Lifetime of the reports themselves.
    pub lifetime: Duration,
    pub dsn_max_full_bytes: usize,
    pub batch: u32,
    pub claim_delay: Duration,
    pub lease: Duration,
    pub scan_interval: Duration,
    pub retry: Backoff,
    /// How addresses that are not an account's own name resolve.
    pub addresses: AddressRules,
    /// Signs the reports the queue writes (`mail_auth.sign`).
    pub dkim: Option<Arc<pochta_dkim::DkimSigning>>,
}

pub struct Metrics {
    attempts: Counter<u64>,
    reports: Counter<u64>,
    latency: Histogram<f64>,
}

impl Metrics {
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter("delivery-queue");
        Metrics {
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
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 1800.0, 3600.0, 14400.0, 86400.0, 432000.0,
                ])
                .build(),
        }
    }

    /// One attempt of `r` ended in `result`; a final result also records the time from
    /// acceptance to it.
    pub fn attempted(&self, r: &ClaimedRecipient, result: &'static str) {
        let attributes = [KeyValue::new("result", result)];
        self.attempts.add(1, &attributes);
        if matches!(result, "delivered" | "relayed" | "failed" | "expired") {
            let seconds = (Utc::now() - r.arrived_at).num_milliseconds().max(0) as f64 / 1000.0;
            self.latency.record(seconds, &attributes);
        }
    }

    /// `count` recipients were deferred together, their destination being unreachable:
    /// counted as attempts that left them queued, as a worker's deferral is.
    pub fn deferred_together(&self, count: u64) {
        self.attempts
            .add(count, &[KeyValue::new("result", "queued")]);
    }

    pub fn reported(&self, action: &'static str) {
        self.reports.add(1, &[KeyValue::new("action", action)]);
    }
}

/// One delivery loop and the handles its steps share.
pub struct Worker {
    pub store: Store,
    /// The lease owner: the process's owner name, the loop's kind and its index.
    pub owner: String,
    /// Which recipients it claims.
    pub class: Claim,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub wakes: Wakes,
    pub state: Arc<LoopState>,
}

/// Recipient lookups already made in this pass, by recipient id.
pub type Known = HashMap<i64, RecipientLookup>;

impl Worker {
    pub fn new(
        store: Store,
        class: Claim,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        wakes: Wakes,
        index: u32,
    ) -> Self {
        let kind = match class {
            Claim::Local => "local",
            Claim::Remote => "remote",
        };
        let owner = format!("{}/{kind}{index}", settings.owner);
        Worker {
            store,
            owner,
            class,
            settings,
            metrics,
            wakes,
            state: Arc::default(),
        }
    }

    /// The longest one batch may take: every remote transaction is bounded by the slot wait
    /// and the transaction deadline (a batch's destinations are served at once), local work
    /// by the store's own timeouts; a lease is added for the store calls around them. Leases
    /// are renewed for no longer than this, and the watchdog calls a loop stuck past it.
    pub fn batch_deadline(settings: &Settings) -> Duration {
        settings.dialer.slot_wait + settings.dialer.transaction_timeout + settings.lease
    }

    /// Claims and delivers until shutdown: at once at start-up; then after a full batch (more
    /// is probably due), otherwise only when woken (after gathering for `claim_delay`) or at
    /// the scan interval.
    pub async fn run(self, shutdown: Shutdown) {
        let settings = self.settings.clone();
        let wake = self.wakes.of(self.class).clone();
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
            let claimed = match self
                .store
                .claim_due(&self.owner, self.class, settings.batch, settings.lease)
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
            if claimed.is_empty() {
                continue;
            }
            // A claimed batch is finished even during shutdown: each delivery is bounded, and
            // a recipient left leased would wait for its lease to expire.
            self.state.set_busy(true);
            let ids = claimed.iter().map(|r| r.recipient_id).collect();
            self.renewing(ids, self.deliver_batch(claimed)).await;
            self.state.set_busy(false);
        }
    }

    /// Delivers one claimed batch: its plain local recipients together, then the rest
    /// envelope by envelope: one after another in a local loop (store calls only), all at once
    /// in a remote loop, so a slow destination holds up none of the batch's other envelopes.
    ///
    /// An envelope's outcomes are recorded as soon as it is done, except quiet deferrals
    /// (deferred, no report owed): those of the whole batch are recorded together at its end,
    /// in one statement, so a backlog for an unreachable destination costs a statement per
    /// batch rather than per message. Their leases are renewed until then, like the rest.
    async fn deliver_batch(&self, claimed: Vec<ClaimedRecipient>) {
        let (rest, known) = self.deliver_local_together(claimed).await;
        let groups = by_envelope(rest);
        let deliveries = groups.iter().map(|group| async {
            let attempts = self.attempt_envelope(&known, group).await;
            if self.quietly_deferred(&attempts) {
                return attempts;
            }
            self.record(attempts).await;
            Vec::new()
        });
        let quiet = match self.class {
            Claim::Local => {
                let mut quiet = Vec::new();
                for delivery in deliveries {
                    quiet.push(delivery.await);
                }
                quiet
            }
            Claim::Remote => futures_util::future::join_all(deliveries).await,
        };
        let quiet: Vec<_> = quiet.into_iter().filter(|q| !q.is_empty()).collect();
        if !quiet.is_empty() {
            self.record_quiet_deferrals(quiet).await;
        }
    }

    /// Runs `work` while renewing this loop's leases on `ids` every third of the lease time:
    /// a slow remote server must not let the batch's other leases expire (another replica
    /// would deliver the same mail again). Recipients that finish meanwhile simply drop out of
    /// the renewal. Leases are renewed for at most `batch_deadline`: past it something is
    /// wrong with this loop, and another replica may take the recipients over.
    async fn renewing<T>(&self, ids: Vec<i64>, work: impl Future<Output = T>) -> T {
        let lease = self.settings.lease;
        let stop_renewing = tokio::time::Instant::now() + Self::batch_deadline(&self.settings);
        let mut renew = tokio::time::interval(lease / 3);
        renew.tick().await;
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = renew.tick(), if tokio::time::Instant::now() < stop_renewing => {
                    if let Err(e) = self.store.renew_leases(&self.owner, &ids, lease).await {
                        tracing::warn!("renewing leases failed: {e}");
                    }
                }
            }
        }
    }

    /// Attempts every recipient of one envelope and returns how each attempt ended (local
    /// deliveries that succeeded are already recorded and are not among them).
    async fn attempt_envelope<'a>(
        &self,
        known: &Known,
        group: &'a [ClaimedRecipient],
    ) -> Vec<Attempt<'a>> {
        let mut attempts = Vec::new();
        let mut remote = Vec::new();
        let mut not_local = Vec::new();
        for r in group {
            let span = attempt_span(r);
            if r.cancelled {
                let why = "deleted from the queue by the postmaster";
                attempts.push(Attempt::local(r, span, Verdict::Failed, "5.0.0", why));
            } else if r.expires_at <= Utc::now() && r.last_status.as_deref() == Some(QUOTA_STATUS) {
                let why = "mailbox full: over its quota for the whole queue lifetime";
                attempts.push(Attempt::local(r, span, Verdict::Expired, "5.2.2", why));
            } else if r.expires_at <= Utc::now() {
                let why = "message expired: not delivered within the queue lifetime";
                attempts.push(Attempt::local(r, span, Verdict::Expired, "4.4.7", why));
            } else {
                let delivered = self
                    .deliver_local(known.get(&r.recipient_id), r)
                    .instrument(span.clone())
                    .await;
                match delivered {
                    Delivered::Done { result, reported } => {
                        span.record("result", result);
                        self.metrics.attempted(r, result);
                        if let Some(action) = reported {
                            self.metrics.reported(action.as_str());
                            self.wakes.both();
                        }
                    }
                    Delivered::Failed(status, why) => {
                        attempts.push(Attempt::local(r, span, Verdict::Failed, status, &why))
                    }
                    Delivered::Deferred(status, why) => {
                        attempts.push(Attempt::local(r, span, Verdict::Deferred, status, &why))
                    }
                    // A local loop never talks to remote servers: the recipient goes to
                    // the remote loops (its domain stopped being local since acceptance).
                    Delivered::NotLocal if self.class == Claim::Local => {
                        not_local.push(r.recipient_id)
                    }
                    Delivered::NotLocal => remote.push((r, span)),
                }
            }
        }
        if !not_local.is_empty() {
            match self.store.hand_to_remote(&self.owner, &not_local).await {
                Ok(_) => self.wakes.remote.wake(),
                Err(e) => tracing::warn!("handing recipients to remote delivery failed: {e}"),
            }
        }
        attempts.extend(self.deliver_remote(remote).await);
        attempts
    }
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
pub fn attempt_span(r: &ClaimedRecipient) -> tracing::Span {
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
