//! Remote delivery: a message's remote recipients handed to their destination's servers over
//! SMTP, one transaction per destination and TLS policy, each connection driving a
//! `pochta_smtp::client::ClientSession`.
//!
//! A connection that ends a message cleanly waits a short while in the `Pool` for the next
//! message to the same server (and TLS policy), which saves the connection set-up, greeting,
//! EHLO and TLS handshake. At most `per_destination` connections per destination are open at
//! once in this process.
//!
//! TLS is opportunistic by default (RFC 7435): the server's certificate is not verified,
//! because MX hosts' names are not authenticated by plain DNS anyway; it protects against
//! passive eavesdropping, and `outbound_tls = "required"` refuses plaintext. Where the
//! domain publishes protection, it wins over that default: DANE for an MX host with
//! DNSSEC-proven TLSA records (the certificate must match them, RFC 7672), else an enforced
//! MTA-STS policy (verified WebPKI certificate, listed MX hosts, RFC 8461).

use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pochta_mail::mta_sts::{StsMode, StsPolicy};
use pochta_mail::{Mailbox, TlsPolicy, Untrusted};
use pochta_service::conn::Conn;
use pochta_smtp::client::{
    ClientOutput, ClientSession, Outgoing, OutgoingRecipient, RecipientOutcome, dot_stuffed,
};
use pochta_store::{AttemptReport, ClaimedRecipient, DestinationDeferral};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tracing::Instrument;

use crate::mx;
use crate::report::{Attempt, Verdict};
use crate::route::{Candidate, DaneTls, Destination};
use crate::unreachable::Unreachable;
use crate::worker::Worker;

/// A recipient being attempted, with its attempt span.
type Attempting<'a> = (&'a ClaimedRecipient, tracing::Span);

impl Worker {
    /// Hands the remote recipients of one envelope to their destinations' servers and returns
    /// how each attempt ended.
    pub async fn deliver_remote<'a>(&self, remote: Vec<Attempting<'a>>) -> Vec<Attempt<'a>> {
        let router = &self.settings.router;
        type Key = (
            Destination,
            TlsPolicy,
            Option<Mailbox>,
            Option<Arc<StsPolicy>>,
        );
        let mut by_destination: Vec<(Key, Vec<Attempting>)> = Vec::new();
        let mut unprotected = Vec::new();
        for (r, span) in remote {
            let destination = router.destination(&r.address.domain);
            // An MTA-STS policy in force (RFC 8461 5) asks for verified TLS, whatever the
            // configured policy; static routes and the smarthost are the operator's choice.
            let sts = match (&destination, &self.settings.mta_sts) {
                (Destination::Mx(domain), Some(mta_sts)) => mta_sts.policy(domain).await,
                _ => None,
            };
            let enforced = sts.as_deref().is_some_and(|p| p.mode == StsMode::Enforce);
            // REQUIRETLS (RFC 8689 4.2.1): the MX hosts must come from a protected lookup
            // (DNSSEC with DANE, checked per host once they are known, or an enforced
            // MTA-STS policy) and the certificate must verify; else the message fails
            // rather than go plainly.
            if r.requiretls
                && matches!(destination, Destination::Mx(_))
                && !enforced
                && !router.dane
            {
                let why = format!(
                    "the message requires TLS on every hop (REQUIRETLS) and the mail hosts of {} \
                     are not protected by an enforced MTA-STS policy (DANE is off)",
                    r.address.domain
                );
                unprotected.push(Attempt::local(r, span, Verdict::Failed, "5.7.10", &why));
                continue;
            }
            let tls = if enforced || r.requiretls {
                TlsPolicy::Verify
            } else {
                router.tls_policy(&r.address.domain)
            };
            let key = (destination, tls, self.reverse_path(r), sts);
            match by_destination.iter_mut().find(|(k, _)| *k == key) {
                Some((_, list)) => list.push((r, span)),
                None => by_destination.push((key, vec![(r, span)])),
            }
        }
        // Each destination at once: a slow one holds up only its own recipients.
        let sends = by_destination.into_iter().map(
            |((destination, tls, sender, sts), recipients)| async move {
                self.send_to(&destination, tls, sender, sts.as_deref(), recipients)
                    .await
            },
        );
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .chain(unprotected)
            .collect()
    }

    /// The reverse-path `r` is sent with: the envelope's, or for mail forwarded by an alias
    /// here, that sender rewritten into the alias's domain (SRS) so that SPF at the next hop
    /// checks us, and a bounce comes back here to be sent on. The null sender stays null.
    fn reverse_path(&self, r: &ClaimedRecipient) -> Option<Mailbox> {
        let sender = r.reverse_path.as_ref()?;
        let (Some(alias), Some(key)) = (&r.original_address, &self.settings.addresses.srs) else {
            return Some(sender.clone());
        };
        let today = pochta_mail::srs::day(chrono::Utc::now().timestamp());
        Some(
            key.forward(sender, &alias.domain, today)
                .unwrap_or_else(|| sender.clone()),
        )
    }

    /// Counts one TLS session with an MX host of `domain` for its TLS report (RFC 8460).
    /// The policy is the host's DANE records when it has them (they decided its TLS), else
    /// the domain's MTA-STS policy.
    async fn count_tls_session(
        &self,
        domain: &str,
        sts: Option<&StsPolicy>,
        server: &Candidate,
        result: &str,
    ) {
        let Some(period) = self.settings.tls_report_period else {
            return;
        };
        let mx_host = server.host.as_str();
        let (policy_type, policy_string) = match (&server.dane, sts) {
            (Some(dane), _) => ("tlsa", dane.lines()),
            (None, Some(policy)) => ("sts", policy.lines()),
            (None, None) => ("no-policy-found", Vec::new()),
        };
        let counted = self
            .store
            .record_tls_result(domain, policy_type, &policy_string, mx_host, result, period)
            .await;
        if let Err(e) = counted {
            tracing::warn!(%domain, "counting a TLS session for its report failed: {e}");
        }
    }

    /// Every server of the destination `recipients` were for is unreachable (`why`): the rest
    /// of the mail for their domains due about now is deferred at once, one statement per
    /// domain, rather than claimed and deferred recipient by recipient (each domain at most
    /// every `bulk_window`). A domain's remote mail all goes to one destination (its mail
    /// hosts, its route, or the smarthost), so all of it would meet the same servers.
    async fn defer_waiting(&self, recipients: &[Attempting<'_>], why: &str) {
        let unreachable = &self.settings.dialer.unreachable;
        let mut domains: Vec<&str> = recipients
            .iter()
            .map(|(r, _)| r.address.domain.as_str())
            .collect();
        domains.sort_unstable();
        domains.dedup();
        for domain in domains {
            if !unreachable.defer_in_bulk(domain, std::time::Instant::now()) {
                continue;
            }
            let why = format!("{why}; deferred with the other mail waiting for {domain}");
            // The queue's backoff, one jitter per envelope (as `record_quiet_deferrals`).
            let (retry, mut jitters) = (self.settings.retry, HashMap::new());
            let mut retry_after = |attempts: i32, envelope: i64| {
                let jitter = *jitters
                    .entry(envelope)
                    .or_insert_with(|| rand::rng().random_range(0.5..=1.0));
                retry.after(attempts.max(0) as u32 + 1, jitter)
            };
            let deferral = DestinationDeferral {
                domain,
                within: unreachable.bulk_window(),
                worker: &self.owner,
                status: "4.4.1",
                diagnostic: &why,
                retry_after: &mut retry_after,
                delay_report_after: self.settings.delay_report_after,
            };
            match self.store.defer_destination(deferral).await {
                Ok(0) => {}
                Ok(deferred) => {
                    self.metrics.deferred_together(deferred);
                    tracing::info!(
                        %domain, deferred,
                        "every mail host unreachable: its waiting mail deferred together"
                    )
                }
                Err(e) => tracing::warn!(%domain, "deferring a destination's mail failed: {e}"),
            }
        }
    }

    /// One transaction with `destination` from `sender`: its servers in turn until one takes
    /// the connection (RFC 5321 5.1).
    async fn send_to<'a>(
        &self,
        destination: &Destination,
        tls: TlsPolicy,
        sender: Option<Mailbox>,
        sts: Option<&StsPolicy>,
        recipients: Vec<Attempting<'a>>,
    ) -> Vec<Attempt<'a>> {
        let all_end = |verdict, status: &str, why: &str| -> Vec<Attempt<'a>> {
            recipients
                .iter()
                .map(|(r, span)| Attempt::local(r, span.clone(), verdict, status, why))
                .collect()
        };
        let candidates = match self.settings.router.candidates(destination).await {
            Ok(candidates) => candidates,
            Err(mx::Resolution::NoMail { status, why }) => {
                return all_end(Verdict::Failed, status, &why);
            }
            Err(mx::Resolution::TryLater(why)) => return all_end(Verdict::Deferred, "4.4.3", &why),
            Err(mx::Resolution::Hosts { .. }) => {
                return all_end(Verdict::Deferred, "4.4.3", "no mail host could be found");
            }
        };
        // Every server a moment ago unreachable: deferred at once, without reading the message
        // or waiting for a slot.
        let dialer = &self.settings.dialer;
        let now = std::time::Instant::now();
        let mut held = candidates
            .iter()
            .map(|c| dialer.unreachable.held(&c.address, now));
        if let Some(Some(why)) = held.next()
            && held.all(|h| h.is_some())
        {
            self.defer_waiting(&recipients, &why).await;
            return all_end(Verdict::Deferred, "4.4.1", &why);
        }
        let first = recipients[0].0;
        let message = match self.store.message_content(first.message_id).await {
            Ok(Some(m)) => m,
            other => {
                tracing::error!(queue_id = %first.queue_id, "message content unavailable: {other:?}");
                return all_end(Verdict::Deferred, "4.3.0", "message content unavailable");
            }
        };
        // `TLS-Required: No` (RFC 8689 5): the sender asks that the domain's policies (MTA-STS,
        // DANE) not stop this message; the configured policy still applies. REQUIRETLS wins.
        let (tls, sts, candidates) = match destination {
            Destination::Mx(domain)
                if !first.requiretls && pochta_mail::headers::tls_required_no(&message) =>
            {
                let unprotected = candidates
                    .into_iter()
                    .map(|c| Candidate { dane: None, ..c })
                    .collect();
                (self.settings.router.tls_policy(domain), None, unprotected)
            }
            _ => (tls, sts, candidates),
        };
        let candidates = match sts {
            Some(policy) => {
                let mut hosts = candidates.clone();
                hosts.dedup_by(|a, b| a.host == b.host);
                match sts_candidates(destination, policy, candidates) {
                    Ok(allowed) => allowed,
                    Err(why) => {
                        // Counted for the TLS report as a session that could not be made.
                        if let Destination::Mx(domain) = destination {
                            for host in &hosts {
                                self.count_tls_session(domain, sts, host, "validation-failure")
                                    .await;
                            }
                        }
                        return all_end(Verdict::Deferred, "4.7.5", &why);
                    }
                }
            }
            None => candidates,
        };
        let enforced = sts.is_some_and(|p| p.mode == StsMode::Enforce);
        // REQUIRETLS without an enforced MTA-STS policy: only hosts DANE authenticates
        // (RFC 8689 4.2.1), else the message fails rather than go less protected.
        let candidates =
            if first.requiretls && !enforced && matches!(destination, Destination::Mx(_)) {
                let authenticated: Vec<Candidate> = candidates
                    .into_iter()
                    .filter(|c| matches!(c.dane.as_deref(), Some(DaneTls::Authenticate(_))))
                    .collect();
                if authenticated.is_empty() {
                    let why = format!(
                        "the message requires TLS on every hop (REQUIRETLS) and no mail host of \
                     {destination} is protected by DANE or an enforced MTA-STS policy"
                    );
                    return all_end(Verdict::Failed, "5.7.10", &why);
                }
                authenticated
            } else {
                candidates
            };
        let outgoing = Outgoing {
            helo_name: self.settings.hostname.clone(),
            reverse_path: sender,
            envid: first.envid.clone(),
            ret: first.ret,
            body: first.body,
            smtputf8: first.smtputf8,
            size: message.len(),
            recipients: recipients
                .iter()
                .map(|(r, _)| OutgoingRecipient {
                    address: r.address.clone(),
                    notify: r.notify,
                    orcpt: r.orcpt.clone(),
                })
                .collect(),
            tls,
            requiretls: first.requiretls,
        };
        let Some(_slot) = dialer.slot(destination).await else {
            let why = format!(
                "no connection to {destination} free within {} s (at most {} at once)",
                dialer.slot_wait.as_secs(),
                dialer.per_destination
            );
            return all_end(Verdict::Deferred, "4.4.5", &why);
        };
        // Each server in turn until one takes the connection (RFC 5321 5.1), all within the
        // transaction deadline: past it, every recipient still waiting is deferred.
        let mut remote_mta = destination.to_string();
        let attempt = async {
            let mut result = Err(String::new());
            for candidate in &candidates {
                let span = tracing::info_span!("queue.remote", host = %Untrusted(&candidate.host),
                    address = %candidate.address, recipients = recipients.len());
                remote_mta = format!("{} ({})", candidate.host, candidate.address);
                let now = std::time::Instant::now();
                if let Some(why) = dialer.unreachable.held(&candidate.address, now) {
                    result = Err(why);
                    continue;
                }
                let mut outgoing = outgoing.clone();
                outgoing.tls = dane_tls_policy(candidate, outgoing.tls);
                // The leases are renewed meanwhile by the loop that claimed the batch.
                let tls;
                (result, tls) = dialer
                    .deliver(candidate, outgoing, &message)
                    .instrument(span)
                    .await;
                if let (Destination::Mx(domain), Some(tls)) = (destination, tls) {
                    self.count_tls_session(domain, sts, candidate, tls).await;
                }
                match &result {
                    Ok(_) => break,
                    Err(why) => tracing::info!("{why}; trying the next host if any"),
                }
            }
            result
        };
        let result = tokio::time::timeout(dialer.transaction_timeout, attempt).await;
        match result {
            Ok(Ok(outcomes)) => recipients
                .into_iter()
                .zip(outcomes)
                .map(|((r, span), outcome)| attempt_of(r, span, outcome, &remote_mta))
                .collect(),
            Ok(Err(why)) => {
                let now = std::time::Instant::now();
                if candidates
                    .iter()
                    .all(|c| dialer.unreachable.held(&c.address, now).is_some())
                {
                    self.defer_waiting(&recipients, &why).await;
                }
                all_end(Verdict::Deferred, "4.4.1", &why)
            }
            Err(_) => {
                let why = format!(
                    "the delivery to {remote_mta} did not finish within {} s",
                    dialer.transaction_timeout.as_secs()
                );
                all_end(Verdict::Deferred, "4.4.2", &why)
            }
        }
    }
}

/// The STARTTLS policy with one server: DANE records make TLS required (RFC 7672 2.2), and
/// usable ones make it verified (against the records, see `DaneVerifier`). An operator's
/// `never` for the domain stands.
fn dane_tls_policy(server: &Candidate, policy: TlsPolicy) -> TlsPolicy {
    match (server.dane.as_deref(), policy) {
        (_, TlsPolicy::Never) | (None, _) => policy,
        (Some(DaneTls::Authenticate(_)), _) => TlsPolicy::Verify,
        (Some(DaneTls::EncryptOnly(_)), TlsPolicy::Opportunistic) => TlsPolicy::Required,
        (Some(DaneTls::EncryptOnly(_)), _) => policy,
    }
}

/// The RFC 8460 result type of a failed TLS handshake.
fn tls_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::Other(other)))
            if other.0.downcast_ref::<TlsaMismatch>().is_some() =>
        {
            "tlsa-invalid"
        }
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => "certificate-host-mismatch",
        Some(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "certificate-expired",
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "certificate-not-trusted"
        }
        _ => "validation-failure",
    }
}

/// The MX hosts an MTA-STS policy lets mail go to (RFC 8461 4.1): under `enforce` only the
/// listed ones, and none listed defers the mail; under `testing` all, the mismatch logged.
fn sts_candidates(
    destination: &Destination,
    policy: &StsPolicy,
    candidates: Vec<Candidate>,
) -> Result<Vec<Candidate>, String> {
    // A host DANE authenticates is exempt: DANE comes first (RFC 8461 2).
    let (allowed, refused): (Vec<Candidate>, Vec<Candidate>) =
        candidates.into_iter().partition(|c| {
            matches!(c.dane.as_deref(), Some(DaneTls::Authenticate(_))) || policy.allows_mx(&c.host)
        });
    if refused.is_empty() || policy.mode != StsMode::Enforce {
        if !refused.is_empty() {
            tracing::warn!(%destination, "MTA-STS (testing): MX hosts outside the policy");
        }
        return Ok(allowed.into_iter().chain(refused).collect());
    }
    if allowed.is_empty() {
        return Err(format!(
            "{destination}: none is one the domain's MTA-STS policy lists ({})",
            policy.mx.join(", ")
        ));
    }
    Ok(allowed)
}

/// What the remote server's answer makes of one recipient's attempt.
fn attempt_of<'a>(
    r: &'a ClaimedRecipient,
    span: tracing::Span,
    outcome: RecipientOutcome,
    remote_mta: &str,
) -> Attempt<'a> {
    let (verdict, reply) = match outcome {
        RecipientOutcome::Accepted { reply, dsn: true } => (Verdict::Delivered, reply),
        // Handed to a server without DSN: `relayed` (RFC 3461 5.2.2).
        RecipientOutcome::Accepted { reply, dsn: false } => (Verdict::Relayed, reply),
        RecipientOutcome::Rejected(reply) => (Verdict::Failed, reply),
        RecipientOutcome::Deferred(reply) => (Verdict::Deferred, reply),
    };
    let default_status = match verdict {
        Verdict::Failed => "5.0.0",
        Verdict::Deferred => "4.0.0",
        _ => "2.0.0",
    };
    Attempt {
        r,
        span,
        verdict,
        report: AttemptReport {
            remote_mta: Some(remote_mta.to_owned()),
            reply_code: Some(reply.code).filter(|c| (200..600).contains(c)),
            status: Some(
                reply
                    .status
                    .clone()
                    .unwrap_or_else(|| default_status.into()),
            ),
            diagnostic: reply.to_diagnostic(),
        },
    }
}

/// Accepts any certificate: encryption without authentication (opportunistic TLS).
#[derive(Debug)]
struct Opportunistic(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Opportunistic {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate matched none of the host's DANE records. (rustls shows it with Debug.)
struct TlsaMismatch;

impl std::fmt::Display for TlsaMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the certificate matches none of the host's TLSA records (DANE)")
    }
}

impl std::fmt::Debug for TlsaMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for TlsaMismatch {}

/// Checks a server's certificate against its usable TLSA records (RFC 7672 3.1): DANE-EE
/// matches the server's own certificate or key, with no name or date checks; DANE-TA
/// matches a certificate of the chain it sent, which then anchors the usual path validation
/// of the rest, host name included.
#[derive(Debug)]
struct DaneVerifier {
    records: Vec<pochta_mail::dane::Tlsa>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use pochta_mail::dane::{DANE_EE, DANE_TA};
        let mut anchored_failure = None;
        for record in &self.records {
            if record.usage == DANE_EE && record.matches(end_entity) {
                return Ok(ServerCertVerified::assertion());
            }
            if record.usage != DANE_TA {
                continue;
            }
            for anchor in intermediates.iter().filter(|c| record.matches(c)) {
                let mut roots = rustls::RootCertStore::empty();
                if roots.add(anchor.clone()).is_err() {
                    continue;
                }
                let verified = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?
                .verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                );
                match verified {
                    Ok(verified) => return Ok(verified),
                    Err(e) => anchored_failure = Some(e),
                }
            }
        }
        Err(anchored_failure.unwrap_or_else(|| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(TlsaMismatch),
            )))
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Opportunistic(self.provider.clone()).verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Opportunistic(self.provider.clone()).verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Opportunistic(self.provider.clone()).supported_verify_schemes()
    }
}

/// A connector that authenticates the server by its TLSA records.
fn dane_connector(records: Vec<pochta_mail::dane::Tlsa>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DaneVerifier { records, provider }))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

pub fn tls_connector() -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Opportunistic(provider)))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A connector that verifies the server's certificate and name against the roots in
/// `ca_file` (PEM), for `TlsPolicy::Verify`.
pub fn verifying_connector(ca_file: &std::path::Path) -> anyhow::Result<TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("queue.tls_ca_file {}: {e}", ca_file.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        anyhow::bail!("queue.tls_ca_file {}: no certificates", ca_file.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// How remote servers are reached: timeouts, TLS, idle connections kept for reuse, and the
/// limit of connections per destination.
pub struct Dialer {
    pub connector: TlsConnector,
    /// For `TlsPolicy::Verify`: checks the certificate against `queue.tls_ca_file`.
    pub verifying: Option<TlsConnector>,
    pub connect_timeout: Duration,
    /// For each reply, and for the TLS handshake.
    pub reply_timeout: Duration,
    /// For a write to make progress.
    pub write_timeout: Duration,
    /// For one whole delivery, from taking a connection to the outcomes.
    pub transaction_timeout: Duration,
    /// For a connection slot to the destination.
    pub slot_wait: Duration,
    pub pool: Arc<Pool>,
    pub per_destination: usize,
    /// Servers a connection to failed a moment ago, not dialled again yet.
    pub unreachable: Unreachable,
    /// One semaphore per destination in use (they are small; never pruned).
    slots: Mutex<HashMap<Destination, Arc<Semaphore>>>,
}

/// `Dialer`'s timeouts.
#[derive(Debug, Clone, Copy)]
pub struct DialTimeouts {
    pub connect: Duration,
    pub reply: Duration,
    pub write: Duration,
    pub transaction: Duration,
    pub slot_wait: Duration,
    /// How long a server a connection failed to is held back (`Unreachable`).
    pub unreachable_hold: Duration,
}

impl Dialer {
    pub fn new(
        connector: TlsConnector,
        verifying: Option<TlsConnector>,
        timeouts: DialTimeouts,
        pool: Arc<Pool>,
        per_destination: usize,
    ) -> Self {
        Dialer {
            connector,
            verifying,
            connect_timeout: timeouts.connect,
            reply_timeout: timeouts.reply,
            write_timeout: timeouts.write,
            transaction_timeout: timeouts.transaction,
            slot_wait: timeouts.slot_wait,
            pool,
            per_destination,
            unreachable: Unreachable::new(timeouts.unreachable_hold),
            slots: Mutex::default(),
        }
    }

    /// Waits up to `slot_wait` for a free connection slot to `destination`.
    async fn slot(&self, destination: &Destination) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self.slots.lock().expect("slots lock");
            slots
                .entry(destination.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_destination)))
                .clone()
        };
        tokio::time::timeout(self.slot_wait, semaphore.acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Writes `bytes` in pieces, each within the write timeout (a server that stops reading
    /// is given up on).
    async fn write(&self, conn: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
        for piece in bytes.chunks(64 * 1024) {
            tokio::time::timeout(self.write_timeout, conn.write_all(piece))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "the server does not read")
                })??;
        }
        Ok(())
    }

    /// Delivers `message` to the recipients in `outgoing` at `server`, over an idle connection
    /// to it when there is one that still works, else a new one; returns each recipient's
    /// outcome, or why no connection could be made (so the next server can be tried). Trouble
    /// after connecting defers the recipients without an outcome yet.
    /// With the outcomes comes how TLS went on a new connection (for TLS reporting): a
    /// reused one was counted when it was made.
    async fn deliver(
        &self,
        server: &Candidate,
        outgoing: Outgoing,
        message: &[u8],
    ) -> (Result<Vec<RecipientOutcome>, String>, Option<&'static str>) {
        let key = (server.address.clone(), outgoing.tls, server.dane.is_some());
        while let Some(mut connection) = self.pool.take(&key) {
            connection.session.next_message(outgoing.clone());
            let outcomes = self.converse(&mut connection, server, message).await;
            if connection.session.stale() {
                tracing::debug!(address = %server.address, "idle connection no longer usable");
                continue;
            }
            self.pool.put(key, connection).await;
            return (Ok(outcomes), None);
        }
        let mut connection = match self.connect(server, outgoing).await {
            Ok(connection) => connection,
            Err(why) => {
                let now = std::time::Instant::now();
                self.unreachable.failed(&server.address, &why, now);
                return (Err(why), None);
            }
        };
        self.unreachable.reached(&server.address);
        let outcomes = self.converse(&mut connection, server, message).await;
        let tls = connection.tls_result.or_else(|| {
            connection
                .session
                .starttls_missing()
                .then_some("starttls-not-supported")
        });
        self.pool.put(key, connection).await;
        (Ok(outcomes), tls)
    }

    async fn connect(&self, server: &Candidate, outgoing: Outgoing) -> Result<Connection, String> {
        let address = &server.address;
        let connected = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address));
        match connected.await {
            Ok(Ok(tcp)) => Ok(Connection {
                conn: Conn::Plain(tcp),
                session: ClientSession::new(outgoing),
                messages: 0,
                tls_result: None,
            }),
            Ok(Err(e)) => Err(format!("connecting to {} ({address}): {e}", server.host)),
            Err(_) => Err(format!(
                "connecting to {} ({address}): timed out",
                server.host
            )),
        }
    }

    /// Runs the session until the current message's outcomes are known.
    async fn converse(
        &self,
        connection: &mut Connection,
        server: &Candidate,
        message: &[u8],
    ) -> Vec<RecipientOutcome> {
        connection.messages += 1;
        let address = &server.address;
        let (conn, session) = (&mut connection.conn, &mut connection.session);
        let mut buf = vec![0u8; 8192];
        loop {
            while let Some(output) = session.poll() {
                let result = match output {
                    ClientOutput::Send(bytes) => self.write(conn, &bytes).await,
                    ClientOutput::SendMessage => self
                        .write(conn, &dot_stuffed(message))
                        .await
                        .map(|()| session.message_sent()),
                    ClientOutput::SendMessageChunked => {
                        let command = format!("BDAT {} LAST\r\n", message.len());
                        match self.write(conn, command.as_bytes()).await {
                            Ok(()) => self
                                .write(conn, message)
                                .await
                                .map(|()| session.message_sent()),
                            Err(e) => Err(e),
                        }
                    }
                    ClientOutput::StartTls => {
                        let verify = session.tls_policy() == TlsPolicy::Verify;
                        let name = match ServerName::try_from(server.host.clone()) {
                            Ok(name) => name,
                            Err(_) if verify => {
                                return lost(
                                    session,
                                    &format!("{} is no name a certificate can verify", server.host),
                                );
                            }
                            Err(_) => ServerName::try_from("localhost").expect("valid"),
                        };
                        let dane;
                        let connector = match (&server.dane.as_deref(), &self.verifying, verify) {
                            (Some(DaneTls::Authenticate(records)), _, true) => {
                                dane = dane_connector(records.clone());
                                &dane
                            }
                            (_, _, false) => &self.connector,
                            (_, Some(verifying), true) => verifying,
                            (_, None, true) => {
                                return lost(
                                    session,
                                    "TLS must verify, but no trusted roots are loaded (queue.tls_ca_file)",
                                );
                            }
                        };
                        let handshake = conn.connect_tls(connector, name);
                        match tokio::time::timeout(self.reply_timeout, handshake).await {
                            Ok(Ok(())) => {
                                connection.tls_result = Some("success");
                                session.tls_established();
                                Ok(())
                            }
                            Ok(Err(e)) => {
                                connection.tls_result = Some(tls_failure(&e));
                                return lost(
                                    session,
                                    &format!("TLS handshake with {address}: {e}"),
                                );
                            }
                            Err(_) => {
                                return lost(
                                    session,
                                    &format!("TLS handshake with {address}: timed out"),
                                );
                            }
                        }
                    }
                    ClientOutput::Done(outcomes) => return outcomes,
                };
                if let Err(e) = result {
                    return lost(session, &format!("writing to {address}: {e}"));
                }
            }
            match tokio::time::timeout(self.reply_timeout, conn.read(&mut buf)).await {
                Ok(Ok(0)) => return lost(session, &format!("{address} closed the connection")),
                Ok(Ok(n)) => session.feed(&buf[..n]),
                Ok(Err(e)) => return lost(session, &format!("reading from {address}: {e}")),
                Err(_) => return lost(session, &format!("{address} did not answer in time")),
            }
        }
    }
}

/// How long the QUIT that ends a connection may take to write.
const QUIT_WRITE: Duration = Duration::from_secs(5);

/// An open SMTP session with one server.
pub struct Connection {
    conn: Conn,
    session: ClientSession,
    messages: u32,
    /// How its TLS handshake went: `success` or an RFC 8460 result type; None if none ran.
    tls_result: Option<&'static str>,
}

impl Connection {
    /// Ends the session politely (QUIT, not waiting for the answer, and not waiting long for
    /// a server that does not read either).
    async fn close(mut self) {
        self.session.quit();
        while let Some(output) = self.session.poll() {
            if let ClientOutput::Send(bytes) = output {
                let write = self.conn.write_all(&bytes);
                if !matches!(tokio::time::timeout(QUIT_WRITE, write).await, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}

fn lost(session: &mut ClientSession, why: &str) -> Vec<RecipientOutcome> {
    session.connection_lost(why);
    loop {
        if let Some(ClientOutput::Done(outcomes)) = session.poll() {
            return outcomes;
        }
    }
}

/// Server address, TLS policy, and whether DANE decided the TLS.
type PoolKey = (String, TlsPolicy, bool);

/// Idle connections, by server address and TLS policy, each for at most `idle_time`, and
/// for at most `max_messages` messages in all.
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<(u64, Connection)>>>,
    next_id: AtomicU64,
    pub idle_time: Duration,
    pub max_messages: u32,
}

impl Pool {
    pub fn new(idle_time: Duration, max_messages: u32) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            idle_time,
            max_messages,
        }
    }

    fn take(&self, key: &PoolKey) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
        let (_, connection) = list.pop()?;
        if list.is_empty() {
            idle.remove(key);
        }
        Some(connection)
    }

    /// Keeps `connection` for the next message to the same server, or closes it.
    async fn put(self: &Arc<Self>, key: PoolKey, connection: Connection) {
        if !connection.session.reusable()
            || connection.messages >= self.max_messages
            || self.idle_time.is_zero()
        {
            return connection.close().await;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.idle
            .lock()
            .expect("pool lock")
            .entry(key.clone())
            .or_default()
            .push((id, connection));
        let pool = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pool.idle_time).await;
            let expired = {
                let mut idle = pool.idle.lock().expect("pool lock");
                let list = idle.get_mut(&key);
                let expired = list.and_then(|list| {
                    let at = list.iter().position(|(i, _)| *i == id)?;
                    Some(list.remove(at).1)
                });
                if idle.get(&key).is_some_and(Vec::is_empty) {
                    idle.remove(&key);
                }
                expired
            };
            if let Some(connection) = expired {
                connection.close().await;
            }
        });
    }

    /// Closes every idle connection (at shutdown).
    pub async fn close_all(&self) {
        let all: Vec<Connection> = {
            let mut idle = self.idle.lock().expect("pool lock");
            idle.drain()
                .flat_map(|(_, list)| list.into_iter().map(|(_, c)| c))
                .collect()
        };
        for connection in all {
            connection.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(host: &str, dane: Option<DaneTls>) -> Candidate {
        Candidate {
            host: host.into(),
            address: "192.0.2.1:25".into(),
            dane: dane.map(Arc::new),
        }
    }

    fn record(usage: u8) -> pochta_mail::dane::Tlsa {
        pochta_mail::dane::Tlsa {
            usage,
            selector: 1,
            matching: 1,
            data: vec![7; 32],
        }
    }

    /// DANE comes before MTA-STS (RFC 8461 2): a host DANE authenticates is tried although
    /// the enforced policy does not list it; one whose records are all unusable is not.
    #[test]
    fn dane_authenticated_hosts_are_exempt_from_the_mta_sts_host_list() {
        let policy = StsPolicy {
            mode: StsMode::Enforce,
            mx: vec!["mx.listed.test".into()],
            max_age: 86_400,
        };
        let destination = Destination::Mx("example.test".into());
        let candidates = vec![
            candidate("mx.unlisted.test", None),
            candidate("mx.dane.test", Some(DaneTls::Authenticate(vec![record(3)]))),
            candidate("mx.pkix.test", Some(DaneTls::EncryptOnly(vec![record(1)]))),
            candidate("mx.listed.test", None),
        ];
        let allowed = sts_candidates(&destination, &policy, candidates).unwrap();
        let hosts: Vec<&str> = allowed.iter().map(|c| c.host.as_str()).collect();
        assert_eq!(hosts, ["mx.dane.test", "mx.listed.test"]);
    }

    /// Proven TLSA records make TLS required, usable ones verified; `never` stands.
    #[test]
    fn dane_raises_the_tls_policy_of_its_hosts() {
        let authenticated = candidate("a", Some(DaneTls::Authenticate(vec![record(3)])));
        let encrypted = candidate("b", Some(DaneTls::EncryptOnly(vec![record(0)])));
        let plain = candidate("c", None);
        use TlsPolicy::*;
        assert_eq!(dane_tls_policy(&authenticated, Opportunistic), Verify);
        assert_eq!(dane_tls_policy(&authenticated, Required), Verify);
        assert_eq!(dane_tls_policy(&authenticated, Never), Never);
        assert_eq!(dane_tls_policy(&encrypted, Opportunistic), Required);
        assert_eq!(dane_tls_policy(&encrypted, Verify), Verify);
        assert_eq!(dane_tls_policy(&plain, Opportunistic), Opportunistic);
    }

    /// A roots file that is missing, not PEM, or holds no certificate stops the start with
    /// the setting's name, rather than leaving `verify` to trust nothing in silence.
    #[test]
    fn bad_roots_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for file in [missing, empty, garbage] {
            let Err(e) = verifying_connector(&file) else {
                panic!("{} was accepted", file.display());
            };
            assert!(e.to_string().contains("queue.tls_ca_file"), "{e}");
        }
    }
}
