//! Mail authentication at the ingress: DKIM signatures for mail our users submit (RFC 6376,
//! RFC 8463), and SPF (RFC 7208), DKIM, ARC (RFC 8617) and DMARC (RFC 7489) checks of mail
//! other servers send us, reported in one Authentication-Results header (RFC 8601).
//!
//! The cryptography and record grammars are mail-auth's; this module decides when each runs,
//! bounds its DNS work in time, and turns the results into a header and a verdict. The
//! decision itself (`dmarc_disposition`) is a pure function, tested without DNS.

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MX, MessageAuthenticator,
    Parameters, RecordSet, ResolverCache, SpfResult, Txt,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use pochta_config::{DmarcAction, MailAuthConfig};
use pochta_dkim::DkimSigning;
use pochta_service::cache::TtlCache;
use pochta_smtp::Message;
use pochta_store::Store;

/// Header fields a signature covers when the message has them (RFC 6376 5.4.1's list of
/// those that matter to a reader, without the trace fields that change in transit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store it with this Authentication-Results header on top (and the quarantine reason).
    Accept {
        header: String,
        quarantine: Option<String>,
    },
    /// The sender domain's DMARC policy refuses it: answer 550 5.7.1 with this reason.
    Reject { reason: String },
}

/// What a DMARC evaluation came to (RFC 7489 6.6.2): pass when an aligned SPF or DKIM
/// passed, fail when the domain has a policy and neither did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcOutcome {
    Pass,
    Fail,
    /// No record, no From: domain, or DNS trouble: no policy can apply.
    Undecided,
}

/// What happens to a message: the published policy applies only to a failure, and only as
/// far as the operator lets it (`enforce`); `monitor` only reports.
pub fn dmarc_disposition(outcome: DmarcOutcome, published: Policy, action: DmarcAction) -> Policy {
    match (outcome, action) {
        (DmarcOutcome::Fail, DmarcAction::Enforce) => match published {
            Policy::Reject => Policy::Reject,
            Policy::Quarantine => Policy::Quarantine,
            Policy::None | Policy::Unspecified => Policy::None,
        },
        _ => Policy::None,
    }
}

fn dmarc_outcome(dkim: &DmarcResult, spf: &DmarcResult) -> DmarcOutcome {
    if *dkim == DmarcResult::Pass || *spf == DmarcResult::Pass {
        DmarcOutcome::Pass
    } else if matches!(dkim, DmarcResult::Fail(_)) || matches!(spf, DmarcResult::Fail(_)) {
        DmarcOutcome::Fail
    } else {
        DmarcOutcome::Undecided
    }
}

/// One signing key, ready: the selector and algorithm are in its template.
pub struct MailAuth {
    config: MailAuthConfig,
    authserv_id: String,
    dns: MessageAuthenticator,
    caches: DnsCaches,
    signing: DkimSigning,
    results: Counter<u64>,
    /// `check_timeout_ms`, but never past the session's command timeout.
    check_limit: Duration,
}

impl MailAuth {
    pub fn new(
        config: &MailAuthConfig,
        command_timeout: Duration,
        hostname: &str,
        store: Store,
    ) -> anyhow::Result<Self> {
        let meter = opentelemetry::global::meter("smtp-ingress");
        let entries = config.dns_cache_entries as usize;
        Ok(MailAuth {
            authserv_id: config
                .authserv_id
                .clone()
                .unwrap_or_else(|| hostname.to_owned()),
            dns: authenticator(
                &config.dns_servers,
                Duration::from_millis(config.dns_timeout_ms),
            )?,
            caches: DnsCaches {
                txt: DnsCache::new(entries),
                mx: DnsCache::new(entries),
                ipv4: DnsCache::new(entries),
                ipv6: DnsCache::new(entries),
                ptr: DnsCache::new(entries),
            },
            signing: DkimSigning::new(store, Duration::from_secs(config.key_cache_secs)),
            results: meter
                .u64_counter("pochta.smtp.authentication.results")
                .with_description("Authentication results of arriving mail, by method and result")
                .build(),
            check_limit: Duration::from_millis(config.check_timeout_ms).min(command_timeout),
            config: config.clone(),
        })
    }

    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    pub fn signs(&self) -> bool {
        self.config.sign
    }

    pub fn checks(&self) -> bool {
        self.config.check_inbound
    }

    /// DKIM-Signature fields for `content` (a message a user of ours submitted); see
    /// `DkimSigning::signatures`.
    pub async fn signatures(&self, content: &[u8]) -> String {
        self.signing.signatures(content).await
    }

    /// SPF for the client and its MAIL FROM (or HELO), DKIM and ARC over `content`, and
    /// DMARC of its From: domain, within `check_timeout_ms`. `recipient_domains` choose how
    /// a DMARC failure is handled (`mail_auth.dmarc_domains`).
    pub async fn check<'a>(
        &self,
        message: &Message,
        client: IpAddr,
        content: &[u8],
        recipient_domains: impl IntoIterator<Item = &'a str>,
    ) -> Verdict {
        let action = self.config.dmarc_action(recipient_domains);
        let limit = self.check_limit;
        match tokio::time::timeout(limit, self.evaluate(message, client, content, action)).await {
            Ok(verdict) => verdict,
            Err(_) => {
                self.count("dmarc", "temperror");
                tracing::warn!("mail authentication checks did not finish in time");
                Verdict::Accept {
                    header: format!(
                        "Authentication-Results: {};\r\n\tdmarc=temperror \
                         (the checks did not finish in time)\r\n",
                        self.authserv_id
                    ),
                    quarantine: None,
                }
            }
        }
    }

    async fn evaluate(
        &self,
        message: &Message,
        client: IpAddr,
        content: &[u8],
        action: DmarcAction,
    ) -> Verdict {
        let helo = message.helo.as_str();
        let sender = message
            .mail
            .sender
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let mail_from_domain = message
            .mail
            .sender
            .as_ref()
            .map_or(helo, |m| m.domain.as_str());
        let parsed = AuthenticatedMessage::parse(content);
        let spf_helo = self
            .dns
            .verify_spf(self.caches.params(SpfParameters::verify_ehlo(
                client,
                helo,
                &self.authserv_id,
            )));
        let spf_mail_from =
            self.dns
                .verify_spf(self.caches.params(SpfParameters::verify_mail_from(
                    client,
                    helo,
                    &self.authserv_id,
                    &sender,
                )));
        let (spf_helo, spf) = tokio::join!(spf_helo, spf_mail_from);
        let mut header = AuthenticationResults::new(&self.authserv_id);
        let mut quarantine = None;
        let Some(parsed) = parsed.as_ref() else {
            self.count("spf", spf_word(spf.result()));
            let header = header
                .with_spf_ehlo_result(&spf_helo, client, helo)
                .with_spf_mailfrom_result(&spf, client, &sender, helo);
            return Verdict::Accept {
                header: header.to_header(),
                quarantine,
            };
        };
        let (dkim, arc) = tokio::join!(
            self.dns.verify_dkim(self.caches.params(parsed)),
            self.dns.verify_arc(self.caches.params(parsed)),
        );
        let dmarc = self
            .dns
            .verify_dmarc(self.caches.params(DmarcParameters::new(
                parsed,
                &dkim,
                mail_from_domain,
                &spf,
            )))
            .await;
        let outcome = dmarc_outcome(dmarc.dkim_result(), dmarc.spf_result());
        let published = dmarc.policy();
        let disposition = dmarc_disposition(outcome, published, action);
        self.count("spf", spf_word(spf.result()));
        for d in &dkim {
            self.count("dkim", dkim_word(d.result()));
        }
        if dkim.is_empty() {
            self.count("dkim", "none");
        }
        self.count("arc", dkim_word(arc.result()));
        self.count(
            "dmarc",
            match outcome {
                DmarcOutcome::Pass => "pass",
                DmarcOutcome::Fail => "fail",
                DmarcOutcome::Undecided => "none",
            },
        );
        tracing::info!(
            spf = spf_word(spf.result()),
            dkim = dkim.first().map_or("none", |d| dkim_word(d.result())),
            arc = dkim_word(arc.result()),
            dmarc = ?outcome,
            dmarc_domain = %dmarc.domain(),
            "mail authentication"
        );
        header = header
            .with_dkim_results(&dkim, parsed.from())
            .with_spf_ehlo_result(&spf_helo, client, helo)
            .with_spf_mailfrom_result(&spf, client, &sender, helo)
            .with_arc_result(&arc, client)
            .with_dmarc_result(&dmarc);
        match disposition {
            Policy::Reject => {
                self.count("dmarc_action", "reject");
                return Verdict::Reject {
                    reason: format!(
                        "Rejected by the DMARC policy of {}",
                        printable(dmarc.domain())
                    ),
                };
            }
            Policy::Quarantine => {
                self.count("dmarc_action", "quarantine");
                quarantine = Some(format!("dmarc policy of {}", printable(dmarc.domain())));
            }
            Policy::None | Policy::Unspecified => {}
        }
        Verdict::Accept {
            header: header.to_header(),
            quarantine,
        }
    }

    fn count(&self, method: &'static str, result: &'static str) {
        self.results.add(
            1,
            &[
                KeyValue::new("method", method),
                KeyValue::new("result", result),
            ],
        );
    }
}

/// Text from a message or DNS fit for a reply line: printable ASCII only.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect()
}

fn spf_word(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// The resolver of the checks: the given servers or the system's, each query bounded.
fn authenticator(
    servers: &[SocketAddr],
    timeout: Duration,
) -> anyhow::Result<MessageAuthenticator> {
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.attempts = 1;
    // mail-auth keeps its own caches (below), bounded and shared by the checks.
    options.cache_size = 0;
    if servers.is_empty() {
        let (config, _) = hickory_resolver::system_conf::read_system_conf()?;
        return Ok(MessageAuthenticator::new(config, options)?);
    }
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut udp = ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            NameServerConfig::new(s.ip(), true, vec![udp, tcp])
        })
        .collect();
    Ok(MessageAuthenticator::new(
        ResolverConfig::from_name_servers(name_servers),
        options,
    )?)
}

/// DNS answers, each kept until its own TTL (`TtlCache::insert_until`), bounded in number.
struct DnsCache<K, V>(TtlCache<K, V>);

impl<K: Hash + Eq, V: Clone> DnsCache<K, V> {
    fn new(capacity: usize) -> Self {
        // The cache's own ttl only has to be non-zero: every answer brings its lifetime.
        DnsCache(TtlCache::new(Duration::from_secs(1), capacity))
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for DnsCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name, Instant::now())
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.remove(name)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        self.0.insert_until(key, value, valid_until, Instant::now());
    }
}

struct DnsCaches {
    txt: DnsCache<Box<str>, Txt>,
    mx: DnsCache<Box<str>, RecordSet<MX>>,
    ipv4: DnsCache<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: DnsCache<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: DnsCache<IpAddr, RecordSet<Box<str>>>,
}

type CachedParameters<'x, P> = Parameters<
    'x,
    P,
    DnsCache<Box<str>, Txt>,
    DnsCache<Box<str>, RecordSet<MX>>,
    DnsCache<Box<str>, RecordSet<Ipv4Addr>>,
    DnsCache<Box<str>, RecordSet<Ipv6Addr>>,
    DnsCache<IpAddr, RecordSet<Box<str>>>,
>;

impl DnsCaches {
    fn params<P>(&self, params: P) -> CachedParameters<'_, P> {
        Parameters::new(params)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_enforced_failure_applies_the_published_policy() {
        use DmarcAction::{Enforce, Monitor};
        use DmarcOutcome::{Fail, Pass, Undecided};
        for published in [
            Policy::Reject,
            Policy::Quarantine,
            Policy::None,
            Policy::Unspecified,
        ] {
            for outcome in [Pass, Undecided] {
                for action in [Enforce, Monitor] {
                    assert_eq!(dmarc_disposition(outcome, published, action), Policy::None);
                }
            }
            assert_eq!(dmarc_disposition(Fail, published, Monitor), Policy::None);
        }
        assert_eq!(
            dmarc_disposition(Fail, Policy::Reject, Enforce),
            Policy::Reject
        );
        assert_eq!(
            dmarc_disposition(Fail, Policy::Quarantine, Enforce),
            Policy::Quarantine
        );
        assert_eq!(dmarc_disposition(Fail, Policy::None, Enforce), Policy::None);
    }

    #[test]
    fn dmarc_passes_on_either_aligned_pass_and_fails_only_on_a_failure() {
        let fail = || DmarcResult::Fail(mail_auth::Error::NotAligned);
        let temp = || DmarcResult::TempError(mail_auth::Error::Io("timeout".into()));
        assert_eq!(
            dmarc_outcome(&DmarcResult::Pass, &fail()),
            DmarcOutcome::Pass
        );
        assert_eq!(
            dmarc_outcome(&fail(), &DmarcResult::Pass),
            DmarcOutcome::Pass
        );
        assert_eq!(dmarc_outcome(&fail(), &fail()), DmarcOutcome::Fail);
        assert_eq!(
            dmarc_outcome(&DmarcResult::None, &fail()),
            DmarcOutcome::Fail
        );
        assert_eq!(
            dmarc_outcome(&temp(), &DmarcResult::None),
            DmarcOutcome::Undecided
        );
        assert_eq!(
            dmarc_outcome(&DmarcResult::None, &DmarcResult::None),
            DmarcOutcome::Undecided
        );
    }

    #[test]
    fn replies_carry_printable_text_only() {
        assert_eq!(printable("ex\r\nample.org 550"), "example.org550");
    }
}
