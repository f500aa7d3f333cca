//! Routing: where a remote domain's mail goes (a static route, the smarthost, or its MX hosts
//! from DNS, `mx.rs`), which servers to try in which order, and the STARTTLS policy for it.
//! Addresses DNS gives in internal networks are never tried: an MX record pointing at
//! 127.0.0.1 must not make the queue deliver to the host's own services.
//! With DANE on, each MX host reached through DNSSEC-proven records is also asked for its
//! TLSA records, which then decide its TLS (RFC 7672).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use pochta_config::Cidr;
use pochta_mail::TlsPolicy;
use pochta_mail::dane::Tlsa;

use crate::mx;

/// Where a domain's mail goes: a configured `host:port`, or its MX hosts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Static(String),
    Mx(String),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Static(target) => write!(f, "{target}"),
            Destination::Mx(domain) => write!(f, "the mail hosts of {domain}"),
        }
    }
}

/// A server to try: its name (for TLS and diagnostics), where to connect (`addr:port`, or
/// `host:port` for a static route), and what DANE asks of its TLS, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub address: String,
    pub dane: Option<Arc<DaneTls>>,
}

/// What DANE asks of the TLS with one MX host whose TLSA records DNSSEC proved (RFC 7672 2.2).
#[derive(Debug, PartialEq, Eq)]
pub enum DaneTls {
    /// TLS whose certificate matches one of these usable records.
    Authenticate(Vec<Tlsa>),
    /// The records are proven but none is usable: TLS, without authentication.
    EncryptOnly(Vec<Tlsa>),
}

impl DaneTls {
    fn from_records(records: Vec<Tlsa>) -> Self {
        let usable: Vec<Tlsa> = records.iter().filter(|r| r.usable()).cloned().collect();
        if usable.is_empty() {
            DaneTls::EncryptOnly(records)
        } else {
            DaneTls::Authenticate(usable)
        }
    }

    /// The records, as TLS reports list the policy (RFC 8460 4.4, policy-type `tlsa`).
    pub fn lines(&self) -> Vec<String> {
        let (DaneTls::Authenticate(records) | DaneTls::EncryptOnly(records)) = self;
        records.iter().map(Tlsa::to_text).collect()
    }
}

pub struct Router {
    /// Static routes: recipient domain → `host:port`.
    pub routes: BTreeMap<String, String>,
    /// `host:port` for every other remote domain; None: MX lookup.
    pub smarthost: Option<String>,
    /// STARTTLS policy by recipient domain (`.example.com` for its subdomains), else `tls`.
    pub tls_by_domain: BTreeMap<String, TlsPolicy>,
    pub tls: TlsPolicy,
    pub resolver: hickory_resolver::TokioResolver,
    /// The port MX hosts are reached on (25).
    pub mx_port: u16,
    /// Addresses from DNS in these networks are never connected to.
    pub denied: Vec<Cidr>,
    /// DANE (`queue.dane`): `resolver` validates, and TLSA records are looked up.
    pub dane: bool,
}

impl Router {
    pub fn destination(&self, domain: &str) -> Destination {
        match self.routes.get(domain).or(self.smarthost.as_ref()) {
            Some(target) => Destination::Static(target.clone()),
            None => Destination::Mx(domain.to_owned()),
        }
    }

    /// The STARTTLS policy for mail to `domain`: its own, its nearest parent's (`.parent`
    /// entries), or the default.
    pub fn tls_policy(&self, domain: &str) -> TlsPolicy {
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

    /// The servers to try, best first; or why there are none.
    pub async fn candidates(
        &self,
        destination: &Destination,
    ) -> Result<Vec<Candidate>, mx::Resolution> {
        let domain = match destination {
            Destination::Static(target) => {
                let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
                return Ok(vec![Candidate {
                    host: host.trim_matches(['[', ']']).to_owned(),
                    address: target.clone(),
                    dane: None,
                }]);
            }
            Destination::Mx(domain) => domain,
        };
        let (hosts, mx_secure) = match mx::mail_hosts(&self.resolver, domain).await {
            mx::Resolution::Hosts { hosts, secure } => (hosts, secure),
            other => return Err(other),
        };
        let mut candidates = Vec::new();
        let mut problems = Vec::new();
        let mut denied = Vec::new();
        for host in hosts {
            match mx::addresses(&self.resolver, &host).await {
                Ok((ips, addresses_secure)) => {
                    // RFC 7672 2.2: TLSA records count only for a host reached through
                    // proven MX and address records; a failed TLSA lookup rules it out.
                    let dane = if self.dane && mx_secure && addresses_secure {
                        match mx::tlsa_records(&self.resolver, &host).await {
                            Ok(records) => records.map(|r| Arc::new(DaneTls::from_records(r))),
                            Err(why) => {
                                problems.push(why);
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    for ip in ips {
                        if self.denied.iter().any(|net| net.contains(ip)) {
                            denied.push(format!("{host} ({ip})"));
                            continue;
                        }
                        candidates.push(Candidate {
                            host: host.clone(),
                            address: SocketAddr::new(ip, self.mx_port).to_string(),
                            dane: dane.clone(),
                        });
                    }
                }
                Err(why) => problems.push(why),
            }
        }
        if candidates.is_empty() && !denied.is_empty() && problems.is_empty() {
            // RFC 3463 X.4.4: unable to route.
            return Err(mx::Resolution::NoMail {
                status: "5.4.4",
                why: format!(
                    "the mail hosts of {domain} are in networks delivery is refused to: {}",
                    denied.join(", ")
                ),
            });
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
